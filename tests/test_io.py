"""NIfTI reading/writing and RAS reorientation."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from medseg_tf.errors import DataError, OverwriteError
from medseg_tf.io import Volume, load_nifti, reorient_from_ras, reorient_to_ras, save_nifti, spacing_from_affine


def _affine(spacing=(0.9, 1.1, 2.0), flips=()):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (10.0, -5.0, 3.0)
    for ax in flips:
        aff[ax, ax] *= -1
    return aff


def test_roundtrip_keeps_data_affine_spacing(tmp_path, rng):
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    path = save_nifti(data, tmp_path / "a.nii.gz", affine=_affine())
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, _affine())
    np.testing.assert_allclose(vol.spacing, (0.9, 1.1, 2.0))
    assert vol.orientation == ("R", "A", "S")
    assert vol.shape == (5, 6, 7)


def test_save_refuses_overwrite(tmp_path):
    path = save_nifti(np.zeros((2, 2, 2), np.uint8), tmp_path / "a.nii.gz", affine=np.eye(4))
    with pytest.raises(OverwriteError, match="already exists"):
        save_nifti(np.ones((2, 2, 2), np.uint8), path, affine=np.eye(4))
    save_nifti(np.ones((2, 2, 2), np.uint8), path, affine=np.eye(4), overwrite=True)
    assert load_nifti(path).data.max() == 1


def test_save_refuses_a_folder_and_a_name_that_is_not_nifti(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        save_nifti(np.zeros((2, 2, 2), np.uint8), tmp_path / "out.nii.gz", affine=np.eye(4), overwrite=True)
    with pytest.raises(DataError, match=r"must end in \.nii or \.nii\.gz"):
        save_nifti(np.zeros((2, 2, 2), np.uint8), tmp_path / "new.txt", affine=np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]  # no temporary file left


@pytest.mark.parametrize("flips", [(), (0,), (0, 1), (2,)])
def test_reorient_to_ras_and_back(rng, flips):
    data = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    vol = Volume(data=data, affine=_affine(flips=flips))
    ras = reorient_to_ras(vol)
    assert ras.orientation == ("R", "A", "S")
    # the same voxel has the same world coordinate before and after
    idx = np.array([1, 2, 3, 1.0])
    world = vol.affine @ idx
    ras_idx = np.linalg.solve(ras.affine, world)
    np.testing.assert_allclose(ras_idx, np.round(ras_idx), atol=1e-9)
    assert ras.data[tuple(np.round(ras_idx[:3]).astype(int))] == data[1, 2, 3]
    np.testing.assert_array_equal(reorient_from_ras(ras.data, vol), data)


def test_reorient_permuted_axes(rng):
    data = rng.normal(size=(3, 4, 5))
    aff = np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])  # axes point A, S, R
    vol = Volume(data=data, affine=aff)
    ras = reorient_to_ras(vol)
    assert ras.orientation == ("R", "A", "S")
    assert ras.shape == (5, 3, 4)
    np.testing.assert_allclose(ras.spacing, (2.0, 1.0, 1.5))
    np.testing.assert_array_equal(reorient_from_ras(ras.data, vol), data)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="missing.nii.gz: file not found"):
        load_nifti(tmp_path / "missing.nii.gz")


def test_corrupt_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(DataError, match="bad.nii.gz: cannot read as NIfTI"):
        load_nifti(bad)
    good = save_nifti(np.ones((20, 20, 20), np.float32), tmp_path / "good.nii.gz", affine=np.eye(4))
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="trunc.nii.gz"):
        load_nifti(trunc)
    plain = tmp_path / "plain.nii"
    plain.write_bytes(gzip.decompress(raw)[:400])
    with pytest.raises(DataError, match="plain.nii"):
        load_nifti(plain)


def test_save_with_reference_keeps_header_and_checks_shape(tmp_path, rng):
    img = nib.Nifti1Image(rng.normal(size=(4, 5, 6)).astype(np.float32), _affine(flips=(0,)))
    nib.save(img, tmp_path / "img.nii.gz")
    ref = load_nifti(tmp_path / "img.nii.gz")
    out = save_nifti(np.ones((4, 5, 6), np.uint8), tmp_path / "pred.nii.gz", reference=ref)
    back = load_nifti(out)
    np.testing.assert_allclose(back.affine, ref.affine)
    assert back.data.dtype == np.uint8
    with pytest.raises(ValueError, match="does not match the reference"):
        save_nifti(np.ones((4, 5, 7), np.uint8), tmp_path / "x.nii.gz", reference=ref)


def test_spacing_from_rotated_affine():
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.5, 2.0, 3.0])
    np.testing.assert_allclose(spacing_from_affine(aff), (0.5, 2.0, 3.0))
