"""Tests of medseg_tf.uncertainty on constructed predictors whose right answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medseg_tf import uncertainty as U
from medseg_tf.errors import DataError, OverwriteError


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sampled(n=60_000, classes=3, scale=3.0, seed=0):
    """Logits and labels drawn from softmax(logits): a perfectly calibrated predictor."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, classes))
    p = softmax(z)
    u = rng.random(n)[:, None]
    y = (u > np.cumsum(p, axis=-1)).sum(axis=-1)
    return z, y


def test_entropy_is_zero_for_one_hot_and_log_c_for_uniform():
    one_hot = np.eye(4)[np.array([[0, 1], [2, 3]])]
    np.testing.assert_allclose(U.predictive_entropy(one_hot), 0.0, atol=1e-7)
    np.testing.assert_allclose(U.predictive_entropy(np.full((5, 3), 1 / 3)), math.log(3), rtol=1e-6)
    # one sigmoid channel = two classes
    np.testing.assert_allclose(U.predictive_entropy(np.full((2, 1), 0.5)), math.log(2), rtol=1e-6)


def test_mutual_information_zero_when_passes_agree_and_positive_when_not():
    p = softmax(np.random.default_rng(1).normal(size=(6, 7, 3)))
    agree = np.stack([p] * 4)
    np.testing.assert_allclose(U.mutual_information(agree), 0.0, atol=1e-6)
    disagree = np.stack([np.eye(2)[[0] * 5], np.eye(2)[[1] * 5]])     # confident, opposite
    np.testing.assert_allclose(U.mutual_information(disagree), math.log(2), rtol=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        U.mutual_information(agree[:1])


def test_calibrated_predictor_has_small_ece_and_temperature_near_one():
    z, y = sampled()
    p = softmax(z)
    assert U.expected_calibration_error(p, y) < 0.01
    assert U.fit_temperature(p, y) == pytest.approx(1.0, abs=0.05)


def test_over_confident_predictor_gets_temperature_above_one_and_is_fixed():
    z, y = sampled(seed=2)
    over = softmax(2.0 * z)                    # logits doubled: over-confident
    t = U.fit_temperature(over, y)
    assert t == pytest.approx(2.0, rel=0.08)
    before = U.expected_calibration_error(over, y)
    after = U.expected_calibration_error(U.apply_temperature(over, t), y)
    assert before > 0.05 and after < 0.015
    under = softmax(0.5 * z)
    assert U.fit_temperature(under, y) < 0.6


def test_apply_temperature_equals_softmax_of_scaled_logits_and_keeps_argmax():
    z = np.random.default_rng(3).normal(scale=4, size=(50, 3))
    p = softmax(z)
    np.testing.assert_allclose(U.apply_temperature(p, 2.5), softmax(z / 2.5), atol=1e-5)
    assert (U.apply_temperature(p, 0.3).argmax(-1) == p.argmax(-1)).all()
    sig = 1 / (1 + np.exp(-z[:, :1]))
    np.testing.assert_allclose(U.apply_temperature(sig, 2.0), 1 / (1 + np.exp(-z[:, :1] / 2)), atol=1e-5)
    for bad in (0, -1, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="temperature"):
            U.apply_temperature(p, bad)


def test_reliability_curve_bins():
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    y = np.array([0, 1, 0, 0])
    curve = U.reliability_curve(p, y, n_bins=10)
    assert curve["count"].sum() == 4 and curve["count"][9] == 2 and curve["count"][5] == 2
    assert curve["accuracy"][9] == pytest.approx(0.5) and curve["confidence"][9] == pytest.approx(0.95)
    # ECE = 0.5 * |0.5 - 0.95| + 0.5 * |1 - 0.55|
    assert curve["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    with pytest.raises(ValueError, match="empty region"):
        U.expected_calibration_error(p, y, mask=np.zeros(4, bool))
    with pytest.raises(ValueError, match="labels must lie"):
        U.expected_calibration_error(p, np.array([0, 1, 2, 0]))


def test_near_structure_mask_is_a_dilated_union():
    ref = np.zeros((9, 9, 9), np.uint8)
    ref[4, 4, 4] = 1
    pred = np.zeros_like(ref)
    pred[4, 4, 6] = 2
    m = U.near_structure_mask(ref, pred, radius=1)
    assert m.sum() == 27 + 27 - 9     # two 3x3x3 cubes sharing a 3x3 face plane
    assert m[3, 3, 3] and not m[2, 4, 4]
    assert not U.near_structure_mask(np.zeros_like(ref), radius=2).any()


def test_case_uncertainty_tracks_errors():
    sure = np.zeros((10, 10, 3))
    sure[..., 0] = 1
    sure[2:5, 2:5] = [0, 1, 0]
    assert U.case_uncertainty(sure) == 0.0
    unsure = sure * 0.6 + 0.4 / 3
    assert U.case_uncertainty(unsure) == pytest.approx(100 * 0.4 * 2 / 3 / 9)


def ood_case(seed, shift=0.0, noise=0.0, blur=False):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(16, 16, 16)) + shift
    image += noise * rng.normal(size=image.shape)
    probs = np.zeros((16, 16, 16, 2))
    probs[..., 0] = 0.99
    probs[..., 1] = 0.01
    probs[6:10, 6:10, 6:10] = [0.1, 0.9] if not blur else [0.45, 0.55]
    return U.case_statistics(image, probs, radius=2)


def test_ood_score_rises_on_unusual_cases_and_threshold_covers_the_fitting_cases():
    fit = [ood_case(s) for s in range(8)]
    model = U.fit_ood(fit, radius=2)
    assert all(s <= model["threshold"] + 1e-9 for s in model["scores"])
    normal = U.ood_score(ood_case(99), model)
    assert normal <= model["threshold"] * 1.5
    for odd in (ood_case(99, shift=3.0), ood_case(99, noise=2.0), ood_case(99, blur=True)):
        assert U.ood_score(odd, model) > 3 * model["threshold"]
    json.dumps(model)       # JSON-ready
    with pytest.raises(ValueError, match="at least 3"):
        U.fit_ood(fit[:2])


def test_calibration_file_round_trip(tmp_path):
    assert U.read_calibration(tmp_path) is None
    U.write_calibration(tmp_path, {"temperature": 1.5})
    assert U.read_calibration(tmp_path)["temperature"] == 1.5
    with pytest.raises(OverwriteError, match="overwrite"):
        U.write_calibration(tmp_path, {"temperature": 2.0})
    (tmp_path / "calibration.json").write_text('{"temperature": -1}')
    with pytest.raises(DataError, match="calibration.json: 'temperature' must be"):
        U.read_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        U.read_calibration(tmp_path)
