"""Intensity and geometry preprocessing (NumPy / SciPy only, no TensorFlow).

* MRI intensities have no physical unit and vary per scanner and case, so
  each volume is normalised on its own (:func:`zscore`, optionally inside a
  mask, after :func:`clip_percentiles`).
* CT intensities are in Hounsfield units (HU) and are *windowed*
  (:func:`ct_window`, named presets :data:`CT_WINDOWS`) for display, or for a
  network clipped and z-scored with statistics of the whole training set, as
  nnU-Net does (:func:`ct_intensity_stats`, :func:`ct_normalize`);
  :func:`check_hounsfield` refuses a "CT" that is not in HU.
* Voxel spacing differs between cases; :func:`resample_to_spacing` brings a
  volume to a target spacing in mm with ``scipy.ndimage.zoom`` (images:
  linear or cubic; label maps: nearest neighbour, so label values are kept, or
  :func:`resample_label_onehot`, which also keeps volumes closer).
* A U-Net of depth ``d`` halves each spatial size ``d`` times, so inputs are
  padded to a multiple of ``2**d`` (:func:`pad_to_multiple`) and the output
  cropped back (:func:`unpad`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from medseg_tf.runspec import check_context_slices, round_up

from medseg_tf.errors import ConfigError, DataError

__all__ = ["zscore", "clip_percentiles", "ct_window", "resample_to_spacing", "resample_image",
           "resample_label", "resample_label_onehot", "pad_to_multiple", "pad_to_shape", "unpad", "crop_to_foreground",
           "foreground_bbox", "normalize", "neighbour_slice_indices", "stack_neighbour_slices",
           "CT_WINDOWS", "ct_window_preset", "check_hounsfield", "ct_intensity_stats", "ct_normalize"]


def zscore(image: np.ndarray, mask: np.ndarray | None = None, *, eps: float = 1e-8) -> np.ndarray:
    """Per-volume z-score: ``(image - mean) / std``.

    Parameters
    ----------
    image : np.ndarray
        Any shape, e.g. ``(X, Y, Z)``.
    mask : np.ndarray of bool, optional
        Same shape; statistics are computed inside it only (e.g. ``image > 0``
        to ignore the air around a skull-stripped brain). Voxels outside the
        mask are normalised with the same statistics.
    eps : float
        Added to the standard deviation, so a constant image gives zeros.

    Returns
    -------
    np.ndarray
        float32, same shape, mean 0 and standard deviation 1 (inside the mask).
    """
    image = np.asarray(image, dtype=np.float32)
    values = image if mask is None else image[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        raise ValueError("zscore: the mask selects no voxel")
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    return ((image - mean) / (std + eps)).astype(np.float32)


def clip_percentiles(image: np.ndarray, lower: float = 0.5, upper: float = 99.5,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Clip intensities to the ``[lower, upper]`` percentiles (in %) of the volume (or of ``mask``)."""
    image = np.asarray(image, dtype=np.float32)
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
    values = image if mask is None else image[np.asarray(mask, dtype=bool)]
    lo, hi = np.percentile(values, [lower, upper])
    return np.clip(image, lo, hi)


