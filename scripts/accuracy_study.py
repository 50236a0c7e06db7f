"""Issue 16's measurements: recipe levers, learning curve and candidate reference models (hippocampus).

Usage (from the repository root; one study at a time on a 2-core machine)::

    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py screen_2d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py curve_2d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py final_3d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py shipped

``shipped`` trains nothing: it scores the shipped models, their 2D+3D ensemble and the largest-component
post-processing on both halves (``benchmarks/accuracy/shipped_metrics.csv``).

Every study trains with :func:`medseg_tf.crossval.run_study` into ``runs/study/<study>/<recipe>`` (an
interrupted study resumes) and writes two tables into ``benchmarks/accuracy/``: ``<study>_metrics.csv``
(one row per recipe, case and class) and ``<study>_runs.csv`` (cases, epochs, volumes seen, minutes).

How the 200 shared cases are used, so that the estimates are honest:

* every run splits them as the shipped models did (``split_seed=0``, 160 training / 40 validation);
* the 40 validation cases are cut into two fixed halves by :func:`medseg_tf.crossval.split_halves`: **select** (20) and
  **test** (20). Recipes are compared on the select half only; the test half chooses nothing and
  reports the chosen recipe (and the shipped models) once;
* every run keeps its **last** epoch (``checkpoint="last"``): validation Dice chooses no epoch.
  (The shipped models kept their best epoch on all 40, so their figures on either half are slightly
  optimistic, which favours keeping them.)

Budgets are fixed numbers of training steps, so the Dice figures do not depend on how loaded the
machine was; the minutes do (they are wall time on this 2-core CPU as it was during the run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "accuracy"


def shipped(name: str) -> dict:
    """The shipped reference model's recipe (``models/<name>/config.json``) as a dict."""
    config = json.loads((ROOT / "models" / name / "config.json").read_text())
    config.pop("out_dir", None)
    return config


def _recipe(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if key == "model":
            out["model"] = {**out["model"], **value}
        else:
            out[key] = value
    out.update(checkpoint="last", split_seed=0, data="hippocampus")
    return out


def studies() -> dict[str, dict]:
    """Every study: name -> {"recipes": {...}, "score": "select" | "test" | "val"}."""
    from medseg_tf.augment import NNUNET_AUGMENT

    base_aug = shipped("hippocampus_2d")["augment"]  # rotation, zoom, contrast, gamma, noise; no mirror
    nnunet = dict(NNUNET_AUGMENT)  # no mirror: see lr_mirror
    two = _recipe(shipped("hippocampus_2d"), epochs=24)  # about a third of the shipped 2D budget
    instance = {"norm": "instance", "activation": "leaky_relu"}
    screen_2d = {
        "base": two,
        # a left-right mirror: valid for the anatomy in general, but every Task04 hippocampus has the same
        # handedness (the head lies on the same side of the body along x in 38 of 40 cases), so a mirrored
        # one never occurs in this data set
        "lr_mirror": _recipe(two, augment={**base_aug, "flips": [0]}),
        "nnunet_aug": _recipe(two, augment=nnunet),
        "instance_leaky": _recipe(two, augment=nnunet, model=instance),
        "deep_supervision": _recipe(two, augment=nnunet, model={"deep_supervision": True}),
    }
    curve = {}
    small = _recipe(shipped("hippocampus_2d"), epochs=10)
    for n in (5, 10, 20, 40, 80, 160):
        for seed in ((0, 1) if n <= 20 else (0,)):  # a second draw of the subset where it matters most
            for aug_name, aug in (("none", False), ("nnunet", nnunet)):
                curve[f"n{n:03d}_s{seed}_{aug_name}"] = _recipe(small, max_train_cases=n, augment=aug, seed=seed)
    return {
        "screen_2d": {"recipes": screen_2d, "score": "select"},
        "curve_2d": {"recipes": curve, "score": "select"},
        "final_2d": {"recipes": {"candidate": _recipe(shipped("hippocampus_2d"), augment=nnunet)},
                     "score": "test"},
        "final_3d": {"recipes": {"candidate": _recipe(shipped("hippocampus_3d"), augment=nnunet)},
                     "score": "test"},
    }


def score_shipped(extra: dict[str, list[Path]] | None = None) -> int:
    """Score the shipped models, their ensemble and LCC post-processing on the select and test halves."""
    import pandas as pd

    from medseg_tf.crossval import score_run, split_halves, summarize_study
    from medseg_tf.datasets import split_cases
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    _, val_ids = split_cases(dataset.case_ids, 0.2, 0)
    select, test = split_halves(val_ids)
    members = {"shipped_2d": [ROOT / "models" / "hippocampus_2d"],
               "shipped_3d": [ROOT / "models" / "hippocampus_3d"]}
    members["shipped_2d+3d"] = members["shipped_2d"] + members["shipped_3d"]
    members.update(extra or {})
    tables = []
    for name, runs in members.items():
        for lcc in (False, True):
            for half, cases in (("select", select), ("test", test)):
                table = score_run(runs, cases, dataset=dataset, lcc=lcc)
                tables.append(table.assign(recipe=name, lcc=lcc, half=half))
    metrics = pd.concat(tables, ignore_index=True)
    OUT.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(OUT / "shipped_metrics.csv", index=False, float_format="%.6g")
    metrics["recipe"] = metrics["recipe"] + metrics["lcc"].map({True: " +lcc", False: ""}) + " / " + metrics["half"]
    print(summarize_study(metrics).round(4).to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    all_studies = studies()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted([*all_studies, "shipped"]))
    parser.add_argument("--only", nargs="*", help="train only these recipes of the study")
    args = parser.parse_args(argv)

    from medseg_tf.crossval import run_study, split_halves, summarize_study
    from medseg_tf.datasets import split_cases
    from medseg_tf.sources import open_dataset

    if args.study == "shipped":
        return score_shipped()

    study = all_studies[args.study]
    recipes = study["recipes"]
    if args.only:
        recipes = {k: v for k, v in recipes.items() if k in args.only}
    dataset = open_dataset("hippocampus")
    _, val_ids = split_cases(dataset.case_ids, 0.2, 0)
    select, test = split_halves(val_ids)
    cases = {"select": select, "test": test, "val": val_ids}[study["score"]]
    metrics, runs = run_study(recipes, Path("study") / args.study, score_cases=cases)
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.only:
        metrics.to_csv(OUT / f"{args.study}_metrics.csv", index=False, float_format="%.6g")
        runs.to_csv(OUT / f"{args.study}_runs.csv", index=False)
    print(summarize_study(metrics).round(4).to_string())
    print(runs.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
