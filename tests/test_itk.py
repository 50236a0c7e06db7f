"""SimpleITK tooling: LPS/RAS conversion, DICOM series, N4, resampling."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg_tf import itk, preprocessing
from medseg_tf.errors import DataError
from medseg_tf.io import load_nifti, reorient_to_ras


def _oblique_series_image():
    """A SimpleITK image built by hand in LPS: oblique direction, anisotropic spacing, one bright marker."""
    arr = np.full((7, 12, 10), -1000, np.int16)  # GetImageFromArray order: (z, y, x)
    arr[5, 3, 8] = 1000  # the marker at ITK index (x=8, y=3, z=5)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((12.5, -40.0, 105.0))
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.0, 1.0, -1.0])
    image.SetDirection(direction.ravel().tolist())
    return image


def test_lps_ras_conversion_by_hand():
    image = _oblique_series_image()
    vol = itk.sitk_to_volume(image)
    assert vol.shape == (10, 12, 7)  # (x, y, z): the transpose of GetArrayFromImage's (z, y, x)
    lps = np.array(image.TransformIndexToPhysicalPoint((8, 3, 5)))
    ras = vol.affine @ np.array([8, 3, 5, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)
    assert vol.data[8, 3, 5] == 1000
    back = itk.array_to_sitk(vol.data, vol.affine)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_dicom_round_trip_puts_the_marker_at_the_right_ras_position(tmp_path):
    image = _oblique_series_image()
    files = itk.write_dicom_series(image, tmp_path / "dicom")
    assert len(files) == 7
    out = itk.dicom_to_nifti(tmp_path / "dicom", tmp_path / "ct.nii.gz")
    nii = nib.load(out)
    data = np.asarray(nii.dataobj)
    (i, j, k), = np.argwhere(data == 1000)
    lps = np.array(image.TransformIndexToPhysicalPoint((8, 3, 5)))  # where the marker is, in LPS mm
    ras = nii.affine @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-3)
    # the whole affine: RAS = diag(-1, -1, 1) @ LPS, axes in the order of the DICOM rows, columns, slices
    lps_affine = np.eye(4)
    lps_affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps_affine[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(nii.affine, itk.LPS_TO_RAS @ lps_affine, atol=1e-3)
    # intensities survive (int16 HU), and RAS reorientation keeps the marker's world position
    assert data.min() == -1000 and data.sum() == -1000 * (data.size - 1) + 1000
    vol = reorient_to_ras(load_nifti(out))
    (i2, j2, k2), = np.argwhere(vol.data == 1000)
    np.testing.assert_allclose((vol.affine @ [i2, j2, k2, 1.0])[:3], ras[:3], atol=1e-3)


def test_dicom_folder_with_two_series_or_missing_slices_is_one_line(tmp_path):
    image = _oblique_series_image()
    itk.write_dicom_series(image, tmp_path / "two", series_number=1, prefix="a")
    itk.write_dicom_series(image, tmp_path / "two", series_number=2, prefix="b")
    with pytest.raises(DataError, match=r"two: holds 2 DICOM series .*series_id"):
        itk.read_dicom_series(tmp_path / "two")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(tmp_path / "two"))
    assert itk.read_dicom_series(tmp_path / "two", ids[0]).shape == (10, 12, 7)
    files = itk.write_dicom_series(image, tmp_path / "gap")
    files[3].unlink()
    with pytest.raises(DataError, match=r"gap: series .*: slices are 2.5 mm apart but slice_0002.dcm and "
                                        r"slice_0004.dcm are 5 mm apart \(1 slice\(s\) missing\?\)"):
        itk.read_dicom_series(tmp_path / "gap")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        itk.read_dicom_series(tmp_path / "empty")
    with pytest.raises(Exception, match="exists"):
        itk.write_dicom_series(image, tmp_path / "gap")


def test_resampling_agrees_with_the_package():
    from medseg_tf.phantom import make_phantom_case

    image, label, affine = make_phantom_case(1)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    for target in [(1.5, 1.5, 1.5), (0.7, 0.8, 0.9)]:
        ours = preprocessing.resample_to_spacing(image, spacing, target, order=1)
        theirs = itk.resample_sitk(image, spacing, target, order=1)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(theirs, ours, atol=1e-5 * np.ptp(image))
        # nearest neighbour: the same voxel except where a sample falls (to rounding) half-way between two
        nn_ours = preprocessing.resample_label(label, spacing, target)
        nn_theirs = itk.resample_sitk(label, spacing, target, order=0)
        assert nn_theirs.dtype == label.dtype and np.mean(nn_ours == nn_theirs) > 0.999
    two = np.stack([image, 2 * image], axis=-1)
    out = itk.resample_sitk(two, spacing, (2, 2, 2))
    np.testing.assert_allclose(out[..., 1], 2 * out[..., 0], rtol=1e-5)


def test_n4_removes_most_of_a_known_bias_field():
    from medseg_tf.phantom_brain import make_brain_case

    image, label, _, bias = make_brain_case(3, bias_strength=0.3, return_bias=True)
    brain = image[..., 0] > 0
    t1, true_field = image[..., 1], bias[..., 1]
    corrected, field = itk.n4_bias_correction(t1, brain, (3.0, 3.0, 3.0), shrink=3)

    def cv(f):
        return float(np.std(f[brain]) / np.mean(f[brain]))

    before = cv(true_field)  # about 0.3
    after = cv(true_field / field)  # what is left of the field after N4
    assert before > 0.25 and after < 0.4 * before, (before, after)
    assert np.corrcoef(np.log(true_field[brain]), np.log(field[brain]))[0, 1] > 0.85
    np.testing.assert_allclose(corrected, t1 / field, rtol=1e-5)


def test_cli_data_dicom(tmp_path, capsys):
    from medseg_tf.cli import main

    image = _oblique_series_image()
    itk.write_dicom_series(image, tmp_path / "series")
    assert main(["data", "dicom", str(tmp_path / "series"), "--out", str(tmp_path / "ct.nii.gz")]) == 0
    assert "shape 10x12x7" in capsys.readouterr().out
    assert main(["data", "dicom", str(tmp_path / "series"), "--out", str(tmp_path / "ct.nii.gz")]) == 1
    itk.write_dicom_series(image, tmp_path / "series", series_number=2, prefix="b")
    assert main(["data", "dicom", str(tmp_path / "series"), "--out", str(tmp_path / "b.nii.gz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "holds 2 DICOM series" in err[1] and "Traceback" not in "".join(err)