def ct_window(image: np.ndarray, center: float, width: float) -> np.ndarray:
    """CT windowing: map HU in ``[center - width/2, center + width/2]`` to ``[0, 1]``, clipping outside.

    Common windows (HU): soft tissue 40/400, lung -600/1500, bone 400/1800, liver 60/160.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = center - width / 2.0
    return np.clip((np.asarray(image, dtype=np.float32) - lo) / width, 0.0, 1.0)


#: Display / input windows for CT, name -> (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def ct_window_preset(image: np.ndarray, name: str) -> np.ndarray:
    """:func:`ct_window` with a named (level, width) from :data:`CT_WINDOWS`, output in [0, 1]."""
    if name not in CT_WINDOWS:
        raise ConfigError("window", f"must be one of {', '.join(CT_WINDOWS)}, got {name!r}")
    level, width = CT_WINDOWS[name]
    return ct_window(image, level, width)


def check_hounsfield(image: np.ndarray, path=None) -> None:
    """Raise :class:`DataError` unless ``image`` looks like a CT in Hounsfield units.

    A CT in HU has air at about -1000 (outside the body, in the lungs and the
    bowel) and soft tissue near 0-60. An image with no value below -500 HU has
    no air: it was most likely rescaled (e.g. to 0-255 for display, or 0-4095
    without the DICOM rescale intercept), and HU windows and CT normalisation
    would be meaningless on it.

    Parameters
    ----------
    image : np.ndarray
        The volume, any shape.
    path : str or PathLike, optional
        The file it came from, named in the error.
    """
    data = np.asarray(image)
    lo, hi = float(np.min(data)), float(np.max(data))
    if lo > -500:
        hint = " (it looks rescaled to 0-255)" if lo >= 0 and hi <= 255 else \
            " (stored values without the DICOM rescale slope/intercept?)" if lo >= 0 else ""
        raise DataError(path, f"not a CT in Hounsfield units: values {lo:g} to {hi:g} contain no air "
                              f"(about -1000 HU){hint}")


def ct_intensity_stats(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                       samples_per_case: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Foreground HU statistics over a whole training set, as nnU-Net's CT normalisation collects them.

    For CT the same HU means the same tissue in every case, so nnU-Net does not
    normalise each volume on its own (as for MRI): it samples foreground voxels
    (label > 0) of every training case, takes their 0.5 and 99.5 percentiles,
    mean and standard deviation once, and applies the same clip + z-score to
    every image (:func:`ct_normalize`).

    Parameters
    ----------
    images, labels : sequences of np.ndarray
        Training volumes in HU and their label maps (same shapes, pairwise).
    samples_per_case : int
        Foreground voxels drawn per case (all when fewer), as nnU-Net's 10,000.
    seed : int
        Seeds the sampling.

    Returns
    -------
    dict
        ``p00_5``, ``p99_5``, ``mean``, ``std`` (HU), ``n`` (voxels used).
    """
    rng = np.random.default_rng(seed)
    values = []
    for image, label in zip(images, labels, strict=True):
        fg = np.asarray(image)[np.asarray(label) > 0]
        if fg.size > samples_per_case:
            fg = rng.choice(fg, samples_per_case, replace=False)
        values.append(fg.astype(np.float64))
    v = np.concatenate(values) if values else np.array([])
    if v.size == 0:
        raise ValueError("ct_intensity_stats: no foreground voxel in the training labels")
    lo, hi = np.percentile(v, [0.5, 99.5])
    return {"p00_5": float(lo), "p99_5": float(hi), "mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def ct_normalize(image: np.ndarray, stats: dict[str, float]) -> np.ndarray:
    """nnU-Net's CT normalisation: clip to the data set's foreground [0.5, 99.5] percentiles, then z-score.

    ``stats`` comes from :func:`ct_intensity_stats` on the training set, and the
    same numbers are used for every image (training, validation, test).
    """
    clipped = np.clip(np.asarray(image, dtype=np.float32), stats["p00_5"], stats["p99_5"])
    return ((clipped - stats["mean"]) / max(stats["std"], 1e-8)).astype(np.float32)


def normalize(image: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Normalise a volume by name: ``"zscore"`` (percentile-clipped 0.5-99.5 %, then z-score) or ``"none"``."""
    if method == "zscore":
        return zscore(clip_percentiles(image))
    if method == "none":
        return np.asarray(image, dtype=np.float32)
    raise ValueError(f"unknown normalisation {method!r}: expected 'zscore' or 'none'")


def _zoom_factors(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]):
    if len(spacing) != len(target_spacing):
        raise ValueError(f"spacing {tuple(spacing)} and target {tuple(target_spacing)} differ in length")
    if any(s <= 0 for s in (*spacing, *target_spacing)):
        raise ValueError("spacings must be positive (mm)")
    new_shape = [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing)]
    return new_shape


def resample_to_spacing(array: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float], *,
                        order: int, shape: Sequence[int] | None = None) -> np.ndarray:
    """Resample a 3D array from ``spacing`` to ``target_spacing`` (mm per voxel).

    Parameters
    ----------
    array : np.ndarray
        Shape ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (channels resampled alike).
    spacing, target_spacing : sequence of 3 floats
        Voxel size in mm before and after.
    order : int
        Spline order: 0 nearest (label maps), 1 linear, 3 cubic (images).
    shape : sequence of 3 ints, optional
        Exact output shape (e.g. to go back to an original grid); default
        ``round(X * spacing / target_spacing)`` per axis.

    Returns
    -------
    np.ndarray
        Same dtype for ``order=0``, float32 otherwise. The field of view is kept
        (``grid_mode=True``): the outer voxel *edges* coincide, so the first output
        voxel centre lies ``(target_spacing - spacing) / 2`` mm from the first input
        centre along each axis (shift the affine's origin by that much).
    """
    array = np.asarray(array)
    spatial = array.shape[:3]
    new_shape = list(shape) if shape is not None else _zoom_factors(spatial, spacing, target_spacing)
    if tuple(new_shape) == tuple(spatial):
        return array if order == 0 else array.astype(np.float32, copy=False)
    zoom = [n / o for n, o in zip(new_shape, spatial)] + [1.0] * (array.ndim - 3)
    src = array if order == 0 else array.astype(np.float32, copy=False)
    out = ndimage.zoom(src, zoom, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    return out


def resample_image(image: np.ndarray, spacing, target_spacing, *, order: int = 1) -> np.ndarray:
    """Resample an intensity image (linear by default, ``order=3`` for cubic)."""
    return resample_to_spacing(image, spacing, target_spacing, order=order)


def resample_label(label: np.ndarray, spacing, target_spacing) -> np.ndarray:
    """Resample a label map with nearest neighbour, so the set of label values cannot grow."""
    return resample_to_spacing(label, spacing, target_spacing, order=0)


def resample_label_onehot(label: np.ndarray, spacing, target_spacing, *,
                          shape: Sequence[int] | None = None) -> np.ndarray:
    """Resample a label map by interpolating each class's one-hot map linearly, then taking the argmax.

    Nearest neighbour (:func:`resample_label`) keeps label values but picks one
    source voxel per target voxel, so thin parts and boundaries can gain or lose
    whole rows of voxels. Interpolating the indicator of every class and
    keeping the most likely class per voxel decides each boundary voxel by the
    share of the source voxels it overlaps, which keeps volumes in mm³ closer
    (as nnU-Net does for label maps, there with order 1 per class as well).

    Parameters
    ----------
    label : np.ndarray
        Integer label map ``(X, Y, Z)``.
    spacing, target_spacing : sequence of 3 floats
        Voxel size in mm before and after.
    shape : sequence of 3 ints, optional
        Exact output shape, as in :func:`resample_to_spacing`.

    Returns
    -------
    np.ndarray
        Same dtype as ``label``; values are a subset of the input's values (on a
        tie the smaller label wins). Memory: two float32 volumes of the output
        size, whatever the number of classes.
    """
    label = np.asarray(label)
    if label.ndim != 3 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"resample_label_onehot needs a 3D integer label map, got {label.dtype} "
                         f"array of shape {label.shape}")
    out = best = None
    for value in np.unique(label):
        prob = resample_to_spacing((label == value).astype(np.float32), spacing, target_spacing,
                                   order=1, shape=shape)
        if out is None:
            out, best = np.full(prob.shape, value, dtype=label.dtype), prob
        else:
            wins = prob > best
            out[wins] = value
            np.maximum(best, prob, out=best)
    return out


def pad_to_shape(array: np.ndarray, shape: Sequence[int], *, mode: str = "constant",
                 value: float = 0.0) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Pad the leading ``len(shape)`` axes symmetrically up to at least ``shape``.

    Returns the padded array and the pad widths (one ``(before, after)`` per
    axis of ``array``) for :func:`unpad`.
    """
    pads = []
    for n, target in zip(array.shape, shape):
        extra = max(0, int(target) - n)
        pads.append((extra // 2, extra - extra // 2))
    pads += [(0, 0)] * (array.ndim - len(pads))
    kwargs = {"constant_values": value} if mode == "constant" else {}
    return np.pad(array, pads, mode=mode, **kwargs), tuple(pads)


def pad_to_multiple(array: np.ndarray, multiple: int | Sequence[int], *, n_spatial: int = 3,
                    mode: str = "constant", value: float = 0.0) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Pad the first ``n_spatial`` axes so each size is divisible by ``multiple`` (e.g. ``2**depth``).

    Returns
    -------
    padded : np.ndarray
    pads : tuple of (before, after)
        Pass to :func:`unpad` to get the original extent back.
    """
    mult = [multiple] * n_spatial if np.isscalar(multiple) else list(multiple)
    target = [round_up(n, m) for n, m in zip(array.shape[:n_spatial], mult)]
    return pad_to_shape(array, target, mode=mode, value=value)


def unpad(array: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Undo :func:`pad_to_multiple` / :func:`pad_to_shape` (extra trailing axes are kept)."""
    index = tuple(slice(b, array.shape[i] - a) for i, (b, a) in enumerate(pads))
    return array[index]


def foreground_bbox(label: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Bounding box of ``label > 0`` grown by ``margin`` voxels, clipped to the array.

    Returns a tuple of slices (the whole array when there is no foreground).
    """
    fg = np.asarray(label) > 0
    margins = [margin] * fg.ndim if np.isscalar(margin) else list(margin)
    if not fg.any():
        return tuple(slice(0, n) for n in fg.shape)
    box = []
    for axis in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        box.append(slice(int(max(0, idx[0] - margins[axis])), int(min(fg.shape[axis], idx[-1] + 1 + margins[axis]))))
    return tuple(box)


def crop_to_foreground(image: np.ndarray, label: np.ndarray, margin: int | Sequence[int] = 8
                       ) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Crop image and label to the foreground bounding box plus ``margin`` voxels.

    Returns ``(image_crop, label_crop, box)``; ``image[box]`` is the crop.
    """
    if np.asarray(image).shape[:3] != np.asarray(label).shape[:3]:
        raise ValueError(f"image shape {np.shape(image)} and label shape {np.shape(label)} differ")
    box = foreground_bbox(label, margin)
    return image[box], label[box], box


def neighbour_slice_indices(index: int, n: int, context_slices: int) -> np.ndarray:
    """Indices ``index - context_slices .. index + context_slices`` clamped to ``0 .. n - 1``.

    The slices a "2.5D" model sees for slice ``index`` of a stack of ``n``: at the
    first and last slices the edge slice is repeated (no zero slices, which
    would look like an image border the model never sees elsewhere).

    >>> neighbour_slice_indices(0, 5, 1).tolist(), neighbour_slice_indices(2, 5, 2).tolist()
    ([0, 0, 1], [0, 1, 2, 3, 4])
    """
    context_slices = check_context_slices(context_slices)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.clip(np.arange(index - context_slices, index + context_slices + 1), 0, n - 1)


def stack_neighbour_slices(image: np.ndarray, axis: int, context_slices: int) -> np.ndarray:
    """Give every voxel the values of its ``context_slices`` neighbouring slices as channels ("2.5D" input).

    Parameters
    ----------
    image : np.ndarray
        Volume ``(X, Y, Z)`` or ``(X, Y, Z, 1)``.
    axis : int
        The slicing axis of the 2D model (0, 1 or 2).
    context_slices : int
        Neighbours on each side (``0``: the slice alone).

    Returns
    -------
    np.ndarray
        ``(X, Y, Z, 2 * context_slices + 1)``, same dtype: channel ``c`` of slice ``i``
        is slice ``clip(i + c - context_slices)`` (see :func:`neighbour_slice_indices`),
        so the middle channel is the image itself.
    """
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 3:
        raise ValueError(f"image must be (X, Y, Z) or (X, Y, Z, 1), got shape {image.shape}")
    context_slices = check_context_slices(context_slices)
    axis = int(axis) % 3
    n = image.shape[axis]
    channels = [np.take(image, np.clip(np.arange(n) + offset, 0, n - 1), axis=axis)
                for offset in range(-context_slices, context_slices + 1)]
    return np.stack(channels, axis=-1)
