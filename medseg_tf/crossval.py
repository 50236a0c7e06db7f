"""K-fold cross-validation: an estimate of a recipe's Dice on cases that chose nothing (TensorFlow).

:func:`cross_validate` trains one model per fold of a :class:`~medseg_tf.runspec.RunSpec`
(``folds``/``fold``, split by :func:`medseg_tf.datasets.kfold_split`), predicts each fold's validation
cases with the model that never saw them (whole volumes, on their own voxel grid, as ``predict`` does),
and scores them with :func:`medseg_tf.metrics.case_metrics`. Every case is scored exactly once.

The estimate is unbiased only if the validation cases chose nothing: with ``checkpoint="last"`` (the
default here, as in nnU-Net) the model of the last epoch is kept; with ``"best"`` each fold's validation
cases also chose its epoch, and the estimate is optimistic. Choosing a *recipe* by comparing
cross-validation results is a choice too: report the chosen recipe on cases kept apart from all of it.

Outputs in ``out_dir``: ``fold_<k>/`` (each fold's run folder), ``cv_metrics.csv`` (one row per case and
class, with its fold) and ``cv_summary.csv`` (per class: mean Dice over all cases, and the mean and spread
over the folds' means).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medseg_tf import io
from medseg_tf.errors import MedsegError, OverwriteError
from medseg_tf.runspec import RunSpec

__all__ = ["compare_recipes", "cross_validate", "final_comparison", "learning_curve", "paired_difference",
           "read_study_table", "select_comparison", "split_halves", "run_study", "score_run", "summarize_folds",
           "summarize_study"]


def summarize_folds(table: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per class: the mean of ``metric`` over all cases, and the mean, std and range of the folds' means.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`cross_validate` (columns ``fold``, ``class`` and ``metric``).

    Returns
    -------
    pandas.DataFrame
        Index ``class``; columns ``cases``, ``mean`` (over all cases), ``fold_mean``, ``fold_std``
        (sample std over folds, ddof=1), ``fold_min``, ``fold_max``.

    >>> t = pd.DataFrame({"fold": [0, 0, 1, 1], "class": ["A"] * 4, "dice": [0.8, 0.9, 0.7, 0.7]})
    >>> summarize_folds(t).round(3).loc["A", ["mean", "fold_mean", "fold_min", "fold_max"]].tolist()
    [0.775, 0.775, 0.7, 0.85]
    """
    per_fold = table.groupby(["class", "fold"], sort=False)[metric].mean().unstack("fold")
    out = pd.DataFrame({
        "cases": table.groupby("class", sort=False)[metric].count(),
        "mean": table.groupby("class", sort=False)[metric].mean(),
        "fold_mean": per_fold.mean(axis=1),
        "fold_std": per_fold.std(axis=1, ddof=1),
        "fold_min": per_fold.min(axis=1),
        "fold_max": per_fold.max(axis=1),
    })
    out.index.name = "class"
    return out


