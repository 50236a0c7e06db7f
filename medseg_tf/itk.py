"""SimpleITK tooling: DICOM series to NIfTI, N4 bias-field correction, resampling (no TensorFlow).

ITK and nibabel describe the same physical space with two conventions, and
mixing them up mirrors or transposes an image without any error:

=====================  ===================================  ===================================
                       ITK / SimpleITK / DICOM               nibabel / NIfTI / this package
=====================  ===================================  ===================================
world axes             LPS+: x to the patient's Left,        RAS+: x to the Right,
                       y to Posterior, z to Superior         y to Anterior, z to Superior
geometry               origin, spacing, direction (3x3)      one 4x4 affine
NumPy array order      ``GetArrayFromImage``: ``(z, y, x)``  ``(x, y, z)``
=====================  ===================================  ===================================

So a point ``(x, y, z)`` in LPS is ``(-x, -y, z)`` in RAS, and the affine of an
ITK image is ``diag(-1, -1, 1, 1) @ [[D @ diag(spacing), origin], [0, 0, 0, 1]]``
with its array transposed to ``(x, y, z)``. :func:`sitk_to_volume` and
:func:`array_to_sitk` do exactly that, and nothing else in the package needs to
know about LPS.

The rest builds on it: :func:`read_dicom_series` (checks that the folder holds
one complete series), :func:`dicom_to_nifti`, :func:`write_dicom_series` (to
make test and teaching series), :func:`n4_bias_correction` (N4, Tustison et al.
2010) and :func:`resample_sitk`, which reproduces
:func:`medseg_tf.preprocessing.resample_to_spacing` with ITK's resampler.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_tf.errors import DataError, OverwriteError
from medseg_tf.io import Volume, save_nifti

__all__ = ["LPS_TO_RAS", "sitk_to_volume", "array_to_sitk", "read_dicom_series", "dicom_to_nifti",
           "write_dicom_series", "n4_bias_correction", "resample_sitk"]

#: Flips the first two world axes: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine_from_sitk(image: sitk.Image) -> np.ndarray:
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def sitk_to_volume(image: sitk.Image, path: str | os.PathLike | None = None) -> Volume:
    """A 3D SimpleITK image (LPS, array ``(z, y, x)``) as a :class:`~medseg_tf.io.Volume` (RAS affine, ``(x, y, z)``).

    Parameters
    ----------
    image : SimpleITK.Image
        3D, scalar or vector pixels (vector components become a last channel axis).
    path : str or PathLike, optional
        Recorded as the volume's source.

    Returns
    -------
    Volume
        ``data`` of shape ``(X, Y, Z)`` (or ``(X, Y, Z, C)``), ``affine`` 4x4 RAS (mm).
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    arr = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
    data = np.ascontiguousarray(arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(2, 1, 0, 3))
    return Volume(data=data, affine=_affine_from_sitk(image), path=None if path is None else Path(path))


def array_to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """The inverse of :func:`sitk_to_volume`: an ``(X, Y, Z)`` array and its RAS affine as a SimpleITK image.

    Parameters
    ----------
    data : np.ndarray
        Shape ``(X, Y, Z)``.
    affine : np.ndarray
        4x4 RAS voxel-to-world matrix in mm, without shear (ITK stores spacing and
        an orthonormal direction).
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) array, got shape {data.shape}")
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise ValueError("the affine has shear: ITK images need orthogonal voxel axes")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(d) for d in direction.ravel()])
    return image


# --------------------------------------------------------------------------- DICOM
def _slice_geometry(path: str) -> tuple[np.ndarray, np.ndarray]:
    """ImagePositionPatient and the slice normal of one DICOM file (LPS, mm)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    try:
        pos = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        ori = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
    except RuntimeError:
        raise DataError(path, "DICOM file without ImagePositionPatient/ImageOrientationPatient "
                              "(0020,0032)/(0020,0037): not part of a 3D series") from None
    return pos, np.cross(ori[:3], ori[3:])


