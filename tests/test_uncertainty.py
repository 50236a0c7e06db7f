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
    assert U.case_uncertainty(unsure, radius=None) == pytest.approx(100 * 0.4 * 2 / 3 / 9)
    # only the voxels within 1 of the predicted square count: a 5x5 block
    assert U.case_uncertainty(unsure, radius=1) == pytest.approx(25 * 0.4 * 2 / 3 / 9)


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
    # an OOD entry is checked where the file is read, not in the middle of predicting a folder
    ood = {"threshold": 3.0, "median": {k: 0.0 for k in U.OOD_FEATURES}, "scale": {"entropy_near": 1.0},
           "reference_quantiles": [0.0] * len(U.QUANTILE_LEVELS)}
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 1.0, "ood": ood}))
    with pytest.raises(DataError, match=r"calibration.json: 'ood.scale' lacks intensity_distance, log_foreground"):
        U.read_calibration(tmp_path)
    ood["scale"] = {k: 1.0 for k in U.OOD_FEATURES}
    ood["reference_quantiles"] = [0.0, 1.0]
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 1.0, "ood": ood}))
    with pytest.raises(DataError, match="reference_quantiles"):
        U.read_calibration(tmp_path)


def test_corrupt_volume_kinds():
    x = np.random.default_rng(0).random((8, 10, 6)).astype(np.float32)
    for kind in U.CORRUPTIONS:
        y = U.corrupt_volume(x, kind)
        assert y.shape == x.shape and y.dtype == np.float32 and not np.array_equal(y, x)
    np.testing.assert_array_equal(U.corrupt_volume(x, "flip_ap"), x[:, ::-1])
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        U.corrupt_volume(x, "blur")


# --------------------------------------------------------------------------- predict CLI on a tiny model
def _blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (16, 16, 12)], indexing="ij"), axis=-1)
    centre = np.array([8, 8, 6]) + rng.integers(-1, 2, size=3)
    inside = (((grid - centre) / np.array([4, 3, 3])) ** 2).sum(-1) <= 1
    return (100 + 80 * inside + rng.normal(scale=25, size=inside.shape)).astype(np.float32)


@pytest.fixture
def tiny_run(tmp_path):
    """A run folder whose model labels 1 where the z-scored intensity is > 0.5, calibrated on 4 blobs."""
    import keras

    from medseg_tf import io
    from medseg_tf.inference import predict_probabilities

    inputs = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(2, 1, activation="softmax")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([0.0, 6.0], np.float32).reshape(1, 1, 1, 1, 2), np.array([3.0, 0.0], np.float32)])
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dims": 3, "depth": 1, "normalization": "zscore",
                                                 "target_spacing": None}))
    images = tmp_path / "images"
    images.mkdir()
    stats = []
    for seed in range(4):
        vol = io.Volume(_blob(seed), np.eye(4))
        x, p, _ = predict_probabilities(model, vol, {"dims": 3, "depth": 1})
        stats.append(U.case_statistics(x, U.apply_temperature(p, 1.5)))
    U.write_calibration(run, {"temperature": 1.5, "fitted_on": ["blob0", "blob1", "blob2", "blob3"],
                              "ood": U.fit_ood(stats)})
    io.save_nifti(_blob(0), images / "blob0.nii.gz", affine=np.eye(4))
    io.save_nifti(np.random.default_rng(9).uniform(0, 200, (16, 16, 12)).astype(np.float32),
                  images / "noise.nii.gz", affine=np.eye(4))
    return run, images


def test_predict_temperature_round_trip_and_ood_warning(tiny_run, tmp_path, capsys):
    from medseg_tf import cli, io

    run, images = tiny_run
    out = tmp_path / "pred"
    assert cli.main(["predict", "--model", str(run), "--images", str(images), "--out", str(out),
                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "temperature 1.5 (calibration.json)" in captured.out
    warnings = [line for line in captured.err.splitlines() if "out-of-distribution" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: noise: out-of-distribution score")
    labels = {p.name: io.load_nifti(p).data for p in sorted(out.iterdir())}

    assert cli.main(["predict", "--model", str(run), "--images", str(images), "--out", str(out),
                     "--no-progress", "--overwrite", "--temperature", "4"]) == 0
    captured = capsys.readouterr()
    assert "temperature 4 (--temperature)" in captured.out
    for name, before in labels.items():                 # temperature never changes the labels
        np.testing.assert_array_equal(io.load_nifti(out / name).data, before)

    from medseg_tf.inference import predict_folder
    t1 = predict_folder(run, images, tmp_path / "p1", temperature=1.0, progress=False)
    t4 = predict_folder(run, images, tmp_path / "p4", temperature=4.0, progress=False)
    assert (t4["uncertainty"] > t1["uncertainty"]).all()
    assert list(t4["ood"]) == [False, True] and (t4["ood_score"] == t1["ood_score"]).all()

    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", "--model", str(run), "--images", str(images), "--out", str(out), "--temperature", "0"])
    assert exc.value.code == 2 and "--temperature" in capsys.readouterr().err
    (run / "calibration.json").write_text('{"temperature": "warm"}')
    assert cli.main(["predict", "--model", str(run), "--images", str(images), "--out", str(out),
                     "--overwrite", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration.json: 'temperature' must be" in err[0]


def test_uncertainty_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, medseg_tf.uncertainty; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
