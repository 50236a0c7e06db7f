"""NumPy reference implementations of the operations inside a CNN.

Written to be read next to the formulas of notebook 02, not to be fast: every
function is a direct transcription of its formula, with loops over output
positions where that makes the indices visible. The tests check each one
against the matching TensorFlow / Keras op. NumPy only (no TensorFlow import).

Conventions (the same as Keras, ``data_format="channels_last"``):

* inputs are ``(H, W, C_in)`` or batched ``(N, H, W, C_in)`` in 2D, and
  ``(D, H, W, C_in)`` or ``(N, D, H, W, C_in)`` in 3D;
* kernels are ``(kh, kw, C_in, C_out)`` (2D) or ``(kd, kh, kw, C_in, C_out)``
  (3D), i.e. one ``(kh, kw, C_in)`` kernel per output channel;
* biases are ``(C_out,)``;
* all indices are zero-based.

What a "convolutional" layer computes is **cross-correlation** (no kernel
flip). For one output channel ``k`` of a 2D layer with stride ``s``, dilation
``d`` and an input ``Xp`` already padded::

    Y[i, j, k] = b[k] + sum_{m=0}^{kh-1} sum_{n=0}^{kw-1} sum_{c=0}^{C_in-1}
                        Xp[i*s + m*d, j*s + n*d, c] * W[m, n, c, k]

True convolution (:func:`convolve2d`) is the same sum with the kernel flipped
along its spatial axes. Output length along an axis of length ``n`` with
kernel size ``k`` and padding ``p_before + p_after``::

    n_out = floor((n + p_before + p_after - d*(k - 1) - 1) / s) + 1

Padding is ``"valid"`` (none), ``"same"`` (TensorFlow's rule: enough zeros
for ``n_out = ceil(n / s)``, the odd one after), ``"full"`` (``d*(k-1)`` on
both sides), an int (that many zeros on both sides of every spatial axis), or
one int or ``(before, after)`` pair per spatial axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np

__all__ = [
    "Padding", "as_tuple", "padding_amounts", "same_padding", "conv_output_size",
    "conv_output_shape", "conv_transpose_output_size", "correlate", "conv2d", "conv3d",
    "flip_kernel", "convolve2d", "convolve3d", "conv_transpose", "conv2d_transpose",
    "conv3d_transpose", "window_positions", "max_pool2d", "avg_pool2d", "max_pool3d",
    "avg_pool3d", "relu", "relu_derivative", "leaky_relu", "leaky_relu_derivative",
    "sigmoid", "sigmoid_derivative", "tanh", "tanh_derivative", "softmax",
    "softmax_jacobian", "ACTIVATIONS", "LayerSpec", "ReceptiveField", "receptive_field",
    "parameter_count", "layer_table", "classic_kernels", "gaussian_kernel",
]

#: Accepted ``padding`` values: a mode name, an int, or one int / (before, after) per axis.
Padding = Union[str, int, Sequence[Union[int, Sequence[int]]]]


# ---------------------------------------------------------------------------
# Argument handling and output sizes
# ---------------------------------------------------------------------------

def as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``n`` positive ints (an int is repeated).

    Raises ``ValueError`` naming the argument when the length is wrong or a
    value is not a positive integer.
    """
    values = (value,) * n if np.isscalar(value) else tuple(value)
    if len(values) != n:
        raise ValueError(f"{name}={value!r}: expected an int or {n} ints")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={value!r}: every value must be a positive integer")
        out.append(int(v))
    return tuple(out)


