"""What a segmentation network relies on, and how much its passes disagree (Keras 3 / TensorFlow).

* **Grad-CAM for segmentation** (:func:`grad_cam`; Selvaraju et al. 2017, in
  the "Seg-Grad-CAM" form of Vinogradova et al. 2020): the score of a class
  *summed over a region* of the output is differentiated with respect to the
  feature maps ``A_k`` of a chosen layer; each map gets the weight
  ``alpha_k = mean over positions of d score / d A_k`` and the map is
  ``ReLU(sum_k alpha_k A_k)``, upsampled (linearly) to the input size. 2D and
  3D alike. It shows *where at that layer's resolution* the evidence for the
  class in the region sits; deep layers give coarse maps.
* **Occlusion sensitivity** (:func:`occlusion_sensitivity`; Zeiler & Fergus
  2014): slide a patch filled with a constant over the input and measure how
  much the segmentation of a class changes (``1 - Dice`` between the occluded
  and the unoccluded prediction). Needs no gradients, so it works for any
  model (a Keras model or any ``predict_batch`` callable, e.g. ONNX Runtime);
  the occluded copies go through the model in batches.
* **Ensembles** (:func:`ensemble_predict`): N passes of test-time
  augmentation (:func:`flip_transforms`, :func:`shift_transforms`) or of
  Monte-Carlo dropout (dropout kept on at inference, batch normalisation in
  inference mode), batched, returned stacked ``(N, X, Y, Z, C)`` for
  :func:`medseg_tf.uncertainty.mutual_information`.

Conventions: channels-last, images without the batch axis, volumes in RAS voxel
order ``(X, Y, Z)``; class indices count background as 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from scipy import ndimage

from medseg_tf import metrics, preprocessing, sliding

__all__ = [
    "grad_cam",
    "occlusion_sensitivity",
    "Transform",
    "flip_transforms",
    "shift_transforms",
    "dropout_layers",
    "mc_dropout_model",
    "keras_predict_batch",
    "ensemble_predict",
]

DROPOUT_TYPES = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                 keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


# --------------------------------------------------------------------------- checks
def _num_classes(model) -> int:
    shape = model.output_shape
    if isinstance(shape, list):
        shape = shape[0]
    return int(shape[-1])


def _check_class(model, class_index: int) -> int:
    n = _num_classes(model)
    if int(class_index) != class_index or not 0 <= class_index < n:
        raise ValueError(f"class {class_index!r} is outside the model's classes 0..{n - 1}")
    return int(class_index)


def _spatial_layers(model, ndim: int) -> list[str]:
    names = []
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == ndim + 2 and not isinstance(layer, keras.layers.InputLayer):
            names.append(layer.name)
    return names


def _get_layer(model, name: str, ndim: int):
    try:
        layer = model.get_layer(name)
    except ValueError:
        options = _spatial_layers(model, ndim)
        shown = ", ".join(options[:6] + (["...", options[-1]] if len(options) > 6 else []))
        raise ValueError(f"layer {name!r} does not exist in model {model.name!r}; layers with spatial "
                         f"feature maps: {shown}") from None
    shape = layer.output.shape
    if len(shape) != ndim + 2:
        raise ValueError(f"layer {name!r} outputs shape {tuple(shape)}, not a {ndim}D feature map "
                         f"(batch, {ndim} spatial axes, channels)")
    return layer


def _image(image: np.ndarray, model) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    n_in = len(model.input_shape) - 1
    if x.ndim == n_in - 1:
        x = x[..., None]
    if x.ndim != n_in:
        raise ValueError(f"image of shape {np.shape(image)} does not fit the model's input "
                         f"{model.input_shape} (give one image without the batch axis)")
    if not np.all(np.isfinite(x)):
        raise ValueError("image holds NaN or infinite values")
    return x


def _region(region, shape, what: str = "region") -> np.ndarray:
    r = np.asarray(region, dtype=bool)
    if r.shape != tuple(shape):
        raise ValueError(f"{what} of shape {r.shape} does not match the image's spatial shape {tuple(shape)}")
    if not r.any():
        raise ValueError(f"the {what} is empty: give at least one voxel")
    return r


# --------------------------------------------------------------------------- Grad-CAM
def grad_cam(model, image: np.ndarray, *, layer: str, class_index: int, region: np.ndarray | None = None,
             divisor: int = 16, score_layer: str | None = None) -> np.ndarray:
    """Grad-CAM map of ``class_index`` summed over ``region``, at ``layer``, for one 2D or 3D image.

    Parameters
    ----------
    model : keras.Model
        A functional segmentation model (channels-last, output ``(batch, *spatial, C)``).
    image : np.ndarray
        One input ``(*spatial, Cin)`` (or ``(*spatial)`` for one channel), already
        normalised; padded here with its minimum to a multiple of ``divisor``.
    layer : str
        Name of the layer whose feature maps are weighted (e.g. ``"enc3_act2"``
        or ``"bottleneck_act2"`` of :func:`medseg_tf.models.unet`).
    class_index : int
        The class whose score is explained (0 = background).
    region : np.ndarray of bool, optional
        Output voxels whose scores are summed, spatial shape of ``image``.
        Default: where the model predicts ``class_index`` (argmax).
    divisor : int
        Pad multiple (``2**depth`` of a U-Net).
    score_layer : str, optional
        Differentiate this layer's output instead of the model's (e.g.
        ``"output_logits"``, the logits before the softmax: probabilities
        saturate where the model is sure, and then carry small gradients).

    Returns
    -------
    np.ndarray
        float32, the spatial shape of ``image``, in [0, 1] (divided by its
        maximum; all zeros when no feature map has positive evidence).

    Raises
    ------
    ValueError
        Unknown layer, a layer without a spatial map, a class outside the
        model's, an empty region, an image of the wrong shape.
    """
    import tensorflow as tf

    x = _image(image, model)
    ndim = x.ndim - 1
    class_index = _check_class(model, class_index)
    feature_layer = _get_layer(model, layer, ndim)
    outputs = [feature_layer.output]
    if score_layer is None:
        outputs.append(model.outputs[0])
    else:
        outputs.append(_get_layer(model, score_layer, ndim).output)
    fill = float(x.min())
    padded, pads = preprocessing.pad_to_multiple(x, int(divisor), n_spatial=ndim, value=fill)
    if region is None:
        probs = keras_predict_batch(model)(padded[None])[0]
        region = preprocessing.unpad(probs, pads[:ndim]).argmax(axis=-1) == class_index
        if not region.any():
            raise ValueError(f"the model predicts no voxel of class {class_index} in this image, so the default "
                             "region is empty; pass region=...")
    region = _region(region, x.shape[:-1])
    region_pad, _ = preprocessing.pad_to_shape(region.astype(np.float32), padded.shape[:-1], value=0.0)
    cam_model = keras.Model(model.inputs, outputs)
    inputs = tf.convert_to_tensor(padded[None])
    with tf.GradientTape() as tape:
        features, scores = cam_model(inputs, training=False)
        target = tf.reduce_sum(scores[0, ..., class_index] * region_pad)
    grads = tape.gradient(target, features)
    if grads is None:
        raise ValueError(f"the output does not depend on layer {layer!r} (no gradient path)")
    features = np.asarray(features)[0]
    weights = np.asarray(grads)[0].mean(axis=tuple(range(ndim)))
    cam = np.maximum(np.tensordot(features, weights, axes=([-1], [0])), 0.0)
    zoom = [p / c for p, c in zip(padded.shape[:-1], cam.shape)]
    cam = ndimage.zoom(cam, zoom, order=1, grid_mode=True, mode="nearest")
    cam = preprocessing.unpad(cam[tuple(slice(0, n) for n in padded.shape[:-1])], pads[:ndim])
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


# --------------------------------------------------------------------------- occlusion
def keras_predict_batch(model, *, from_logits: bool = False, mc_dropout: bool = False) -> Callable:
    """A ``predict_batch`` callable ``(N, *spatial, Cin) -> (N, *spatial, C)`` float32 probabilities.

    ``mc_dropout=True`` keeps the model's dropout layers active (see
    :func:`mc_dropout_model`), so each call gives a different sample.
    """
    net = mc_dropout_model(model) if mc_dropout else model

    def predict_batch(x: np.ndarray) -> np.ndarray:
        y = net(x) if mc_dropout else net.predict_on_batch(x)
        if isinstance(y, (list, tuple)):
            y = y[0]
        y = np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)
        return sliding.probabilities_from_logits(y) if from_logits else y

    return predict_batch


def _positions(size: int, patch: int, stride: int) -> list[int]:
    if patch >= size:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion_sensitivity(model_or_predict, image: np.ndarray, *, class_index: int, patch: int | Sequence[int],
                          stride: int | Sequence[int] | None = None, fill: float | None = None,
                          batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """How much the segmentation of ``class_index`` changes when each part of the input is hidden.

    Each patch position gives a copy of ``image`` with that patch set to
    ``fill`` (all channels). Its prediction's mask of ``class_index`` is
    compared with the unoccluded prediction's: the change is ``1 - Dice``
    (:func:`medseg_tf.metrics.dice`). A voxel's sensitivity is the mean change
    over the patches that cover it.

    Parameters
    ----------
    model_or_predict : keras.Model or callable
        A model taking ``(N, *spatial, Cin)``, or any ``predict_batch`` callable
        with that input and ``(N, *spatial, C)`` probabilities out.
    image : np.ndarray
        ``(*spatial, Cin)``, already normalised, of a size the model accepts
        (pad it first, e.g. :func:`medseg_tf.preprocessing.pad_to_multiple`).
    class_index : int
        Class whose segmentation is compared (must be predicted somewhere).
    patch : int or sequence of int
        Patch size in voxels (per spatial axis).
    stride : int or sequence of int, optional
        Step between patches (default ``patch // 2``, at least 1).
    fill : float, optional
        Value of the hidden voxels (default the image's minimum: "nothing there").
    batch_size : int
        Occluded copies per model call.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    np.ndarray
        float32, spatial shape of ``image``, in [0, 1].
    """
    from medseg_tf.settings import progress_bar as tqdm

    if isinstance(model_or_predict, keras.Model):
        _check_class(model_or_predict, class_index)
        x = _image(image, model_or_predict)
        predict = keras_predict_batch(model_or_predict)
    elif callable(model_or_predict):
        x = np.asarray(image, dtype=np.float32)
        predict = model_or_predict
    else:
        raise TypeError(f"expected a keras.Model or a predict_batch callable, got {type(model_or_predict).__name__}")
    ndim = x.ndim - 1
    if ndim not in (2, 3):
        raise ValueError(f"image must be (H, W, Cin) or (X, Y, Z, Cin), got shape {x.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes = [int(patch)] * ndim if np.isscalar(patch) else [int(p) for p in patch]
    steps = ([max(1, s // 2) for s in sizes] if stride is None
             else [int(stride)] * ndim if np.isscalar(stride) else [int(s) for s in stride])
    if len(sizes) != ndim or len(steps) != ndim or min(sizes) < 1 or min(steps) < 1:
        raise ValueError(f"patch and stride must be positive, one per spatial axis ({ndim}); got {patch}, {stride}")
    value = float(x.min()) if fill is None else float(fill)
    base = np.asarray(predict(x[None]), dtype=np.float32)[0]
    if int(class_index) != class_index or not 0 <= class_index < base.shape[-1]:
        raise ValueError(f"class {class_index!r} is outside the model's classes 0..{base.shape[-1] - 1}")
    base_mask = base.argmax(axis=-1) == class_index
    if not base_mask.any():
        raise ValueError(f"the model predicts no voxel of class {class_index} in this image: the region to "
                         "compare is empty")
    corners = list(itertools.product(*[_positions(n, p, s) for n, p, s in zip(x.shape[:-1], sizes, steps)]))
    total = np.zeros(x.shape[:-1], dtype=np.float64)
    count = np.zeros(x.shape[:-1], dtype=np.float64)
    for first in tqdm(range(0, len(corners), batch_size), desc="occlusion", unit="batch", disable=not progress):
        chunk = corners[first:first + batch_size]
        boxes = [tuple(slice(c, c + p) for c, p in zip(corner, sizes)) for corner in chunk]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for b, box in enumerate(boxes):
            batch[(b, *box)] = value
        probs = np.asarray(predict(batch), dtype=np.float32)
        for box, p in zip(boxes, probs):
            total[box] += 1.0 - metrics.dice(p.argmax(axis=-1) == class_index, base_mask)
            count[box] += 1.0
    return (total / np.maximum(count, 1.0)).astype(np.float32)


# --------------------------------------------------------------------------- ensembles
@dataclass(frozen=True)
class Transform:
    """A test-time transform: ``forward`` maps an image ``(X, Y, Z, Cin)`` to the model's input, and
    ``inverse`` maps the probabilities ``(X, Y, Z, C)`` of that input back onto the original grid."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


def flip_transforms(axes: Sequence[int]) -> list[Transform]:
    """Every combination of mirror flips along ``axes`` (the identity first): ``2**len(axes)`` transforms.

    Only use axes the model saw mirrored in training
    (:func:`medseg_tf.inference.tta_axes_from_config`).
    """
    axes = sorted({int(a) % 3 for a in axes})
    out = []
    for r in range(len(axes) + 1):
        for combo in itertools.combinations(axes, r):
            out.append(Transform("flip" + "".join("xyz"[a] for a in combo) if combo else "identity",
                                 (lambda v, c=combo: np.flip(v, c) if c else v),
                                 (lambda p, c=combo: np.flip(p, c) if c else p)))
    return out


def _shift(array: np.ndarray, offset: Sequence[int], mode: str, fill: float = 0.0) -> np.ndarray:
    pad = [(max(o, 0), max(-o, 0)) for o in offset] + [(0, 0)] * (array.ndim - len(offset))
    kwargs = {"constant_values": fill} if mode == "constant" else {}
    padded = np.pad(array, pad, mode=mode, **kwargs)
    index = tuple(slice(after, after + n) for (_, after), n in zip(pad, array.shape[:len(offset)]))
    return padded[index]


def shift_transforms(offsets: Sequence[Sequence[int]]) -> list[Transform]:
    """Translations of the volume by whole voxels (the identity is ``(0, 0, 0)``).

    A U-Net's output is not exactly translation-equivariant (pooling sees a
    different grid), so small shifts give a valid ensemble for models trained
    without flips. Voxels moved in from outside take the image's minimum;
    probabilities moved back in from outside repeat the edge.

    Parameters
    ----------
    offsets : sequence of 3-int sequences
        Shift of the image content in voxels along x, y, z, e.g.
        ``[(0, 0, 0), (1, 0, 0), (0, -1, 0)]``.
    """
    out = []
    for off in offsets:
        off = tuple(int(o) for o in off)
        if len(off) != 3:
            raise ValueError(f"each offset needs 3 entries (x, y, z), got {off}")
        out.append(Transform(f"shift{off}",
                             lambda v, o=off: _shift(v, o, "constant", float(v.min())),
                             lambda p, o=off: _shift(p, tuple(-a for a in o), "edge")))
    return out


def dropout_layers(model) -> list[str]:
    """Names of the model's dropout layers (any Keras dropout type)."""
    return [layer.name for layer in model.layers if isinstance(layer, DROPOUT_TYPES)]


def mc_dropout_model(model) -> keras.Model:
    """The same model (shared weights) with its dropout layers active at inference and everything else not.

    Calling the model with ``training=True`` would also switch batch
    normalisation to batch statistics; here only the dropout layers get
    ``training=True`` (:func:`keras.models.clone_model` with the layers
    reused and a ``call_function``). Call the result without a ``training``
    argument: ``mc(x)``.

    Raises
    ------
    ValueError
        The model has no dropout layer.
    """
    if not dropout_layers(model):
        raise ValueError(f"model {model.name!r} has no dropout layers: Monte-Carlo dropout needs a model trained "
                         "with dropout (e.g. models.unet(..., dropout=0.1)); use test-time augmentation instead")

    def call(layer, *args, **kwargs):
        if isinstance(layer, DROPOUT_TYPES):
            kwargs["training"] = True
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def _reseed_dropout(model, seed: int) -> None:
    """Reset the random state of every dropout layer, so that the same seed gives the same masks."""
    for k, layer in enumerate(layer for layer in model.layers if isinstance(layer, DROPOUT_TYPES)):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            state = generator.state
            state.assign(np.array([seed * 1000 + k, 0], dtype=state.dtype))


def ensemble_predict(model, image: np.ndarray, config: Mapping, *, transforms: Sequence[Transform] | None = None,
                     passes: int | None = None, mc_dropout: bool = False, batch_size: int = 4,
                     seed: int | None = 0) -> np.ndarray:
    """N predictions of one normalised RAS volume, batched: test-time augmentation or Monte-Carlo dropout.

    The N passes share every model call: each slice or window goes through the
    model once per pass in the same batch (the passes' inputs are stacked as
    extra channels for :func:`medseg_tf.sliding.predict_image` and split again
    in the model call), so the geometry (padding, windows, blending) is exactly
    that of a single prediction by :func:`medseg_tf.inference.predict_volume`.

    Parameters
    ----------
    model : keras.Model
        The segmentation model.
    image : np.ndarray
        ``(X, Y, Z)`` or ``(X, Y, Z, 1)`` normalised as in training (see
        :func:`medseg_tf.sliding.prepare_image`).
    config : mapping
        Training configuration (``dims``, ``slice_axis``, ``context_slices``,
        ``patch_size``, depth, ``from_logits``).
    transforms : sequence of Transform, optional
        Test-time augmentation, one pass per transform.
    passes : int, optional
        Monte-Carlo dropout: number of passes (with ``mc_dropout=True``).
    mc_dropout : bool
        Sample dropout masks (requires dropout layers). May be combined with
        ``transforms`` (then one sample per transform).
    batch_size : int
        Slices or windows per model call *per pass*.
    seed : int, optional
        Seeds Keras' random generator before the MC passes (reproducible masks).

    Returns
    -------
    np.ndarray
        float32 ``(N, X, Y, Z, C)`` probabilities, each pass mapped back onto the input grid.

    Raises
    ------
    ValueError
        N < 2 passes, no dropout layers with ``mc_dropout``, or neither
        transforms nor MC dropout requested.
    """
    if transforms is None and not mc_dropout:
        raise ValueError("give transforms=... (test-time augmentation) or mc_dropout=True with passes=N")
    if transforms is not None:
        transforms = list(transforms)
        n = len(transforms)
        if passes is not None and passes != n:
            raise ValueError(f"passes={passes} but {n} transforms given (one pass per transform)")
    else:
        if passes is None:
            raise ValueError("mc_dropout=True needs passes=N (N >= 2)")
        n = int(passes)
        transforms = [Transform("identity", lambda v: v, lambda p: p)] * n
    if n < 2:
        raise ValueError(f"an ensemble needs N >= 2 passes, got N = {n}")
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"image must be (X, Y, Z) or (X, Y, Z, Cin), got shape {np.shape(image)}")
    dims = int(config["dims"])
    context = int(config.get("context_slices", 0) or 0) if dims == 2 else 0
    axis = int(config.get("slice_axis", 2)) % 3
    inputs = []
    for t in transforms:
        v = np.ascontiguousarray(t.forward(x))
        if v.shape != x.shape:
            raise ValueError(f"transform {t.name} changed the shape {x.shape} to {v.shape}")
        inputs.append(preprocessing.stack_neighbour_slices(v, axis, context) if context else v)
    cin = inputs[0].shape[-1]
    stacked = np.concatenate(inputs, axis=-1)            # (X, Y, Z, N * Cin)
    if mc_dropout and seed is not None:
        _reseed_dropout(model, int(seed))
    single = keras_predict_batch(model, from_logits=bool(config.get("from_logits", False)), mc_dropout=mc_dropout)

    def predict_batch(b: np.ndarray) -> np.ndarray:      # (B, *s, N*Cin) -> (B, *s, N*C)
        parts = np.concatenate([b[..., k * cin:(k + 1) * cin] for k in range(n)], axis=0)
        y = single(parts)
        y = y.reshape((n, b.shape[0]) + y.shape[1:])
        return np.concatenate(list(y), axis=-1)

    flat_config = {**config, "context_slices": 0}
    probs = sliding.predict_image(predict_batch, stacked, flat_config, batch_size=batch_size)
    c = probs.shape[-1] // n
    return np.stack([np.ascontiguousarray(t.inverse(probs[..., k * c:(k + 1) * c]))
                     for k, t in enumerate(transforms)]).astype(np.float32)
