"""The CT phantom in Hounsfield units."""

import numpy as np
import pytest

from medseg_tf.datasets import MSDDataset
from medseg_tf.phantom_ct import CT_LABELS, HU_AIR, make_ct_case, write_ct_dataset


def test_ct_case_is_deterministic_and_seed_dependent():
    a, b, c = make_ct_case(5), make_ct_case(5), make_ct_case(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_ct_case_hounsfield_ranges_labels_and_thick_slices():
    for seed in range(4):
        image, label, affine = make_ct_case(seed)
        assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape
        assert set(np.unique(label)) == {0, 1, 2}
        np.testing.assert_array_equal(image, np.rint(image))  # whole HU, as scanners store them
        assert image.min() >= -1024 and image.max() <= 3071
        # air around the body: the corners are about -1000 HU
        corner = image[:3, :3, :]
        assert abs(np.median(corner) - HU_AIR) < 30
        # fat exists (about -100 HU), bone exceeds 400 HU
        assert np.mean((image > -150) & (image < -50)) > 0.03
        assert np.mean(image > 400) > 0.001 and image.max() > 600
        organ, lesion = image[label == 1], image[label == 2]
        assert 20 <= np.median(organ) <= 80  # soft tissue
        # the lesion is only a few HU darker than the organ: less than two noise standard deviations apart
        gap = np.median(organ) - np.median(lesion)
        assert 5 <= gap <= 30, gap
        assert gap < 2.5 * organ.std()
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        assert spacing[2] >= 1.4 * spacing[:2].max()  # thick slices
        # the organ is on the patient's right: larger x in RAS world coordinates than the body centre
        xs = np.argwhere(label == 1)[:, 0].mean()
        assert xs > (image.shape[0] - 1) / 2


def test_ct_noise_is_scanner_like():
    image, label, _ = make_ct_case(2)
    # noise + texture inside the organ: a few HU to a few tens of HU, as in a portal-venous CT
    organ = image[label == 1]
    assert 5 < organ.std() < 25


def test_write_ct_dataset_msd_layout(tmp_path):
    root = write_ct_dataset(tmp_path / "ct", n_cases=2, seed=0)
    ds = MSDDataset(root)
    assert ds.labels == CT_LABELS and ds.modality == {0: "CT"} and len(ds) == 2
    image, label = ds.load_case(0)
    np.testing.assert_array_equal(image.data, make_ct_case(0)[0])


def test_hu_windows_by_hand():
    from medseg_tf.preprocessing import CT_WINDOWS, ct_window, ct_window_preset

    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 1000.0])
    # soft tissue window: level 40, width 400 -> [-160, 240] mapped to [0, 1]
    np.testing.assert_allclose(ct_window_preset(hu, "soft tissue"), [0, 0, 0.5, 1, 1])
    # liver window 60/160 -> [-20, 140]
    np.testing.assert_allclose(ct_window_preset(np.array([-20.0, 60.0, 100.0]), "liver"), [0, 0.5, 0.75])
    assert CT_WINDOWS["lung"] == (-600.0, 1500.0)
    # bone window 400/1800 -> [-500, 1300]
    np.testing.assert_allclose(ct_window(hu, 400, 1800), [0, 340 / 1800, 540 / 1800, 740 / 1800, 1500 / 1800],
                               rtol=1e-6)
    from medseg_tf.errors import ConfigError
    with pytest.raises(ConfigError, match="window must be one of"):
        ct_window_preset(hu, "abdomen-ish")


def test_nnunet_ct_normalisation_by_hand():
    from medseg_tf.preprocessing import ct_intensity_stats, ct_normalize

    a = np.arange(200, dtype=np.float32).reshape(10, 20)  # foreground values 0..99 in the first half
    la = (a < 100).astype(np.uint8)
    b = np.full((10, 20), 1000.0, np.float32)  # a second case: foreground all 100..199
    b[:5] = np.arange(100, 200).reshape(5, 20)
    lb = np.zeros((10, 20), np.uint8)
    lb[:5] = 1
    stats = ct_intensity_stats([a, b], [la, lb])
    v = np.arange(200.0)  # pooled foreground: 0..199 once each
    assert stats["n"] == 200 and stats["mean"] == pytest.approx(v.mean()) and stats["std"] == pytest.approx(v.std())
    assert stats["p00_5"] == pytest.approx(np.percentile(v, 0.5))
    assert stats["p99_5"] == pytest.approx(np.percentile(v, 99.5))
    out = ct_normalize(b, stats)
    # background 1000 HU is clipped to the 99.5th percentile first
    assert out[9, 0] == pytest.approx((stats["p99_5"] - v.mean()) / v.std(), rel=1e-5)
    # the same statistics for every image: one HU value maps to one output value in both cases
    assert ct_normalize(a, stats)[2, 10] == pytest.approx(ct_normalize(np.float32([[50.0]]), stats)[0, 0])
    # sampling caps the voxels per case
    assert ct_intensity_stats([a, b], [la, lb], samples_per_case=30)["n"] == 60


def test_ct_without_hounsfield_units_is_one_line():
    from medseg_tf.errors import DataError
    from medseg_tf.preprocessing import check_hounsfield

    image, _, _ = make_ct_case(0)
    check_hounsfield(image, "ct_000.nii.gz")  # a real HU image passes
    scaled = np.round((np.clip(image, -160, 240) + 160) / 400 * 255)
    with pytest.raises(DataError, match=r"ct_000.nii.gz: not a CT in Hounsfield units: values 0 to 255 .*0-255"):
        check_hounsfield(scaled, "ct_000.nii.gz")
    with pytest.raises(DataError, match="rescale"):
        check_hounsfield(image + 1024, "ct_000.nii.gz")


def test_cli_data_phantom_kinds(tmp_path, capsys):
    from medseg_tf.cli import main

    assert main(["data", "phantom", "--kind", "ct", "--out", str(tmp_path / "ct"), "--cases", "1"]) == 0
    assert MSDDataset(tmp_path / "ct").modality == {0: "CT"}
    assert main(["data", "phantom", "--kind", "fundus", "--out", str(tmp_path / "f"), "--cases", "1"]) == 0
    assert (tmp_path / "f" / "manual" / "fundus_000.png").is_file()
    assert "1 fundus phantom cases" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "phantom", "--kind", "xray", "--out", str(tmp_path / "x")])
