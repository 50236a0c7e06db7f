"""K-fold cross-validation: disjoint folds, every case scored once by the model that did not see it."""

import json

import numpy as np
import pandas as pd
import pytest

from medseg_tf.datasets import kfold_split
from medseg_tf.errors import ConfigError
from medseg_tf.runspec import RunSpec


def test_kfold_split_partitions_the_cases():
    cases = [f"c{i:02d}" for i in range(11)]
    vals = []
    for fold in range(3):
        train, val = kfold_split(cases, 3, fold, seed=4)
        assert sorted(train + val) == cases and not set(train) & set(val)
        vals += val
    assert sorted(vals) == cases  # each case validated exactly once
    assert kfold_split(cases, 3, 1, seed=4) == kfold_split(cases, 3, 1, seed=4)
    assert kfold_split(cases, 3, 1, seed=4) != kfold_split(cases, 3, 1, seed=5)
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        kfold_split(cases, 3, 3)


def test_spec_checks_folds_and_checkpoint():
    assert RunSpec(folds=5, fold=4).fold == 4
    for bad, key in (({"folds": 1}, "folds"), ({"folds": 3, "fold": 3}, "fold"), ({"fold": 1}, "fold"),
                     ({"checkpoint": "median"}, "checkpoint")):
        with pytest.raises(ConfigError) as info:
            RunSpec(**bad)
        assert info.value.key == key


@pytest.mark.slow
def test_cross_validation_scores_every_case_once(tmp_path, phantom_root, capsys):
    from medseg_tf.cli import main

    out = tmp_path / "cv"
    code = main(["cv", "--data", str(phantom_root), "--dims", "2", "--folds", "2", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "32", "32", "--depth", "2",
                 "--base-filters", "4", "--max-cases", "4", "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out / "cv_metrics.csv")
    cases = sorted(p.name[: -len(".nii.gz")] for p in (phantom_root / "imagesTr").iterdir())[:4]
    assert sorted(table["case"].unique()) == cases  # all 4 cases, each once per class
    assert len(table) == 2 * len(cases) and set(table["fold"]) == {0, 1}
    for fold in (0, 1):
        split = json.loads((out / f"fold_{fold}" / "split.json").read_text())
        assert set(table.loc[table["fold"] == fold, "case"]) == set(split["val"])
        summary = json.loads((out / f"fold_{fold}" / "summary.json").read_text())
        assert summary["checkpoint"] == "last" and summary["kept_epoch"] == 1
    summary = pd.read_csv(out / "cv_summary.csv", index_col="class")
    assert summary.loc["Anterior", "mean"] == pytest.approx(table[table["class"] == "Anterior"]["dice"].mean())
    assert "fold_std" in capsys.readouterr().out

    # an interrupted cross-validation resumes: the finished fold is kept (not retrained), the lost one trains again
    import shutil

    for name in ("cv_metrics.csv", "cv_summary.csv"):
        (out / name).unlink()
    shutil.rmtree(out / "fold_1")
    kept = (out / "fold_0" / "model.keras").stat().st_mtime_ns
    assert main(["cv", "--data", str(phantom_root), "--dims", "2", "--folds", "2", "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "32", "32", "--depth", "2",
                 "--base-filters", "4", "--max-cases", "4", "--out", str(out)]) == 0
    assert (out / "fold_0" / "model.keras").stat().st_mtime_ns == kept
    assert (out / "fold_1" / "summary.json").is_file()
    pd.testing.assert_frame_equal(pd.read_csv(out / "cv_metrics.csv"), table)
    # a fold folder holding another recipe's finished run is not taken for this one's
    (out / "cv_metrics.csv").unlink()
    (out / "cv_summary.csv").unlink()
    assert main(["cv", "--data", str(phantom_root), "--dims", "2", "--folds", "2", "--epochs", "2",
                 "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "32", "32", "--depth", "2",
                 "--base-filters", "4", "--max-cases", "4", "--out", str(out)]) != 0
    assert "holds a complete training run" in capsys.readouterr().err


def test_compare_recipes_gives_verdicts_and_minutes():
    from medseg_tf.crossval import compare_recipes

    rng = np.random.default_rng(0)
    cases = [str(i) for i in range(20)]
    base = rng.uniform(0.7, 0.9, size=20)
    rows = []
    for recipe, shift in (("base", 0.0), ("up", 0.02), ("down", -0.02), ("same", 0.0)):
        noise = rng.normal(0, 0.001 if shift else 0.02, size=20)
        rows += [{"recipe": recipe, "case": c, "class": cls, "dice": d + shift + n}
                 for c, d, n in zip(cases, base, noise) for cls in ("A", "B")]
    table = pd.DataFrame(rows)
    runs = pd.DataFrame({"recipe": ["base", "up", "down", "same"], "minutes": [1.0, 2.0, 3.0, 4.0]})
    out = compare_recipes(table, {"up": "base", "down": "base", "same": "base"}, runs=runs)
    assert out.loc[["up", "down", "same"], "verdict"].tolist() == ["better", "worse", "unclear"]
    assert out.loc["up", "diff"] == pytest.approx(0.02, abs=0.002)
    assert out.loc["up", "low"] < out.loc["up", "diff"] < out.loc["up", "high"]
    assert out.loc["down", "interval"].startswith("-0.0")
    assert pd.isna(out.loc["base", "verdict"]) and out["minutes"].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="'nope'"):
        compare_recipes(table, {"nope": "base"})


def test_learning_curve_averages_each_run_and_refuses_other_names():
    from medseg_tf.crossval import learning_curve

    table = pd.DataFrame({"recipe": ["n010_s0_nnunet"] * 4 + ["n020_s1_none"] * 2,
                          "case": ["1", "2", "1", "2", "1", "2"], "class": ["X", "X", "Y", "Y", "X", "X"],
                          "dice": [0.6, 0.8, 0.5, 0.5, 0.9, 0.7]})
    runs = pd.DataFrame({"recipe": ["n010_s0_nnunet", "n020_s1_none"], "train_cases": [10, 20]})
    out = learning_curve(table, runs).set_index(["train_cases", "augmentation", "seed", "class"])["dice"]
    assert out.to_dict() == pytest.approx({(10, "nnunet", "s0", "X"): 0.7, (10, "nnunet", "s0", "Y"): 0.5,
                                           (20, "none", "s1", "X"): 0.8})
    with pytest.raises(ValueError, match="n<cases>_s<seed>_<augmentation>.*'base'"):
        learning_curve(table, pd.DataFrame({"recipe": ["base"], "train_cases": [5]}))
