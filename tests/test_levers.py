"""Issue 16's levers: nnU-Net augmentation, deep supervision, learning-curve subsets, ensembles, studies."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from scipy import ndimage

from medseg_tf.augment import NNUNET_AUGMENT, random_augment
from medseg_tf.datasets import subsample_cases
from medseg_tf.errors import ConfigError, OverwriteError
from medseg_tf.runspec import RunSpec

OFF = dict(flips=False, rot90=False, max_rotation_deg=0.0, scale_range=None, gamma_range=None, noise_std=0.0,
           contrast_range=None)


@pytest.mark.parametrize("shape", [(20, 24, 1), (20, 24, 18, 1)])
def test_blur_is_scipys_gaussian_with_mirrored_edges(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    label = np.zeros(shape[:-1], np.int32)
    out, _ = random_augment(x, label, tf.constant([1, 2]), **OFF, blur_sigma=(0.8, 0.8), p=1.0)
    expected = ndimage.gaussian_filter(x[..., 0], 0.8, mode="mirror", truncate=3 / 0.8)
    np.testing.assert_allclose(out.numpy()[..., 0], expected, atol=1e-5)


def test_brightness_multiplies_and_low_resolution_keeps_shape():
    x = np.random.default_rng(1).normal(size=(16, 16, 8, 1)).astype("float32")
    label = np.zeros(x.shape[:-1], np.int32)
    out, _ = random_augment(x, label, tf.constant([3, 4]), **OFF, brightness_range=(1.2, 1.2), p=1.0)
    np.testing.assert_allclose(out.numpy(), 1.2 * x, rtol=1e-6)
    low, _ = random_augment(x, label, tf.constant([3, 4]), **OFF, low_res_range=(0.5, 0.5), p=1.0)
    assert low.shape == x.shape and not np.allclose(low.numpy(), x)
    # half resolution in x and y: the slice is blockier (smaller high-frequency energy), z is untouched
    assert np.abs(np.diff(low.numpy(), axis=0)).mean() < np.abs(np.diff(x, axis=0)).mean()


@pytest.mark.parametrize("bad", [dict(blur_sigma=(0.5, 2.0)), dict(low_res_range=(0.5, 1.5)),
                                 dict(brightness_range=(1.2, 0.8)), dict(blur_sigma=(0.0, 1.0))])
def test_new_transforms_refuse_impossible_ranges(bad):
    with pytest.raises(ValueError):
        random_augment(np.zeros((8, 8, 1), "float32"), np.zeros((8, 8), np.int32), tf.constant([0, 0]), **bad)


@pytest.mark.parametrize("shape", [(32, 40, 1), (24, 32, 16, 1)])
def test_nnunet_set_touches_the_image_only_beyond_the_spatial_transform(shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype("float32")
    label = rng.integers(0, 3, size=shape[:-1]).astype(np.int32)
    for s in range(4):
        seed = tf.constant([s, 7])
        image, out = random_augment(x, label, seed, **{**NNUNET_AUGMENT, "p": 1.0})
        assert image.shape == x.shape and set(np.unique(out.numpy())) <= {0, 1, 2}
        # the intensity-only transforms draw from their own sub-seeds: the label is the same without them
        spatial_only = {**NNUNET_AUGMENT, "p": 1.0, "blur_sigma": None, "brightness_range": None,
                        "low_res_range": None, "gamma_range": None, "noise_std": 0.0, "contrast_range": None}
        _, same = random_augment(x, label, seed, **spatial_only)
        np.testing.assert_array_equal(out.numpy(), same.numpy())


def test_subsets_are_nested_and_seeded():
    ids = [f"c{i:03d}" for i in range(40)]
    subsets = [subsample_cases(ids, n, seed=3) for n in (5, 10, 20)]
    assert [len(s) for s in subsets] == [5, 10, 20]
    assert set(subsets[0]) < set(subsets[1]) < set(subsets[2])
    assert subsample_cases(ids, 5, seed=4) != subsets[0]
    assert subsets[1] == sorted(subsets[1])  # original order kept
    with pytest.raises(ValueError):
        subsample_cases(ids, 0)


def test_spec_fields_for_learning_curves_and_deep_supervision():
    spec = RunSpec(dims=2, seed=3, split_seed=0, max_train_cases=5, model={"depth": 4, "deep_supervision": True})
    assert spec.effective_split_seed == 0 and RunSpec(seed=3).effective_split_seed == 3
    weights = spec.deep_supervision_weights
    assert len(weights) == 4 and sum(weights) == pytest.approx(1.0) and weights[0] == 2 * weights[1]
    assert RunSpec(dims=2).deep_supervision_weights == (1.0,)
    for bad, key in (({"max_train_cases": 0}, "max_train_cases"),
                     ({"model": {"deep_supervision": True, "skips": False}}, "model")):
        with pytest.raises(ConfigError) as info:
            RunSpec(**bad)
        assert info.value.key == key


def test_deep_supervision_logs_take_single_output_names():
    from medseg_tf.callbacks import DeepSupervisionLogs

    logs = {"loss": 1.0, "output_loss": 0.6, "output_ds1_loss": 0.8, "output_dice_mean": 0.5,
            "val_output_dice_A": 0.4, "val_output_ds1_loss": 0.9, "val_loss": 1.1}
    DeepSupervisionLogs().on_epoch_end(0, logs)
    assert logs == {"loss": 1.0, "output_loss": 0.6, "output_ds1_loss": 0.8, "dice_mean": 0.5,
                    "val_dice_A": 0.4, "val_output_ds1_loss": 0.9, "val_loss": 1.1}


def _tiny(out_dir, dims=2, **changes):
    spec = dict(dims=dims, epochs=2, steps_per_epoch=2, batch_size=2, max_cases=6, split_seed=0,
                patch_size=[32] * dims, model={"depth": 2, "base_filters": 4}, checkpoint="last",
                out_dir=str(out_dir))
    spec.update(changes)
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_trains_and_predicts_like_a_single_output_model(tmp_path, phantom_root, dims):
    from medseg_tf.crossval import score_run
    from medseg_tf.inference import load_run
    from medseg_tf.training import train

    run = train(_tiny(tmp_path / "ds", dims, data=str(phantom_root), max_train_cases=3,
                      model={"depth": 2, "base_filters": 4, "deep_supervision": True, "norm": "instance",
                             "activation": "leaky_relu"}), verbose=0)
    history = pd.read_csv(run / "history.csv")
    assert {"val_dice_mean", "val_dice_Anterior", "output_ds1_loss"} <= set(history.columns)
    assert history["val_dice_mean"].between(0, 1).all()
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 1  # subset of the 5 training cases
    model, _ = load_run(run)
    assert len(model.outputs) == 1  # prediction sees the full-resolution output only
    table = score_run(run)
    assert set(table["case"]) == set(split["val"]) and table["dice"].between(0, 1).all()


@pytest.mark.slow
def test_study_trains_once_scores_given_cases_and_ensembles(tmp_path, phantom_root):
    from medseg_tf.crossval import run_study, score_run, summarize_study
    from medseg_tf.inference import load_run, predict_case, predict_ensemble

    recipes = {"plain": _tiny("x", data=str(phantom_root)),
               "nnunet": _tiny("x", data=str(phantom_root), augment={**NNUNET_AUGMENT, "flips": [0]})}
    cases = ["phantom_000", "phantom_001"]
    metrics, runs = run_study(recipes, tmp_path / "study", score_cases=cases, verbose=0)
    assert set(metrics["recipe"]) == {"plain", "nnunet"} and set(metrics["case"]) == set(cases)
    assert list(runs["volumes_seen"]) == [8, 8] and list(runs["train_cases"]) == [5, 5]
    stamp = (tmp_path / "study" / "plain" / "model.keras").stat().st_mtime_ns
    again, _ = run_study(recipes, tmp_path / "study", score_cases=cases, verbose=0)
    assert (tmp_path / "study" / "plain" / "model.keras").stat().st_mtime_ns == stamp  # not retrained
    pd.testing.assert_frame_equal(again, metrics)
    changed = {**recipes, "plain": {**recipes["plain"], "seed": 1}}
    with pytest.raises(OverwriteError):  # another recipe under a finished recipe's name
        run_study(changed, tmp_path / "study", score_cases=cases, verbose=0)
    assert list(summarize_study(metrics).columns) == ["Anterior", "Posterior", "mean"]

    runs_dirs = [tmp_path / "study" / name for name in recipes]
    members = [load_run(r) for r in runs_dirs]
    image = phantom_root / "imagesTr" / "phantom_000.nii.gz"
    alone, _ = predict_case(members[0][0], image, members[0][1])
    doubled, _ = predict_ensemble([members[0], members[0]], image)
    np.testing.assert_array_equal(alone, doubled)  # an ensemble of one model with itself is that model
    only_first, _ = predict_ensemble(members, image, weights=[1.0, 0.0])
    np.testing.assert_array_equal(alone, only_first)
    with pytest.raises(ValueError, match="weights"):
        predict_ensemble(members, image, weights=[1.0])
    both = score_run(runs_dirs, cases)
    assert len(both) == 2 * len(cases) and both["dice"].between(0, 1).all()


def _script(name):
    import importlib.util

    from medseg_tf import settings

    spec = importlib.util.spec_from_file_location(name, settings.REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_card_estimate_section_filters_rows_and_refuses_bad_filters(tmp_path):
    make = _script("make_reference_model")
    table = tmp_path / "t.csv"
    pd.DataFrame({"recipe": ["a", "a", "a", "b"], "half": ["test", "test", "select", "test"],
                  "case": ["1", "2", "3", "1"], "class": ["X"] * 4, "dice": [0.8, 0.6, 0.1, 0.2]}).to_csv(table)
    text = make.estimate_section(table, "a", ["half=test"], "why these cases", ["X"])
    assert "| X | 0.7000 ± 0.1414 | 0.7000 | 2 |" in text and "`half=test`" in text and "why these cases" in text
    for where in (["half"], ["nope=1"], ["half=none"]):
        with pytest.raises(SystemExit):
            make.estimate_section(table, "a", where, "", ["X"])


def test_card_cv_section_summarises_folds_and_refuses_other_tables(tmp_path):
    make = _script("make_reference_model")
    table, runs = tmp_path / "cv.csv", tmp_path / "runs.csv"
    pd.DataFrame({"fold": [0, 0, 1, 1], "case": ["1", "2", "3", "4"], "class": ["X"] * 4,
                  "dice": [0.8, 0.6, 0.9, 0.9]}).to_csv(table, index=False)
    pd.DataFrame({"fold": [0, 1], "minutes": [10.04, 11.0]}).to_csv(runs, index=False)
    text = make.cv_section(table, runs, "how", ["X"])
    # over cases 0.8; fold means 0.7 and 0.9 -> 0.8 +- 0.1414, range 0.7 - 0.9
    assert "| X | 0.8000 | 0.8000 ± 0.1414 | 0.7000 - 0.9000 | 4 |" in text
    assert "2 folds" in text and "10.0, 11.0" in text and "how" in text
    pd.DataFrame({"case": ["1"], "class": ["X"], "dice": [0.5]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SystemExit, match="no column fold"):
        make.cv_section(tmp_path / "bad.csv", None, "", ["X"])
    with pytest.raises(SystemExit, match="no such table"):
        make.cv_section(tmp_path / "missing.csv", None, "", ["X"])


def test_card_section_update_inserts_before_onnx_then_replaces(tmp_path, capsys):
    make = _script("make_reference_model")
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# M\n\n## Data\nd\n\n## Without TensorFlow\nonnx\n")
    assert make.update_card_section(tmp_path, "## Cross-validation of the recipe\nfirst\n") == 0
    assert card.read_text() == ("# M\n\n## Data\nd\n\n## Cross-validation of the recipe\nfirst\n\n"
                                "## Without TensorFlow\nonnx\n")
    make.update_card_section(tmp_path, "## Cross-validation of the recipe\nsecond\n")
    assert card.read_text().count("## Cross-validation") == 1 and "second" in card.read_text()
    assert "first" not in card.read_text() and "second" in capsys.readouterr().out


def test_study_report_reads_the_committed_tables(capsys):
    study = _script("accuracy_study")
    assert study.report() == 0
    out = capsys.readouterr().out
    screen = pd.read_csv(study.OUT / "screen_2d_metrics.csv")
    for recipe in screen["recipe"].unique():
        assert f"| {recipe} |" in out
    assert "| before_2d |" in out and "| shipped_2d+3d |" in out
    for dims in (2, 3):
        if (study.OUT / f"curve_{dims}d_metrics.csv").exists():
            assert f"Learning curve ({dims}D, 10 epochs" in out
    if (study.OUT / "curve_2d_canvas_metrics.csv").exists():
        assert "two seeds at every size" in out and "predicted on the small 2D canvas" in out
        canvas = pd.read_csv(study.OUT / "curve_2d_canvas_metrics.csv")
        assert set(canvas["canvas"]) == {"small", "patch"} and canvas["recipe"].nunique() == 18
    if all((study.OUT / f"cv_{dims}d_metrics.csv").exists() for dims in (2, 3)):
        assert "3D minus 2D recipe" in out and out.count("-fold cross-validation of the shipped") == 2
    if (study.OUT / "cv_2d_seeds_metrics.csv").exists():
        assert "Two trainings of the 2D recipe per fold" in out and "| 2d x2 |" in out
        seeds = pd.read_csv(study.OUT / "cv_2d_seeds_metrics.csv")
        assert set(seeds["recipe"]) == {"2d", "2d seed 1", "2d x2"} and seeds["case"].nunique() == 200


def test_card_script_answers_missing_data_in_one_line(tmp_path):
    """make_reference_model.py without the hippocampus data: one line naming the folder, exit 1, no traceback."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    dest = tmp_path / "model"
    dest.mkdir()
    shutil.copy(root / "models" / "hippocampus_2d" / "config.json", dest / "config.json")
    missing = tmp_path / "no_data"
    env = {**os.environ, "MEDSEG_HIPPOCAMPUS_DIR": str(missing), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(root / "scripts" / "make_reference_model.py"), "--dest", str(dest),
                           "--cv-only", "--cv", str(root / "benchmarks" / "accuracy" / "cv_2d_metrics.csv")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "not found" in errors[0]
    assert not (dest / "MODEL_CARD.md").exists()


def test_card_ensemble_cv_text_compares_the_ensemble_with_a_member(tmp_path):
    make = _script("make_reference_model")
    rows = []
    for recipe, bonus in (("2d", 0.0), ("2d seed 1", -0.01), ("2d x2", 0.02)):
        for fold, case, dice in ((0, "1", 0.8), (0, "2", 0.6), (1, "3", 0.9), (1, "4", 0.7)):
            rows.append({"recipe": recipe, "fold": fold, "case": case, "class": "X", "dice": dice + bonus})
    table = tmp_path / "cv.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    runs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    pd.DataFrame({"minutes": [10.0, 11.0]}).to_csv(runs[0], index=False)
    pd.DataFrame({"minutes": [12.0, 13.5]}).to_csv(runs[1], index=False)
    text = make.ensemble_cv_text(table, runs, ["X"])
    # over cases 0.75 (+0.02 for the ensemble); folds 0.7 and 0.8; every case +0.02 -> a zero-width interval
    assert "| 2d | X | 0.7500 | 0.7500 ± 0.0707 | 0.7000 - 0.8000 |" in text
    assert "| 2d x2 | X | 0.7700 |" in text and "| 2d seed 1 | X | 0.7400 |" in text
    assert "X +0.0200 [+0.0200, +0.0200]" in text and "took 22.0, 24.5 minutes" in text
    pd.DataFrame(rows).query("recipe != '2d x2'").to_csv(tmp_path / "no_ensemble.csv", index=False)
    with pytest.raises(SystemExit, match="not a cross-validation table of an ensemble"):
        make.ensemble_cv_text(tmp_path / "no_ensemble.csv", [], ["X"])
    pd.DataFrame({"minutes": [1.0]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SystemExit, match="different numbers of folds"):
        make.ensemble_cv_text(table, [runs[0], tmp_path / "short.csv"], ["X"])
    with pytest.raises(SystemExit, match="no such table"):
        make.ensemble_cv_text(tmp_path / "missing.csv", [], ["X"])