def read_dicom_series(folder: str | os.PathLike, series_id: str | None = None) -> Volume:
    """Read one DICOM series (one 2D slice per file) as a RAS :class:`~medseg_tf.io.Volume`.

    Intensities are rescaled with each file's RescaleSlope / RescaleIntercept
    (so a CT comes out in Hounsfield units).

    Parameters
    ----------
    folder : str or PathLike
        Folder holding the ``.dcm`` files.
    series_id : str, optional
        SeriesInstanceUID to read when the folder holds several series.

    Returns
    -------
    Volume
        ``data`` ``(X, Y, Z)`` in the order of the DICOM rows/columns/slices,
        ``affine`` RAS (mm); reorient with :func:`medseg_tf.io.reorient_to_ras`.

    Raises
    ------
    DataError
        Naming the folder: no DICOM series, several series and no ``series_id``,
        fewer than 2 slices, or slices that are not evenly spaced (missing slices).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "is a file, not a DICOM folder" if folder.exists() else "DICOM folder not found")
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints its own warnings; we raise one line instead
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not ids:
        raise DataError(folder, "no DICOM series found (no readable .dcm files)")
    if series_id is None:
        if len(ids) > 1:
            raise DataError(folder, f"holds {len(ids)} DICOM series ({', '.join(ids)}); "
                                    "choose one with series_id (--series)")
        series_id = ids[0]
    elif series_id not in ids:
        raise DataError(folder, f"no series {series_id!r}; found {', '.join(ids)}")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))
    if len(files) < 2:
        raise DataError(folder, f"series {series_id} has {len(files)} slice(s); a 3D series needs at least 2")
    geometry = [_slice_geometry(f) for f in files]
    normal = geometry[0][1]
    where = np.array([float(np.dot(pos, normal)) for pos, _ in geometry])
    order = np.argsort(where)
    gaps = np.diff(where[order])
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise DataError(folder, f"series {series_id}: two slices share one position (duplicate files?)")
    bad = np.flatnonzero(np.abs(gaps - step) > 0.1 * step)
    if bad.size:
        k = int(bad[0])
        a, b = Path(files[order[k]]).name, Path(files[order[k + 1]]).name
        missing = int(round(gaps[k] / step)) - 1
        raise DataError(folder, f"series {series_id}: slices are {step:.3g} mm apart but {a} and {b} are "
                                f"{gaps[k]:.3g} mm apart ({missing} slice(s) missing?)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    return sitk_to_volume(image, folder)


def dicom_to_nifti(folder: str | os.PathLike, out: str | os.PathLike, *, series_id: str | None = None,
                   overwrite: bool = False) -> Path:
    """Convert a DICOM series to one NIfTI file with the right (RAS) affine.

    Parameters
    ----------
    folder : str or PathLike
        The series' folder (see :func:`read_dicom_series`).
    out : str or PathLike
        Output ``.nii.gz``.
    series_id : str, optional
        Which series, when the folder holds several.
    overwrite : bool
        Replace an existing output file.
    """
    volume = read_dicom_series(folder, series_id)
    return save_nifti(volume.data, out, affine=volume.affine, overwrite=overwrite)


def _uid(*parts: int) -> str:
    # a UID under a documentation root, deterministic so that written series are reproducible
    return "1.2.826.0.1.3680043.2.1125." + ".".join(str(int(p)) for p in parts)


def write_dicom_series(image: sitk.Image, folder: str | os.PathLike, *, modality: str = "CT",
                       series_number: int = 1, prefix: str = "slice", description: str = "medseg_tf",
                       overwrite: bool = False) -> list[Path]:
    """Write a 3D SimpleITK image as a DICOM series, one file per slice (``int16`` pixels).

    Follows SimpleITK's "DICOM series from array" example: each slice carries
    the series' UIDs, its ImagePositionPatient (LPS, mm, from the image's
    geometry), the ImageOrientationPatient (the first two direction columns)
    and its instance number. Used to make test and teaching series; real
    series come from a scanner.

    Parameters
    ----------
    image : SimpleITK.Image
        3D image, cast to int16 (CT in HU fits).
    folder : str or PathLike
        Output folder (created).
    modality : str
        DICOM Modality (0008,0060), e.g. ``"CT"``, ``"MR"``.
    series_number : int
        Makes the SeriesInstanceUID (two calls with different numbers give two series).
    prefix : str
        File names ``<prefix>_0000.dcm``...
    description : str
        SeriesDescription (0008,103e).
    overwrite : bool
        Replace files of the same names.

    Returns
    -------
    list of Path
        The files written, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.Cast(image, sitk.sitkInt16)
    direction = img.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (direction[0], direction[3], direction[6],
                                                 direction[1], direction[4], direction[7]))
    study_uid, series_uid = _uid(1, 1), _uid(1, 1, series_number)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    for k in range(img.GetDepth()):
        path = folder / f"{prefix}_{k:04d}.dcm"
        if path.exists() and not overwrite:
            raise OverwriteError(f"{path}: already exists; pass overwrite=True to replace it")
        sl = img[:, :, k]
        position = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0008|0008": "DERIVED\\SECONDARY",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": _uid(1, 1, series_number, k + 1),
            "0008|103e": description,
            "0010|0010": "PHANTOM^MEDSEG",
            "0010|0020": "medseg-phantom",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0011": str(series_number),
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10g}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{img.GetSpacing()[2]:.10g}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(path))
        writer.Execute(sl)
        written.append(path)
    return written


