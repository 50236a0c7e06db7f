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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medseg_tf import io
from medseg_tf.errors import OverwriteError
from medseg_tf.runspec import RunSpec

__all__ = ["cross_validate", "summarize_folds"]


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
        Replace existing fold runs and tables; an interrupted fold resumes without it.
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
    from medseg_tf.inference import load_run, predict_case
    from medseg_tf.metrics import case_metrics
    from medseg_tf.sources import open_dataset
    from medseg_tf.training import resolve_run_dir, train

    spec = RunSpec.coerce(spec).replace(folds=folds, checkpoint=checkpoint, out_dir=str(out_dir))
    root = resolve_run_dir(spec)
    tables = [root / "cv_metrics.csv", root / "cv_summary.csv"]
    if any(p.exists() for p in tables) and not overwrite:
        raise OverwriteError(f"{tables[0]}: already exists; pass --overwrite (overwrite=True) to run again")
    dataset = open_dataset(spec.data)
    names = {i: n for i, n in enumerate(dataset.class_names) if i}
    rows = []
    for fold in range(folds):
        run = train(spec.replace(fold=fold, out_dir=str(root / f"fold_{fold}")), overwrite=overwrite,
                    verbose=verbose)
        model, run_spec = load_run(run)
        split = pd.read_json(run / "split.json", typ="series")
        for case_id in split["val"]:
            case = dataset.case(case_id)
            labels, _ = predict_case(model, case.image_path, run_spec)
            reference = io.load_nifti(case.label_path)
            for row in case_metrics(labels, np.asarray(reference.data).astype(np.int64), reference.spacing,
                                    names, tolerance_mm):
                rows.append({"fold": fold, "case": case_id, **row})
    table = pd.DataFrame(rows)
    table.to_csv(tables[0], index=False)
    summarize_folds(table).to_csv(tables[1])
    return table