def same_padding(n: int, k: int, stride: int = 1, dilation_rate: int = 1) -> tuple[int, int]:
    """Zeros ``(before, after)`` that TensorFlow's ``padding="same"`` adds along one axis.

    The output gets ``ceil(n / stride)`` positions; the total padding is
    ``max((n_out - 1) * stride + d*(k - 1) + 1 - n, 0)`` and the odd zero goes
    after (at the end of the axis).
    """
    n_out = -(-n // stride)
    total = max((n_out - 1) * stride + dilation_rate * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def padding_amounts(padding: Padding, input_shape: Sequence[int], kernel_size: Sequence[int],
                    strides: Sequence[int], dilation_rate: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Resolve ``padding`` to one ``(before, after)`` pair of zero counts per spatial axis.

    Parameters
    ----------
    padding : str, int or sequence
        ``"valid"``, ``"same"``, ``"full"``, an int ``p`` (``(p, p)`` on every
        axis), or one int or ``(before, after)`` pair per spatial axis.
    input_shape, kernel_size, strides, dilation_rate : sequence of int
        One value per spatial axis.
    """
    nd = len(input_shape)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * nd
        if mode == "same":
            return tuple(same_padding(n, k, s, d)
                         for n, k, s, d in zip(input_shape, kernel_size, strides, dilation_rate))
        if mode == "full":
            return tuple((d * (k - 1), d * (k - 1)) for k, d in zip(kernel_size, dilation_rate))
        raise ValueError(f"padding={padding!r}: expected 'valid', 'same', 'full', an int "
                         f"or one (before, after) pair per spatial axis")
    if np.isscalar(padding):
        padding = [padding] * nd
    pads = []
    for p in padding:
        pair = (p, p) if np.isscalar(p) else tuple(p)
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                 or v < 0 for v in pair):
            raise ValueError(f"padding={padding!r}: pads must be non-negative ints "
                             f"or (before, after) pairs")
        pads.append((int(pair[0]), int(pair[1])))
    if len(pads) != nd:
        raise ValueError(f"padding={padding!r}: expected {nd} entries, one per spatial axis")
    return tuple(pads)


def conv_output_size(n: int, k: int, *, strides: int = 1, padding: Padding = "valid",
                     dilation_rate: int = 1) -> int:
    """Output length of a convolution (or pooling) along one axis.

    ``n_out = floor((n + p_before + p_after - d*(k - 1) - 1) / s) + 1``; with
    ``padding="same"`` this is ``ceil(n / s)``. Raises ``ValueError`` when the
    (dilated) kernel does not fit in the padded input.

    Parameters
    ----------
    n : int
        Input length (voxels).
    k : int
        Kernel (or pool window) length.
    strides, dilation_rate : int
        Step between output positions and between kernel taps.
    padding : str, int or (before, after)
        As in :func:`padding_amounts`, for this one axis.
    """
    if not isinstance(padding, str) and not np.isscalar(padding):
        padding = [tuple(padding)]  # one (before, after) pair for this axis
    (p0, p1), = padding_amounts(padding, (n,), (k,), (strides,), (dilation_rate,))
    span = dilation_rate * (k - 1) + 1
    if n + p0 + p1 < span:
        raise ValueError(f"kernel of size {k} (dilation {dilation_rate}, span {span}) does not "
                         f"fit in an input of length {n} padded by ({p0}, {p1})")
    return (n + p0 + p1 - span) // strides + 1


def conv_output_shape(input_shape: Sequence[int], kernel_size: int | Sequence[int], *,
                      strides: int | Sequence[int] = 1, padding: Padding = "valid",
                      dilation_rate: int | Sequence[int] = 1) -> tuple[int, ...]:
    """Spatial output shape of a convolution over an input of spatial shape ``input_shape``."""
    nd = len(input_shape)
    ks = as_tuple(kernel_size, nd, "kernel_size")
    ss = as_tuple(strides, nd, "strides")
    ds = as_tuple(dilation_rate, nd, "dilation_rate")
    pads = padding_amounts(padding, input_shape, ks, ss, ds)
    return tuple(conv_output_size(n, k, strides=s, padding=p, dilation_rate=d)
                 for n, k, s, d, p in zip(input_shape, ks, ss, ds, pads))


def conv_transpose_output_size(n: int, k: int, *, strides: int = 1, padding: str = "valid",
                               output_padding: int | None = None, dilation_rate: int = 1) -> int:
    """Output length of a transposed convolution along one axis (Keras' rule).

    With ``k_eff = d*(k - 1) + 1``: ``"valid"`` gives
    ``(n - 1)*s + k_eff + output_padding`` where ``output_padding`` defaults
    to ``max(k_eff, s) - k_eff``; ``"same"`` gives ``n*s`` by default and
    ``(n - 1)*s + k_eff % 2 + output_padding`` otherwise.
    """
    k_eff = dilation_rate * (k - 1) + 1
    mode = str(padding).lower()
    if mode == "valid":
        op = max(k_eff, strides) - k_eff if output_padding is None else output_padding
        return (n - 1) * strides + k_eff + op
    if mode == "same":
        return n * strides if output_padding is None else (n - 1) * strides + k_eff % 2 + output_padding
    raise ValueError(f"padding={padding!r}: transposed convolutions take 'valid' or 'same'")


# ---------------------------------------------------------------------------
# Cross-correlation and convolution
# ---------------------------------------------------------------------------

def _batched(x: np.ndarray, nd: int, name: str = "x") -> tuple[np.ndarray, bool]:
    """Return ``x`` with a batch axis and whether one was added."""
    x = np.asarray(x)
    if x.ndim == nd + 1:
        return x[np.newaxis], True
    if x.ndim == nd + 2:
        return x, False
    raise ValueError(f"{name} has shape {x.shape}: expected {nd} spatial axes and a channel "
                     f"axis, optionally after a batch axis ({nd + 1} or {nd + 2} dimensions)")


def correlate(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None, *,
              strides: int | Sequence[int] = 1, padding: Padding = "valid",
              dilation_rate: int | Sequence[int] = 1) -> np.ndarray:
    """Multi-channel cross-correlation in any number of spatial dimensions.

    What Keras' ``ConvND`` layers compute. The number of spatial axes ``nd`` is
    ``kernel.ndim - 2``. For every output position ``o`` (a tuple of ``nd``
    indices) and output channel ``k``::

        Y[o, k] = b[k] + sum_{t, c} Xp[o*s + t*d, c] * W[t, c, k]

    where ``t`` runs over the kernel taps, ``c`` over the input channels and
    ``Xp`` is the zero-padded input.

    Parameters
    ----------
    x : ndarray
        ``(*spatial, C_in)`` or ``(N, *spatial, C_in)``.
    kernel : ndarray
        ``(*kernel_size, C_in, C_out)``.
    bias : ndarray, optional
        ``(C_out,)``; no bias when omitted.
    strides, dilation_rate : int or sequence of int
        Per spatial axis (an int is used for all).
    padding : str, int or sequence
        See :func:`padding_amounts`.

    Returns
    -------
    ndarray
        ``(*out_spatial, C_out)`` (or with the batch axis if ``x`` had one),
        dtype ``np.result_type(x, kernel, bias)`` (integers stay exact).
    """
    kernel = np.asarray(kernel)
    nd = kernel.ndim - 2
    if nd < 1:
        raise ValueError(f"kernel has shape {kernel.shape}: expected (*kernel_size, C_in, C_out)")
    xb, added = _batched(x, nd)
    c_in, c_out = kernel.shape[-2:]
    if xb.shape[-1] != c_in:
        raise ValueError(f"x has {xb.shape[-1]} channels but the kernel {kernel.shape} "
                         f"expects C_in={c_in}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (c_out,):
            raise ValueError(f"bias has shape {bias.shape}: expected ({c_out},)")
    ks = kernel.shape[:nd]
    ss = as_tuple(strides, nd, "strides")
    ds = as_tuple(dilation_rate, nd, "dilation_rate")
    spatial = xb.shape[1:-1]
    pads = padding_amounts(padding, spatial, ks, ss, ds)
    out_shape = conv_output_shape(spatial, ks, strides=ss, padding=pads, dilation_rate=ds)

    xp = np.pad(xb, [(0, 0), *pads, (0, 0)])  # zero padding of the spatial axes only
    dtype = np.result_type(xb, kernel) if bias is None else np.result_type(xb, kernel, bias)
    y = np.zeros((xb.shape[0], *out_shape, c_out), dtype=dtype)
    for o in np.ndindex(*out_shape):
        # The input window seen by output position o: taps o*s + t*d, t = 0..k-1.
        window = xp[(slice(None),) + tuple(slice(oi * s, oi * s + d * (k - 1) + 1, d)
                                           for oi, s, d, k in zip(o, ss, ds, ks))]
        # (N, *k, C_in) x (*k, C_in, C_out) summed over taps and input channels -> (N, C_out)
        y[(slice(None), *o)] = np.tensordot(window, kernel, axes=nd + 1)
    if bias is not None:
        y = y + bias
    return y[0] if added else y


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None, *,
           strides: int | Sequence[int] = 1, padding: Padding = "valid",
           dilation_rate: int | Sequence[int] = 1) -> np.ndarray:
    """2D cross-correlation, what ``keras.layers.Conv2D`` computes.

    ``x`` is ``(H, W, C_in)`` or ``(N, H, W, C_in)``, ``kernel``
    ``(kh, kw, C_in, C_out)``, ``bias`` ``(C_out,)``; returns
    ``(H_out, W_out, C_out)`` (batched if ``x`` was). See :func:`correlate`.
    """
    if np.ndim(kernel) != 4:
        raise ValueError(f"kernel has shape {np.shape(kernel)}: expected (kh, kw, C_in, C_out)")
    return correlate(x, kernel, bias, strides=strides, padding=padding, dilation_rate=dilation_rate)


def conv3d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None, *,
           strides: int | Sequence[int] = 1, padding: Padding = "valid",
           dilation_rate: int | Sequence[int] = 1) -> np.ndarray:
    """3D cross-correlation, what ``keras.layers.Conv3D`` computes.

    ``x`` is ``(D, H, W, C_in)`` or ``(N, D, H, W, C_in)``, ``kernel``
    ``(kd, kh, kw, C_in, C_out)``, ``bias`` ``(C_out,)``. See :func:`correlate`.
    """
    if np.ndim(kernel) != 5:
        raise ValueError(f"kernel has shape {np.shape(kernel)}: expected (kd, kh, kw, C_in, C_out)")
    return correlate(x, kernel, bias, strides=strides, padding=padding, dilation_rate=dilation_rate)


def flip_kernel(kernel: np.ndarray) -> np.ndarray:
    """Reverse a ``(*kernel_size, C_in, C_out)`` kernel along its spatial axes."""
    kernel = np.asarray(kernel)
    return np.flip(kernel, axis=tuple(range(kernel.ndim - 2)))


def convolve2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None,
               **kwargs) -> np.ndarray:
    """True 2D convolution: :func:`conv2d` with the kernel flipped in both spatial axes.

    ``Y[i, j, k] = b[k] + sum_{m, n, c} Xp[i*s + m*d, j*s + n*d, c] * W[kh-1-m, kw-1-n, c, k]``.
    For a symmetric kernel it equals cross-correlation. Keyword arguments as in :func:`conv2d`.
    """
    return conv2d(x, flip_kernel(kernel), bias, **kwargs)


def convolve3d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None,
               **kwargs) -> np.ndarray:
    """True 3D convolution: :func:`conv3d` with the kernel flipped in its three spatial axes."""
    return conv3d(x, flip_kernel(kernel), bias, **kwargs)


def window_positions(out_index: Sequence[int], kernel_size: int | Sequence[int], *,
                     strides: int | Sequence[int] = 1, padding: Padding = "valid",
                     dilation_rate: int | Sequence[int] = 1,
                     input_shape: Sequence[int]) -> np.ndarray:
    """Input coordinates read by one output position, one row per kernel tap.

    Returns an int array ``(prod(kernel_size), nd)`` in the kernel's C order
    (tap ``t`` multiplies ``W[t]``). Coordinates outside ``[0, input_shape)``
    fall in the zero padding. Used to draw what stride, padding and dilation do.
    """
    nd = len(input_shape)
    ks = as_tuple(kernel_size, nd, "kernel_size")
    ss = as_tuple(strides, nd, "strides")
    ds = as_tuple(dilation_rate, nd, "dilation_rate")
    pads = padding_amounts(padding, input_shape, ks, ss, ds)
    out_shape = conv_output_shape(input_shape, ks, strides=ss, padding=pads, dilation_rate=ds)
    if len(out_index) != nd or any(not 0 <= o < n for o, n in zip(out_index, out_shape)):
        raise ValueError(f"out_index={tuple(out_index)} is outside the output shape {out_shape}")
    rows = [[o * s + t * d - p[0] for o, s, t, d, p in zip(out_index, ss, taps, ds, pads)]
            for taps in product(*(range(k) for k in ks))]
    return np.array(rows, dtype=int)


# ---------------------------------------------------------------------------
# Transposed convolution
# ---------------------------------------------------------------------------

def conv_transpose(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None, *,
                   strides: int | Sequence[int] = 1, padding: str = "valid",
                   output_padding: int | Sequence[int] | None = None,
                   dilation_rate: int | Sequence[int] = 1) -> np.ndarray:
    """Transposed convolution in any number of spatial dimensions (Keras' ``ConvNDTranspose``).

    Each input position ``i`` *scatters* its values through the kernel into the
    output: ``Y[i*s + t*d - p_before, :] += W[t] @ X[i, :]`` for every tap ``t``,
    then the bias is added. It is the adjoint (the gradient with respect to the
    input) of :func:`correlate` with the same kernel and an input of the
    output's shape, which is how TensorFlow computes it.

    Parameters
    ----------
    x : ndarray
        ``(*spatial, C_in)`` or ``(N, *spatial, C_in)``.
    kernel : ndarray
        ``(*kernel_size, C_out, C_in)``: the layout Keras' ``ConvNDTranspose``
        stores (``filters`` before input channels), i.e. the kernel of the
        forward convolution from ``C_out`` to ``C_in`` channels that this
        operation transposes.
    bias : ndarray, optional
        ``(C_out,)``.
    strides, dilation_rate : int or sequence of int
    padding : {"valid", "same"}
    output_padding : int, sequence of int or None
        Extra length at the end of each axis (Keras' argument); see
        :func:`conv_transpose_output_size`.

    Returns
    -------
    ndarray
        ``(*out_spatial, C_out)``, batched if ``x`` was.
    """
    kernel = np.asarray(kernel)
    nd = kernel.ndim - 2
    if nd < 1:
        raise ValueError(f"kernel has shape {kernel.shape}: expected (*kernel_size, C_out, C_in)")
    xb, added = _batched(x, nd)
    c_out, c_in = kernel.shape[-2:]
    if xb.shape[-1] != c_in:
        raise ValueError(f"x has {xb.shape[-1]} channels but the transposed kernel {kernel.shape} "
                         f"expects C_in={c_in} (layout (*kernel_size, C_out, C_in))")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (c_out,):
            raise ValueError(f"bias has shape {bias.shape}: expected ({c_out},)")
    ks = kernel.shape[:nd]
    ss = as_tuple(strides, nd, "strides")
    ds = as_tuple(dilation_rate, nd, "dilation_rate")
    ops = (None,) * nd if output_padding is None else tuple(
        (output_padding,) * nd if np.isscalar(output_padding) else output_padding)
    if len(ops) != nd:
        raise ValueError(f"output_padding={output_padding!r}: expected an int or {nd} ints")
    spatial = xb.shape[1:-1]
    out_shape = tuple(conv_transpose_output_size(n, k, strides=s, padding=padding,
                                                 output_padding=op, dilation_rate=d)
                      for n, k, s, op, d in zip(spatial, ks, ss, ops, ds))
    # Zeros cropped from the start: those the forward "same" convolution would add.
    before = padding_amounts(padding, out_shape, ks, ss, ds)
    full = [max(p + m, (n - 1) * s + d * (k - 1) + 1)
            for (p, _), m, n, s, d, k in zip(before, out_shape, spatial, ss, ds, ks)]
    dtype = np.result_type(xb, kernel) if bias is None else np.result_type(xb, kernel, bias)
    buffer = np.zeros((xb.shape[0], *full, c_out), dtype=dtype)
    for i in np.ndindex(*spatial):
        for t in np.ndindex(*ks):
            pos = tuple(ii * s + tt * d for ii, s, tt, d in zip(i, ss, t, ds))
            # (N, C_in) @ (C_in, C_out): W[t] is (C_out, C_in), so use its transpose.
            buffer[(slice(None), *pos)] += xb[(slice(None), *i)] @ kernel[t].T
    y = buffer[(slice(None),) + tuple(slice(p, p + m) for (p, _), m in zip(before, out_shape))]
    if bias is not None:
        y = y + bias
    return y[0] if added else y


def conv2d_transpose(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None,
                     **kwargs) -> np.ndarray:
    """2D transposed convolution (``keras.layers.Conv2DTranspose``).

    ``x`` is ``(H, W, C_in)`` or ``(N, H, W, C_in)``; ``kernel`` is
    ``(kh, kw, C_out, C_in)`` as Keras stores it. See :func:`conv_transpose`.
    """
    if np.ndim(kernel) != 4:
        raise ValueError(f"kernel has shape {np.shape(kernel)}: expected (kh, kw, C_out, C_in)")
    return conv_transpose(x, kernel, bias, **kwargs)


def conv3d_transpose(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None,
                     **kwargs) -> np.ndarray:
    """3D transposed convolution (``keras.layers.Conv3DTranspose``); kernel ``(kd, kh, kw, C_out, C_in)``."""
    if np.ndim(kernel) != 5:
        raise ValueError(f"kernel has shape {np.shape(kernel)}: expected (kd, kh, kw, C_out, C_in)")
    return conv_transpose(x, kernel, bias, **kwargs)


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------

def _pool(x: np.ndarray, nd: int, reduce: Callable[[np.ndarray], np.ndarray],
          pool_size: int | Sequence[int], strides: int | Sequence[int] | None,
          padding: str) -> np.ndarray:
    """Apply ``reduce`` (over axis 1 of a ``(N, taps, C)`` array) to every pooling window.

    Windows are clipped to the input, so padded positions are ignored: the
    maximum of the real values, the mean over the real values only (as
    TensorFlow does for ``padding="same"``).
    """
    if str(padding).lower() not in ("valid", "same"):
        raise ValueError(f"padding={padding!r}: pooling takes 'valid' or 'same'")
    xb, added = _batched(x, nd)
    ps = as_tuple(pool_size, nd, "pool_size")
    ss = ps if strides is None else as_tuple(strides, nd, "strides")
    spatial = xb.shape[1:-1]
    pads = padding_amounts(padding, spatial, ps, ss, (1,) * nd)
    out_shape = conv_output_shape(spatial, ps, strides=ss, padding=pads)
    dtype = np.result_type(xb, np.float32) if reduce is np.mean else xb.dtype
    y = np.zeros((xb.shape[0], *out_shape, xb.shape[-1]), dtype=dtype)
    for o in np.ndindex(*out_shape):
        starts = [oi * s - p[0] for oi, s, p in zip(o, ss, pads)]
        window = xb[(slice(None),) + tuple(slice(max(a, 0), min(a + k, n))
                                           for a, k, n in zip(starts, ps, spatial))]
        y[(slice(None), *o)] = reduce(window.reshape(xb.shape[0], -1, xb.shape[-1]), axis=1)
    return y[0] if added else y


def max_pool2d(x: np.ndarray, pool_size: int | Sequence[int] = 2,
               strides: int | Sequence[int] | None = None, padding: str = "valid") -> np.ndarray:
    """2D max pooling (``keras.layers.MaxPooling2D``); ``x`` ``(H, W, C)`` or ``(N, H, W, C)``.

    ``strides`` defaults to ``pool_size``. Each channel is pooled on its own.
    """
    return _pool(x, 2, np.max, pool_size, strides, padding)


def avg_pool2d(x: np.ndarray, pool_size: int | Sequence[int] = 2,
               strides: int | Sequence[int] | None = None, padding: str = "valid") -> np.ndarray:
    """2D average pooling (``keras.layers.AveragePooling2D``); padded zeros are not counted."""
    return _pool(x, 2, np.mean, pool_size, strides, padding)


def max_pool3d(x: np.ndarray, pool_size: int | Sequence[int] = 2,
               strides: int | Sequence[int] | None = None, padding: str = "valid") -> np.ndarray:
    """3D max pooling (``keras.layers.MaxPooling3D``); ``x`` ``(D, H, W, C)`` or batched."""
    return _pool(x, 3, np.max, pool_size, strides, padding)


def avg_pool3d(x: np.ndarray, pool_size: int | Sequence[int] = 2,
               strides: int | Sequence[int] | None = None, padding: str = "valid") -> np.ndarray:
    """3D average pooling (``keras.layers.AveragePooling3D``); padded zeros are not counted."""
    return _pool(x, 3, np.mean, pool_size, strides, padding)


# ---------------------------------------------------------------------------
# Activations and their derivatives (elementwise, any shape)
# ---------------------------------------------------------------------------

def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``."""
    return np.maximum(np.asarray(x), 0)


def relu_derivative(x: np.ndarray) -> np.ndarray:
    """``1`` where ``x > 0`` else ``0`` (TensorFlow also uses 0 at ``x = 0``)."""
    x = np.asarray(x)
    return (x > 0).astype(np.result_type(x, np.float32))


def leaky_relu(x: np.ndarray, negative_slope: float = 0.2) -> np.ndarray:
    """``x`` where ``x > 0`` else ``negative_slope * x`` (``keras.ops.leaky_relu``'s default slope)."""
    x = np.asarray(x)
    return np.where(x > 0, x, negative_slope * x)


def leaky_relu_derivative(x: np.ndarray, negative_slope: float = 0.2) -> np.ndarray:
    """``1`` where ``x > 0`` else ``negative_slope``."""
    x = np.asarray(x)
    return np.where(x > 0, 1.0, negative_slope).astype(np.result_type(x, np.float32))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.result_type(x, np.float32))


def sigmoid_derivative(x: np.ndarray) -> np.ndarray:
    """``sigmoid(x) * (1 - sigmoid(x))``; at most 0.25 (at ``x = 0``)."""
    s = sigmoid(x)
    return s * (1 - s)


def tanh(x: np.ndarray) -> np.ndarray:
    """Hyperbolic tangent, ``2 * sigmoid(2x) - 1``."""
    return np.tanh(np.asarray(x))


def tanh_derivative(x: np.ndarray) -> np.ndarray:
    """``1 - tanh(x)**2``; at most 1 (at ``x = 0``)."""
    return 1 - np.tanh(np.asarray(x)) ** 2


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis`` (the channel axis by default).

    The maximum is subtracted first; this changes nothing mathematically and
    prevents overflow.
    """
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_jacobian(x: np.ndarray) -> np.ndarray:
    """Jacobian of :func:`softmax` over the last axis.

    For ``x`` of shape ``(..., K)`` returns ``(..., K, K)`` with
    ``J[..., i, j] = d softmax_i / d x_j = s_i * (delta_ij - s_j)``.
    """
    s = softmax(x, axis=-1)
    return s[..., :, None] * (np.eye(s.shape[-1]) - s[..., None, :])


#: name -> (function, derivative) for the elementwise activations.
ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "relu": (relu, relu_derivative),
    "leaky_relu": (leaky_relu, leaky_relu_derivative),
    "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative),
}


# ---------------------------------------------------------------------------
# Stacks of layers: receptive field, parameter count, output shapes
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """One layer of a stack, described by the numbers that decide its geometry.

    Parameters
    ----------
    kind : {"conv", "pool", "conv_transpose"}
        Convolution, pooling (max or average: same geometry, no parameters),
        or transposed convolution.
    kernel_size : int or tuple of int
        Kernel or pool window (an int is used for every spatial axis).
    strides : int, tuple of int or None
        ``None`` means 1 for convolutions and ``kernel_size`` for pooling.
    padding : str
        ``"valid"`` or ``"same"`` (see :func:`padding_amounts`).
    dilation_rate : int or tuple of int
    filters : int or None
        Output channels (convolutions only; pooling keeps the channel count).
    use_bias : bool
        Whether a convolution has a bias (``filters`` extra parameters).
    name : str
        Label used in :func:`layer_table`.
    """

    kind: str
    kernel_size: int | tuple[int, ...]
    strides: int | tuple[int, ...] | None = None
    padding: str = "valid"
    dilation_rate: int | tuple[int, ...] = 1
    filters: int | None = None
    use_bias: bool = True
    name: str = ""

    def __post_init__(self):
        if self.kind not in ("conv", "pool", "conv_transpose"):
            raise ValueError(f"kind={self.kind!r}: expected 'conv', 'pool' or 'conv_transpose'")
        if self.kind != "pool" and (self.filters is None or self.filters < 1):
            raise ValueError(f"a {self.kind} layer needs filters >= 1 (got {self.filters!r})")

    def geometry(self, nd: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(kernel_size, strides, dilation_rate)`` as tuples of ``nd`` ints."""
        ks = as_tuple(self.kernel_size, nd, "kernel_size")
        if self.strides is None:
            ss = ks if self.kind == "pool" else (1,) * nd
        else:
            ss = as_tuple(self.strides, nd, "strides")
        return ks, ss, as_tuple(self.dilation_rate, nd, "dilation_rate")


class ReceptiveField(NamedTuple):
    """Receptive field after a layer, per spatial axis.

    ``size``: how many input voxels one output voxel depends on (the span,
    dilation gaps included); ``jump``: the distance in input voxels between
    neighbouring output voxels (product of the strides so far).
    """

    size: tuple[int, ...]
    jump: tuple[int, ...]


def receptive_field(layers: Sequence[LayerSpec], nd: int = 2) -> list[ReceptiveField]:
    """Receptive field after each layer of a stack of convolutions and poolings.

    Recurrence per axis, starting from ``r = 1, j = 1`` (one input voxel)::

        r_out = r_in + (k_eff - 1) * j_in,   k_eff = d*(k - 1) + 1
        j_out = j_in * s

    Padding moves the field but does not change its size. Raises
    ``ValueError`` for transposed convolutions (an upsampling layer does not
    have a single field size per output voxel).
    """
    r, j = (1,) * nd, (1,) * nd
    out = []
    for layer in layers:
        if layer.kind == "conv_transpose":
            raise ValueError(f"layer {layer.name or layer}: receptive_field handles "
                             f"convolutions and pooling only")
        r, j = _grow_field(r, j, *layer.geometry(nd))
        out.append(ReceptiveField(r, j))
    return out


def _grow_field(r, j, ks, ss, ds) -> ReceptiveField:
    """One step of the receptive-field recurrence (per axis), see :func:`receptive_field`."""
    return ReceptiveField(tuple(ri + d * (k - 1) * ji for ri, ji, k, d in zip(r, j, ks, ds)),
                          tuple(ji * s for ji, s in zip(j, ss)))


def parameter_count(layer: LayerSpec, in_channels: int, nd: int = 2) -> int:
    """Trainable parameters of one layer: ``prod(kernel_size) * C_in * filters (+ filters)``.

    The same count for a convolution and a transposed convolution (the kernel
    has the same entries, stored in another order); 0 for pooling.
    """
    if layer.kind == "pool":
        return 0
    ks, _, _ = layer.geometry(nd)
    return math.prod(ks) * in_channels * layer.filters + (layer.filters if layer.use_bias else 0)


def layer_table(layers: Sequence[LayerSpec], input_shape: Sequence[int]) -> list[dict]:
    """Output shape, parameters and receptive field of every layer of a stack.

    Parameters
    ----------
    layers : sequence of LayerSpec
    input_shape : sequence of int
        ``(*spatial, C_in)`` without the batch axis, e.g. ``(64, 64, 1)``.

    Returns
    -------
    list of dict
        One row per layer with keys ``name``, ``kind``, ``output_shape``
        (``(*spatial, C)``), ``params``, ``receptive_field`` and ``jump``
        (tuples per axis; ``None`` from the first transposed convolution on).
        Ready for ``pandas.DataFrame``.
    """
    *spatial, channels = (int(v) for v in input_shape)
    nd = len(spatial)
    r, j = (1,) * nd, (1,) * nd
    rows = []
    for index, layer in enumerate(layers):
        ks, ss, ds = layer.geometry(nd)
        params = parameter_count(layer, channels, nd)
        if layer.kind == "conv_transpose":
            spatial = [conv_transpose_output_size(n, k, strides=s, padding=layer.padding,
                                                  dilation_rate=d)
                       for n, k, s, d in zip(spatial, ks, ss, ds)]
            r = j = None
        else:
            spatial = list(conv_output_shape(spatial, ks, strides=ss, padding=layer.padding,
                                             dilation_rate=ds))
            if r is not None:
                r, j = _grow_field(r, j, ks, ss, ds)
        if layer.kind != "pool":
            channels = layer.filters
        rows.append({"name": layer.name or f"{layer.kind}_{index}", "kind": layer.kind,
                     "output_shape": (*spatial, channels), "params": params,
                     "receptive_field": r, "jump": j})
    return rows


# ---------------------------------------------------------------------------
# Classic hand-made kernels
# ---------------------------------------------------------------------------

def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A ``(size, size)`` float64 Gaussian smoothing kernel summing to 1 (``sigma`` in voxels)."""
    if size < 1 or sigma <= 0:
        raise ValueError(f"size={size}, sigma={sigma}: need size >= 1 and sigma > 0")
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def classic_kernels() -> dict[str, np.ndarray]:
    """Hand-made 3x3 kernels (float64, ``(3, 3)``) used before kernels were learned.

    ``"identity"``; ``"box"`` and ``"gaussian"`` (smoothing, sum 1);
    ``"sobel_axis0"`` / ``"sobel_axis1"`` (cross-correlation responds
    positively where intensity increases along array axis 0 / 1);
    ``"laplacian"`` (second derivative, sum 0). Reshape one with
    ``k[:, :, None, None]`` or stack several along the last axis to get a
    ``(3, 3, 1, C_out)`` kernel.
    """
    smooth = np.array([1.0, 2.0, 1.0])
    diff = np.array([-1.0, 0.0, 1.0])
    return {
        "identity": np.pad(np.ones((1, 1)), 1),
        "box": np.full((3, 3), 1 / 9),
        "gaussian": np.outer(smooth, smooth) / 16,
        "sobel_axis0": np.outer(diff, smooth),
        "sobel_axis1": np.outer(smooth, diff),
        "laplacian": np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]),
    }
