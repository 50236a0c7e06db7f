"""Losses and the Dice metric against values computed by hand with NumPy."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from medseg_tf import losses as L

EPS = L.EPSILON


# ---------------------------------------------------------------- NumPy references (explicit loops)


def np_dice_loss(y, p, *, include_background=False, per_sample=False, smooth=1e-5):
    num_classes = p.shape[-1]
    classes = range(num_classes) if include_background else range(1, num_classes)
    groups = [[b] for b in range(len(y))] if per_sample else [list(range(len(y)))]
    scores = []
    for group in groups:
        for c in classes:
            g = np.concatenate([(y[b] == c).ravel() for b in group]).astype(np.float64)
            q = np.concatenate([p[b][..., c].ravel() for b in group]).astype(np.float64)
            scores.append((2 * np.sum(g * q) + smooth) / (g.sum() + q.sum() + smooth))
    return 1.0 - np.mean(scores)


def np_ce(y, p):
    q = np.take_along_axis(p.astype(np.float64), y[..., None].astype(int), axis=-1)[..., 0]
    return float(np.mean(-np.log(np.clip(q, EPS, 1.0))))


def np_focal(y, p, gamma=2.0, alpha=None):
    q = np.take_along_axis(p.astype(np.float64), y[..., None].astype(int), axis=-1)[..., 0]
    q = np.clip(q, EPS, 1.0)
    w = 1.0 if alpha is None else np.asarray(alpha)[y]
    return float(np.mean(-w * (1 - q) ** gamma * np.log(q)))


def np_tversky(y, p, alpha, beta, smooth=1e-5, include_background=False):
    scores = []
    for c in range(0 if include_background else 1, p.shape[-1]):
        g = (y == c).astype(np.float64)
        q = p[..., c].astype(np.float64)
        tp, fp, fn = np.sum(g * q), np.sum((1 - g) * q), np.sum(g * (1 - q))
        scores.append((tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return 1.0 - np.mean(scores)


def random_case(seed, shape=(2, 5, 6), num_classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, shape).astype(np.int32)
    p = rng.dirichlet(np.ones(num_classes), shape).astype(np.float32)
    return y, p


# ---------------------------------------------------------------- values computed by hand


def test_dice_by_hand_two_voxels():
    # one sample, two voxels, two classes: truth (0, 1); p(class 1) = (0.2, 0.6)
    y = np.array([[0, 1]])
    p = np.array([[[0.8, 0.2], [0.4, 0.6]]], dtype=np.float32)
    # foreground Dice = 2*0.6 / (0.8 + 1) = 2/3 (smoothing 0)
    assert float(L.soft_dice_loss(y, p, smooth=0.0)) == pytest.approx(1 - 2 / 3, abs=1e-6)
    # background Dice = 2*0.8 / (1.2 + 1) = 8/11
    both = float(L.soft_dice_loss(y, p, smooth=0.0, include_background=True))
    assert both == pytest.approx(1 - (2 / 3 + 8 / 11) / 2, abs=1e-6)
    # cross-entropy = -(log 0.8 + log 0.6) / 2
    assert float(L.cross_entropy(y, p)) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-6)
    # focal, gamma 2: -(0.2^2 log 0.8 + 0.4^2 log 0.6) / 2
    want = -(0.04 * math.log(0.8) + 0.16 * math.log(0.6)) / 2
    assert float(L.focal_loss(y, p)) == pytest.approx(want, rel=1e-6)
    # Tversky class 1: TP 0.6, FP 0.2, FN 0.4 -> 0.6 / (0.6 + 0.3*0.2 + 0.7*0.4)
    want = 1 - 0.6 / (0.6 + 0.06 + 0.28)
    assert float(L.tversky_loss(y, p, smooth=0.0)) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_matches_numpy(per_sample, include_background):
    y, p = random_case(1)
    got = float(L.soft_dice_loss(y, p, per_sample=per_sample, include_background=include_background))
    want = np_dice_loss(y, p, per_sample=per_sample, include_background=include_background)
    assert got == pytest.approx(want, abs=1e-6)


def test_dice_3d_and_trailing_channel():
    y, p = random_case(2, shape=(2, 4, 3, 5), num_classes=3)
    want = np_dice_loss(y, p)
    assert float(L.soft_dice_loss(y, p)) == pytest.approx(want, abs=1e-6)
    assert float(L.soft_dice_loss(y[..., None], p)) == pytest.approx(want, abs=1e-6)
    assert float(L.soft_dice_loss(y.astype(np.float32), p)) == pytest.approx(want, abs=1e-6)


def test_empty_foreground():
    y = np.zeros((2, 4, 4), dtype=np.int32)
    # perfect background prediction: every class Dice is 1 thanks to smoothing -> loss 0
    perfect = np.zeros((2, 4, 4, 3), np.float32)
    perfect[..., 0] = 1.0
    assert float(L.soft_dice_loss(y, perfect)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.tversky_loss(y, perfect)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.cross_entropy(y, perfect)) == pytest.approx(0.0, abs=1e-6)
    # some foreground probability on an empty class: dice_c = smooth / (sum p_c + smooth)
    _, p = random_case(3, shape=(2, 4, 4))
    for per_sample in (False, True):
        got = float(L.soft_dice_loss(y, p, per_sample=per_sample))
        assert got == pytest.approx(np_dice_loss(y, p, per_sample=per_sample), abs=1e-6)
        assert got > 0.99
    assert float(L.tversky_loss(y, p, alpha=0.4, beta=0.6)) == pytest.approx(
        np_tversky(y, p, 0.4, 0.6), abs=1e-6)
    assert float(L.dice_ce_loss(y, p)) == pytest.approx(np_ce(y, p) + np_dice_loss(y, p), abs=1e-5)
    assert float(L.focal_loss(y, p)) == pytest.approx(np_focal(y, p), rel=1e-5)


def test_ce_focal_tversky_match_numpy():
    y, p = random_case(4)
    assert float(L.cross_entropy(y, p)) == pytest.approx(np_ce(y, p), rel=1e-5)
    assert float(L.focal_loss(y, p, gamma=2.0)) == pytest.approx(np_focal(y, p, 2.0), rel=1e-5)
    alpha = [0.2, 1.0, 3.0]
    assert float(L.focal_loss(y, p, gamma=1.5, alpha=alpha)) == pytest.approx(
        np_focal(y, p, 1.5, alpha), rel=1e-5)
    # gamma 0 without alpha is the cross-entropy
    assert float(L.focal_loss(y, p, gamma=0.0)) == pytest.approx(np_ce(y, p), rel=1e-5)
    assert float(L.tversky_loss(y, p)) == pytest.approx(np_tversky(y, p, 0.3, 0.7), abs=1e-6)
    # alpha = beta = 0.5 is the Dice loss
    assert float(L.tversky_loss(y, p, alpha=0.5, beta=0.5)) == pytest.approx(
        np_dice_loss(y, p), abs=1e-6)
    got = float(L.dice_ce_loss(y, p, dice_weight=0.5, ce_weight=2.0))
    assert got == pytest.approx(2.0 * np_ce(y, p) + 0.5 * np_dice_loss(y, p), abs=1e-5)
    # weighted cross-entropy: weighted mean over voxels
    w = np.array([0.5, 2.0, 1.0])
    q = np.take_along_axis(p.astype(np.float64), y[..., None], axis=-1)[..., 0]
    want = np.sum(w[y] * -np.log(q)) / np.sum(w[y])
    assert float(L.cross_entropy(y, p, class_weights=w)) == pytest.approx(want, rel=1e-5)


def test_float16_predictions_are_cast():
    y, p = random_case(5, shape=(2, 32, 32))
    got = float(L.soft_dice_loss(y, p.astype(np.float16)))
    assert got == pytest.approx(np_dice_loss(y, p.astype(np.float16).astype(np.float32)), abs=1e-5)
    assert L.soft_dice_loss(y, p.astype(np.float16)).dtype == "float32"


def test_bad_shapes_raise():
    y, p = random_case(6)
    with pytest.raises(ValueError, match="y_true"):
        L.soft_dice_loss(y[:, :, :3], p)


def test_get_loss_and_serialisation():
    y, p = random_case(7)
    functions = {"dice": L.soft_dice_loss, "dice_ce": L.dice_ce_loss, "ce": L.cross_entropy,
                 "focal": L.focal_loss, "tversky": L.tversky_loss}
    for name, fn in functions.items():
        loss = L.get_loss(name)
        assert isinstance(loss, keras.losses.Loss)
        assert float(loss(y, p)) == pytest.approx(float(fn(y, p)), rel=1e-6)
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is type(loss)
        assert again.get_config() == loss.get_config()
    focal = L.get_loss("focal", gamma=1.0, alpha=[1, 2, 3])
    again = keras.losses.deserialize(keras.losses.serialize(focal))
    assert float(again(y, p)) == pytest.approx(np_focal(y, p, 1.0, [1, 2, 3]), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        L.get_loss("hinge")
    with pytest.raises(ValueError, match="bad keyword"):
        L.get_loss("dice", gama=2)


# ---------------------------------------------------------------- metric


def np_hard_dice(y, p, c):
    pred = p.argmax(-1) == c
    true = y == c
    denom = pred.sum() + true.sum()
    return 1.0 if denom == 0 else 2 * np.sum(pred & true) / denom


def test_dice_metric_is_global_over_batches():
    names = ["background", "Anterior", "Posterior"]
    metrics = L.dice_metrics(names)
    assert [m.name for m in metrics] == ["dice_Anterior", "dice_Posterior", "dice_mean"]
    batches = [random_case(10 + i, shape=(3, 8, 8)) for i in range(3)]
    # make the batches unequal so that a mean of per-batch Dice would differ
    batches[1] = (np.zeros_like(batches[1][0]), batches[1][1])
    for y, p in batches:
        for m in metrics:
            m.update_state(y, p)
    y_all = np.concatenate([b[0] for b in batches])
    p_all = np.concatenate([b[1] for b in batches])
    want = [np_hard_dice(y_all, p_all, c) for c in (1, 2)]
    assert float(metrics[0].result()) == pytest.approx(want[0], abs=1e-6)
    assert float(metrics[1].result()) == pytest.approx(want[1], abs=1e-6)
    assert float(metrics[2].result()) == pytest.approx(np.mean(want), abs=1e-6)
    per_batch = np.mean([np_hard_dice(y, p, 1) for y, p in batches])
    assert abs(per_batch - want[0]) > 1e-3  # the test data tells the two apart
    metrics[0].reset_state()
    y, p = batches[0]
    metrics[0].update_state(y[..., None], p)
    assert float(metrics[0].result()) == pytest.approx(np_hard_dice(y, p, 1), abs=1e-6)


def test_dice_metric_empty_class_and_config():
    y = np.zeros((1, 4, 4), np.int32)
    p = np.zeros((1, 4, 4, 2), np.float32)
    p[..., 0] = 1
    m = L.DiceScore(2, class_id=1, name="dice_x")
    m.update_state(y, p)
    assert float(m.result()) == 1.0  # absent from truth and prediction
    p[0, 0, 0] = [0, 1]
    m.update_state(y, p)
    assert float(m.result()) == 0.0
    again = L.DiceScore.from_config(m.get_config())
    assert (again.name, again.num_classes, again.class_id) == ("dice_x", 2, 1)
    with pytest.raises(ValueError):
        L.DiceScore(3, class_id=3)


def test_loss_trains_a_tiny_model():
    """A few gradient steps with each loss lower the foreground Dice loss (gradients flow)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    y = (x[..., 0] > 0.8).astype(np.int32) + (x[..., 0] < -0.8).astype(np.int32) * 2
    for name in L.LOSSES:
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 1, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.05), loss=L.get_loss(name))
        before = float(L.soft_dice_loss(y, model(x)))
        model.fit(x, y, epochs=20, batch_size=8, verbose=0)
        after = float(L.soft_dice_loss(y, model(x)))
        assert after < before, name


def test_losses_and_metric_compile_with_xla():
    """XLA (jit_compile, the GPU default) gives the same values as eager execution."""
    import tensorflow as tf

    y, p = random_case(20, shape=(2, 6, 5))
    for name in L.LOSSES:
        loss = L.get_loss(name)
        compiled = tf.function(lambda a, b: loss(a, b), jit_compile=True)
        assert float(compiled(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-5), name
    metric = L.DiceScore(3, class_id=None)
    tf.function(metric.update_state, jit_compile=True)(y, p)
    want = np.mean([np_hard_dice(y, p, c) for c in (1, 2)])
    assert float(metric.result()) == pytest.approx(want, abs=1e-6)
