"""Tests of medseg_tf.models (U-Net builder, article CNN, inspection helpers) and medseg_tf.diagrams."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from medseg_tf import models

OPTIONS = [
    dict(),
    dict(norm="instance"),
    dict(norm="group", residual=True),
    dict(norm=None, activation="leaky_relu"),
    dict(attention=True, dropout=0.2),
    dict(skips=False),
    dict(head="sigmoid"),
    dict(head=None, kernel_size=5),
]


def _spatial(ndim):
    return (16, 24) if ndim == 2 else (8, 16, 8)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kwargs", OPTIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_unet_output_shape(ndim, kwargs):
    spatial = _spatial(ndim)
    model = models.unet((None,) * ndim + (2,), 4, depth=2, base_filters=4, **kwargs)
    x = np.random.default_rng(0).normal(size=(2, *spatial, 2)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    assert y.shape == (2, *spatial, 4)
    assert y.dtype == np.float32
    head = kwargs.get("head", "softmax")
    if head == "softmax":
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)
    elif head == "sigmoid":
        assert y.min() >= 0.0 and y.max() <= 1.0
    else:  # logits: not normalised
        assert y.min() < 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_deep_supervision_outputs(ndim):
    spatial = _spatial(ndim)
    model = models.unet((*spatial, 1), 3, depth=3, base_filters=4, deep_supervision=True)
    assert model.output_names == ["output", "output_ds1", "output_ds2"]
    outs = model(np.zeros((1, *spatial, 1), "float32"))
    assert isinstance(outs, list) and len(outs) == 3
    for k, out in enumerate(outs):
        assert tuple(out.shape) == (1, *(n // 2 ** k for n in spatial), 3)


def test_known_size_must_divide():
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*depth = 8"):
        models.unet((40, 60, 1), depth=3)
    models.unet((40, 64, 1), depth=3)  # 40 and 64 are multiples of 8


@pytest.mark.parametrize("kwargs", [dict(norm="layer"), dict(head="relu"), dict(kernel_size=4), dict(depth=0),
                                    dict(dropout=1.0), dict(skips=False, deep_supervision=True),
                                    dict(max_filters=0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        models.unet((None, None, 1), **kwargs)


def test_bad_dimensionality():
    with pytest.raises(ValueError, match="2D and 3D"):
        models.unet((None, 1))


def test_output_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.unet((16, 16, 1), 3, depth=2, base_filters=4, deep_supervision=True)
        conv = model.get_layer("enc0_conv1")
        assert conv.compute_dtype == "float16"
        outs = model(np.ones((1, 16, 16, 1), "float32"))
        assert [o.dtype for o in outs] == [tf.float32, tf.float32]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_structure_of_options():
    def types(model):
        return [type(layer).__name__ for layer in model.layers]

    plain = models.unet(depth=3, base_filters=4)
    assert types(plain).count("Concatenate") == 3
    assert types(plain).count("Conv2DTranspose") == 3
    assert types(plain).count("MaxPooling2D") == 3
    no_skip = models.unet(depth=3, base_filters=4, skips=False)
    assert "Concatenate" not in types(no_skip)
    assert no_skip.count_params() < plain.count_params()
    assert types(models.unet(depth=3, base_filters=4, attention=True)).count("Multiply") == 3
    assert types(models.unet(depth=3, base_filters=4, residual=True)).count("Add") == 7
    assert types(models.unet(depth=3, base_filters=4, dropout=0.1)).count("SpatialDropout2D") == 7
    instance = models.unet(depth=3, base_filters=4, norm="instance").get_layer("enc2_norm1")
    assert instance.groups == 16
    group = models.unet(depth=3, base_filters=4, norm="group").get_layer("enc2_norm1")
    assert group.groups == 8
    assert "Conv3D" in types(models.unet((None, None, None, 1), depth=2, base_filters=4))


# --------------------------------------------------------------------------- parameter counts
def expected_unet_params(ndim, cin, ncls, depth, base, k, norm, residual=False, cap=None):
    """Hand count: conv k^d*cin*cout (+cout bias, only without norm); BN 4c; GroupNorm 2c."""

    def conv(ci, co, ks, bias):
        return ks ** ndim * ci * co + (co if bias else 0)

    def normp(c):
        return {"batch": 4 * c, "instance": 2 * c, "group": 2 * c, None: 0}[norm]

    def block(ci, co):
        n = conv(ci, co, k, norm is None) + normp(co) + conv(co, co, k, norm is None) + normp(co)
        if residual and ci != co:
            n += conv(ci, co, 1, norm is None) + normp(co)
        return n

    def width(level):
        return base * 2 ** level if cap is None else min(base * 2 ** level, cap)

    total, c = 0, cin
    for level in range(depth + 1):  # encoder levels and the bottleneck
        f = width(level)
        total, c = total + block(c, f), f
    for level in reversed(range(depth)):
        f = width(level)
        total += conv(c, f, 2, True)  # transposed conv, kernel 2, with bias
        total, c = total + block(2 * f, f), f  # after concatenating the skip
    return total + conv(c, ncls, 1, True)  # 1x1 head


@pytest.mark.parametrize("ndim,cin,ncls,depth,base,k,norm,residual", [
    (2, 1, 3, 2, 4, 3, "batch", False),
    (2, 2, 2, 3, 8, 3, None, False),
    (2, 1, 3, 2, 4, 5, "instance", True),
    (3, 1, 3, 2, 4, 3, "batch", False),
    (3, 1, 3, 2, 4, 3, "group", True),
])
def test_parameter_count_matches_formula(ndim, cin, ncls, depth, base, k, norm, residual):
    model = models.unet((None,) * ndim + (cin,), ncls, depth=depth, base_filters=base, kernel_size=k,
                        norm=norm, residual=residual)
    assert model.count_params() == expected_unet_params(ndim, cin, ncls, depth, base, k, norm, residual)


@pytest.mark.parametrize("ndim,depth,base,cap", [(2, 3, 4, 8), (3, 4, 16, 64), (3, 2, 4, 100)])
def test_max_filters_caps_every_level(ndim, depth, base, cap):
    model = models.unet((None,) * ndim + (1,), 3, depth=depth, base_filters=base, max_filters=cap)
    assert model.count_params() == expected_unet_params(ndim, 1, 3, depth, base, 3, "batch", cap=cap)
    widths = [layer.filters for layer in model.layers if hasattr(layer, "filters")]
    assert max(widths) == min(cap, base * 2 ** depth)


def test_small_unet_by_hand():
    # depth 1, base 2, 2D, BN, 1 -> 2 classes, written out term by term
    expected = (9 * 1 * 2 + 8 + 9 * 2 * 2 + 8  # enc0: two convs without bias + two BN(2)
                + 9 * 2 * 4 + 16 + 9 * 4 * 4 + 16  # bottleneck, 4 filters
                + 4 * 4 * 2 + 2  # up0: 2x2 transposed conv 4 -> 2, with bias
                + 9 * 4 * 2 + 8 + 9 * 2 * 2 + 8  # dec0 on the 4-channel concatenation
                + 2 * 2 + 2)  # 1x1 head
    assert models.unet(num_classes=2, depth=1, base_filters=2).count_params() == expected


# --------------------------------------------------------------------------- inspection helpers
def test_layer_table():
    model = models.unet((32, 32, 1), 3, depth=2, base_filters=4)
    table = models.layer_table(model)
    assert list(table.columns) == ["layer", "type", "output_shape", "params"]
    assert len(table) == len(model.layers)
    assert table["params"].sum() == model.count_params()
    row = table.set_index("layer").loc["enc1_conv1"]
    assert row["type"] == "Conv2D"
    assert row["output_shape"] == "(None, 16, 16, 8)"
    assert row["params"] == 9 * 4 * 8
    assert table.set_index("layer").loc["bottleneck_norm2", "params"] == 4 * 16
    sized = models.layer_table(model, bytes_per_value=4).set_index("layer")
    assert sized.loc["enc1_conv1", "activation_bytes"] == 16 * 16 * 8 * 4
    assert sized.loc["skip0", "activation_bytes"] == 32 * 32 * 8 * 4
    assert sized["activation_bytes"].drop("image").sum() == models.activation_memory(model)
    assert models.layer_table(models.unet(depth=2), bytes_per_value=2)["activation_bytes"].isna().all()


def test_activation_memory_by_hand():
    model = models.fully_convolutional_net((8, 6, 1), 3, filters=4, n_layers=2)
    per_sample = 8 * 6 * (4 + 4 + 3 + 3)  # conv1, conv2, logits, softmax
    assert models.activation_memory(model) == 4 * per_sample
    assert models.activation_memory(model, 2, include_input=True) == 2 * (per_sample + 8 * 6)
    with pytest.raises(ValueError, match="unknown"):
        models.activation_memory(models.fully_convolutional_net())
    small = models.activation_memory(models.unet((32, 32, 1), depth=2, base_filters=4))
    assert models.activation_memory(models.unet((64, 64, 1), depth=2, base_filters=4)) == 4 * small


def test_fully_convolutional_net_any_size():
    model = models.fully_convolutional_net(num_classes=2, n_layers=3)
    for shape in [(1, 20, 30, 1), (2, 7, 9, 1)]:
        assert tuple(model(np.zeros(shape, "float32")).shape) == shape[:-1] + (2,)


# --------------------------------------------------------------------------- the article's classifier
def test_article_cnn_fixed():
    model = models.article_cnn()
    table = models.layer_table(model).set_index("layer")
    assert table.loc["flatten", "output_shape"] == "(None, 400)"
    assert table.loc["conv1", "params"] == 3 * 3 * 1 * 16 + 16
    assert table.loc["conv2", "params"] == 3 * 3 * 16 * 16 + 16
    assert table.loc["fc", "params"] == 400 * 10 + 10
    y = keras.ops.convert_to_numpy(model(np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)))
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError):  # the dense layer fixes the input size
        model(np.zeros((1, 32, 32, 1), "float32"))


def test_article_bugs_reproduced():
    x = np.zeros((2, 28, 28, 1), "float32")
    with pytest.raises(ValueError, match="conv1"):  # (a) conv1 applied to 16 channels
        models.article_cnn_forward_as_printed(x)
    with pytest.raises(ValueError, match="784"):  # (b) 400 values reach a layer built for 16*7*7
        models.article_cnn_forward_as_printed(x, fix_conv=True)
    with pytest.raises(ValueError, match="conv1"):
        models.article_cnn(fixed=False)
    out = models.article_cnn_forward_as_printed(x, fix_conv=True, fix_flatten=True)
    assert tuple(out.shape) == (2, 10)


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    cases = [((None, None, 1), dict()),  # batch norm: its moving statistics must survive too
             ((None, None, None, 1), dict(norm="group", residual=True, attention=True, dropout=0.1,
                                           deep_supervision=True))]
    for i, (shape, kwargs) in enumerate(cases):
        model = models.unet(shape, 3, depth=2, base_filters=4, **kwargs)
        # random values in every weight (BN moving variance kept positive), so nothing is at its initial value
        model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in v.path
                           else rng.normal(0, 0.3, w.shape).astype("float32")
                           for v, w in zip(model.weights, model.get_weights())])
        path = tmp_path / f"m{i}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)  # safe_mode on, no custom_objects
        assert loaded.count_params() == model.count_params()
        x = rng.normal(size=(2, *(16,) * (len(shape) - 1), 1)).astype("float32")
        before, after = model(x, training=False), loaded(x, training=False)
        before = before if isinstance(before, list) else [before]
        after = after if isinstance(after, list) else [after]
        assert len(before) == len(after) == (2 if kwargs else 1)
        for a, b in zip(before, after):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


# --------------------------------------------------------------------------- receptive field
@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_field_matches_gradient(depth):
    """Measure the field by back-propagating from one output pixel (one batch item per grid phase)."""
    keras.utils.set_random_seed(0)
    model = models.unet((None, None, 1), 1, depth=depth, base_filters=2, norm=None, activation="linear",
                        head=None)
    phases, repeats, centre = 2 ** depth, 16, 80
    x = tf.constant(np.random.default_rng(0).normal(size=(phases * repeats, 160, 8, 1)).astype("float32"))
    rows = centre + np.arange(phases * repeats) % phases
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)[..., 0]
        picked = tf.gather_nd(y, np.stack([np.arange(len(rows)), rows, np.full(len(rows), 4)], axis=1))
        total = tf.reduce_sum(picked)
    grad = np.abs(tape.gradient(total, x).numpy())
    extents = []
    for phase in range(phases):
        hit = np.nonzero(grad[phase::phases].sum(axis=(0, 2, 3)))[0]
        extents.append(hit.max() - hit.min() + 1)
    expected = models.unet_receptive_field(depth)
    assert np.mean(extents) == expected
    assert max(extents) - min(extents) <= 2 ** depth


def test_receptive_field_formula():
    assert models.unet_receptive_field(1, 3) == 1 + 4 + 1 + 4 + 8  # enc0, pool, dec0, bottleneck
    assert models.unet_receptive_field(4, 3) > models.unet_receptive_field(3, 3) > 64
    assert models.unet_receptive_field(2, 5) > models.unet_receptive_field(2, 3)


# --------------------------------------------------------------------------- learning
def _dice(pred, ref):
    pred, ref = pred > 0, ref > 0
    return 2.0 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum())


def test_tiny_unet_overfits_phantom_slices():
    from medseg_tf.phantom import make_phantom_case
    from medseg_tf.preprocessing import pad_to_shape, zscore

    image, label, _ = make_phantom_case(0)
    image = zscore(image)
    slices = np.argsort(-(label > 0).sum(axis=(0, 1)))[:6]  # the 6 axial slices with most foreground
    x = np.stack([pad_to_shape(image[:, :, k], (48, 64))[0] for k in slices])[..., None].astype("float32")
    y = np.stack([pad_to_shape(label[:, :, k], (48, 64))[0] for k in slices]).astype("int32")
    assert (y > 0).mean() > 0.02 and set(np.unique(y)) == {0, 1, 2}

    keras.utils.set_random_seed(0)
    model = models.unet((48, 64, 1), 3, depth=2, base_filters=8, norm="instance")
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = _dice(model.predict(x, verbose=0).argmax(-1), y)
    model.fit(x, y, batch_size=len(x), epochs=60, verbose=0)
    after = _dice(model.predict(x, verbose=0).argmax(-1), y)
    assert before < 0.5
    assert after > 0.9


# --------------------------------------------------------------------------- diagram
@pytest.mark.parametrize("skips", [True, False])
def test_draw_unet(skips):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medseg_tf.diagrams import draw_unet

    fig, ax = plt.subplots()
    try:
        draw_unet(ax, depth=3, base_filters=8, input_size=(64, 48), skips=skips)
        texts = [t.get_text() for t in ax.texts]
        assert len(ax.patches) == 2 * 3 + 1 + 2  # encoder + decoder blocks, bottleneck, input, output
        assert "64 ch\n8×6" in texts and texts.count("8 ch\n64×48") == 2
        arrows = [c for c in ax.get_children() if type(c).__name__ == "Annotation"]
        assert len(arrows) == 2 + 2 * 3 + (3 if skips else 0)  # in/out, pool+up per level, skips
    finally:
        plt.close(fig)
    with pytest.raises(ValueError):
        draw_unet(ax, depth=0)
