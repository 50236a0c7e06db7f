"""MSD folders: reading, validation of bad input, writing, checking, the real cases."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg_tf.datasets import MSDDataset, check_dataset, split_cases, write_msd_dataset
from medseg_tf.sources import course_dataset, open_dataset
from medseg_tf.errors import DataError, OverwriteError


@pytest.fixture
def small_msd(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        image = rng.normal(100, 10, size=(8, 9, 10)).astype(np.float32)
        label = np.zeros((8, 9, 10), np.uint8)
        label[2:5, 3:6, 4:7] = 1
        label[5:7, 3:6, 4:7] = 2
        cases.append((f"case_{i}", image, label, np.diag([1.0, 1.0, 2.0, 1.0])))
    return write_msd_dataset(tmp_path / "Task99_Small", cases, name="Small",
                             labels={0: "background", 1: "A", 2: "B"})


def test_reader_lists_and_loads(small_msd):
    ds = MSDDataset(small_msd)
    assert ds.case_ids == ["case_0", "case_1", "case_2"]
    assert ds.class_names == ["background", "A", "B"] and ds.num_classes == 3
    image, label, spacing = ds.load_arrays("case_1")
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == (8, 9, 10)
    assert spacing == (1.0, 1.0, 2.0)
    assert set(np.unique(label)) == {0, 1, 2}


def test_writer_refuses_non_empty_folder(small_msd):
    with pytest.raises(OverwriteError, match="not empty"):
        write_msd_dataset(small_msd, [], name="x", labels={0: "bg"})
    other = small_msd.parent / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("my notes")
    with pytest.raises(OverwriteError):
        write_msd_dataset(other, [], name="x", labels={0: "bg"}, overwrite=True)
    assert (other / "notes.txt").read_text() == "my notes"


def _break(root, case, what, kind):
    path = root / f"{what}Tr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    data, aff = np.asanyarray(img.dataobj), img.affine
    if kind == "nan":
        data = data.astype(np.float32)
        data[0, 0, 0] = np.nan
    elif kind == "shape":
        data = data[:-1]
    elif kind == "affine":
        aff = aff.copy()
        aff[0, 3] += 5
    elif kind == "value":
        data = data.copy()
        data[0, 0, 0] = 7
    elif kind == "2d":
        data = data[:, :, 0]
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return path


@pytest.mark.parametrize("what,kind,message", [
    ("images", "nan", "NaN or Inf"),
    ("labels", "shape", "does not match image shape"),
    ("labels", "affine", "affine differs"),
    ("labels", "value", r"label values \[7\] are not declared"),
    ("images", "2d", "expected a 3D volume"),
])
def test_bad_case_names_file_and_problem(small_msd, what, kind, message):
    path = _break(small_msd, "case_1", what, kind)
    ds = MSDDataset(small_msd)
    with pytest.raises(DataError, match=message) as info:
        ds.load_case("case_1")
    assert str(path.name) in str(info.value)
    ds.load_case("case_0")  # the other cases still load


def test_missing_and_corrupt_files(small_msd):
    (small_msd / "labelsTr" / "case_2.nii.gz").unlink()
    (small_msd / "imagesTr" / "case_0.nii.gz").write_bytes(b"\x1f\x8b garbage")
    ds = MSDDataset(small_msd)
    with pytest.raises(DataError, match="case_2.nii.gz: file not found"):
        ds.load_case(2)
    with pytest.raises(DataError, match="case_0.nii.gz: cannot read as NIfTI"):
        ds.load_case(0)


@pytest.mark.parametrize("text,message", [
    ("{not json", "malformed JSON at line 1"),
    ("[1, 2]", "JSON object"),
    ('{"labels": {"0": "bg"}, "training": []}', "lists no training case"),
    ('{"training": []}', "no 'labels' entry"),
    ('{"labels": {"1": "a"}, "training": []}', "must declare 0"),
    ('{"labels": {"0": "bg"}, "training": [{"image": "x"}]}', "training entry 0"),
])
def test_malformed_dataset_json(tmp_path, text, message):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(DataError, match=message) as info:
        MSDDataset(tmp_path)
    assert "dataset.json" in str(info.value)


def test_missing_folder_and_json(tmp_path):
    with pytest.raises(DataError, match="data set folder not found"):
        MSDDataset(tmp_path / "nope")
    with pytest.raises(DataError, match="dataset.json not found"):
        MSDDataset(tmp_path)


def test_check_dataset_table(small_msd):
    _break(small_msd, "case_2", "labels", "value")
    table = check_dataset(small_msd)
    assert list(table["case"]) == ["case_0", "case_1", "case_2"]
    assert table.loc[0, "error"] == "" and table.loc[0, "labels"] == "0,1,2"
    assert table.loc[0, "foreground_pct"] == pytest.approx(100 * (27 + 18) / 720)
    assert "not declared" in table.loc[2, "error"]


def test_split_by_case_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    tr, va = split_cases(ids, 0.2, seed=1)
    assert len(va) == 2 and not set(tr) & set(va) and sorted(tr + va) == sorted(ids)
    assert split_cases(ids, 0.2, seed=1) == (tr, va)
    assert split_cases(ids, 0.2, seed=2) != (tr, va)
    with pytest.raises(ValueError):
        split_cases([], 0.2)


def test_course_dataset_generates_phantom(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDSEG_DATASET", "phantom")
    ds = course_dataset()
    assert ds.root == tmp_path / "phantom" and len(ds) == 40
    assert course_dataset().root == ds.root  # second call reuses it


def test_course_dataset_hippocampus_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_HIPPOCAMPUS_DIR", str(tmp_path / "none"))
    with pytest.raises(DataError, match="data download Task04_Hippocampus"):
        course_dataset("hippocampus")


def test_one_resolver_for_names_and_folders(phantom_root):
    from medseg_tf import settings
    from medseg_tf.errors import ConfigError

    sample = open_dataset("hippocampus_sample")
    assert sample.root == settings.hippocampus_sample_dir() and len(sample) == 8
    assert open_dataset(str(phantom_root)).root == phantom_root
    with pytest.raises(ConfigError, match="MEDSEG_DATASET"):
        course_dataset("hippocampus_sample")  # the course switch takes phantom or hippocampus only


def test_datasets_and_phantom_do_not_import_each_other_at_import_time():
    import subprocess
    import sys

    code = ("import sys, medseg_tf.datasets; assert 'medseg_tf.phantom' not in sys.modules; "
            "import medseg_tf.phantom; assert 'medseg_tf.sources' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_real_hippocampus_cases(hippocampus_root):
    """All 200 shared real cases go through the same reader."""
    ds = MSDDataset(hippocampus_root)
    assert len(ds) == 200
    assert ds.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    for i in range(len(ds)):
        image, label = ds.load_case(i)
        assert image.data.ndim == 3 and image.shape == label.shape
        assert all(20 <= n <= 64 for n in image.shape), image.shape
        np.testing.assert_allclose(image.spacing, (1.0, 1.0, 1.0), atol=1e-3)
        assert set(np.unique(label.data).tolist()) == {0, 1, 2}
        assert image.orientation == ("R", "A", "S")


def test_split_fraction_and_unknown_case_are_named(tmp_path, phantom_root):
    from medseg_tf.errors import ConfigError

    with pytest.raises(ConfigError, match="val_fraction must be >= 0 and < 1, got 1.0"):
        split_cases(["a", "b", "c"], val_fraction=1.0)
    with pytest.raises(DataError, match=r"dataset.json: lists no case 'nope'"):
        MSDDataset(phantom_root).case("nope")
