"""The 4-channel brain tumour phantom (MSD Task01 layout)."""

import numpy as np
import pytest

from medseg_tf.datasets import MSDDataset
from medseg_tf.phantom_brain import (BRAIN_LABELS, BRAIN_MODALITIES, BRAIN_SHAPE, make_brain_case,
                                     write_brain_dataset)


def test_brain_case_is_deterministic_and_seed_dependent():
    a, b, c = make_brain_case(1), make_brain_case(1), make_brain_case(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_brain_case_channels_labels_and_nesting():
    for seed in range(5):
        image, label, affine = make_brain_case(seed)
        assert image.shape == (*BRAIN_SHAPE, 4) and image.dtype == np.float32
        assert label.shape == BRAIN_SHAPE and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values == ({0, 1, 2} if seed % 5 == 4 else {0, 1, 2, 3})
        brain = image[..., 0] > 0
        assert np.all((image > 0) == brain[..., None])  # skull-stripped: zero outside, positive inside
        assert np.all(label[~brain] == 0)
        # nested regions: the enhancing rim touches the core, the oedema surrounds the core
        from scipy import ndimage
        core = label >= 2
        grown = ndimage.binary_dilation(core, iterations=2)
        assert np.mean(label[grown & ~core] == 1) > 0.5  # most of the shell around the core is oedema
        if 3 in values:
            inner = ndimage.binary_erosion(core, iterations=1)
            assert np.mean(label[core & ~inner] == 3) > 0.5  # the core's surface is mostly enhancing


def test_brain_each_channel_has_its_own_contrast():
    image, label, _ = make_brain_case(0)
    brain = image[..., 0] > 0
    normal = brain & (label == 0)
    ratio = np.array([[np.median(image[..., ch][label == k]) / np.median(image[..., ch][normal])
                       for k in (1, 2, 3)] for ch in range(4)])  # (channel, label)
    flair, t1, t1gd, t2 = ratio
    assert flair[0] > 1.2  # oedema bright in FLAIR
    assert t1gd[2] > 1.1 and t1gd[2] > t1[2] + 0.3  # enhancing bright after contrast only
    assert t1[1] < 0.6  # necrotic core dark in T1
    assert t2[0] > 1.4 and t2[1] > 1.4  # oedema and core bright in T2
    # the channels are not copies of one another
    corr = np.corrcoef(image[brain].T)
    assert corr[np.triu_indices(4, 1)].max() < 0.9


def test_brain_bias_field_is_returned_and_applied():
    image, label, _, bias = make_brain_case(3, bias_strength=0.3, return_bias=True)
    brain = image[..., 0] > 0
    assert bias.shape == image.shape and np.all(bias[~brain] == 1)
    log_sd = np.log(bias[brain]).std(axis=0)
    np.testing.assert_allclose(log_sd, 0.3, rtol=0.01)
    # the same case without the bias field request has the same image
    np.testing.assert_array_equal(make_brain_case(3, bias_strength=0.3)[0], image)


def test_write_brain_dataset_is_4d_channels_last(tmp_path):
    root = write_brain_dataset(tmp_path / "brain", n_cases=2)
    ds = MSDDataset(root)
    assert ds.labels == BRAIN_LABELS and ds.modality == BRAIN_MODALITIES
    assert ds.meta["tensorImageSize"] == "4D"
    image, label = ds.load_case(1)
    assert image.shape == (*BRAIN_SHAPE, 4) and image.orientation == ("R", "A", "S")
    np.testing.assert_array_equal(image.data, make_brain_case(1)[0])


def test_4d_image_with_wrong_channel_count_is_one_line(tmp_path):
    import nibabel as nib

    from medseg_tf.errors import DataError

    root = write_brain_dataset(tmp_path / "brain", n_cases=1)
    path = root / "imagesTr" / "brain_000.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :3], img.affine), path)  # drop T2w
    with pytest.raises(DataError, match=r"brain_000.nii.gz: has 3 channel\(s\).*declares 4 modalities"):
        MSDDataset(root).load_case(0)


@pytest.mark.parametrize("task,kind", [("Task01_BrainTumour", "brain"), ("Task03_Liver", "ct")])
def test_msd_task_archive_served_locally_downloads_and_reads(task, kind, tmp_path, monkeypatch):
    """Task01 (4D, 4 modalities) and Task03 (CT in HU) through the downloader, from a local HTTP server."""
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading

    from medseg_tf import download
    from medseg_tf.phantom_ct import write_ct_dataset
    from medseg_tf.preprocessing import check_hounsfield

    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    assert task in download.MSD_TASKS and len(download.MSD_TASKS[task]["md5"]) == 32
    for name in ("Task09_Spleen", "Task10_Colon"):
        assert len(download.MSD_TASKS[name]["md5"]) == 32
    src = tmp_path / "src" / task
    (write_brain_dataset if kind == "brain" else write_ct_dataset)(src, n_cases=1)
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / f"{task}.tar", "w") as tf:
        tf.add(src, arcname=task)
    md5 = hashlib.md5((served / f"{task}.tar").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{task}.tar"
        root = download.download_task(task[:6], tmp_path / "data", url=url, md5=md5, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert root == tmp_path / "data" / task
    ds = MSDDataset(root)
    image, label, spacing = ds.load_channels(0)
    if kind == "brain":
        assert image.shape == (*BRAIN_SHAPE, 4) and ds.modality == BRAIN_MODALITIES
    else:
        assert image.shape[3] == 1 and spacing[2] > spacing[0]
        check_hounsfield(image, ds.cases[0].image_path)