def cross_validate(spec: RunSpec | Mapping | str | os.PathLike, out_dir: str | os.PathLike, *, folds: int = 5,
                   checkpoint: str = "last", overwrite: bool = False, verbose: int | str = 2,
                   tolerance_mm: float = 1.0) -> pd.DataFrame:
    """Train ``folds`` models of ``spec`` and score every case with the model that did not train on it.

    Parameters
    ----------
    spec : RunSpec, dict or path of a JSON spec
        The recipe; its ``folds``, ``fold``, ``checkpoint`` and ``out_dir`` are set here.
    out_dir : path
        Folder of the fold runs and result tables (relative paths: under ``settings.runs_dir()``).
    folds : int
        Number of folds (>= 2).
    checkpoint : {"last", "best"}
        Which epoch each fold keeps (see the module docstring: ``"best"`` biases the estimate).
    overwrite : bool
        Replace existing fold runs and tables. Without it an interrupted cross-validation resumes: a fold
        whose run finished with this same spec is kept (scored again, not retrained), an interrupted fold
        resumes from its last epoch, and a fold folder holding another spec's run raises
        :class:`~medseg_tf.errors.OverwriteError`.
    verbose : "auto", 0, 1 or 2
        Training output, as :func:`medseg_tf.training.train`.
    tolerance_mm : float
        Surface Dice tolerance.

    Returns
    -------
    pandas.DataFrame
        One row per validation case and class: ``fold``, ``case``, ``label``, ``class`` and the
        :data:`medseg_tf.metrics.METRIC_COLUMNS`.
    """
    from medseg_tf.sources import open_dataset
    from medseg_tf.training import resolve_run_dir, train

    spec = RunSpec.coerce(spec).replace(folds=folds, checkpoint=checkpoint, out_dir=str(out_dir))
    root = resolve_run_dir(spec)
    tables = [root / "cv_metrics.csv", root / "cv_summary.csv"]
    if any(p.exists() for p in tables) and not overwrite:
        raise OverwriteError(f"{tables[0]}: already exists; pass --overwrite (overwrite=True) to run again")
    if root.exists() and not root.is_dir():
        raise OverwriteError(f"{root}: is a file, not a folder; choose another output folder")
    others = sorted(p.name for p in root.iterdir() if p.name not in {t.name for t in tables}
                    and not re.fullmatch(r"fold_\d+", p.name)) if root.is_dir() else []
    if others and not overwrite:
        raise OverwriteError(f"{root}: holds files that are not a cross-validation's ({', '.join(others[:3])}"
                             f"{', ...' if len(others) > 3 else ''}); choose another output folder or pass "
                             "--overwrite (overwrite=True) to write the folds next to them")
    dataset = open_dataset(spec.data)
    rows = []
    for fold in range(folds):
        fold_spec = spec.replace(fold=fold, out_dir=str(root / f"fold_{fold}"))
        run = root / f"fold_{fold}"
        if overwrite or not _finished_run_of(run, fold_spec):
            run = train(fold_spec, overwrite=overwrite, verbose=verbose)
        rows.append(score_run(run, dataset=dataset, tolerance_mm=tolerance_mm).assign(fold=fold))
    table = pd.concat(rows, ignore_index=True)
    table = table[["fold"] + [c for c in table.columns if c != "fold"]]
    table.to_csv(tables[0], index=False)
    summarize_folds(table).to_csv(tables[1])
    return table


def _finished_run_of(run_dir: Path, spec: RunSpec) -> bool:
    """``run_dir`` holds a finished training run (``summary.json``) of exactly ``spec``."""
    if not (run_dir / "summary.json").is_file() or not (run_dir / "model.keras").is_file():
        return False
    try:
        return RunSpec.from_json(run_dir / "config.json").to_dict() == spec.to_dict()
    except (OSError, ValueError, MedsegError):
        return False


def score_run(run_dir: str | os.PathLike | Sequence[str | os.PathLike], case_ids: list[str] | None = None, *,
              dataset=None, lcc: bool = False, tolerance_mm: float = 1.0) -> pd.DataFrame:
    """Predict cases with a run's model (whole volumes, as ``predict``) and score them per class.

    Parameters
    ----------
    run_dir : path, or sequence of paths
        A finished run folder (``model.keras``, ``config.json``, ``split.json``) or a shipped model
        folder; several: their ensemble (:func:`medseg_tf.inference.predict_ensemble`, equal weights).
    case_ids : list of str or None
        Cases to score; None: the (first) run's validation cases (``split.json``).
    dataset : MSDDataset or None
        Where the cases live; None: the (first) run's ``data``.
    lcc : bool
        Keep only the largest connected component of each class.
    tolerance_mm : float
        Surface Dice tolerance.

    Returns
    -------
    pandas.DataFrame
        One row per case and foreground class: ``case``, ``label``, ``class`` and the
        :data:`medseg_tf.metrics.METRIC_COLUMNS`.
    """
    from medseg_tf.inference import load_run, predict_ensemble
    from medseg_tf.metrics import case_metrics
    from medseg_tf.sources import open_dataset

    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(r) for r in run_dir]
    members = [load_run(r) for r in run_dirs]
    dataset = open_dataset(members[0][1].data) if dataset is None else dataset
    if case_ids is None:
        case_ids = list(pd.read_json(run_dirs[0] / "split.json", typ="series")["val"])
    names = {i: n for i, n in enumerate(dataset.class_names) if i}
    rows = []
    for case_id in case_ids:
        case = dataset.case(case_id)
        labels, _ = predict_ensemble(members, case.image_path, lcc=lcc)
        reference = io.load_nifti(case.label_path)
        for row in case_metrics(labels, np.asarray(reference.data).astype(np.int64), reference.spacing,
                                names, tolerance_mm):
            rows.append({"case": case_id, **row})
    return pd.DataFrame(rows)


