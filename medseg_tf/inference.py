"""Whole-volume inference: from a trained Keras model to label maps on disk.

A model trained on 2D slices or 3D patches must still label every voxel of
a volume of any size:

* **2D models** run slice by slice along one axis. All slices of a volume go
  through the network in a few batched calls (chunks of ``batch_size``):
  Keras has a large fixed cost per call, so one call per slice would be
  several times slower.
* **3D models** run on the whole (padded) volume when it fits, or by a
  *sliding window*: overlapping patches (default overlap 0.5) whose
  predictions are blended with a Gaussian importance map (sigma = 1/8 of the
  patch size, as in nnU-Net), because a convolutional net is least reliable at
  the border of its input, where it sees zero padding instead of context.
* Optional **test-time augmentation** (TTA): predict the volume mirrored along
  the spatial axes, mirror the predictions back and average the
  probabilities.

Inputs are padded (with the volume's minimum, as the training pipeline pads its
crops) to a multiple of ``divisor`` (``2**depth`` of a
U-Net) or to the patch size, and outputs cropped back, so the returned
probabilities always have the input's shape.

:func:`predict_case` and :func:`predict_folder` add the file handling: read
NIfTI, reorient to RAS, normalise (and optionally resample) exactly as in
training, predict, take the argmax, optionally keep the largest connected
component per class, and map the labels back to the source image's voxel grid
and orientation, so the written file overlays the source image.

The run spec (``config.json`` of a run folder, a :class:`~medseg_tf.runspec.RunSpec` or a dict)
---------------------------------------------------------------------------------------------------
Prediction reads the same spec as training (:mod:`medseg_tf.runspec`), so it normalises, resamples,
pads and mirrors exactly as the model was trained: ``dims``, ``slice_axis``, ``context_slices``,
``normalization``, ``target_spacing`` (probabilities are resampled back to the native grid linearly
before the argmax), ``patch_size`` (the 3D sliding window), ``overlap``, ``from_logits`` and the
derived ``divisor`` (``2**depth``) and ``mirror_axes`` (the TTA axes). A dict is completed with the
spec's defaults; older run folders (``depth`` or ``divisor`` at the top level) still load.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
from scipy import special

from medseg_tf import io, preprocessing
from medseg_tf.errors import ConfigError, DataError
from medseg_tf.datasets import prediction_plan
from medseg_tf.runspec import RunSpec, check_context_slices, slices_per_sample
from medseg_tf.postprocessing import keep_largest_component
from medseg_tf.sliding import gaussian_importance_map, predict_slices, predict_windows, sliding_window_starts

__all__ = [
    "gaussian_importance_map",
    "sliding_window_starts",
    "predict_volume",
    "predict_case",
    "predict_ensemble",
    "predict_probabilities",
    "tta_axes_from_config",
    "predict_folder",
    "load_run",
]


# --------------------------------------------------------------------------- helpers
# gaussian_importance_map and sliding_window_starts live in medseg_tf.sliding (NumPy only, shared
# with medseg_tf.onnx_predict) and are re-exported here.


def _predict_batches(model, x: np.ndarray, batch_size: int, from_logits: bool) -> np.ndarray:
    """Run ``model`` on ``x`` (N, ...) in chunks of ``batch_size``; float32 probabilities."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predict = getattr(model, "predict_on_batch", None) or (lambda b: model(b, training=False))
    outs = []
    for start in range(0, x.shape[0], batch_size):
        y = predict(x[start:start + batch_size])
        if isinstance(y, (list, tuple)):        # deep supervision: full resolution first
            y = y[0]
        y = np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)
        outs.append(y)
    y = np.concatenate(outs, axis=0)
    if from_logits:
        y = special.expit(y) if y.shape[-1] == 1 else special.softmax(y, axis=-1)
    return y.astype(np.float32, copy=False)


def _model_spatial_shape(model, n_spatial: int) -> tuple[int, ...] | None:
    """Fixed spatial input shape of a Keras model, or None if any size is free."""
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or len(shape) != n_spatial + 2:
        return None
    spatial = shape[1:-1]
    return None if any(s is None for s in spatial) else tuple(int(s) for s in spatial)


