"""Whole-volume prediction with any model, in NumPy: slices, sliding windows, Gaussian blending.

This module knows nothing of the network: every function takes a
``predict_batch`` callable that maps a float32 batch ``(N, *spatial, Cin)`` to
float32 class probabilities ``(N, *spatial, C)`` (like MONAI's
``sliding_window_inference(inputs, roi_size, sw_batch_size, predictor)``).
:mod:`medseg_tf.inference` passes a Keras model wrapped in such a callable,
:mod:`medseg_tf.onnx_predict` an ONNX Runtime session, so both give the same
labels from the same maths. NumPy, SciPy and nibabel only: no TensorFlow or
Keras import, directly or indirectly.

Conventions: channels-last, volumes ``(X, Y, Z)`` or ``(X, Y, Z, Cin)`` in RAS
voxel order after :func:`medseg_tf.io.reorient_to_ras`; a 2D model slides
along ``axis``. Inputs are padded (with ``pad_value``, by default the volume's
minimum, as the training pipeline pads its crops) to a multiple of
``divisor`` or to the patch, and the output cropped back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg_tf import io, preprocessing
from medseg_tf.errors import DataError
from medseg_tf.runspec import RunSpec, round_up

__all__ = [
    "gaussian_importance_map",
    "sliding_window_starts",
    "padded_target",
    "probabilities_from_logits",
    "predict_slices",
    "predict_windows",
    "predict_image",
    "prepare_image",
    "predict_ras_probabilities",
    "check_channels",
    "labels_from_probs",
]

PredictBatch = Callable[[np.ndarray], np.ndarray]


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Gaussian weights of a patch for blending overlapping sliding-window predictions.

    ``w(i) = prod_d exp(-(i_d - c_d)**2 / (2 sigma_d**2))`` with ``c_d = (p_d - 1) / 2`` the
    patch centre (so the map is symmetric under flips) and ``sigma_d = sigma_scale * p_d``.

    Parameters
    ----------
    patch_size : sequence of int
        Patch shape in voxels, e.g. (64, 64, 32).
    sigma_scale : float
        Standard deviation as a fraction of the patch size (nnU-Net: 1/8).

    Returns
    -------
    np.ndarray
        float32, shape ``patch_size``, maximum 1 at the centre, strictly positive
        (corner weights of a 3D patch are about ``exp(-24) ~ 4e-11``).
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = np.ones((), dtype=np.float64)
    for p in patch_size:
        if int(p) < 1:
            raise ValueError(f"patch sizes must be positive, got {tuple(patch_size)}")
        i = np.arange(int(p), dtype=np.float64)
        g = np.exp(-((i - (p - 1) / 2.0) ** 2) / (2.0 * (sigma_scale * p) ** 2))
        weights = np.multiply.outer(weights, g)
    weights /= weights.max()
    return weights.astype(np.float32)


def sliding_window_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Start indices of windows of length ``patch`` covering ``range(size)``.

    The number of windows is the smallest that keeps consecutive windows at
    most ``patch * (1 - overlap)`` apart; the windows are then spread evenly from
    0 to ``size - patch`` (nnU-Net's rule), so the first and last touch the ends.

    Parameters
    ----------
    size : int
        Length of the (padded) axis, ``>= patch``.
    patch : int
        Window length.
    overlap : float
        Fraction of the window shared with the next one, in [0, 1).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch ({patch}); pad it first")
    step = max(1.0, patch * (1.0 - overlap))
    n = int(math.ceil((size - patch) / step)) + 1
    if n == 1:
        return [0]
    actual = (size - patch) / (n - 1)
    return [int(round(actual * k)) for k in range(n)]


def padded_target(shape: Sequence[int], divisor: int, minimum: Sequence[int] | None = None) -> list[int]:
    """Each size rounded up to a multiple of ``divisor``, and at least ``minimum`` if given."""
    target = [round_up(n, divisor) for n in shape]
    if minimum is not None:
        target = [max(t, int(m)) for t, m in zip(target, minimum)]
    return target


def probabilities_from_logits(y: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (sigmoid for one channel), float32."""
    y = np.asarray(y, dtype=np.float32)
    if y.shape[-1] == 1:
        return (1.0 / (1.0 + np.exp(-y))).astype(np.float32)
    y = np.exp(y - y.max(axis=-1, keepdims=True))
    return (y / y.sum(axis=-1, keepdims=True)).astype(np.float32)


def _in_chunks(predict_batch: PredictBatch, x: np.ndarray, batch_size: int) -> np.ndarray:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outs = [np.asarray(predict_batch(x[s:s + batch_size]), dtype=np.float32)
            for s in range(0, x.shape[0], batch_size)]
    return np.concatenate(outs, axis=0)