# --------------------------------------------------------------------------- N4
def n4_bias_correction(image: np.ndarray, mask: np.ndarray | None = None,
                       spacing: Sequence[float] = (1.0, 1.0, 1.0), *, shrink: int = 2,
                       iterations: Sequence[int] = (50, 50, 50), control_points: int = 4
                       ) -> tuple[np.ndarray, np.ndarray]:
    """N4 bias-field correction (``sitk.N4BiasFieldCorrectionImageFilter``) of one MRI volume.

    N4 models the image as ``true * field`` with a smooth (B-spline) ``field``
    and finds the field that makes the intensity histogram inside ``mask`` the
    sharpest. It runs on a copy shrunk by ``shrink`` (fast), then the field is
    evaluated at full resolution and divided out.

    Parameters
    ----------
    image : np.ndarray
        Positive intensities, shape ``(X, Y, Z)``.
    mask : np.ndarray, optional
        bool ``(X, Y, Z)``: where to estimate the field (e.g. the brain); default
        ``image > 0``.
    spacing : sequence of 3 floats
        Voxel size in mm (the B-spline grid is laid out in mm).
    shrink : int
        Shrink factor for the estimation (1 = none).
    iterations : sequence of int
        Maximum iterations at each fitting level (one level per entry).
    control_points : int
        B-spline control points per axis at the first level.

    Returns
    -------
    corrected : np.ndarray
        float32 ``(X, Y, Z)``: ``image / field`` (the field is evaluated everywhere, fitted inside ``mask``).
    field : np.ndarray
        float32 ``(X, Y, Z)``, the estimated multiplicative bias field.
    """
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {data.shape}")
    mask = data > 0 if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the N4 mask selects no voxel")
    affine = np.diag([*map(float, spacing), 1.0])
    img = array_to_sitk(data, affine)
    msk = array_to_sitk(mask.astype(np.uint8), affine)
    small_img, small_msk = img, msk
    if shrink > 1:
        small_img = sitk.Shrink(img, [int(shrink)] * 3)
        small_msk = sitk.Shrink(msk, [int(shrink)] * 3)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetNumberOfControlPoints([int(control_points)] * 3)
    corrector.Execute(small_img, small_msk)
    log_field = corrector.GetLogBiasFieldAsImage(img)
    field = np.exp(sitk.GetArrayFromImage(log_field).transpose(2, 1, 0)).astype(np.float32)
    return (data / field).astype(np.float32), field


# --------------------------------------------------------------------------- resampling
_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def resample_sitk(array: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float], *,
                  order: int = 1, shape: Sequence[int] | None = None) -> np.ndarray:
    """:func:`medseg_tf.preprocessing.resample_to_spacing` done by ITK's ``ResampleImageFilter``.

    Same output grid: ``round(n * spacing / target)`` voxels per axis whose
    extent equals the input's (the first and last voxel *edges* stay in place,
    like ``scipy.ndimage.zoom(grid_mode=True)``), so the output spacing is
    ``n * spacing / n_new`` (the target up to rounding) and the output origin
    moves by half a voxel of the difference.

    Parameters
    ----------
    array : np.ndarray
        ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
    spacing, target_spacing : sequence of 3 floats
        mm.
    order : {0, 1, 3}
        Nearest neighbour, linear, B-spline.
    shape : sequence of 3 ints, optional
        Exact output shape.

    Returns
    -------
    np.ndarray
        Same dtype for ``order=0``, float32 otherwise.
    """
    if order not in _INTERPOLATORS:
        raise ValueError(f"order must be 0, 1 or 3, got {order}")
    array = np.asarray(array)
    if array.ndim == 4:
        return np.stack([resample_sitk(array[..., c], spacing, target_spacing, order=order, shape=shape)
                         for c in range(array.shape[3])], axis=-1)
    n = np.array(array.shape[:3])
    s = np.asarray(spacing, dtype=np.float64)
    t = np.asarray(target_spacing, dtype=np.float64)
    new = np.array(shape if shape is not None else [max(1, int(round(a * b / c))) for a, b, c in zip(n, s, t)])
    if np.array_equal(new, n):
        return array if order == 0 else array.astype(np.float32, copy=False)
    out_spacing = n * s / new
    src = array if order == 0 else array.astype(np.float32)
    img = array_to_sitk(src, np.diag([*s, 1.0]))
    ref = sitk.Image([int(v) for v in new], img.GetPixelID())
    ref.SetSpacing([float(v) for v in out_spacing])
    ref.SetDirection(img.GetDirection())
    # first output centre: half an output voxel inside the first input voxel's edge (LPS origin of img)
    lps_origin = np.array(img.GetOrigin()) + np.array(img.GetDirection()).reshape(3, 3) @ (-s / 2 + out_spacing / 2)
    ref.SetOrigin([float(v) for v in lps_origin])
    out = sitk.Resample(img, ref, sitk.Transform(), _INTERPOLATORS[order], 0.0, img.GetPixelID())
    result = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return np.ascontiguousarray(result if order == 0 else result.astype(np.float32))