def _predict_2d(model, image: np.ndarray, axis: int, batch_size: int, divisor: int,
                from_logits: bool, pad_value: float = 0.0, minimum: Sequence[int] | None = None) -> np.ndarray:
    return predict_slices(lambda b: _predict_batches(model, b, batch_size, from_logits), image, axis,
                          batch_size=batch_size, divisor=divisor, fixed=_model_spatial_shape(model, 2),
                          pad_value=pad_value, minimum=minimum)


def _predict_3d(model, image: np.ndarray, patch_size: Sequence[int] | None, overlap: float,
                batch_size: int, divisor: int, from_logits: bool, pad_value: float = 0.0) -> np.ndarray:
    return predict_windows(lambda b: _predict_batches(model, b, batch_size, from_logits), image,
                           patch_size if patch_size is not None else _model_spatial_shape(model, 3),
                           overlap=overlap, batch_size=batch_size, divisor=divisor, pad_value=pad_value)


def _flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


# --------------------------------------------------------------------------- volumes
def predict_volume(model, image: np.ndarray, *, dims: int, axis: int = 2,
                   patch_size: Sequence[int] | None = None, overlap: float = 0.5,
                   batch_size: int = 16, tta: bool = False, divisor: int = 16,
                   from_logits: bool = False, tta_axes: Sequence[int] = (0, 1, 2),
                   pad_value: float | str = "min", context_slices: int = 0) -> np.ndarray:
    """Class probabilities of every voxel of a volume.

    Parameters
    ----------
    model : keras.Model
        Channels-last segmentation model: input ``(batch, H, W, Cin)`` for
        ``dims=2`` or ``(batch, X, Y, Z, Cin)`` for ``dims=3``; output the same
        spatial shape with C class probabilities (softmax, or one sigmoid
        channel). A list output (deep supervision) uses its first entry.
    image : np.ndarray
        float32 ``(X, Y, Z)`` or ``(X, Y, Z, Cin)``, already normalised as in
        training.
    dims : {2, 3}
        Slice-wise (2) or volumetric (3) model.
    axis : int
        For ``dims=2``: the axis sliced along; slice ``k`` is
        ``np.take(image, k, axis)`` with the other two axes in their order
        (``axis=2``: (X, Y) slices).
    patch_size : sequence of int, optional
        The training patch in voxels. ``dims=3``: the sliding-window patch (3
        ints, each divisible by ``divisor``); None: the whole padded volume in
        one call (or the model's input shape if it is fixed). ``dims=2``: slices
        are padded to at least this size (2 ints), the canvas the model was
        trained on (a smaller slice is padded up to the patch in training);
        None: only to a multiple of ``divisor``.
    overlap : float
        Sliding-window overlap fraction in [0, 1).
    batch_size : int
        Slices or patches per model call.
    tta : bool
        Average over mirrored inputs: every combination of flips along
        ``tta_axes``.
    tta_axes : sequence of int
        Axes of the volume that test-time augmentation may mirror (default
        all three). Only mirror along axes the model saw mirrored in training:
        a model trained without flips (the course's hippocampus configs, where
        a flip along anterior-posterior would turn "Anterior" into posterior)
        predicts garbage on flipped inputs. :func:`predict_case` picks the axes
        from the training config (see :func:`tta_axes_from_config`).
    divisor : int
        Pad spatial sizes to a multiple of this (``2**depth`` of a U-Net).
    pad_value : float or "min"
        Image value used for padding. ``"min"`` (default) pads with the
        volume's minimum, as :mod:`medseg_tf.pipeline` pads training crops, so
        the model sees the same border at inference as in training.
    from_logits : bool
        The model outputs logits; apply softmax (sigmoid for 1 channel).
    context_slices : int
        For ``dims=2``: a "2.5D" model trained with ``context_slices`` neighbouring
        slices on each side as channels (config ``context_slices``); ``image``
        then has one channel and the neighbours are stacked here, after any
        test-time flip (see :func:`medseg_tf.preprocessing.stack_neighbour_slices`).

    Returns
    -------
    np.ndarray
        float32 ``(X, Y, Z, C)`` probabilities, same spatial shape as ``image``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4:
        raise ValueError(f"image must be (X, Y, Z) or (X, Y, Z, C), got shape {image.shape}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if int(divisor) < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    context_slices = check_context_slices(context_slices, dims)
    if context_slices and image.shape[-1] != 1:
        raise ValueError(f"a 2.5D model (context_slices={context_slices}) needs a one-channel image, got shape {image.shape}")
    channels = slices_per_sample(context_slices) if context_slices else image.shape[-1]
    expected = getattr(model, "input_shape", None)
    if isinstance(expected, tuple) and expected and expected[-1] not in (None, channels):
        raise ValueError(f"the model expects {expected[-1]} input channel(s), the image gives "
                         f"{channels}" + (f" with context_slices={context_slices}" if context_slices else ""))
    fill = float(image.min()) if isinstance(pad_value, str) and pad_value == "min" else float(pad_value)
    if dims == 2:
        if axis not in (0, 1, 2, -1, -2, -3):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        axis %= 3

        def once(x):
            if context_slices:
                x = preprocessing.stack_neighbour_slices(x, axis, context_slices)
            return _predict_2d(model, x, axis, batch_size, int(divisor), from_logits, fill, patch_size)
    else:
        def once(x):
            return _predict_3d(model, x, patch_size, overlap, batch_size, int(divisor), from_logits, fill)
    mirror_axes = sorted({int(a) % 3 for a in tta_axes})

    if not tta:
        return once(image)
    total = None
    flips = _flip_sets(mirror_axes)
    for flip in flips:
        x = np.flip(image, flip) if flip else image
        p = once(np.ascontiguousarray(x))
        p = np.flip(p, flip) if flip else p
        total = p.astype(np.float32) if total is None else total + p
    return (total / len(flips)).astype(np.float32)


def tta_axes_from_config(config: RunSpec | Mapping) -> tuple[int, ...]:
    """Volume axes that flip test-time augmentation may mirror: :attr:`medseg_tf.runspec.RunSpec.mirror_axes`.

    ``tta_axes`` if the spec gives them, otherwise the axes training mirrored (2D: the slice's axes
    mapped to volume axes); empty when training did not mirror.

    Returns
    -------
    tuple of int
        Axes of the ``(x, y, z)`` volume, sorted.
    """
    return RunSpec.coerce(config).mirror_axes


def _labels_from_probs(probs: np.ndarray) -> np.ndarray:
    if probs.shape[-1] == 1:
        return (probs[..., 0] > 0.5).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def _checked_tta_axes(spec: RunSpec) -> tuple[int, ...]:
    """The TTA mirror axes of ``spec``; ConfigError when training mirrored along none."""
    if not spec.mirror_axes:
        raise ConfigError("tta", "cannot be used with this model: it was trained without flip augmentation, "
                                 "so mirrored inputs are images it never saw and its predictions on them are "
                                 "wrong; predict without --tta")
    return spec.mirror_axes


def _predict_loaded(model, vol: io.Volume, config: RunSpec | Mapping, *, tta: bool, lcc: bool,
                    batch_size: int) -> np.ndarray:
    """Label map (uint8, original voxel order and shape) of a loaded image volume."""
    _, probs = _probabilities_loaded(model, vol, config, tta=tta, batch_size=batch_size)
    labels = _labels_from_probs(probs)
    if lcc:
        labels = keep_largest_component(labels)
    return io.reorient_from_ras(labels, vol)


def _probabilities_loaded(model, vol: io.Volume, config: RunSpec | Mapping, *, tta: bool,
                          batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised RAS image (model grid) and RAS class probabilities (native grid) of a loaded volume."""
    from medseg_tf.sliding import check_channels, prepare_image

    spec = RunSpec.coerce(config)
    image, spacing = prepare_image(vol, spec)
    ras_shape = io.reorient_to_ras(vol).shape[:3]
    check_channels(model, image, spec, vol.path)
    tta_axes = _checked_tta_axes(spec) if tta else ()
    probs = predict_volume(
        model, image, dims=spec.dims, axis=spec.slice_axis,
        patch_size=spec.patch_size, overlap=spec.overlap, batch_size=batch_size, tta=tta, divisor=spec.divisor,
        from_logits=spec.from_logits, tta_axes=tta_axes, context_slices=spec.context_slices)
    if spec.target_spacing is not None:
        probs = preprocessing.resample_to_spacing(probs, spec.target_spacing, spacing, order=1,
                                                  shape=ras_shape)
    return image, probs