def predict_slices(predict_batch: PredictBatch, image: np.ndarray, axis: int, *, batch_size: int = 16,
                   divisor: int = 16, fixed: Sequence[int] | None = None, pad_value: float = 0.0,
                   minimum: Sequence[int] | None = None) -> np.ndarray:
    """Probabilities of a volume from a 2D model, slice by slice along ``axis``, in chunks of ``batch_size``.

    Parameters
    ----------
    predict_batch : callable
        ``(N, H, W, Cin) -> (N, H, W, C)`` probabilities.
    image : np.ndarray
        float32 ``(X, Y, Z, Cin)``.
    axis : int
        Axis sliced along (0, 1 or 2).
    fixed : 2 ints, optional
        The model's fixed input size; slices are padded to it (error if larger).
    minimum : 2 ints, optional
        Pad slices to at least this size (then to a multiple of ``divisor``): the
        training patch, so that a slice smaller than the patch sits on the
        canvas the model learned on (training pads such slices up to the patch,
        centred) rather than on a smaller one.

    Returns
    -------
    np.ndarray
        float32 ``(X, Y, Z, C)``.
    """
    slices = np.moveaxis(image, axis, 0)                       # (N, H, W, Cin)
    target = padded_target(padded_target(slices.shape[1:3], 1, minimum), divisor)
    if fixed is not None:
        if any(t > f for t, f in zip(slices.shape[1:3], fixed)):
            raise ValueError(f"slices of shape {slices.shape[1:3]} are larger than the model's fixed "
                             f"input {tuple(fixed)}")
        target = [int(f) for f in fixed]
    padded, pads = preprocessing.pad_to_shape(slices, [slices.shape[0], *target], value=pad_value)
    probs = preprocessing.unpad(_in_chunks(predict_batch, padded, batch_size), pads)
    return np.moveaxis(probs, 0, axis)


def predict_windows(predict_batch: PredictBatch, image: np.ndarray, patch_size: Sequence[int] | None, *,
                    overlap: float = 0.5, batch_size: int = 2, divisor: int = 16,
                    pad_value: float = 0.0) -> np.ndarray:
    """Probabilities of a volume from a 3D model: whole padded volume, or Gaussian-blended sliding windows.

    Parameters
    ----------
    predict_batch : callable
        ``(N, px, py, pz, Cin) -> (N, px, py, pz, C)`` probabilities.
    image : np.ndarray
        float32 ``(X, Y, Z, Cin)``.
    patch_size : 3 ints or None
        Window in voxels (each divisible by ``divisor``); None: the whole volume
        padded to a multiple of ``divisor`` in one call.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).

    Returns
    -------
    np.ndarray
        float32 ``(X, Y, Z, C)``.
    """
    if patch_size is None:
        padded, pads = preprocessing.pad_to_shape(image, padded_target(image.shape[:3], divisor), value=pad_value)
        return preprocessing.unpad(_in_chunks(predict_batch, padded[None], 1)[0], pads)
    patch = [int(p) for p in patch_size]
    if len(patch) != 3:
        raise ValueError(f"patch_size must have 3 entries for a 3D model, got {tuple(patch_size)}")
    if any(p % divisor for p in patch):
        raise ValueError(f"patch_size {tuple(patch)} must be divisible by divisor={divisor}")
    padded, pads = preprocessing.pad_to_shape(image, patch, value=pad_value)
    starts = [sliding_window_starts(n, p, overlap) for n, p in zip(padded.shape[:3], patch)]
    corners = list(itertools.product(*starts))
    weights = gaussian_importance_map(patch)[..., None]
    acc = None
    norm = np.zeros(padded.shape[:3] + (1,), dtype=np.float32)
    for first in range(0, len(corners), batch_size):
        boxes = [tuple(slice(c, c + p) for c, p in zip(corner, patch)) for corner in corners[first:first + batch_size]]
        probs = _in_chunks(predict_batch, np.stack([padded[box] for box in boxes]), batch_size)
        if acc is None:
            acc = np.zeros(padded.shape[:3] + (probs.shape[-1],), dtype=np.float32)
        for box, p in zip(boxes, probs):
            acc[box] += p * weights
            norm[box] += weights
    return preprocessing.unpad(acc / norm, pads)


def predict_image(predict_batch: PredictBatch, image: np.ndarray, config: RunSpec | Mapping, *,
                  batch_size: int = 16, fixed: Sequence[int] | None = None) -> np.ndarray:
    """Probabilities of a normalised RAS volume, predicted as the run spec ``config`` says.

    Uses the spec's ``dims``, ``slice_axis``, ``context_slices`` (2.5D: neighbouring slices stacked
    as channels), ``patch_size`` (2D: slices are padded to at least the patch, the canvas of training;
    3D: the sliding window; a model with a ``fixed`` input size uses that size), ``overlap`` and its
    ``divisor`` (``2**depth``). The padding value is the volume's minimum.

    Returns
    -------
    np.ndarray
        float32 ``(X, Y, Z, C)``.
    """
    spec = RunSpec.coerce(config)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., None]
    fill = float(image.min())
    if spec.dims == 2:
        if spec.context_slices:
            image = preprocessing.stack_neighbour_slices(image, spec.slice_axis, spec.context_slices)
        return predict_slices(predict_batch, image, spec.slice_axis, batch_size=batch_size, divisor=spec.divisor,
                              fixed=fixed, pad_value=fill, minimum=spec.patch_size)
    return predict_windows(predict_batch, image, tuple(fixed) if fixed else spec.patch_size,
                           overlap=spec.overlap, batch_size=batch_size, divisor=spec.divisor, pad_value=fill)


