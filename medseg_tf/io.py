"""NIfTI input/output on nibabel (no TensorFlow import).

A NIfTI file holds a voxel array and a 4x4 *affine* matrix that maps voxel
indices ``(i, j, k, 1)`` to world coordinates in millimetres. NIfTI world space
is RAS+: x increases towards the patient's Right, y towards Anterior, z towards
Superior.
The voxel axes themselves may be stored in any order and direction; the
*orientation* codes (e.g. ``('L', 'P', 'S')``) say where each voxel axis points.

:func:`reorient_to_ras` permutes/flips the voxel axes so they point R, A, S
(no interpolation, exact), and :func:`reorient_from_ras` undoes it, so a
prediction made on the RAS array can be written back on the source image's
grid with the source image's affine and header (:func:`save_nifti`).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg_tf.errors import DataError, OverwriteError

__all__ = [
    "Volume",
    "load_nifti",
    "save_nifti",
    "reorient_to_ras",
    "reorient_from_ras",
    "spacing_from_affine",
]


def spacing_from_affine(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel spacing in mm along each voxel axis: the column norms of ``affine[:3, :3]``.

    >>> spacing_from_affine(np.diag([0.5, 1.0, 2.0, 1.0]))
    (0.5, 1.0, 2.0)
    """
    return tuple(float(s) for s in nib.affines.voxel_sizes(np.asarray(affine, dtype=float)))


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_id(path: str | os.PathLike) -> str:
    """The case name of a NIfTI file: its file name without ``.nii.gz`` / ``.nii``.

    >>> case_id("imagesTr/hippocampus_004.nii.gz"), case_id("a/b.nii")
    ('hippocampus_004', 'b')
    """
    name = Path(path).name
    for ext in NIFTI_SUFFIXES:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def nifti_files(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI files (``.nii.gz``, ``.nii``) of a folder, sorted by name, hidden files (macOS ``._x``) skipped."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES))


@dataclass
class Volume:
    """A 3D image or label map with its geometry.

    Attributes
    ----------
    data : np.ndarray
        Voxel array, shape ``(X, Y, Z)`` (or ``(X, Y, Z, C)`` for multi-channel images).
    affine : np.ndarray
        4x4 voxel-to-world (mm, RAS+) matrix.
    header : nibabel.Nifti1Header or None
        The source header (kept so written predictions match the source image).
    path : pathlib.Path or None
        The file the volume was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape in voxels."""
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each of the three voxel axes, in mm."""
        return spacing_from_affine(self.affine)

    @property
    def orientation(self) -> tuple[str, ...]:
        """Axis codes, e.g. ``('R', 'A', 'S')``: where each voxel axis points in world space."""
        return tuple(nib.aff2axcodes(self.affine))


def load_nifti(path: str | os.PathLike, *, dtype: Any = None) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file.

    Parameters
    ----------
    path : str or PathLike
        The file.
    dtype : numpy dtype, optional
        Cast the voxel array to this type (default: the stored type after scaling).

    Returns
    -------
    Volume
        ``data`` has the stored shape (3D or 4D), ``affine`` is the best affine
        nibabel finds (sform, else qform).

    Raises
    ------
    DataError
        If the file is missing, not a NIfTI file, truncated or corrupt, or its
        affine is singular.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a file")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError) as exc:
        raise DataError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc}); "
                              "the file is corrupt, truncated or not a NIfTI file") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "the affine is singular or not finite; the file's geometry is broken")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return Volume(data=data, affine=affine, header=img.header.copy(), path=path)


def save_nifti(data: np.ndarray, path: str | os.PathLike, *, affine: np.ndarray | None = None,
               reference: Volume | None = None, overwrite: bool = False) -> Path:
    """Write ``data`` as NIfTI.

    Parameters
    ----------
    data : np.ndarray
        Voxel array, shape ``(X, Y, Z)`` on the grid of ``reference`` (or of ``affine``).
    path : str or PathLike
        Output file (``.nii.gz`` compresses).
    affine : np.ndarray, optional
        4x4 affine; defaults to the reference's.
    reference : Volume, optional
        Source image: its affine and header are reused, so the output overlays
        the source in any viewer. Its shape must match ``data``'s spatial shape.
    overwrite : bool
        Replace an existing file (default: refuse with :class:`OverwriteError`).
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise DataError(path, "a NIfTI file name must end in .nii or .nii.gz")
    if path.is_dir():
        raise DataError(path, "is a folder; give a NIfTI file path (.nii or .nii.gz)")
    if path.exists() and not overwrite:
        raise OverwriteError(f"{path}: already exists; pass --overwrite to replace it")
    data = np.asarray(data)
    header = None
    if reference is not None:
        if tuple(data.shape[:3]) != tuple(reference.shape[:3]):
            raise DataError(path, f"data shape {data.shape} does not match the reference image "
                                  f"{reference.path} of shape {reference.shape}")
        affine = reference.affine if affine is None else affine
        if reference.header is not None:
            header = reference.header.copy()
    if affine is None:
        raise ValueError("save_nifti needs an affine or a reference volume")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(data.dtype)
    # labels and images written by us carry no intensity scaling
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + ("".join(path.suffixes) or ".nii"))
    nib.save(img, str(tmp))
    os.replace(tmp, path)
    return path


def _ras_transform(affine: np.ndarray) -> np.ndarray:
    return nib.orientations.ornt_transform(nib.io_orientation(affine),
                                           nib.orientations.axcodes2ornt(("R", "A", "S")))


def reorient_to_ras(volume: Volume) -> Volume:
    """Permute and flip the voxel axes so they point Right, Anterior, Superior.

    Exact (no interpolation). The returned affine describes the same world
    positions, so the image still overlays its source. Undo with
    :func:`reorient_from_ras`.
    """
    ornt = _ras_transform(volume.affine)
    data = nib.orientations.apply_orientation(volume.data, ornt)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.data.shape[:3])
    return Volume(data=np.ascontiguousarray(data), affine=affine, header=volume.header,
                  path=volume.path, meta=dict(volume.meta))


def reorient_from_ras(data: np.ndarray, original: Volume) -> np.ndarray:
    """Map an array on the RAS grid of ``original`` back to ``original``'s voxel order.

    Parameters
    ----------
    data : np.ndarray
        Shape ``(X, Y, Z[, C])`` as returned by ``reorient_to_ras(original).data``.
    original : Volume
        The volume as read from disk.
    """
    inverse = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                              nib.io_orientation(original.affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, inverse))