def _mean_probabilities(members: Sequence[tuple], vol: io.Volume, weights=None, *, tta: bool,
                        batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first member's model input and the (weighted) mean of the members' RAS class probabilities."""
    weights = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    image, total = None, None
    for (model, config), weight in zip(members, weights / weights.sum()):
        member_image, probs = _probabilities_loaded(model, vol, config, tta=tta, batch_size=batch_size)
        if total is not None and probs.shape != total.shape:
            raise ValueError(f"ensemble members disagree on the output shape: {probs.shape} vs {total.shape}")
        if total is None:
            image, total = member_image, (probs if len(members) == 1 else probs * weight)
        else:
            total = total + probs * weight
    return image, total


def predict_probabilities(model, image: str | os.PathLike | io.Volume, config: RunSpec | Mapping, *,
                          tta: bool = False, temperature: float = 1.0,
                          batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, io.Volume]:
    """Class probabilities of one image in RAS voxel order, with the model input they came from.

    The same steps as :func:`predict_case` up to the argmax, then temperature
    scaling (:func:`medseg_tf.uncertainty.apply_temperature`: ``softmax(log p / T)``,
    applied to the final probabilities after any TTA averaging and resampling;
    it never changes the argmax).

    Parameters
    ----------
    model : keras.Model
    image : path or io.Volume
        A NIfTI image (path or loaded volume), in any orientation.
    config : RunSpec or mapping
        The run spec.
    tta : bool
        Flip test-time augmentation (only for models trained with flips).
    temperature : float
        T > 0 (1: the model's own probabilities).
    batch_size : int
        Slices or patches per model call.

    Returns
    -------
    image : np.ndarray
        float32, the normalised model input ``(X, Y, Z)`` in RAS order (on the
        ``target_spacing`` grid when the spec resamples).
    probs : np.ndarray
        float32 ``(X, Y, Z, C)`` on the image's native grid, RAS order.
    ras : io.Volume
        The image reoriented to RAS (its ``spacing`` in mm).
    """
    from medseg_tf.uncertainty import apply_temperature

    vol = image if isinstance(image, io.Volume) else io.load_nifti(image)
    model_input, probs = _probabilities_loaded(model, vol, config, tta=tta, batch_size=batch_size)
    return model_input, apply_temperature(probs, temperature), io.reorient_to_ras(vol)


def predict_case(model, image_path: str | os.PathLike, config: Mapping, *, tta: bool = False,
                 lcc: bool = False, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Predict the label map of one NIfTI image, on the image's own voxel grid.

    Steps: :func:`medseg_tf.io.load_nifti`, :func:`~medseg_tf.io.reorient_to_ras`,
    the training preprocessing (``config``: normalisation, optional resampling
    to ``target_spacing``), :func:`predict_volume`, probabilities back to the
    native grid (linear), argmax, optional largest connected component per
    class, and :func:`~medseg_tf.io.reorient_from_ras`.

    Parameters
    ----------
    model : keras.Model
        The trained model.
    image_path : path
        A ``.nii.gz`` image, 3D ``(X, Y, Z)``.
    config : RunSpec or mapping
        Training configuration (keys in this module's docstring), completed with the
        :class:`~medseg_tf.runspec.RunSpec` defaults: give ``dims`` for a 3D model (the default is 2).
    tta : bool
        Flip test-time augmentation.
    lcc : bool
        Keep only the largest connected component of each class
        (:func:`medseg_tf.postprocessing.keep_largest_component`).
    batch_size : int
        Slices or patches per model call.

    Returns
    -------
    labels : np.ndarray
        uint8, the stored shape and voxel order of the image file.
    affine : np.ndarray
        The image's 4x4 affine (write the labels with it, or with
        ``io.save_nifti(labels, path, reference=io.load_nifti(image_path))``).
    """
    vol = io.load_nifti(image_path)
    return _predict_loaded(model, vol, config, tta=tta, lcc=lcc, batch_size=batch_size), vol.affine


def predict_ensemble(members: Sequence[tuple], image_path: str | os.PathLike, *,
                     weights: Sequence[float] | None = None, tta: bool = False, lcc: bool = False,
                     batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Label map of one image from the averaged class probabilities of several models.

    Each member predicts as :func:`predict_probabilities` (its own preprocessing, 2D or 3D, on the
    image's native grid in RAS order); the probabilities are averaged (``weights``: a weighted mean),
    then argmax, optional largest component per class, back to the stored voxel order. Averaging
    probabilities, not labels, is nnU-Net's ensembling of configurations and folds.

    Parameters
    ----------
    members : sequence of (keras.Model, RunSpec or mapping)
        The models and their run specs (as :func:`load_run` returns them); all with the same classes.
    image_path : path
        A ``.nii.gz`` image.
    weights : sequence of float or None
        One non-negative weight per member (None: equal).
    tta, lcc, batch_size
        As :func:`predict_case`.

    Returns
    -------
    labels : np.ndarray
        uint8, the stored shape and voxel order of the image file.
    affine : np.ndarray
        The image's 4x4 affine.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    weights = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(members),) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"weights must be {len(members)} non-negative numbers with a positive sum, "
                         f"got {weights.tolist()}")
    vol = io.load_nifti(image_path)
    _, total = _mean_probabilities(members, vol, weights, tta=tta, batch_size=batch_size)
    labels = _labels_from_probs(total)
    if lcc:
        labels = keep_largest_component(labels)
    return io.reorient_from_ras(labels, vol), vol.affine


# --------------------------------------------------------------------------- folders
def load_run(run_dir: str | os.PathLike) -> tuple[keras.Model, RunSpec]:
    """Load ``model.keras`` (uncompiled) and the run spec (``config.json``) of a run folder.

    The model computes in float32 whatever policy it was trained under (a ``mixed_bfloat16`` run
    keeps float32 weights): predictions do not depend on the training machine's precision, and
    a CPU without native bfloat16 does not emulate it. ``python -m medseg_tf bench --precision``
    measures prediction under the mixed policies.

    Returns
    -------
    (keras.Model, RunSpec)
        The spec also reads like the ``config.json`` dict (``spec["dims"]``).
    """
    run_dir = Path(run_dir)
    model_path, config_path = run_dir / "model.keras", run_dir / "config.json"
    for path in (model_path, config_path):
        if not path.is_file():
            raise DataError(path, "not found; a run folder holds model.keras and config.json")
    config = RunSpec.load(run_dir)
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a damaged file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(model_path, f"cannot be read as a Keras model (corrupt or truncated? {reason})") from None
    from medseg_tf.models import main_output, with_precision

    return with_precision(main_output(model), "float32"), config


def predict_folder(model_or_run_dir, images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   config: Mapping | None = None, tta: bool = False, lcc: bool = False,
                   overwrite: bool = False, progress: bool = True, batch_size: int = 16,
                   temperature: float | None = None, calibration: Mapping | None = None):
    """Predict every image of a folder and write ``out_dir/<case>.nii.gz`` label maps.

    Parameters
    ----------
    model_or_run_dir : keras.Model, path or sequence of paths
        A model (then ``config`` is required) or a run folder holding
        ``model.keras`` and ``config.json`` (``config`` then overrides the file).
        Several run folders (a list or tuple): their ensemble, the mean of
        their class probabilities on each image's native grid, as
        :func:`predict_ensemble` (2D and 3D members may be mixed; no
        ``config``, ``temperature`` or ``calibration``).
    images_dir : path
        A folder of images (like MSD ``imagesTs/``), or an MSD task folder whose
        ``imagesTr/`` is used. Hidden files (macOS ``._*``) are skipped.
    out_dir : path
        Created if needed. Each label map (uint8) is written with its source
        image's affine and header, so it overlays the image in any viewer.
    config : mapping, optional
        Training configuration (see the module docstring).
    tta, lcc : bool
        See :func:`predict_case`.
    overwrite : bool
        Replace existing outputs. By default nothing is predicted if any output
        exists (:class:`medseg_tf.errors.OverwriteError`).
    progress : bool
        Show a tqdm progress bar.
    batch_size : int
        Slices or patches per model call.
    temperature : float, optional
        Temperature T > 0 of the reported uncertainty (the labels do not
        depend on it). Default: the calibration's, else 1.
    calibration : mapping, optional
        A calibration (:func:`medseg_tf.uncertainty.read_calibration`); default:
        the run folder's ``calibration.json`` when there is one.

    Returns
    -------
    pandas.DataFrame
        Columns ``case`` and ``seconds`` (wall time of reading, predicting and
        writing that case). With a calibration or a temperature also
        ``temperature`` and ``uncertainty``
        (:func:`medseg_tf.uncertainty.case_uncertainty` at that temperature),
        and with a calibration holding an OOD threshold ``ood_score``,
        ``ood_threshold`` and ``ood`` (True when the score is above the
        threshold: the case looks unlike the validation cases). The OOD score
        always uses the calibration's own temperature, whatever ``temperature``.
    """
    import pandas as pd

    from medseg_tf import uncertainty

    if isinstance(model_or_run_dir, (list, tuple)):
        if not model_or_run_dir:
            raise ValueError("an ensemble needs at least one run folder")
        for given, name in ((config, "config"), (temperature, "temperature"), (calibration, "calibration")):
            if given is not None:
                raise ValueError(f"{name} applies to one model, not to an ensemble of run folders")
        members = [load_run(run_dir) for run_dir in model_or_run_dir]
    elif isinstance(model_or_run_dir, (str, os.PathLike)):
        model, run_spec = load_run(model_or_run_dir)
        members = [(model, run_spec.replace(**config) if config else run_spec)]
        if calibration is None:
            calibration = uncertainty.read_calibration(model_or_run_dir)
    else:
        if config is None:
            raise ValueError("pass config=... (the run spec or training configuration) together with a model")
        members = [(model_or_run_dir, RunSpec.coerce(config))]
    out_dir = Path(out_dir)
    plan = prediction_plan(images_dir, out_dir, overwrite=overwrite)
    if tta:
        for _, spec in members:
            _checked_tta_axes(spec)  # refuse before anything is written
    report = temperature is not None or calibration is not None
    if temperature is None:
        temperature = calibration["temperature"] if calibration is not None else 1.0
    temperature = uncertainty.check_temperature(temperature)
    ood = calibration.get("ood") if calibration is not None else None
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        rows = _predict_files(members, plan, tta=tta, lcc=lcc, batch_size=batch_size,
                              overwrite=overwrite, progress=progress, report=report, temperature=temperature,
                              calibration=calibration, ood=ood)
    except BaseException:
        if created and not any(out_dir.iterdir()):  # a failed run leaves no empty folder behind
            out_dir.rmdir()
        raise
    columns = ["case", "seconds"] + (["temperature", "uncertainty"] if report else []) + (
        ["ood_score", "ood_threshold", "ood"] if ood is not None else [])
    return pd.DataFrame(rows, columns=columns)


def _predict_files(members, plan, *, tta, lcc, batch_size, overwrite, progress, report,
                   temperature, calibration, ood) -> list[dict]:
    """The loop of :func:`predict_folder`: predict and write each file; one row per case."""
    from medseg_tf.settings import progress_bar as tqdm

    from medseg_tf import uncertainty

    rows = []
    for path, out in tqdm(plan, desc="predict", unit="case",
                          disable=not progress):
        start = time.perf_counter()
        vol = io.load_nifti(path)
        image, probs = _mean_probabilities(members, vol, tta=tta, batch_size=batch_size)
        labels = _labels_from_probs(probs)
        if lcc:
            labels = keep_largest_component(labels)
        io.save_nifti(io.reorient_from_ras(labels, vol), out, reference=vol, overwrite=overwrite)
        row = {"case": io.case_id(path), "seconds": time.perf_counter() - start}
        if report:
            row["temperature"] = temperature
            row["uncertainty"] = uncertainty.case_uncertainty(uncertainty.apply_temperature(probs, temperature))
        if ood is not None:
            stats = uncertainty.case_statistics(
                image, uncertainty.apply_temperature(probs, calibration["temperature"]),
                radius=int(ood.get("radius", 3)), levels=ood.get("levels", uncertainty.QUANTILE_LEVELS))
            row["ood_score"] = uncertainty.ood_score(stats, ood)
            row["ood_threshold"] = float(ood["threshold"])
            row["ood"] = row["ood_score"] > row["ood_threshold"]
        rows.append(row)
    return rows