def prepare_image(vol: io.Volume, config: RunSpec | Mapping) -> tuple[np.ndarray, tuple[float, ...]]:
    """The model's input for a loaded image: RAS voxel order, normalised and resampled as in training.

    Raises :class:`~medseg_tf.errors.DataError` naming the file for a 2D/5D image or NaN/Inf voxels.

    Returns
    -------
    image : np.ndarray
        float32 ``(X, Y, Z)`` or ``(X, Y, Z, C)`` in RAS order.
    spacing : tuple of float
        The RAS spacing in mm before any resampling.
    """
    spec = RunSpec.coerce(config)
    if np.ndim(vol.data) not in (3, 4):  # before reorienting, which needs three spatial axes
        raise DataError(vol.path, f"expected a 3D image (or 4D with channels last), got shape {np.shape(vol.data)}")
    ras = io.reorient_to_ras(vol)
    data = np.asarray(ras.data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise DataError(vol.path, f"holds {bad} NaN or infinite voxel value(s); fix or mask them before predicting")
    if data.ndim == 3:
        image = preprocessing.normalize(data, spec.normalization)
    else:
        image = np.stack([preprocessing.normalize(data[..., c], spec.normalization)
                          for c in range(data.shape[-1])], axis=-1)
    if spec.target_spacing is not None:
        image = preprocessing.resample_to_spacing(image, ras.spacing, spec.target_spacing, order=1)
    return image, tuple(ras.spacing)


def check_channels(model, image: np.ndarray, spec: RunSpec, path, model_path=None) -> None:
    """DataError naming ``path`` when the image's channel count is not the one the model takes.

    ``model`` is anything with an ``input_shape`` ``(batch, *spatial, channels)`` (a Keras model or an
    :class:`~medseg_tf.onnx_predict.OnnxModel`); a 2.5D model takes ``slices_per_sample`` channels per
    image channel. ``model_path``, when given (an exported file), is named in the message too.
    """
    expected = getattr(model, "input_shape", None)
    expected = expected[-1] if isinstance(expected, tuple) and expected else None
    if expected is None:
        return
    image_channels = image.shape[-1] if image.ndim == 4 else 1
    if image_channels * spec.slices_per_sample != expected:
        got = f"{image_channels} channels" if image.ndim == 4 else "1 channel"
        takes = expected // spec.slices_per_sample
        if model_path is not None:
            raise DataError(path, f"has {got} (shape {image.shape}), which does not fit the model "
                                  f"{Path(model_path).name}: it takes {takes}")
        raise DataError(path, f"has {got} (shape {image.shape}) but the model takes {takes}")


def predict_ras_probabilities(predict_batch: PredictBatch, vol: io.Volume, config: RunSpec | Mapping, *,
                               batch_size: int = 16, fixed: Sequence[int] | None = None, model=None,
                               model_path=None) -> np.ndarray:
    """Class probabilities of a loaded image on its own grid, in RAS voxel order (any model runtime).

    :func:`prepare_image`, :func:`predict_image`, and, when the spec has a ``target_spacing``, linear
    resampling of the probabilities back to the image's RAS grid. ``predict_batch`` is any callable
    that maps a float32 batch ``(N, *spatial, Cin)`` to probabilities ``(N, *spatial, C)`` (Keras,
    ONNX Runtime, LiteRT, SavedModel). With ``model`` (anything with an ``input_shape``), the image's
    channels are checked against it first (:func:`check_channels`, naming ``model_path`` if given).

    Returns
    -------
    np.ndarray
        float32 ``(X, Y, Z, C)``: ``io.reorient_to_ras(vol)``'s shape with the classes last; undo the
        RAS order of a label map made from it with :func:`medseg_tf.io.reorient_from_ras`.
    """
    spec = RunSpec.coerce(config)
    image, spacing = prepare_image(vol, spec)
    if model is not None:
        check_channels(model, image, spec, vol.path, model_path=model_path)
    probs = predict_image(predict_batch, image, spec, batch_size=batch_size, fixed=fixed)
    if spec.target_spacing is not None:
        probs = preprocessing.resample_to_spacing(probs, spec.target_spacing, spacing, order=1,
                                                  shape=io.reorient_to_ras(vol).data.shape[:3])
    return probs


def labels_from_probs(probs: np.ndarray) -> np.ndarray:
    """uint8 labels: argmax over classes (threshold 0.5 for one sigmoid channel)."""
    if probs.shape[-1] == 1:
        return (probs[..., 0] > 0.5).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)