def summarize_study(table: pd.DataFrame, metric: str = "dice", by: str = "recipe") -> pd.DataFrame:
    """Mean ``metric`` per recipe (rows) and class (columns), plus their mean over classes.

    >>> t = pd.DataFrame({"recipe": ["a", "a", "b", "b"], "class": ["X", "Y"] * 2, "dice": [0.8, 0.6, 0.9, 0.7]})
    >>> summarize_study(t).round(2).loc["b"].tolist()
    [0.9, 0.7, 0.8]
    """
    out = table.pivot_table(index=by, columns="class", values=metric, aggfunc="mean", sort=False)
    out.columns = list(out.columns)
    out["mean"] = out.mean(axis=1)
    return out


def split_halves(case_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cut held-out cases into two fixed halves, ``(select, test)``: the sorted ids, alternately.

    Compare recipes on ``select``; report the chosen one once on ``test``, which chose nothing.

    >>> split_halves(["c4", "c1", "c3", "c2", "c5"])
    (['c1', 'c3', 'c5'], ['c2', 'c4'])
    """
    ordered = sorted(case_ids)
    return ordered[0::2], ordered[1::2]


def paired_difference(table: pd.DataFrame, recipe: str, baseline: str, *, metric: str = "dice",
                      by: str = "recipe", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean per-case difference ``recipe - baseline`` per class, with a 95 % bootstrap interval over cases.

    Both recipes must be scored on the same cases; the difference is taken case by case (paired), which
    removes the case-to-case spread that both share, then the cases are resampled with replacement
    (``n_boot`` times, seeded) for the percentile interval. A class's row also gives ``wins``: the share
    of cases where ``recipe`` scored higher.

    Returns
    -------
    pandas.DataFrame
        Index: the classes and ``mean`` (the per-case mean over classes); columns ``diff``, ``low``,
        ``high``, ``wins``, ``cases``.

    >>> t = pd.DataFrame({"recipe": ["a"] * 4 + ["b"] * 4, "case": ["1", "2", "3", "4"] * 2,
    ...                   "class": ["X"] * 8, "dice": [0.8, 0.7, 0.9, 0.6, 0.82, 0.71, 0.93, 0.6]})
    >>> row = paired_difference(t, "b", "a").loc["X"]
    >>> round(float(row["diff"]), 4), int(row["cases"]), float(row["wins"])
    (0.015, 4, 0.75)
    """
    wide = table[table[by].isin([recipe, baseline])].pivot_table(index=["case", "class"], columns=by,
                                                                  values=metric, aggfunc="mean")
    if recipe not in wide or baseline not in wide:
        raise ValueError(f"{recipe!r} and {baseline!r} must both be in the table's {by!r} column")
    wide = wide.dropna()
    diff = (wide[recipe] - wide[baseline]).unstack("class")
    diff["mean"] = diff.mean(axis=1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(int(n_boot), len(diff)))
    rows = {}
    for name in diff.columns:
        values = diff[name].to_numpy()
        boot = values[picks].mean(axis=1)
        rows[name] = {"diff": values.mean(), "low": np.percentile(boot, 2.5), "high": np.percentile(boot, 97.5),
                      "wins": float(np.mean(values > 0)), "cases": len(values)}
    out = pd.DataFrame(rows).T
    out["cases"] = out["cases"].astype(int)
    return out


def compare_recipes(table: pd.DataFrame, baselines: Mapping[str, str], *, runs: pd.DataFrame | None = None,
                    metric: str = "dice") -> pd.DataFrame:
    """A study's table: mean per class, and for each recipe named in ``baselines`` its paired difference.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-case scores (columns ``recipe``, ``case``, ``class`` and ``metric``), as :func:`run_study`
        and :func:`score_run` write them.
    baselines : mapping
        ``{recipe: baseline}``: the recipes to compare, each with the one it is compared with.
    runs : pandas.DataFrame, optional
        :func:`run_study`'s runs table; its ``minutes`` join the output.

    Returns
    -------
    pandas.DataFrame
        One row per recipe: the classes' means and ``mean`` (as :func:`summarize_study`); for a compared
        recipe ``vs``, ``diff``, ``low``, ``high`` (the per-case mean over classes, 95 % bootstrap interval,
        :func:`paired_difference`), ``interval`` (the text ``+0.0053 [-0.0016, +0.0128]``) and ``verdict``
        (``"better"``/``"worse"`` when the interval excludes zero, else ``"unclear"``).

    >>> t = pd.DataFrame({"recipe": ["a"] * 4 + ["b"] * 4, "case": ["1", "2", "3", "4"] * 2,
    ...                   "class": ["X"] * 8, "dice": [0.8, 0.7, 0.9, 0.6, 0.82, 0.71, 0.93, 0.61]})
    >>> row = compare_recipes(t, {"b": "a"}).loc["b"]
    >>> round(float(row["diff"]), 4), row["interval"], row["verdict"]
    (0.0175, '+0.0175 [+0.0100, +0.0250]', 'better')
    """
    out = summarize_study(table, metric)
    for recipe, baseline in baselines.items():
        d = paired_difference(table, recipe, baseline, metric=metric).loc["mean"]
        verdict = "better" if d["low"] > 0 else "worse" if d["high"] < 0 else "unclear"
        out.loc[recipe, ["vs", "interval", "verdict"]] = [
            baseline, f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]", verdict]
        out.loc[recipe, ["diff", "low", "high"]] = [round(float(d[k]), 6) for k in ("diff", "low", "high")]
    if runs is not None:
        out["minutes"] = runs.set_index("recipe")["minutes"].reindex(out.index)
    return out


def learning_curve(table: pd.DataFrame, runs: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per-seed means of a learning-curve study whose recipes are named ``n<cases>_s<seed>_<augmentation>``.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-case scores of the study (``recipe``, ``case``, ``class``, ``metric``).
    runs : pandas.DataFrame
        Its runs table (``recipe``, ``train_cases``).

    Returns
    -------
    pandas.DataFrame
        Columns ``train_cases``, ``augmentation``, ``seed``, ``class`` and ``metric`` (the mean over the
        scored cases of one run), one row per run and class.

    >>> t = pd.DataFrame({"recipe": ["n005_s0_none", "n005_s1_none"] * 2, "case": ["1", "1", "2", "2"],
    ...                   "class": ["X"] * 4, "dice": [0.5, 0.7, 0.7, 0.9]})
    >>> r = pd.DataFrame({"recipe": ["n005_s0_none", "n005_s1_none"], "train_cases": [5, 5]})
    >>> learning_curve(t, r)[["seed", "dice"]].values.tolist()
    [['s0', 0.6], ['s1', 0.8]]
    """
    parts = runs["recipe"].str.extract(r"^n\d+_(?P<seed>s\d+)_(?P<augmentation>.+)$")
    if parts.isna().any().any():
        bad = runs["recipe"][parts.isna().any(axis=1)].tolist()
        raise ValueError(f"learning-curve recipes must be named n<cases>_s<seed>_<augmentation>, got {bad}")
    keys = pd.concat([runs[["recipe", "train_cases"]], parts], axis=1)
    merged = table.merge(keys, on="recipe")
    return (merged.groupby(["train_cases", "augmentation", "seed", "class"])[metric].mean().reset_index())


def read_study_table(results_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    """One table ``<results_dir>/<name>.csv`` written by a study (case ids read as text)."""
    return pd.read_csv(Path(results_dir) / f"{name}.csv", dtype={"case": str})


def final_comparison(results_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The hippocampus study's final candidates against the models shipped before, on the test half.

    Reads the tables ``scripts/accuracy_study.py`` writes into ``results_dir`` (``benchmarks/accuracy``):
    ``previous_models_metrics`` (the models before the study, both halves), ``final_2d``/``final_3d``
    (candidates scored on the test half) and ``wide_3d`` (scored on all held-out cases; its test half is
    used here), each with its ``_runs`` table.

    Returns
    -------
    table : pandas.DataFrame
        Per-case scores on the test half; recipes ``before_2d``, ``before_3d``, ``before_2d+3d`` and the
        candidates present (``candidate_2d``, ``candidate_3d``, ``wide_3d``).
    summary : pandas.DataFrame
        :func:`compare_recipes` of each candidate against the model it would replace, with training minutes.
    """
    before = read_study_table(results_dir, "previous_models_metrics")
    before = before[(before["half"] == "test") & ~before["lcc"]].copy()
    before["recipe"] = before["recipe"].str.replace("shipped_", "before_")
    test_cases = set(before["case"])
    rows, pairs, minutes = [before], {}, []
    for name, recipe, baseline in (("final_2d", "candidate_2d", "before_2d"),
                                   ("final_3d", "candidate_3d", "before_3d"), ("wide_3d", "wide_3d", "before_3d")):
        if (Path(results_dir) / f"{name}_metrics.csv").exists():
            scores = read_study_table(results_dir, f"{name}_metrics")
            rows.append(scores[scores["case"].isin(test_cases)].assign(recipe=recipe))
            pairs[recipe] = baseline
            minutes.append(read_study_table(results_dir, f"{name}_runs").assign(recipe=recipe))
    table = pd.concat(rows, ignore_index=True)
    runs = pd.concat(minutes, ignore_index=True) if minutes else None
    return table, compare_recipes(table, pairs, runs=runs)


def select_comparison(results_dir: str | os.PathLike) -> pd.DataFrame:
    """``wide_3d`` against the shipped 3D model on the *select* half (where the keep-or-replace decision is made).

    :func:`compare_recipes` output; recipes ``before_3d`` and ``wide_3d``.
    """
    before = read_study_table(results_dir, "previous_models_metrics")
    before = before[(before["half"] == "select") & ~before["lcc"] & (before["recipe"] == "shipped_3d")]
    wide = read_study_table(results_dir, "wide_3d_metrics")
    wide = wide[wide["case"].isin(set(before["case"]))].assign(recipe="wide_3d")
    table = pd.concat([before.assign(recipe="before_3d"), wide], ignore_index=True)
    return compare_recipes(table, {"wide_3d": "before_3d"})


def run_study(recipes: Mapping[str, RunSpec | Mapping], out_dir: str | os.PathLike, *,
              score_cases: list[str] | None = None, verbose: int | str = 2, overwrite: bool = False,
              tolerance_mm: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train each named recipe once (resuming finished or interrupted runs) and score it.

    Parameters
    ----------
    recipes : mapping of name -> RunSpec or dict
        The recipes; each trains into ``out_dir/<name>`` (its own ``out_dir`` is replaced).
    out_dir : path
        Folder of the runs (relative paths: under ``settings.runs_dir()``).
    score_cases : list of str or None
        Cases every recipe is scored on; None: each run's own validation cases. Give cases that no
        recipe trained on (and that chose nothing) for an unbiased comparison.
    verbose, tolerance_mm
        As :func:`cross_validate`.
    overwrite : bool
        Retrain a recipe whose folder holds a *different* finished recipe (without it: OverwriteError).

    Returns
    -------
    metrics : pandas.DataFrame
        One row per recipe, case and class (``recipe`` column first).
    runs : pandas.DataFrame
        One row per recipe: ``train_cases``, ``epochs``, ``volumes_seen`` (epochs x steps x batch),
        ``minutes`` (training wall time, this machine, as loaded as it was), ``best_epoch``.

    A finished run of the same recipe is not retrained, and its scores are kept in
    ``<run>/study_metrics.csv`` (for the same ``score_cases``), so an interrupted study continues where it
    stopped.
    """
    import json

    from medseg_tf.training import resolve_run_dir, train

    tables, runs = [], []
    for name, recipe in recipes.items():
        spec = RunSpec.coerce(recipe)
        spec = spec.replace(out_dir=str(Path(out_dir) / name))
        run = resolve_run_dir(spec)
        finished = (run / "summary.json").exists() and (run / "config.json").exists()
        if not finished or RunSpec.from_json(run / "config.json").to_dict() != spec.to_dict():
            # a different recipe under the same name is never reused: train() refuses it without overwrite
            run = train(spec, verbose=verbose, overwrite=overwrite)
            (run / "study_metrics.csv").unlink(missing_ok=True)  # scores of an older model
        cache = run / "study_metrics.csv"
        table = pd.read_csv(cache, dtype={"case": str}) if cache.exists() else None
        if table is None or (score_cases is not None and sorted(set(table["case"])) != sorted(score_cases)):
            table = score_run(run, score_cases, tolerance_mm=tolerance_mm)
            table.to_csv(cache, index=False)
        tables.append(table.assign(recipe=name))
        summary = json.loads((run / "summary.json").read_text())
        split = json.loads((run / "split.json").read_text())
        runs.append({"recipe": name, "train_cases": len(split["train"]), "epochs": spec.epochs,
                     "volumes_seen": spec.epochs * spec.steps_per_epoch * spec.batch_size,
                     "minutes": round(summary["seconds_this_session"] / 60, 2),
                     "best_epoch": summary.get("best_epoch")})
    metrics = pd.concat(tables, ignore_index=True)
    metrics = metrics[["recipe"] + [c for c in metrics.columns if c != "recipe"]]
    return metrics, pd.DataFrame(runs)
