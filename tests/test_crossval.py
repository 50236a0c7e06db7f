"""K-fold cross-validation: disjoint folds, every case scored once by the model that did not see it."""

import json

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
