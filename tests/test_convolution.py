"""The NumPy reference ops of medseg_tf.convolution against TensorFlow / Keras.

Random inputs, combinations of stride, padding, dilation and channel counts
(hypothesis), compared to 1e-5. The worked example of notebook 02 is checked
against the numbers stated in issue 4 (96, 141, 186).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras
import tensorflow as tf

from medseg_tf import convolution as cv

TOL = dict(rtol=1e-5, atol=1e-5)
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _tf_pads(pads):
    return [[0, 0], *[list(p) for p in pads], [0, 0]]


def _dilated(k: np.ndarray, rates) -> np.ndarray:
    """Kernel (*spatial, c_in, c_out) with rate - 1 zeros between its taps: at rate 1 it computes what `k` does
    at `rates`. TensorFlow's CPU kernels refuse dilation in Conv3D and in the backward pass of Conv2D unless
    oneDNN takes the call (which depends on the CPU), so the TensorFlow references use this instead."""
    rates = tuple(rates)
    spatial = k.shape[:len(rates)]
    out = np.zeros([r * (n - 1) + 1 for n, r in zip(spatial, rates)] + list(k.shape[len(rates):]), k.dtype)
    out[tuple(slice(None, None, r) for r in rates)] = k
    return out


# --------------------------------------------------------------------------
# The worked example
# --------------------------------------------------------------------------

def test_worked_example_matches_issue_numbers_and_keras():
    x = np.tile(np.arange(1, 29), (28, 1))[:, :, None]        # X[i, j] = j + 1
    w = np.arange(1, 10).reshape(3, 3, 1, 1)                   # 1..9 row by row
    y = cv.conv2d(x, w)
    assert y.shape == (26, 26, 1)
    assert y.dtype.kind == "i"                                 # integers stay exact
    np.testing.assert_array_equal(y[0, :3, 0], [96, 141, 186])
    # Every row is the same because X does not depend on i.
    np.testing.assert_array_equal(y[:, :, 0], np.broadcast_to(y[0, :, 0], (26, 26)))
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(1, 3, use_bias=False)
    layer.build((1, 28, 28, 1))
    layer.set_weights([w.astype("float32")])
    y_keras = keras.ops.convert_to_numpy(layer(x[None].astype("float32")))[0]
    np.testing.assert_allclose(y_keras, y, **TOL)


# --------------------------------------------------------------------------
# Cross-correlation
# --------------------------------------------------------------------------

padding_2d = st.one_of(
    st.sampled_from(["valid", "same"]),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
              st.tuples(st.integers(0, 2), st.integers(0, 2))),
)


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(1, 2), h=st.integers(3, 9), w=st.integers(3, 9),
       c_in=st.integers(1, 3), c_out=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.sampled_from([(1, 1), (2, 2), (1, 2)]), padding=padding_2d,
       batched=st.booleans())
def test_conv2d_matches_tf_nn_conv2d(seed, n, h, w, c_in, c_out, kh, kw, strides, dilation, padding,
                                     batched):
    rng = np.random.default_rng(seed)
    x, k, b = _rand(rng, n, h, w, c_in), _rand(rng, kh, kw, c_in, c_out), _rand(rng, c_out)
    pads = cv.padding_amounts(padding, (h, w), (kh, kw), strides, dilation)
    if any(n_ + p0 + p1 < d * (k_ - 1) + 1 for n_, (p0, p1), d, k_ in zip((h, w), pads, dilation, (kh, kw))):
        with pytest.raises(ValueError, match="does not fit"):
            cv.conv2d(x, k, b, strides=strides, padding=padding, dilation_rate=dilation)
        return
    tf_padding = padding.upper() if isinstance(padding, str) else _tf_pads(padding)
    expected = tf.nn.conv2d(x, k, strides=[1, *strides, 1], padding=tf_padding,
                            dilations=[1, *dilation, 1]).numpy() + b
    got = cv.conv2d(x if batched else x[0], k, b, strides=strides, padding=padding,
                    dilation_rate=dilation)
    np.testing.assert_allclose(got, expected if batched else expected[0], **TOL)


@FAST
@given(seed=st.integers(0, 2**16), shape=st.tuples(st.integers(3, 6), st.integers(3, 6), st.integers(3, 6)),
       c_in=st.integers(1, 2), c_out=st.integers(1, 3), ksize=st.tuples(st.integers(1, 3), st.integers(1, 3),
                                                                        st.integers(1, 2)),
       strides=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
       dilation=st.sampled_from([(1, 1, 1), (2, 1, 1), (2, 2, 1)]),
       padding=st.sampled_from(["valid", "same", ((1, 0), (0, 2), (1, 1))]))
def test_conv3d_matches_tf_nn_conv3d(seed, shape, c_in, c_out, ksize, strides, dilation, padding):
    rng = np.random.default_rng(seed)
    x, k, b = _rand(rng, 2, *shape, c_in), _rand(rng, *ksize, c_in, c_out), _rand(rng, c_out)
    if isinstance(padding, str):
        xt, tf_padding = x, padding.upper()
    else:  # tf.nn.conv3d has no explicit padding: pad with zeros first
        xt, tf_padding = np.pad(x, [(0, 0), *padding, (0, 0)]), "VALID"
    if tf_padding == "VALID" and any(n < d * (k_ - 1) + 1
                                     for n, d, k_ in zip(xt.shape[1:4], dilation, ksize)):
        return  # the kernel does not fit ("does not fit" is checked in the 2D test)
    expected = tf.nn.conv3d(xt, _dilated(k, dilation), strides=[1, *strides, 1], padding=tf_padding).numpy() + b
    got = cv.conv3d(x, k, b, strides=strides, padding=padding, dilation_rate=dilation)
    np.testing.assert_allclose(got, expected, **TOL)


@pytest.mark.parametrize("padding,strides,dilation", [
    ("valid", 1, 1), ("same", 1, 2), ("same", 2, 1), ("valid", (2, 1), 1), ("same", 3, 1),
])
def test_conv2d_and_conv3d_match_keras_layers_with_set_weights(padding, strides, dilation):
    rng = np.random.default_rng(7)
    x2, k2, b2 = _rand(rng, 2, 11, 10, 3), _rand(rng, 3, 3, 3, 4), _rand(rng, 4)
    layer = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, dilation_rate=dilation)
    layer.build(x2.shape)
    layer.set_weights([k2, b2])
    np.testing.assert_allclose(cv.conv2d(x2, k2, b2, strides=strides, padding=padding,
                                         dilation_rate=dilation),
                               keras.ops.convert_to_numpy(layer(x2)), **TOL)
    x3, k3, b3 = _rand(rng, 1, 7, 8, 6, 2), _rand(rng, 3, 2, 3, 2, 3), _rand(rng, 3)
    s3 = strides if np.isscalar(strides) else (*strides, 1)
    layer3 = keras.layers.Conv3D(3, (3, 2, 3), strides=s3, padding=padding, dilation_rate=dilation)
    layer3.build(x3.shape)
    layer3.set_weights([k3, b3])
    np.testing.assert_allclose(cv.conv3d(x3, k3, b3, strides=s3, padding=padding,
                                         dilation_rate=dilation),
                               keras.ops.convert_to_numpy(layer3(x3)), **TOL)


def test_true_convolution_flips_the_kernel():
    rng = np.random.default_rng(1)
    x, k = rng.standard_normal((9, 8)), rng.standard_normal((3, 2))
    for mode in ("valid", "full"):
        got = cv.convolve2d(x[:, :, None], k[:, :, None, None], padding=mode)[:, :, 0]
        np.testing.assert_allclose(got, scipy.signal.convolve2d(x, k, mode=mode), **TOL)
    x3, k3 = rng.standard_normal((6, 5, 7)), rng.standard_normal((2, 3, 2))
    got3 = cv.convolve3d(x3[..., None], k3[..., None, None])[..., 0]
    np.testing.assert_allclose(got3, scipy.signal.convolve(x3, k3, mode="valid"), **TOL)
    # With an asymmetric kernel, convolution and cross-correlation differ.
    assert not np.allclose(cv.convolve2d(x[:, :, None], k[:, :, None, None]),
                           cv.conv2d(x[:, :, None], k[:, :, None, None]))


@pytest.mark.parametrize("padding,strides,dilation,out", [
    ("valid", 1, 1, (3, 4)), ("same", 2, 1, (2, 1)), (((2, 0), (1, 1)), 1, 2, (5, 0)), ("full", 1, 1, (0, 0)),
])
def test_window_positions_are_where_the_gradient_is_nonzero(padding, strides, dilation, out):
    rng = np.random.default_rng(3)
    shape = (8, 7)
    x = tf.Variable(_rand(rng, 1, *shape, 1))
    k = np.abs(_rand(rng, 3, 3, 1, 1)) + 0.5                   # no zero taps
    pads = cv.padding_amounts(padding, shape, (3, 3), (strides,) * 2, (dilation,) * 2)
    with tf.GradientTape() as tape:
        xp = tf.pad(x, _tf_pads(pads))
        y = tf.nn.conv2d(xp, _dilated(k, (dilation,) * 2), strides=strides, padding="VALID")
        target = y[0, out[0], out[1], 0]
    grad = tape.gradient(target, x).numpy()[0, :, :, 0]
    positions = cv.window_positions(out, 3, strides=strides, padding=padding,
                                    dilation_rate=dilation, input_shape=shape)
    assert positions.shape == (9, 2)
    inside = [tuple(p) for p in positions if 0 <= p[0] < shape[0] and 0 <= p[1] < shape[1]]
    assert set(inside) == set(zip(*np.nonzero(grad)))
    # Each tap's gradient is its kernel weight.
    for t, p in enumerate(positions):
        if tuple(p) in inside:
            assert grad[tuple(p)] == pytest.approx(k.reshape(-1)[t], rel=1e-6)


# --------------------------------------------------------------------------
# Output sizes
# --------------------------------------------------------------------------

@FAST
@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), d=st.integers(1, 3),
       padding=st.sampled_from(["valid", "same"]))
def test_output_size_formula_matches_keras_shapes(n, k, s, d, padding):
    if s > 1 and d > 1:
        d = 1  # Keras refuses strides > 1 together with dilation > 1
    layer = keras.layers.Conv2D(1, k, strides=s, padding=padding, dilation_rate=d)
    if padding == "valid" and n < d * (k - 1) + 1:
        with pytest.raises(ValueError, match="does not fit"):
            cv.conv_output_size(n, k, strides=s, padding=padding, dilation_rate=d)
        return
    expected = layer.compute_output_shape((1, n, n + 3, 1))[1:3]
    assert cv.conv_output_shape((n, n + 3), k, strides=s, padding=padding, dilation_rate=d) == expected
    assert cv.conv_output_size(n, k, strides=s, padding=padding, dilation_rate=d) == expected[0]
    if padding == "same":
        assert expected[0] == -(-n // s)
    t_layer = keras.layers.Conv2DTranspose(1, k, strides=s, padding=padding, dilation_rate=d)
    assert cv.conv_transpose_output_size(n, k, strides=s, padding=padding, dilation_rate=d) == \
        t_layer.compute_output_shape((1, n, n, 1))[1]


def test_explicit_and_full_padding_sizes():
    assert cv.conv_output_size(28, 3) == 26
    assert cv.conv_output_size(28, 3, padding=1) == 28
    assert cv.conv_output_size(28, 3, padding=(0, 2)) == 28
    assert cv.conv_output_size(28, 3, padding="full") == 30
    assert cv.conv_output_size(28, 3, strides=2, padding=(1, 1)) == 14
    assert cv.same_padding(5, 4, 1) == (1, 2)                  # the odd zero goes after
    assert cv.same_padding(6, 3, 2) == (0, 1)


# --------------------------------------------------------------------------
# Transposed convolution
# --------------------------------------------------------------------------

@FAST
@given(seed=st.integers(0, 2**16), h=st.integers(1, 5), w=st.integers(1, 5), c_in=st.integers(1, 3),
       c_out=st.integers(1, 3), k=st.integers(1, 4), s=st.integers(1, 3), d=st.integers(1, 2),
       padding=st.sampled_from(["valid", "same"]), use_output_padding=st.booleans())
def test_conv2d_transpose_matches_keras(seed, h, w, c_in, c_out, k, s, d, padding, use_output_padding):
    if s > 1:
        d = 1
    output_padding = s - 1 if use_output_padding else None
    if padding == "same" and output_padding is not None and (d * (k - 1) + 1) % 2 == 0:
        output_padding = None  # TF rejects this shape combination
    rng = np.random.default_rng(seed)
    x, kern, b = _rand(rng, 2, h, w, c_in), _rand(rng, k, k, c_out, c_in), _rand(rng, c_out)
    # the Keras reference runs the hand-dilated kernel at rate 1 (see _dilated)
    layer = keras.layers.Conv2DTranspose(c_out, d * (k - 1) + 1, strides=s, padding=padding,
                                         output_padding=output_padding)
    layer.build(x.shape)
    layer.set_weights([_dilated(kern, (d, d)), b])
    expected = keras.ops.convert_to_numpy(layer(x))
    got = cv.conv2d_transpose(x, kern, b, strides=s, padding=padding, output_padding=output_padding,
                              dilation_rate=d)
    np.testing.assert_allclose(got, expected, **TOL)


def test_conv3d_transpose_matches_keras():
    rng = np.random.default_rng(5)
    x, kern, b = _rand(rng, 1, 3, 4, 2, 2), _rand(rng, 2, 3, 2, 3, 2), _rand(rng, 3)
    for padding in ("valid", "same"):
        layer = keras.layers.Conv3DTranspose(3, (2, 3, 2), strides=(2, 2, 1), padding=padding)
        layer.build(x.shape)
        layer.set_weights([kern, b])
        np.testing.assert_allclose(cv.conv3d_transpose(x, kern, b, strides=(2, 2, 1), padding=padding),
                                   keras.ops.convert_to_numpy(layer(x)), **TOL)


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(4, 9), k=st.integers(1, 4), s=st.integers(1, 3),
       padding=st.sampled_from(["valid", "same"]))
def test_transposed_convolution_is_the_adjoint_of_convolution(seed, n, k, s, padding):
    """<conv(x), y> == <x, conv_transpose(y)> for the same kernel (NumPy only)."""
    rng = np.random.default_rng(seed)
    kern = rng.standard_normal((k, k, 2, 3))                    # conv: 2 -> 3 channels
    n_out = cv.conv_transpose_output_size(n, k, strides=s, padding=padding)
    y_shape = cv.conv_output_shape((n_out, n_out), k, strides=s, padding=padding)
    assert y_shape == (n, n)
    x = rng.standard_normal((n_out, n_out, 2))
    y = rng.standard_normal((n, n, 3))
    lhs = np.sum(cv.conv2d(x, kern, strides=s, padding=padding) * y)
    rhs = np.sum(x * cv.conv2d_transpose(y, kern, strides=s, padding=padding))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9)


def test_checkerboard_from_uneven_overlap():
    y = cv.conv2d_transpose(np.ones((6, 6, 1)), np.ones((3, 3, 1, 1)), strides=2)[2:-2, 2:-2, 0]
    assert set(np.unique(y)) == {1.0, 2.0, 4.0}                # kernel 3 not divisible by stride 2
    y_even = cv.conv2d_transpose(np.ones((6, 6, 1)), np.ones((4, 4, 1, 1)), strides=2)[2:-2, 2:-2, 0]
    assert set(np.unique(y_even)) == {4.0}


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

@pytest.mark.parametrize("pool_size,strides,padding", [
    (2, None, "valid"), (3, 2, "same"), ((2, 3), (1, 2), "valid"), (2, 1, "same"), (3, None, "same"),
])
def test_pooling_matches_keras(pool_size, strides, padding):
    rng = np.random.default_rng(11)
    x2, x3 = _rand(rng, 2, 7, 9, 3), _rand(rng, 1, 5, 7, 6, 2)
    layers2 = {cv.max_pool2d: keras.layers.MaxPooling2D, cv.avg_pool2d: keras.layers.AveragePooling2D}
    for ref, layer_cls in layers2.items():
        expected = keras.ops.convert_to_numpy(layer_cls(pool_size, strides, padding)(x2))
        np.testing.assert_allclose(ref(x2, pool_size, strides, padding), expected, **TOL)
        np.testing.assert_allclose(ref(x2[0], pool_size, strides, padding), expected[0], **TOL)
    p3 = pool_size if np.isscalar(pool_size) else (*pool_size, 2)
    s3 = strides if strides is None or np.isscalar(strides) else (*strides, 1)
    layers3 = {cv.max_pool3d: keras.layers.MaxPooling3D, cv.avg_pool3d: keras.layers.AveragePooling3D}
    for ref, layer_cls in layers3.items():
        expected = keras.ops.convert_to_numpy(layer_cls(p3, s3, padding)(x3))
        np.testing.assert_allclose(ref(x3, p3, s3, padding), expected, **TOL)


# --------------------------------------------------------------------------
# Activations and derivatives
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name,tf_fn", [
    ("relu", tf.nn.relu), ("leaky_relu", lambda t: tf.nn.leaky_relu(t, alpha=0.2)),
    ("sigmoid", tf.math.sigmoid), ("tanh", tf.math.tanh),
])
def test_activations_and_derivatives_match_tf_gradient_tape(name, tf_fn):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(200) * 4, [-60.0, -8.0, 8.0, 60.0]]).astype(np.float32)
    f, df = cv.ACTIVATIONS[name]
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = tf_fn(xt)
    grad = tape.gradient(y, xt).numpy()                         # d sum(f(x)) / dx_i = f'(x_i)
    np.testing.assert_allclose(f(x), y.numpy(), **TOL)
    np.testing.assert_allclose(df(x), grad, **TOL)


def test_leaky_relu_slope_and_relu_at_zero():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(cv.leaky_relu(x, 0.1), tf.nn.leaky_relu(x, alpha=0.1).numpy())
    np.testing.assert_allclose(cv.leaky_relu_derivative(x, 0.1), [0.1, 0.1, 1.0])
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = tf.nn.relu(xt)
    np.testing.assert_array_equal(cv.relu_derivative(x), tape.gradient(y, xt).numpy())


def test_sigmoid_has_no_overflow_warning():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = cv.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0])


def test_softmax_and_jacobian_match_tf():
    rng = np.random.default_rng(4)
    x = _rand(rng, 5, 4) * 3
    x[0] += 500.0                                               # stable for huge logits
    np.testing.assert_allclose(cv.softmax(x), tf.nn.softmax(x).numpy(), **TOL)
    np.testing.assert_allclose(cv.softmax(x, axis=0), tf.nn.softmax(x, axis=0).numpy(), **TOL)
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = tf.nn.softmax(xt)
    jac = tape.batch_jacobian(y, xt).numpy()                    # (5, 4, 4): d y[b, i] / d x[b, j]
    np.testing.assert_allclose(cv.softmax_jacobian(x), jac, **TOL)


# --------------------------------------------------------------------------
# Stacks: receptive field and parameter counts
# --------------------------------------------------------------------------

ENCODER = [
    cv.LayerSpec("conv", 3, padding="same", filters=4, name="c1a"),
    cv.LayerSpec("conv", 3, padding="same", filters=4, name="c1b"),
    cv.LayerSpec("pool", 2, name="p1"),
    cv.LayerSpec("conv", 3, padding="same", filters=8, name="c2a"),
    cv.LayerSpec("conv", (3, 5), dilation_rate=2, padding="same", filters=8, name="c2b"),
    cv.LayerSpec("pool", 2, name="p2"),
    cv.LayerSpec("conv", 3, strides=2, padding="valid", filters=6, use_bias=False, name="c3"),
]


def _keras_layer(spec: cv.LayerSpec, pool_cls=keras.layers.MaxPooling2D):
    if spec.kind == "pool":
        return pool_cls(spec.kernel_size, spec.strides, spec.padding, name=spec.name)
    cls = keras.layers.Conv2D if spec.kind == "conv" else keras.layers.Conv2DTranspose
    return cls(spec.filters, spec.kernel_size, strides=spec.strides or 1, padding=spec.padding,
               dilation_rate=spec.dilation_rate, use_bias=spec.use_bias, name=spec.name)


def test_receptive_field_is_the_support_of_the_gradient():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((80, 80, 1))]
                             + [_keras_layer(s, keras.layers.AveragePooling2D) for s in ENCODER])
    for layer in model.layers:                                  # positive weights: no cancellation
        if layer.weights:
            layer.set_weights([np.full(w.shape, 0.1, "float32") for w in layer.get_weights()])
    x = tf.Variable(np.ones((1, 80, 80, 1), "float32"))
    with tf.GradientTape() as tape:
        y = model(x)
        center = y[0, y.shape[1] // 2, y.shape[2] // 2, 0]
    grad = tape.gradient(center, x).numpy()[0, :, :, 0]
    rows, cols = np.nonzero(grad)
    fields = cv.receptive_field(ENCODER)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == fields[-1].size
    assert fields[-1].jump == (8, 8)
    assert [f.size[0] for f in fields[:3]] == [3, 5, 6]


def test_parameter_counts_and_shapes_match_a_keras_model():
    specs = ENCODER + [
        cv.LayerSpec("conv_transpose", 2, strides=2, padding="valid", filters=8, name="up"),
        cv.LayerSpec("conv", 1, filters=3, name="head"),
    ]
    model = keras.Sequential([keras.Input((64, 64, 1))] + [_keras_layer(s) for s in specs])
    rows = cv.layer_table(specs, (64, 64, 1))
    assert [r["name"] for r in rows] == [layer.name for layer in model.layers]
    assert [r["params"] for r in rows] == [layer.count_params() for layer in model.layers]
    assert [r["output_shape"] for r in rows] == [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert sum(r["params"] for r in rows) == model.count_params()
    assert rows[-1]["receptive_field"] is None
    with pytest.raises(ValueError, match="convolutions and pooling only"):
        cv.receptive_field(specs)


# --------------------------------------------------------------------------
# Classic kernels, errors, layering
# --------------------------------------------------------------------------

def test_classic_kernels():
    kernels = cv.classic_kernels()
    assert kernels["gaussian"].sum() == pytest.approx(1.0)
    assert cv.gaussian_kernel(5, 1.0).sum() == pytest.approx(1.0)
    ramp = np.add.outer(np.zeros(6), np.arange(7.0) * 2)        # increases along axis 1
    bank = np.stack([kernels[n] for n in ("sobel_axis0", "sobel_axis1", "laplacian")], -1)[:, :, None, :]
    y = cv.conv2d(ramp[:, :, None], bank)
    np.testing.assert_allclose(y[..., 0], 0.0)
    np.testing.assert_allclose(y[..., 1], 16.0)                 # 4 (weights) * 2 (slope) * 2 (taps apart)
    np.testing.assert_allclose(y[..., 2], 0.0)
    np.testing.assert_allclose(cv.conv2d(ramp[:, :, None], kernels["identity"][:, :, None, None])[..., 0],
                               ramp[1:-1, 1:-1])


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((5, 5, 2))
    with pytest.raises(ValueError, match="channels"):
        cv.conv2d(x, np.zeros((3, 3, 3, 1)))
    with pytest.raises(ValueError, match="padding='half'"):
        cv.conv2d(x, np.zeros((3, 3, 2, 1)), padding="half")
    with pytest.raises(ValueError, match="does not fit"):
        cv.conv2d(x, np.zeros((7, 3, 2, 1)))
    with pytest.raises(ValueError, match="bias"):
        cv.conv2d(x, np.zeros((3, 3, 2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="strides"):
        cv.conv2d(x, np.zeros((3, 3, 2, 1)), strides=0)
    with pytest.raises(ValueError, match="dimensions"):
        cv.conv3d(x, np.zeros((3, 3, 3, 2, 1)))
    with pytest.raises(ValueError, match="filters"):
        cv.LayerSpec("conv", 3)


def test_module_does_not_import_tensorflow():
    code = ("import sys, medseg_tf.convolution; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
