"""Keras 3 network builders: the article's MNIST classifier, a plain fully
convolutional net, and the configurable 2D/3D U-Net used for the rest of the course.

Everything here returns a plain :class:`keras.Model` built from stock Keras layers
(no custom or ``Lambda`` layers), so ``model.save("m.keras")`` followed by
``keras.saving.load_model("m.keras")`` works with ``safe_mode`` on and without
``custom_objects``.

Conventions: channels-last inputs, ``(batch, x, y, channels)`` in 2D and
``(batch, x, y, z, channels)`` in 3D; spatial sizes may be ``None`` (any size
divisible by ``2**depth`` works for the U-Net). Segmentation outputs are
per-voxel class probabilities, float32 even under a ``mixed_float16`` policy.

Helpers for the notebooks: :func:`layer_table` (one row per layer),
:func:`activation_memory` (bytes of layer outputs per sample) and
:func:`unet_receptive_field` (theoretical receptive field in voxels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd

NORMS = ("batch", "instance", "group", None)
HEADS = ("softmax", "sigmoid", None)

#: Number of groups used by ``norm="group"`` (reduced to a divisor of the channel count).
GROUP_NORM_GROUPS = 8


# --------------------------------------------------------------------------- helpers
def _layers_for(ndim: int):
    """Return the (Conv, ConvTranspose, MaxPool, SpatialDropout) classes for 2 or 3 spatial dims."""
    if ndim == 2:
        return (keras.layers.Conv2D, keras.layers.Conv2DTranspose,
                keras.layers.MaxPooling2D, keras.layers.SpatialDropout2D)
    if ndim == 3:
        return (keras.layers.Conv3D, keras.layers.Conv3DTranspose,
                keras.layers.MaxPooling3D, keras.layers.SpatialDropout3D)
    raise ValueError(f"only 2D and 3D inputs are supported, got {ndim} spatial dimensions")


def _norm_layer(norm: str | None, filters: int, name: str):
    """Return a normalisation layer (or None) for ``filters`` channels."""
    if norm is None:
        return None
    if norm == "batch":
        return keras.layers.BatchNormalization(name=name)
    if norm == "instance":
        return keras.layers.GroupNormalization(groups=filters, name=name)
    if norm == "group":
        return keras.layers.GroupNormalization(groups=math.gcd(filters, GROUP_NORM_GROUPS), name=name)
    raise ValueError(f"norm={norm!r}: expected one of {NORMS}")


def _conv_block(x, filters: int, *, ndim: int, kernel_size: int, norm: str | None,
                activation: str, residual: bool, dropout: float, name: str):
    """Two ``kernel_size`` convolutions (same padding), each followed by norm and activation.

    The convolutions have no bias when a normalisation layer follows (its shift
    makes the bias redundant). With ``residual=True`` the block input, projected
    by a 1x1 convolution when the channel count changes, is added before the
    last activation. ``dropout > 0`` inserts spatial dropout between the two convs.
    """
    Conv, _, _, SpatialDropout = _layers_for(ndim)
    shortcut = x
    for i in (1, 2):
        x = Conv(filters, kernel_size, padding="same", use_bias=norm is None, name=f"{name}_conv{i}")(x)
        layer = _norm_layer(norm, filters, f"{name}_norm{i}")
        if layer is not None:
            x = layer(x)
        if i == 1:
            x = keras.layers.Activation(activation, name=f"{name}_act1")(x)
            if dropout > 0:
                x = SpatialDropout(dropout, name=f"{name}_dropout")(x)
    if residual:
        if shortcut.shape[-1] != filters:
            shortcut = Conv(filters, 1, padding="same", use_bias=norm is None, name=f"{name}_proj")(shortcut)
            layer = _norm_layer(norm, filters, f"{name}_proj_norm")
            if layer is not None:
                shortcut = layer(shortcut)
        x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.Activation(activation, name=f"{name}_act2")(x)


def _attention_gate(skip, gate, *, ndim: int, name: str):
    """Additive attention gate (Oktay et al. 2018) on a skip tensor.

    ``skip`` and ``gate`` (the upsampled decoder features) have the same spatial
    size; a 1-channel sigmoid map ``alpha`` in [0, 1] computed from both scales
    every channel of ``skip``.
    """
    Conv = _layers_for(ndim)[0]
    inter = max(1, skip.shape[-1] // 2)
    theta = Conv(inter, 1, name=f"{name}_theta")(skip)
    phi = Conv(inter, 1, name=f"{name}_phi")(gate)
    f = keras.layers.Activation("relu", name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([theta, phi]))
    alpha = Conv(1, 1, activation="sigmoid", name=f"{name}_alpha")(f)
    return keras.layers.Multiply(name=f"{name}_scale")([skip, alpha])


def _head(x, num_classes: int, *, ndim: int, head: str | None, name: str):
    """1x1 convolution to ``num_classes`` channels and a float32 final activation."""
    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {HEADS}")
    Conv = _layers_for(ndim)[0]
    x = Conv(num_classes, 1, name=f"{name}_logits")(x)
    return keras.layers.Activation(head or "linear", dtype="float32", name=name)(x)


# --------------------------------------------------------------------------- U-Net
def unet(input_shape: Sequence[int | None] = (None, None, 1), num_classes: int = 3, *,
         depth: int = 4, base_filters: int = 16, kernel_size: int = 3, norm: str | None = "batch",
         activation: str = "relu", residual: bool = False, attention: bool = False,
         deep_supervision: bool = False, dropout: float = 0.0, head: str | None = "softmax",
         skips: bool = True, max_filters: int | None = None, name: str = "unet") -> keras.Model:
    """Build a 2D or 3D U-Net (Ronneberger et al. 2015; 3D: Cicek et al. 2016).

    Encoder level ``l`` (``l = 0 .. depth-1``) applies two ``kernel_size``
    convolutions with ``base_filters * 2**l`` filters, at most ``max_filters`` (each followed by ``norm``
    and ``activation``) and keeps the result as a skip tensor, then halves every
    spatial size with 2x max pooling. The bottleneck has ``base_filters *
    2**depth`` filters. Decoder level ``l`` doubles the size with a stride-2
    transposed convolution (kernel 2, ``base_filters * 2**l`` filters),
    concatenates the skip tensor of level ``l`` and applies another conv block.
    A 1x1 convolution and a softmax (or sigmoid) give per-voxel probabilities.

    Parameters
    ----------
    input_shape : sequence of int or None
        ``(x, y, channels)`` for a 2D net or ``(x, y, z, channels)`` for a 3D net.
        Spatial sizes may be ``None``; known sizes must be divisible by ``2**depth``.
    num_classes : int
        Output channels (classes, background included for softmax).
    depth : int
        Number of 2x downsamplings (>= 1).
    base_filters : int
        Filters of the first level; doubles at each level.
    kernel_size : int
        Size of the (isotropic) convolution kernels, odd.
    norm : {"batch", "instance", "group", None}
        Normalisation after every convolution. ``"instance"`` and ``"group"`` use
        :class:`keras.layers.GroupNormalization` with ``groups=filters`` and
        ``groups=gcd(filters, 8)``. Convolutions followed by a norm have no bias.
    activation : str
        Any Keras activation name (``"relu"``, ``"leaky_relu"``, ``"gelu"`` ...).
    residual : bool
        Add a (1x1-projected) shortcut around every conv block.
    attention : bool
        Gate each skip tensor with an additive attention gate before concatenation.
    deep_supervision : bool
        Also output probabilities at lower resolutions (see Returns).
    dropout : float
        Spatial dropout rate between the two convolutions of every block (0 = none).
    head : {"softmax", "sigmoid", None}
        Final activation; ``None`` returns logits. Always computed in float32.
    skips : bool
        ``False`` drops the skip connections (an encoder-decoder without skips),
        used in the course to show what skips are for.
    max_filters : int or None
        Cap on the filters of any level (``None``: no cap). nnU-Net caps at 320
        (3D) / 512 (2D): most parameters sit in the coarsest levels, where the
        feature maps are only a few voxels wide, so a cap shrinks the model a
        lot for little cost in accuracy or speed.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Input ``(batch, *spatial, channels)``. Output float32 ``(batch, *spatial,
        num_classes)``. With ``deep_supervision=True`` the output is a list of
        ``depth`` tensors ``[full-res, 1/2-res, ..., 1/2**(depth-1)-res]``, one per
        decoder level (layers named ``"output"``, ``"output_ds1"``, ...), each with
        ``num_classes`` channels; downsample the label accordingly (e.g. nearest /
        max pooling by ``2**k``) to train them.

    Raises
    ------
    ValueError
        On an unknown option or a known spatial size not divisible by ``2**depth``.
    """
    input_shape = tuple(input_shape)
    ndim = len(input_shape) - 1
    _, ConvT, MaxPool, _ = _layers_for(ndim)
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}: expected one of {NORMS}")
    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {HEADS}")
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if base_filters < 1 or num_classes < 1:
        raise ValueError("base_filters and num_classes must be positive")
    if max_filters is not None and max_filters < 1:
        raise ValueError(f"max_filters must be a positive integer or None, got {max_filters!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if input_shape[-1] is None:
        raise ValueError("the channel count (last entry of input_shape) must be known")
    factor = 2 ** depth
    for size in input_shape[:-1]:
        if size is not None and size % factor:
            raise ValueError(f"input_shape {input_shape}: spatial size {size} is not divisible by "
                             f"2**depth = {factor} (pad the input, e.g. preprocessing.pad_to_multiple)")
    if deep_supervision and not skips:
        raise ValueError("deep_supervision=True needs skips=True")
    if attention and not skips:
        raise ValueError("attention=True needs skips=True")

    block = dict(ndim=ndim, kernel_size=kernel_size, norm=norm, activation=activation,
                 residual=residual, dropout=dropout)

    def width(level: int) -> int:
        filters = base_filters * 2 ** level
        return filters if max_filters is None else min(filters, int(max_filters))

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skip_tensors = []
    for level in range(depth):
        x = _conv_block(x, width(level), name=f"enc{level}", **block)
        skip_tensors.append(x)
        x = MaxPool(2, name=f"down{level}")(x)
    x = _conv_block(x, width(depth), name="bottleneck", **block)

    decoder_outputs = {}
    for level in reversed(range(depth)):
        filters = width(level)
        x = ConvT(filters, 2, strides=2, name=f"up{level}")(x)
        if skips:
            skip = skip_tensors[level]
            if attention:
                skip = _attention_gate(skip, x, ndim=ndim, name=f"att{level}")
            x = keras.layers.Concatenate(name=f"skip{level}")([x, skip])
        x = _conv_block(x, filters, name=f"dec{level}", **block)
        decoder_outputs[level] = x

    outputs = _head(x, num_classes, ndim=ndim, head=head, name="output")
    if deep_supervision:
        outputs = [outputs] + [
            _head(decoder_outputs[level], num_classes, ndim=ndim, head=head, name=f"output_ds{level}")
            for level in range(1, depth)
        ]
    return keras.Model(inputs, outputs, name=name)


def main_output(model: keras.Model) -> keras.Model:
    """The model itself, or for a deep-supervision U-Net the model of its full-resolution output only.

    Prediction, export and benchmarks use this: the coarser outputs only serve the training loss.
    The returned model shares the weights (no copy).
    """
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[0], name=model.name)


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """The model with its layers computing under the Keras dtype policy ``precision`` (same weights).

    ``precision`` is ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``. Every layer but the
    output activations (float32 always) gets that policy; a model whose layers already have it is
    returned as is, otherwise a clone (a clone keeps each layer's own policy, so setting the global
    policy would not reach it). Weights stay float32 under every policy, so a model trained under
    ``mixed_bfloat16`` becomes a float32 model with the very same weights.
    """
    if precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
        raise ValueError(f"precision must be float32, mixed_bfloat16 or mixed_float16, got {precision!r}")
    heads = {t._keras_history[0].name for t in model.outputs}  # the output activations stay float32
    if all(layer.name in heads or layer.dtype_policy.name == precision for layer in model.layers
           if "dtype" in layer.get_config()):
        return model

    def recast(layer):
        config = layer.get_config()
        if layer.name not in heads and "dtype" in config:
            config["dtype"] = precision
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=recast)
    clone.set_weights(model.get_weights())
    return clone


def unet_receptive_field(depth: int = 4, kernel_size: int = 3, convs_per_block: int = 2) -> int:
    """Receptive field (voxels along one axis) of an output voxel of :func:`unet`.

    Each convolution at downsampling level ``l`` widens the field by
    ``(kernel_size - 1) * 2**l`` voxels, each 2x max pool by ``2**l``; the
    kernel-2 stride-2 transposed convolutions add nothing on average. Because
    of the stride-2 upsampling the exact field of one output voxel depends on
    its position relative to the ``2**depth`` pooling grid (a few voxels more
    or less, e.g. 188 or 204 for ``depth=4``); this value is the average over
    those positions. Residual 1x1 projections and attention gates do not
    change it.

    Parameters
    ----------
    depth, kernel_size : int
        As in :func:`unet`.
    convs_per_block : int
        Convolutions per block (2 in :func:`unet`).

    Returns
    -------
    int
        Receptive field in voxels (multiply by the spacing for mm).
    """
    per_conv = convs_per_block * (kernel_size - 1)
    field = 1
    for level in range(depth):
        field += 2 * per_conv * 2 ** level  # encoder and decoder blocks
        field += 2 ** level  # max pooling
    return field + per_conv * 2 ** depth  # bottleneck


# --------------------------------------------------------------------------- small nets
def fully_convolutional_net(input_shape: Sequence[int | None] = (None, None, 1), num_classes: int = 3, *,
                            filters: int = 16, n_layers: int = 3, kernel_size: int = 3,
                            name: str = "fcn") -> keras.Model:
    """A plain fully convolutional segmentation net: no pooling, no dense layer.

    ``n_layers`` ``kernel_size`` convolutions (same padding, ReLU) then a 1x1
    convolution and softmax: one class distribution per pixel, for any input
    size. Its receptive field is only ``1 + n_layers * (kernel_size - 1)`` pixels.

    Parameters
    ----------
    input_shape : sequence of int or None
        ``(x, y, channels)`` (2D) or ``(x, y, z, channels)`` (3D).
    num_classes : int
        Output channels.
    filters, n_layers, kernel_size : int
        Width, number and size of the convolutions.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Output float32 ``(batch, *spatial, num_classes)`` probabilities.
    """
    input_shape = tuple(input_shape)
    ndim = len(input_shape) - 1
    Conv = _layers_for(ndim)[0]
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i in range(n_layers):
        x = Conv(filters, kernel_size, padding="same", activation="relu", name=f"conv{i + 1}")(x)
    outputs = _head(x, num_classes, ndim=ndim, head="softmax", name="output")
    return keras.Model(inputs, outputs, name=name)


ARTICLE_INPUT_SHAPE = (28, 28, 1)


def _article_layers(flatten_size: int) -> dict:
    """The layers of the article's classifier, built as its ``__init__`` declares them.

    ``fc`` is built for ``flatten_size`` inputs (the article declares 16*7*7).
    """
    conv1 = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")
    conv1.build((None, *ARTICLE_INPUT_SHAPE))  # 1 input channel -> 16
    conv2 = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")
    conv2.build((None, 13, 13, 16))  # 16 -> 16
    fc = keras.layers.Dense(10, name="fc")
    fc.build((None, flatten_size))
    return dict(conv1=conv1, conv2=conv2, pool=keras.layers.MaxPooling2D(2, name="pool"),
                flatten=keras.layers.Flatten(name="flatten"), fc=fc)


def article_cnn_forward_as_printed(x, *, fix_conv: bool = False, fix_flatten: bool = False):
    """Run the article's MNIST classifier the way its code is printed.

    The article declares ``conv1`` (1 -> 16 channels), ``conv2`` (16 -> 16) and a
    dense layer for ``16*7*7 = 784`` inputs, but its forward pass

    (a) applies ``conv1`` a second time, to the 16-channel output of the first
        pooling (``conv1`` expects 1 channel), and
    (b) flattens ``16*5*5 = 400`` values (28 -> conv 26 -> pool 13 -> conv 11 ->
        pool 5 with unpadded 3x3 convs), not 784.

    Parameters
    ----------
    x : array-like, float32 (batch, 28, 28, 1)
        Images.
    fix_conv : bool
        Use ``conv2`` for the second convolution (fixes bug a).
    fix_flatten : bool
        Declare the dense layer for 400 inputs (fixes bug b).

    Returns
    -------
    tensor, float32 (batch, 10)
        Class logits, only when both bugs are fixed.

    Raises
    ------
    ValueError
        From Keras: bug (a) "expected axis -1 of input shape to have value 1"
        and/or bug (b) "expected axis -1 ... to have value 784".
    """
    layers = _article_layers(16 * 5 * 5 if fix_flatten else 16 * 7 * 7)
    h = layers["pool"](layers["conv1"](x))
    h = layers["pool"](layers["conv2" if fix_conv else "conv1"](h))  # bug (a)
    h = layers["flatten"](h)  # (batch, 400)
    return layers["fc"](h)  # bug (b): fc expects 784


def article_cnn(fixed: bool = True) -> keras.Model:
    """The article's small MNIST classifier as a Keras model (one label per image).

    ``28x28x1 -> conv3x3 (16, ReLU) -> maxpool 2 -> conv3x3 (16, ReLU) -> maxpool 2
    -> flatten (16*5*5 = 400) -> dense 10 -> softmax``. The convolutions are
    unpadded (26 -> 13 -> 11 -> 5). It classifies; it does not segment: the
    dense layer discards all spatial layout and fixes the input size.

    Parameters
    ----------
    fixed : bool
        ``True`` builds the corrected network. ``False`` wires it as printed in
        the article (``conv1`` applied twice, dense layer declared for 784
        inputs), which fails while building.

    Returns
    -------
    keras.Model
        Input ``(batch, 28, 28, 1)``; output float32 ``(batch, 10)`` class probabilities.

    Raises
    ------
    ValueError
        With ``fixed=False`` (see :func:`article_cnn_forward_as_printed`).
    """
    inputs = keras.Input(shape=ARTICLE_INPUT_SHAPE, name="image")
    logits = article_cnn_forward_as_printed(inputs, fix_conv=fixed, fix_flatten=fixed)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="article_cnn")


# --------------------------------------------------------------------------- inspection
def _shape_str(shape) -> str:
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return ", ".join(_shape_str(s) for s in shape)
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


def _output_shapes(layer) -> list[tuple]:
    out = layer.output
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [tuple(t.shape) for t in outs]


def layer_table(model: keras.Model, *, bytes_per_value: int | None = None) -> pd.DataFrame:
    """One row per layer of a functional ``model``, in graph order.

    Parameters
    ----------
    model : keras.Model
        A built functional model.
    bytes_per_value : int, optional
        When given (4 for float32), add the column ``activation_bytes``: the size
        of the layer's output for one sample, ``prod(output_shape[1:]) *
        bytes_per_value`` (``None`` where a size is unknown).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer`` (name), ``type`` (class name), ``output_shape`` (string,
        batch axis first, ``None`` for unknown sizes) and ``params`` (int, trainable
        and non-trainable weights, e.g. the moving statistics of batch norm), and
        ``activation_bytes`` if asked for.
    """
    rows = []
    for layer in model.layers:
        shapes = _output_shapes(layer)
        row = dict(layer=layer.name, type=type(layer).__name__,
                   output_shape=_shape_str(shapes if len(shapes) > 1 else shapes[0]),
                   params=int(layer.count_params()) if layer.weights else 0)
        if bytes_per_value is not None:
            known = all(s is not None for shape in shapes for s in shape[1:])
            row["activation_bytes"] = (sum(int(np.prod(shape[1:], dtype=np.int64)) for shape in shapes)
                                       * bytes_per_value if known else None)
        rows.append(row)
    columns = ["layer", "type", "output_shape", "params"]
    return pd.DataFrame(rows, columns=columns + (["activation_bytes"] if bytes_per_value is not None else []))


def activation_memory(model: keras.Model, bytes_per_value: int = 4, *, include_input: bool = False) -> int:
    """Bytes of all layer outputs for one sample: a lower bound on training activation memory.

    Sums ``prod(output_shape[1:]) * bytes_per_value`` over the layers (inputs
    excluded unless ``include_input``). Training keeps roughly these tensors for
    the backward pass, plus framework workspace, so real use is higher.

    Parameters
    ----------
    model : keras.Model
        A functional model whose spatial sizes are all known (build it with a
        concrete ``input_shape``).
    bytes_per_value : int
        4 for float32, 2 for float16.
    include_input : bool
        Count the input layer too.

    Returns
    -------
    int
        Bytes per sample.

    Raises
    ------
    ValueError
        If a layer output has an unknown (``None``) size.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) and not include_input:
            continue
        for shape in _output_shapes(layer):
            if any(s is None for s in shape[1:]):
                raise ValueError(f"layer {layer.name!r} has output shape {shape} with an unknown size; "
                                 "build the model with a concrete input_shape")
            total += int(np.prod(shape[1:], dtype=np.int64)) * bytes_per_value
    return total
