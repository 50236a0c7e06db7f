"""Issue 16's measurements: recipe levers, learning curve and candidate reference models (hippocampus).

Usage (from the repository root; one study at a time on a 2-core machine)::

    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py screen_2d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py curve_2d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py curve_2d_seed1
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py final_3d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py precision
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py wide_3d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py shipped
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py ensembles_3d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py curve_3d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py cv_2d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py cv_3d
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py cv_ensemble
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py shift_tta
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py shift_tta_test
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py canvas_test
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py cv_shift_tta
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py curve_2d_rerun
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py curve_2d_canvas
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py cv_2d_seed1
    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python scripts/accuracy_study.py cv_2d_seeds

``shipped`` trains nothing: it scores the shipped models, their 2D+3D ensemble and the largest-component
post-processing on both halves (``benchmarks/accuracy/shipped_metrics.csv``). The same command run on the
models shipped before the study (commit 03b7ebc) wrote ``previous_models_metrics.csv``.

``ensembles_3d`` trains nothing: it scores the three 3D models trained so far (the shipped one and the
``final_3d`` and ``wide_3d`` candidates, from ``runs/study``) and their probability ensembles on both halves
(``ensembles_3d_metrics.csv``).

``cv_2d`` is a 5-fold cross-validation of the shipped 2D recipe over all 200 shared cases (one model per
fold, last epoch, every case scored once by the model that did not train on it): the spread over folds
for the 2D card (``cv_2d_metrics.csv``, ``cv_2d_runs.csv``). The recipe was chosen on the select half,
whose 20 cases are among the 200: a slight optimism, stated with the figures. ``cv_3d`` does the same for
the shipped 3D recipe (``cv_3d_metrics.csv``, ``cv_3d_runs.csv``), in its shipped precision (``"auto"``).
``cv_2d_small_canvas_metrics.csv`` and ``cv_2d_small_canvas_runs.csv`` keep the first ``cv_2d``, copied
from git (commit 83e92f5): trained on a CPU with AVX-512, as ``cv_3d`` was, and predicted before 2D slices
were padded to at least the training patch.
``cv_ensemble`` trains nothing: both use the same folds, so fold k's 2D+3D ensemble (and either model with
largest-component post-processing) is scored on fold k's cases, without bias (``cv_ensemble_metrics.csv``).

``shift_tta`` trains nothing: test-time augmentation by translation (the only kind left to these models,
which must not be mirrored), scored on the select half: each shipped model predicts every case placed at
8 (3D) or 4 (2D, in the slice plane) offsets of +-4 or +-8 voxels around where it sits normally, and the
probabilities are averaged (``shift_tta_metrics.csv``, with the seconds per case); a control pads the same
8 voxels per axis evenly (one prediction, the anatomy where it sits normally, on the larger canvas the
shifted copies are predicted on), and for 2D the prediction as it was before ``predict`` padded slices to at
least the training patch (``2d before``: only to a multiple of 16, a smaller canvas than training's for most
slices). ``shift_tta_test``
reads the test half once for the 2D shift chosen there (``shift_tta_test_metrics.csv``), ``canvas_test`` once
for the 2D canvas (``canvas_test_metrics.csv``).

``curve_2d_rerun`` trains ``curve_2d``'s 18 runs again (same recipes), on the CPU and with the ``predict``
that ``curve_2d_seed1`` had, so that every point of the 2D curve has two seeds scored alike (``curve_2d``'s
runs were scored before the 2D canvas fix, on a CPU with AVX-512, and their models are gone).

``curve_2d_canvas`` trains nothing: each ``curve_2d_rerun`` model predicts the select cases on the small 2D
canvas ``predict`` used when ``curve_2d`` was scored and on the training patch's
(``curve_2d_canvas_metrics.csv``): what separates the two curves.

``cv_2d_seed1`` cross-validates the shipped 2D recipe again from seed 1 (same folds; an interrupted run
resumes at its fold); ``cv_2d_seeds`` trains nothing: fold k's two 2D models and their probability ensemble
score fold k's cases (``cv_2d_seeds_metrics.csv``), the fold ensemble of two trainings, without bias.

``report`` trains nothing either: it prints the README's tables (Markdown) from the committed tables.

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
    # the studies before "precision" ran in float32 (then the CPU default): keep them reproducible
    out["mixed_precision"] = changes.get("mixed_precision", "float32")
    return out


def studies() -> dict[str, dict]:
    """Every study: name -> {"recipes": {...}, "score": "select" | "test" | "val"}."""
    from medseg_tf.augment import NNUNET_AUGMENT

    # the 2D recipe shipped before the study (commit 03b7ebc; the final_2d candidate replaced it): the default
    # augmentation (rotation, zoom, contrast, gamma, noise) without mirror; pinned so that screen_2d reproduces
    base_aug = {"flips": False, "rot90": False}
    nnunet = dict(NNUNET_AUGMENT)  # no mirror: see lr_mirror
    two = _recipe(shipped("hippocampus_2d"), epochs=24, augment=base_aug)  # a third of the shipped 2D budget
    instance = {"norm": "instance", "activation": "leaky_relu"}
    screen_2d = {
        "base": two,
        # a left-right mirror: valid for the anatomy in general, but Task04's hippocampi (nearly) all share one
        # handedness (the head's centre of mass lies on the same side of the body's along RAS x in 8 of the 8
        # sample cases and 36 of the 40 held-out cases), so a mirrored one rarely or never occurs in this data set
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
    # the second draw above 20 cases (trained later, on the AVX2-only CPU): the spread at every size
    curve_seed1 = {}
    for n in (40, 80, 160):
        for aug_name, aug in (("none", False), ("nnunet", nnunet)):
            curve_seed1[f"n{n:03d}_s1_{aug_name}"] = _recipe(small, max_train_cases=n, augment=aug, seed=1)
    # curve_2d's 18 runs again, trained and scored as curve_2d_seed1 was (this AVX2-only CPU, ``predict`` with
    # the 2D canvas fix): the runs of curve_2d were scored before that fix, and their models are gone
    curve_rerun = dict(curve)
    # the same curve for the 3D recipe: 10 of its 40 epochs, in bfloat16 (its "auto" precision on this CPU), one seed
    curve_3d = {}
    small_3d = _recipe(shipped("hippocampus_3d"), epochs=10)
    for n in (5, 10, 20, 40, 80, 160):
        for aug_name, aug in (("none", False), ("nnunet", nnunet)):
            curve_3d[f"n{n:03d}_s0_{aug_name}"] = _recipe(small_3d, max_train_cases=n, augment=aug,
                                                          mixed_precision="mixed_bfloat16")
    # float32 vs mixed_bfloat16 (issue 15): the shipped recipes, shortened, one run each, same seed
    precision = {}
    for dims, epochs in ((3, 10), (2, 24)):
        for name, policy in (("f32", "float32"), ("bf16", "mixed_bfloat16")):
            precision[f"{name}_{dims}d"] = _recipe(shipped(f"hippocampus_{dims}d"), epochs=epochs,
                                                   mixed_precision=policy)
    return {
        "precision": {"recipes": precision, "score": "select"},
        "screen_2d": {"recipes": screen_2d, "score": "select"},
        "curve_2d": {"recipes": curve, "score": "select"},
        "curve_2d_seed1": {"recipes": curve_seed1, "score": "select"},
        "curve_2d_rerun": {"recipes": curve_rerun, "score": "select"},
        "curve_3d": {"recipes": curve_3d, "score": "select"},
        "final_2d": {"recipes": {"candidate": _recipe(shipped("hippocampus_2d"), augment=nnunet)},
                     "score": "test"},
        # the shipped 2D model's twin from seed 1 (same recipe, split and cases): the second member of the 2D
        # ensemble that cv_2d_seeds cross-validates
        "final_2d_seed1": {"recipes": {"candidate": _recipe(shipped("hippocampus_2d"), augment=nnunet, seed=1)},
                           "score": "test"},
        "final_3d": {"recipes": {"candidate": _recipe(shipped("hippocampus_3d"), augment=nnunet)},
                     "score": "test"},
        # capacity: the 3D candidate's training Dice (0.91) is above its validation Dice (0.877), which
        # stopped rising after about 20 of 40 epochs; 1.5x the widths (2.25x the FLOPs) in bfloat16.
        # Scored on all 40: compared with the shipped model on select first, test read once after.
        "wide_3d": {"recipes": {"candidate": _recipe(shipped("hippocampus_3d"), augment=nnunet,
                                                     model={"base_filters": 24, "max_filters": 96},
                                                     mixed_precision="mixed_bfloat16")},
                    "score": "val"},
    }


def score_members(members: dict[str, list[Path]], out_name: str, lcc_options=(False, True)) -> int:
    """Score models and probability ensembles (name -> run folders) on the select and test halves."""
    import pandas as pd

    from medseg_tf.crossval import score_run, split_halves, summarize_study
    from medseg_tf.datasets import split_cases
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    _, val_ids = split_cases(dataset.case_ids, 0.2, 0)
    select, test = split_halves(val_ids)
    tables = []
    for name, runs in members.items():
        for lcc in lcc_options:
            for half, cases in (("select", select), ("test", test)):
                table = score_run(runs, cases, dataset=dataset, lcc=lcc)
                tables.append(table.assign(recipe=name, lcc=lcc, half=half))
    metrics = pd.concat(tables, ignore_index=True)
    OUT.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(OUT / f"{out_name}.csv", index=False, float_format="%.6g")
    metrics["recipe"] = metrics["recipe"] + metrics["lcc"].map({True: " +lcc", False: ""}) + " / " + metrics["half"]
    print(summarize_study(metrics).round(4).to_string())
    return 0


def score_shipped() -> int:
    """Score the shipped models, their ensemble and LCC post-processing on the select and test halves."""
    members = {"shipped_2d": [ROOT / "models" / "hippocampus_2d"],
               "shipped_3d": [ROOT / "models" / "hippocampus_3d"]}
    members["shipped_2d+3d"] = members["shipped_2d"] + members["shipped_3d"]
    return score_members(members, "shipped_metrics")


def score_ensembles_3d() -> int:
    """The three 3D models trained so far (shipped, final_3d and wide_3d candidates) and their ensembles."""
    from medseg_tf import settings

    study = settings.runs_dir() / "study"
    single = {"shipped_3d": ROOT / "models" / "hippocampus_3d", "candidate_3d": study / "final_3d" / "candidate",
              "wide_3d": study / "wide_3d" / "candidate"}
    for name, run in single.items():
        if not (run / "model.keras").is_file():
            raise SystemExit(f"{run}: no trained model; run the study that trains {name} first")
    members = {name: [run] for name, run in single.items()}
    members["candidate_3d+wide_3d"] = [single["candidate_3d"], single["wide_3d"]]
    members["all_three_3d"] = list(single.values())
    return score_members(members, "ensembles_3d_metrics", lcc_options=(False,))


def cross_validate_shipped(dims: int, folds: int = 5, seed: int | None = None) -> int:
    """5-fold cross-validation of the shipped ``dims``-D recipe (last epoch) over all shared cases.

    ``seed`` trains every fold again from another initialisation and data order (same folds): the
    study ``cv_2d_seed1``, whose fold models :func:`score_cv_seeds` pairs with ``cv_2d``'s.
    """
    import pandas as pd

    from medseg_tf import settings
    from medseg_tf.crossval import cross_validate, summarize_folds

    name = f"cv_{dims}d" + ("" if seed is None else f"_seed{seed}")
    recipe = _recipe(shipped(f"hippocampus_{dims}d"))
    if seed is not None:
        recipe["seed"] = seed
    # the shipped precision ("auto": float32 in 2D, mixed_bfloat16 in 3D on a CPU with AVX-512 BF16)
    recipe["mixed_precision"] = shipped(f"hippocampus_{dims}d")["mixed_precision"]
    out = Path("study") / name
    table = cross_validate(recipe, out, folds=folds, checkpoint="last")
    root = settings.runs_dir() / out
    runs = []
    for fold in range(folds):
        summary = json.loads((root / f"fold_{fold}" / "summary.json").read_text())
        split = json.loads((root / f"fold_{fold}" / "split.json").read_text())
        runs.append({"fold": fold, "train_cases": len(split["train"]), "val_cases": len(split["val"]),
                     "epochs": summary.get("epochs_run", summary.get("epochs")),
                     "minutes": summary["seconds_this_session"] / 60})
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / f"{name}_metrics.csv", index=False, float_format="%.6g")
    pd.DataFrame(runs).to_csv(OUT / f"{name}_runs.csv", index=False, float_format="%.2f")
    print(summarize_folds(table).round(4).to_string())
    print(pd.DataFrame(runs).round(1).to_string(index=False))
    return 0


def score_cv_ensemble(folds: int = 5) -> int:
    """The 2D+3D ensemble and largest-component post-processing, cross-validated (prediction only).

    ``cv_2d`` and ``cv_3d`` split the cases into the same folds (same seed), so fold k's 2D and 3D models
    never saw fold k's 40 cases: their ensemble scores each of the 200 cases without bias, as the single
    models do in ``cv_2d_metrics.csv`` and ``cv_3d_metrics.csv`` (whose rows are the ``lcc=False`` singles).
    """
    import pandas as pd

    from medseg_tf import settings
    from medseg_tf.crossval import score_run, summarize_study
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    root = settings.runs_dir() / "study"
    tables = []
    for fold in range(folds):
        runs = {dims: root / f"cv_{dims}d" / f"fold_{fold}" for dims in (2, 3)}
        vals = [json.loads((run / "split.json").read_text())["val"] for run in runs.values()]
        if vals[0] != vals[1]:
            sys.exit(f"fold {fold}: the 2D and 3D runs validate on different cases; rerun cv_2d and cv_3d")
        for name, members, lcc in (("2d+3d", [runs[2], runs[3]], False), ("2d+3d", [runs[2], runs[3]], True),
                                   ("2d", [runs[2]], True), ("3d", [runs[3]], True)):
            table = score_run(members, vals[0], dataset=dataset, lcc=lcc)
            tables.append(table.assign(fold=fold, recipe=name, lcc=lcc))
            print(f"fold {fold}: {name}{' +lcc' * lcc} scored", flush=True)
    metrics = pd.concat(tables, ignore_index=True)
    OUT.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(OUT / "cv_ensemble_metrics.csv", index=False, float_format="%.6g")
    metrics["recipe"] = metrics["recipe"] + metrics["lcc"].map({True: " +lcc", False: ""})
    print(summarize_study(metrics).round(4).to_string())
    return 0


def _check_reproduces(scores, table: str, what: str, keys=("case", "class")) -> None:
    """Exit unless the Dice of ``scores`` equal the committed ``table``'s, row for row (by ``keys``), within 1e-4.

    A study that predicts again with models it did not train checks them this way: its plain predictions
    must give back the table the models were scored into when they were trained.
    """
    mine = scores.set_index(list(keys))["dice"]
    committed = read(table).set_index(list(keys))["dice"]
    gap = (mine - committed.reindex(mine.index)).abs()
    gap = float("inf") if gap.isna().any() or len(mine) != len(committed) else float(gap.max())
    if not gap < 1e-4:
        sys.exit(f"{what}: differs from {table}.csv by up to {gap:.2g} Dice: not the same models")


def score_cv_seeds(folds: int = 5) -> int:
    """Two trainings of the 2D recipe per fold and their probability ensemble, cross-validated (prediction only).

    ``cv_2d`` and ``cv_2d_seed1`` train the same recipe on the same folds from two seeds, so fold k's two
    models never saw fold k's 40 cases: their ensemble (the mean of their class probabilities) scores each
    of the 200 cases without bias (``cv_2d_seeds_metrics.csv``). Its cost: both trainings, and two
    predictions per case. The single models' rows must reproduce their cross-validations' tables.
    """
    import pandas as pd

    from medseg_tf import settings
    from medseg_tf.crossval import paired_difference, score_run, summarize_folds
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    root = settings.runs_dir() / "study"
    studies_ = {"2d": "cv_2d", "2d seed 1": "cv_2d_seed1"}
    tables = []
    for fold in range(folds):
        runs = {name: root / study / f"fold_{fold}" for name, study in studies_.items()}
        for run in runs.values():
            if not (run / "model.keras").is_file() or not (run / "summary.json").is_file():
                sys.exit(f"{run}: no finished fold model; run `accuracy_study.py {run.parent.name}` first")
        vals = [json.loads((run / "split.json").read_text())["val"] for run in runs.values()]
        if vals[0] != vals[1]:
            sys.exit(f"fold {fold}: the two runs validate on different cases; rerun cv_2d_seed1")
        for name, members in (*((n, [r]) for n, r in runs.items()), ("2d x2", list(runs.values()))):
            table = score_run(members, vals[0], dataset=dataset)
            tables.append(table.assign(fold=fold, recipe=name))
        print(f"fold {fold} scored", flush=True)
    metrics = pd.concat(tables, ignore_index=True)
    for name, study in studies_.items():
        _check_reproduces(metrics[metrics["recipe"] == name], f"{study}_metrics", name)
    OUT.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(OUT / "cv_2d_seeds_metrics.csv", index=False, float_format="%.6g")
    for recipe, table in metrics.groupby("recipe", sort=False):
        print(f"{recipe}:\n{summarize_folds(table).round(4).to_string()}")
    print(paired_difference(metrics, "2d x2", "2d").round(4).to_string())
    return 0


def _shifted_probabilities(model, spec, image, reach: int, centred: bool = False, canvas: bool = True) -> tuple:
    """Class probabilities averaged over the image placed ``reach`` voxels either side of where it sits.

    The image is padded with its minimum by ``reach`` voxels on one side of each shifted axis and by
    ``reach`` on the other in every combination (the 3 axes in 3D, the slice plane in 2D), predicted as
    ``predict`` does (the padded volume is centred in the model's patch, so the anatomy moves by
    ``reach`` voxels), and cropped back. ``reach=0``: one plain prediction. ``centred=True``: one
    prediction with ``reach`` voxels of padding on both sides (the same canvas, the anatomy not moved).
    ``canvas=False`` (2D): slices padded only to a multiple of 16, as ``predict`` did before it padded them
    to at least the training patch.
    """
    import itertools

    import numpy as np

    from medseg_tf.inference import predict_volume

    axes = (0, 1, 2) if spec.dims == 3 else tuple(a for a in range(3) if a != spec.slice_axis)
    placements = [()] if reach == 0 else list(itertools.product((0, 2 * reach), repeat=len(axes)))
    if centred:
        placements = [(reach,) * len(axes)]
    fill = float(image.min())
    total = None
    for before in placements:
        pads = [(0, 0)] * 3
        for axis, lo in zip(axes, before):
            pads[axis] = (lo, 2 * reach - lo)
        x = np.pad(image, pads + [(0, 0)] * (image.ndim - 3), constant_values=fill)
        p = predict_volume(model, x, dims=spec.dims, axis=spec.slice_axis,
                           patch_size=spec.patch_size if canvas or spec.dims == 3 else None, overlap=spec.overlap,
                           divisor=spec.divisor, from_logits=spec.from_logits, context_slices=spec.context_slices)
        p = p[tuple(slice(lo, p.shape[i] - hi) for i, (lo, hi) in enumerate(pads))]
        total = p if total is None else total + p
    return total / len(placements), len(placements)


def _load_case(dataset, case_id: str, spec) -> tuple:
    """One case for the studies that predict again: (its image volume, the reference labels as int64, their
    spacing in mm, the image as ``predict`` prepares it for ``spec``'s model: RAS, normalised, channels-last)."""
    import numpy as np

    from medseg_tf import io
    from medseg_tf.sliding import prepare_image

    case = dataset.case(case_id)
    vol, reference = io.load_nifti(case.image_path), io.load_nifti(case.label_path)
    image, _ = prepare_image(vol, spec)
    return vol, np.asarray(reference.data).astype(np.int64), reference.spacing, image


def _score_ras(ras_labels, vol, truth, spacing, names: dict) -> list[dict]:
    """Per-class metric rows (``metrics.case_metrics``) of a label map in RAS, put back on ``vol``'s grid."""
    from medseg_tf import io
    from medseg_tf.metrics import case_metrics

    return case_metrics(io.reorient_from_ras(ras_labels, vol), truth, spacing, names, 1.0)


def score_shift_tta(half: str = "select") -> int:
    """Translation test-time augmentation and the 2D prediction canvas, shipped models (prediction only).

    ``half="select"``: both models, reaches 0 (none), 4 and 8 voxels, the larger canvas alone, and for 2D
    the prediction before slices were padded to at least the training patch (the decisions).
    ``"test"``: the 2D shift chosen on select against the 2D prediction as it was then. ``"canvas_test"``:
    the 2D prediction now (slices padded to at least the patch) against before. Each test table was read
    once for its decision (the shift first, then the canvas: the test half was read twice in all).
    """
    import time

    import pandas as pd

    from medseg_tf.crossval import compare_recipes, split_halves
    from medseg_tf.datasets import split_cases
    from medseg_tf.inference import load_run
    from medseg_tf.sliding import labels_from_probs
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    _, val_ids = split_cases(dataset.case_ids, 0.2, 0)
    select, test = split_halves(val_ids)
    cases = select if half == "select" else test
    names = {i: n for i, n in enumerate(dataset.class_names) if i}
    # (reach, centred, canvas): the shifts, the canvas of reach 4 without moving the anatomy, and (2D) the
    # slices padded only to a multiple of 16, as predict did before (select); test: that against predict now
    shifts = ((0, False, True), (4, False, True), (8, False, True), (4, True, True))
    variants = {"select": {3: shifts, 2: ((0, False, False), (4, True, False), *shifts)},
                "test": {2: ((0, False, False), (4, False, False))},
                "canvas_test": {2: ((0, False, False), (0, False, True))}}[half]
    rows = []
    for dims, reaches in variants.items():
        model, spec = load_run(ROOT / "models" / f"hippocampus_{dims}d")
        for case_id in cases:
            vol, truth, spacing, image = _load_case(dataset, case_id, spec)
            for reach, centred, canvas in reaches:
                start = time.perf_counter()
                probs, placements = _shifted_probabilities(model, spec, image, reach, centred, canvas)
                seconds = time.perf_counter() - start
                recipe = (f"{dims}d" + ("" if canvas else " before") + (f" canvas +{2 * reach}" if centred else
                                       f" shift {reach} x{placements}" if reach else ""))
                for row in _score_ras(labels_from_probs(probs), vol, truth, spacing, names):
                    rows.append({"recipe": recipe, "case": case_id, **row, "seconds": seconds})  # rough: not timed alone
            print(f"{dims}D {case_id} scored", flush=True)
    metrics = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    name = {"select": "shift_tta", "test": "shift_tta_test", "canvas_test": "canvas_test"}[half]
    metrics.to_csv(OUT / f"{name}_metrics.csv", index=False, float_format="%.6g")
    first = {dims: metrics["recipe"][metrics["recipe"].str.startswith(f"{dims}d")].iloc[0] for dims in (2, 3)
             if metrics["recipe"].str.startswith(f"{dims}d").any()}
    baselines = {r: first[int(r[0])] for r in metrics["recipe"].unique() if r != first[int(r[0])]}
    print(compare_recipes(metrics, baselines)[["Anterior", "Posterior", "mean", "interval"]].round(4).to_string())
    return 0


def score_curve_canvas() -> int:
    """The re-trained 2D curve's models (``curve_2d_rerun``) predicted on both 2D canvases (prediction only).

    ``curve_2d``'s figures were scored when ``predict`` padded a slice only to a multiple of 16; its models
    are gone. Each ``curve_2d_rerun`` model (same recipe, same seed) predicts the 20 select cases on that
    small canvas and on the training patch's, as ``predict`` does now (``curve_2d_canvas_metrics.csv``):
    if the small canvas gives back the first curve's figures, the canvas, not the training, made the
    difference between the two curves.
    """
    import pandas as pd

    from medseg_tf import settings
    from medseg_tf.crossval import split_halves
    from medseg_tf.datasets import split_cases
    from medseg_tf.inference import load_run
    from medseg_tf.sliding import labels_from_probs
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    _, val_ids = split_cases(dataset.case_ids, 0.2, 0)
    select, _ = split_halves(val_ids)
    names = {i: n for i, n in enumerate(dataset.class_names) if i}
    root = settings.runs_dir() / "study" / "curve_2d_rerun"
    rows = []
    for recipe in studies()["curve_2d_rerun"]["recipes"]:
        if not (root / recipe / "summary.json").is_file():
            sys.exit(f"{root / recipe}: no finished run; run `accuracy_study.py curve_2d_rerun` first")
        model, spec = load_run(root / recipe)
        for case_id in select:
            vol, truth, spacing, image = _load_case(dataset, case_id, spec)
            for canvas in (False, True):
                probs, _ = _shifted_probabilities(model, spec, image, 0, canvas=canvas)
                for row in _score_ras(labels_from_probs(probs), vol, truth, spacing, names):
                    rows.append({"recipe": recipe, "canvas": "patch" if canvas else "small", "case": case_id, **row})
        print(f"{recipe} scored", flush=True)
    metrics = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(OUT / "curve_2d_canvas_metrics.csv", index=False, float_format="%.6g")
    _check_reproduces(metrics[metrics["canvas"] == "patch"], "curve_2d_rerun_metrics", "the patch-canvas predictions",
                      keys=("recipe", "case", "class"))
    print(metrics.groupby(["recipe", "canvas"])["dice"].mean().unstack().round(4).to_string())
    return 0


def score_cv_shift_tta(folds: int = 5) -> int:
    """Translation test-time augmentation (and LCC) on the 2D cross-validation folds (prediction only).

    The shift chosen on the select half (``shift_tta``: 4 placements of +-4 voxels in the slice plane)
    was read once on the test half and not adopted then; here each ``cv_2d`` fold model scores its own
    40 validation cases with and without it, with and without largest-component post-processing, so
    every variant scores all 200 cases by a model that never trained on them
    (``cv_shift_tta_metrics.csv``). The plain rows must reproduce ``cv_2d_metrics.csv``.
    """
    import pandas as pd

    from medseg_tf import settings
    from medseg_tf.crossval import paired_difference, summarize_folds
    from medseg_tf.inference import load_run
    from medseg_tf.postprocessing import keep_largest_component
    from medseg_tf.sliding import labels_from_probs
    from medseg_tf.sources import open_dataset

    dataset = open_dataset("hippocampus")
    names = {i: n for i, n in enumerate(dataset.class_names) if i}
    root = settings.runs_dir() / "study" / "cv_2d"
    rows = []
    for fold in range(folds):
        run = root / f"fold_{fold}"
        if not (run / "model.keras").is_file():
            sys.exit(f"{run}: no trained fold model; run `accuracy_study.py cv_2d` first")
        model, spec = load_run(run)
        for case_id in json.loads((run / "split.json").read_text())["val"]:
            vol, truth, spacing, image = _load_case(dataset, case_id, spec)
            for reach in (0, 4):
                probs, placements = _shifted_probabilities(model, spec, image, reach)
                ras = labels_from_probs(probs)
                for lcc in (False, True):
                    recipe = "2d" + (f" shift {reach} x{placements}" if reach else "") + (" +lcc" if lcc else "")
                    for row in _score_ras(keep_largest_component(ras) if lcc else ras, vol, truth, spacing, names):
                        rows.append({"fold": fold, "recipe": recipe, "case": case_id, **row})
        print(f"fold {fold} scored", flush=True)
    metrics = pd.DataFrame(rows)
    _check_reproduces(metrics[metrics["recipe"] == "2d"], "cv_2d_metrics", "the plain predictions")
    OUT.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(OUT / "cv_shift_tta_metrics.csv", index=False, float_format="%.6g")
    for recipe, table in metrics.groupby("recipe", sort=False):
        print(f"{recipe}:\n{summarize_folds(table).round(4).to_string()}")
        if recipe != "2d":
            print(paired_difference(metrics, recipe, "2d").round(4).to_string())
    return 0


def _intervals(diff) -> list[str]:
    """``paired_difference`` rows as text: ``+0.0027 [+0.0008, +0.0046]``."""
    return [f"{r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]" for _, r in diff.iterrows()]


def _md(frame) -> str:
    """A small DataFrame as a Markdown table (4 decimals)."""
    frame = frame.reset_index()
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def read(name: str):
    """One committed table of ``benchmarks/accuracy`` (case ids as text)."""
    from medseg_tf.crossval import read_study_table

    return read_study_table(OUT, name)


def report() -> int:
    """Print the study's results as Markdown tables, from the committed tables only."""
    import pandas as pd

    from medseg_tf.crossval import (compare_recipes, final_comparison, learning_curve, paired_difference,
                                    select_comparison, summarize_folds)

    def minutes(frame):
        frame["minutes"] = frame["minutes"].map(lambda m: "" if m != m else f"{m:.1f}")
        return frame

    if (OUT / "precision_metrics.csv").exists():
        runs = read("precision_runs")
        table = compare_recipes(read("precision_metrics"), {"bf16_3d": "f32_3d", "bf16_2d": "f32_2d"}, runs=runs)
        table = minutes(table)[["Anterior", "Posterior", "mean", "interval", "minutes"]]
        print("float32 vs mixed_bfloat16 (3D 10 epochs, 2D 24 epochs, 20 select cases, mean Dice per case):\n")
        print(_md(table.rename(columns={"interval": "bf16 - f32 (95 % interval)"}).fillna("")) + "\n")
        m = runs.set_index("recipe")["minutes"]
        print(f"bfloat16 trained {m['f32_3d'] / m['bf16_3d']:.2f}x faster in 3D, {m['f32_2d'] / m['bf16_2d']:.2f}x "
              f"in 2D\n")

    screen = read("screen_2d_metrics")
    names = sorted(set(screen["recipe"]) - {"base"}, key=list(screen["recipe"].unique()).index)
    levers = compare_recipes(screen, {name: "base" for name in names}, runs=read("screen_2d_runs"))
    levers = minutes(levers)[["Anterior", "Posterior", "mean", "interval", "minutes"]]
    print("Levers (2D, 24 epochs, 20 select cases, mean Dice per case):\n")
    print(_md(levers.rename(columns={"interval": "vs base (95 % interval)"}).fillna("")) + "\n")

    for dims in (2, 3):
        if not (OUT / f"curve_{dims}d_metrics.csv").exists():
            continue
        curve_runs = read(f"curve_{dims}d_runs")
        per_seed = learning_curve(read(f"curve_{dims}d_metrics"), curve_runs)
        table = per_seed.groupby(["train_cases", "augmentation", "class"])["dice"].mean()
        table = table.unstack(["augmentation", "class"])
        table.columns = [f"{cls} ({aug})" for aug, cls in table.columns]
        table["minutes"] = curve_runs.groupby("train_cases")["minutes"].mean().map(lambda m: f"{m:.1f}")
        first_run = (" (its first run, scored before the 2D canvas fix: superseded by the two-seed table below)"
                     if dims == 2 and (OUT / "curve_2d_rerun_runs.csv").exists() else "")
        print(f"Learning curve ({dims}D, {curve_runs['epochs'].iloc[0]} epochs, 20 select cases; mean over the "
              f"seeds; minutes: mean training time of a run){first_run}:\n")
        print(_md(table) + "\n")
        both = per_seed.groupby(["train_cases", "augmentation", "seed"])["dice"].mean()
        if per_seed["seed"].nunique() > 1:
            gap = both.groupby(["train_cases", "augmentation"]).agg(lambda v: v.max() - v.min())
            n, aug = gap.idxmax()
            print(f"Largest difference between two seeds (mean of both classes): {gap.max():.4f} at {n} cases "
                  f"(augmentation {aug})\n")
        # the 2D curve re-trained (curve_2d_rerun) and its seed 1 above 20 cases (curve_2d_seed1) supersede the
        # first run's points (scored before the 2D canvas fix): see curve_2d_canvas below
        rerun_runs = read("curve_2d_rerun_runs") if dims == 2 and (OUT / "curve_2d_rerun_runs.csv").exists() else None
        if rerun_runs is not None and (OUT / "curve_2d_seed1_metrics.csv").exists():
            seed1_runs = read("curve_2d_seed1_runs")
            now = pd.concat([learning_curve(read("curve_2d_rerun_metrics"), rerun_runs),
                             learning_curve(read("curve_2d_seed1_metrics"), seed1_runs)])
            table = now.groupby(["train_cases", "augmentation", "class"])["dice"].mean().unstack(["augmentation", "class"])
            table.columns = [f"{cls} ({aug})" for aug, cls in table.columns]
            spent = pd.concat([rerun_runs, seed1_runs])["minutes"]
            print("The 2D curve with two seeds at every size, trained and scored alike (`... accuracy_study.py "
                  "curve_2d_rerun`, and `curve_2d_seed1` for seed 1 above 20 cases; the AVX2-only CPU, `predict` with "
                  f"the 2D canvas fix; mean over the two seeds; {len(spent)} runs of {spent.min():.1f}-{spent.max():.1f} "
                  "training minutes):\n")
            print(_md(table) + "\n")
            both_now = now.groupby(["train_cases", "augmentation", "seed"])["dice"].mean().unstack("seed")
            both_now["s1 - s0"] = both_now["s1"] - both_now["s0"]
            gain = both_now[["s0", "s1"]].mean(axis=1).unstack("augmentation")
            print("Mean Dice of both classes per seed:\n")
            print(_md(both_now) + "\n")
            print("What the nnU-Net set adds (mean of both classes and both seeds, nnunet - none): "
                  + ", ".join(f"{n} cases {v:+.4f}" for n, v in (gain["nnunet"] - gain["none"]).items()) + "\n")
        if rerun_runs is not None and (OUT / "curve_2d_canvas_metrics.csv").exists():
            canvas = read("curve_2d_canvas_metrics")
            cols = {}
            for name, table in (("first run (small canvas)", read("curve_2d_metrics")),
                                ("re-trained, small canvas", canvas[canvas["canvas"] == "small"]),
                                ("re-trained, patch canvas", canvas[canvas["canvas"] == "patch"])):
                curve_ = learning_curve(table, rerun_runs)
                cols[name] = curve_.groupby(["train_cases", "augmentation", "seed"])["dice"].mean()
            compared = pd.DataFrame(cols)
            compared["small - first"] = compared.iloc[:, 1] - compared.iloc[:, 0]
            print("The first 2D curve against its runs re-trained (`curve_2d_rerun`, same recipes and seeds) and predicted "
                  "on the small 2D canvas of the first run's `predict` and on the training patch's (`... accuracy_study.py "
                  "curve_2d_canvas`; mean Dice of both classes, 20 select cases):\n")
            print(_md(compared) + "\n")
            shift = compared["small - first"].abs()
            print(f"Re-trained and predicted as the first run was, the points move by {shift.median():.4f} (median) "
                  f"and at most {shift.max():.4f}; the canvas moves them by "
                  f"{(compared.iloc[:, 2] - compared.iloc[:, 1]).min():+.4f} to "
                  f"{(compared.iloc[:, 2] - compared.iloc[:, 1]).max():+.4f}\n")

    if (OUT / "wide_3d_metrics.csv").exists():
        chosen = select_comparison(OUT)[["Anterior", "Posterior", "mean", "interval"]]
        print("A wider 3D U-Net (24 filters capped at 96, bfloat16, nnU-Net set) against the shipped 3D model, "
              "20 select cases (the decision):\n")
        print(_md(chosen.rename(columns={"interval": "vs before (95 % interval)"}).fillna("")) + "\n")

    if (OUT / "ensembles_3d_metrics.csv").exists():
        ens3 = read("ensembles_3d_metrics")
        names = [n for n in ens3["recipe"].unique() if n != "shipped_3d"]
        parts = []
        for half in ("select", "test"):
            t = compare_recipes(ens3[ens3["half"] == half], {n: "shipped_3d" for n in names})
            parts.append(t[["Anterior", "Posterior", "interval"]].rename(
                columns=lambda c: f"{c} ({half})" if c != "interval" else f"vs shipped_3d ({half})"))
        shipped_s = json.loads((ROOT / "models" / "hippocampus_3d" / "summary.json").read_text())["seconds_this_session"]
        spent = {"shipped": shipped_s / 60, "candidate": read("final_3d_runs")["minutes"].iloc[0],
                 "wide": read("wide_3d_runs")["minutes"].iloc[0]}
        print("Three 3D models and their probability ensembles (mean Dice per case; training minutes: "
              + ", ".join(f"{k} {v:.1f}" for k, v in spent.items()) + "):\n")
        print(_md(pd.concat(parts, axis=1).fillna("")) + "\n")

    if (OUT / "shift_tta_metrics.csv").exists():
        shifts = read("shift_tta_metrics")
        first = {d: shifts["recipe"][shifts["recipe"].str.startswith(d)].iloc[0] for d in ("3d", "2d")}
        names = [r for r in shifts["recipe"].unique() if r not in first.values()]
        table = compare_recipes(shifts, {r: first[r[:2]] for r in names})
        print("Translation test-time augmentation and the 2D prediction canvas, shipped models, 20 select cases "
              "(mean Dice per case; the interval is of the paired difference in the mean over both classes; "
              "x8 / x4: predictions per volume):\n")
        print(_md(table[["Anterior", "Posterior", "mean", "interval"]].rename(
            columns={"interval": "vs the first row of its model (95 % interval)"}).fillna("")) + "\n")
        for name, label in (("shift_tta_test", "the 2D shift"), ("canvas_test", "the 2D canvas")):
            if (OUT / f"{name}_metrics.csv").exists():
                t = read(f"{name}_metrics")
                base, other = t["recipe"].unique()[:2]
                row = compare_recipes(t, {other: base}).loc[other]
                print(f"Test half, read once for {label}: {other} {row['Anterior']:.4f} / {row['Posterior']:.4f}, "
                      f"vs {base}: {row['interval']}\n")

    # the cross-validations, read once: {"2d": table, "3d": table} for those present
    cv_tables = {f"{dims}d": read(f"cv_{dims}d_metrics") for dims in (2, 3)
                 if (OUT / f"cv_{dims}d_metrics.csv").exists()}
    for name, table in cv_tables.items():
        dims = name[0]
        cv = summarize_folds(table)
        fold_minutes = read(f"cv_{dims}d_runs")["minutes"]
        print(f"{len(fold_minutes)}-fold cross-validation of the shipped {dims}D recipe over the 200 shared cases "
              "(last epoch; mean Dice over cases, and over the folds' means; training minutes per fold: "
              + ", ".join(f"{m:.1f}" for m in fold_minutes) + "):\n")
        print(_md(cv[["mean", "fold_mean", "fold_std", "fold_min", "fold_max"]]) + "\n")
    if "2d" in cv_tables and (OUT / "cv_2d_small_canvas_metrics.csv").exists():
        first = read("cv_2d_small_canvas_metrics")
        fold_minutes = read("cv_2d_small_canvas_runs")["minutes"]
        print("The first 2D cross-validation (same folds; a CPU with AVX-512; predicted before 2D slices were padded "
              "to the training patch; training minutes per fold: " + ", ".join(f"{m:.1f}" for m in fold_minutes)
              + "):\n")
        print(_md(summarize_folds(first)[["mean", "fold_mean", "fold_std", "fold_min", "fold_max"]]) + "\n")
        both = pd.concat([cv_tables["2d"].assign(recipe="2d"), first.assign(recipe="2d first")])
        d = paired_difference(both, "2d", "2d first")
        d["interval"] = _intervals(d)
        print("2D now minus the first 2D cross-validation, case by case (the prediction canvas and a second "
              "training of every fold, together):\n")
        print(_md(d[["interval", "wins", "cases"]]) + "\n")

    if (OUT / "cv_shift_tta_metrics.csv").exists():
        cvs = read("cv_shift_tta_metrics")
        others = [r for r in cvs["recipe"].unique() if r != "2d"]
        table = compare_recipes(cvs, {r: "2d" for r in others})
        print("The 2D cross-validation's fold models with translation test-time augmentation and largest-component "
              "post-processing, each fold on its own 40 cases (200 cases; mean Dice per case; prediction only, "
              "`... accuracy_study.py cv_shift_tta`):\n")
        print(_md(table[["Anterior", "Posterior", "mean", "interval"]].rename(
            columns={"interval": "vs 2d (95 % interval)"}).fillna("")) + "\n")

    if (OUT / "cv_2d_seeds_metrics.csv").exists():
        seeds = read("cv_2d_seeds_metrics")
        table = compare_recipes(seeds, {"2d seed 1": "2d", "2d x2": "2d"})
        spent = [read(f"{study}_runs")["minutes"] for study in ("cv_2d", "cv_2d_seed1")]
        print("Two trainings of the 2D recipe per fold (seeds 0 and 1, same folds) and their probability ensemble, "
              "each fold on its own 40 cases (200 cases; mean Dice per case; `... accuracy_study.py cv_2d_seeds`; "
              "training minutes of the two per fold: "
              + ", ".join(f"{a:.1f} + {b:.1f}" for a, b in zip(*spent)) + "):\n")
        print(_md(table[["Anterior", "Posterior", "mean", "interval"]].rename(
            columns={"interval": "vs 2d (95 % interval)"}).fillna("")) + "\n")
        print(_md(summarize_folds(seeds[seeds["recipe"] == "2d x2"])[["mean", "fold_mean", "fold_std", "fold_min",
                                                                         "fold_max"]]) + "\n")

    if len(cv_tables) == 2:
        both = pd.concat([table.assign(recipe=name) for name, table in cv_tables.items()])
        d = paired_difference(both, "3d", "2d")
        d["interval"] = _intervals(d)
        print("3D minus 2D recipe, case by case over the two cross-validations (same folds, each case scored by "
              "the fold models that did not train on it; 95 % bootstrap interval over cases):\n")
        print(_md(d[["interval", "wins", "cases"]]) + "\n")

    if len(cv_tables) == 2 and (OUT / "cv_ensemble_metrics.csv").exists():
        cv_all = pd.concat([both.assign(lcc=False), read("cv_ensemble_metrics")], ignore_index=True)
        cv_all["variant"] = cv_all["recipe"] + cv_all["lcc"].map({True: " + lcc", False: ""})
        compared = {"3d": "2d", "2d+3d": "3d", "2d+3d + lcc": "2d+3d", "3d + lcc": "3d", "2d + lcc": "2d"}
        rows = []
        for variant, group in cv_all.groupby("variant", sort=False):
            row = {"variant": variant, **group.groupby("class")["dice"].mean().to_dict()}
            if variant in compared:
                d = paired_difference(cv_all, variant, compared[variant], by="variant").loc["mean"]
                row["vs"] = f"{compared[variant]}: {d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
            rows.append(row)
        print("The two cross-validations together: each case scored by the 2D and 3D models of its fold, their "
              "ensemble, and largest-component post-processing (200 cases; mean Dice per case; the interval is "
              "of the paired difference in the mean over both classes):\n")
        print(_md(pd.DataFrame(rows).set_index("variant").fillna("")) + "\n")

    _, finals = final_comparison(OUT)
    finals = minutes(finals)[["Anterior", "Posterior", "mean", "interval", "minutes"]]
    finals = finals.rename(columns={"interval": "vs before (95 % interval)", "minutes": "train minutes"})
    print("Candidates vs the models shipped before, 20 test cases (mean Dice per case):\n")
    print(_md(finals.fillna("")) + "\n")

    shipped_now = read("shipped_metrics")
    shipped_now["recipe"] = shipped_now["recipe"] + shipped_now["lcc"].map({True: " + lcc", False: ""})
    ens = shipped_now.pivot_table(index="recipe", columns=["half", "class"], values="dice", aggfunc="mean",
                                  sort=False)
    ens.columns = [f"{cls} ({half})" for half, cls in ens.columns]
    print("Shipped models now, ensembles and post-processing (mean Dice per case):\n")
    print(_md(ens))
    return 0


def main(argv: list[str] | None = None) -> int:
    all_studies = studies()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted([*all_studies, "shipped", "ensembles_3d", "cv_2d", "cv_3d", "cv_ensemble", "shift_tta",
                                                       "shift_tta_test", "canvas_test", "cv_shift_tta", "cv_2d_seed1", "cv_2d_seeds", "curve_2d_canvas",
                                                       "report"]))
    parser.add_argument("--only", nargs="*", help="train only these recipes of the study")
    args = parser.parse_args(argv)

    from medseg_tf.crossval import run_study, split_halves, summarize_study
    from medseg_tf.datasets import split_cases
    from medseg_tf.sources import open_dataset

    if args.study == "shipped":
        return score_shipped()
    if args.study == "ensembles_3d":
        return score_ensembles_3d()
    if args.study == "report":
        return report()
    if args.study == "cv_ensemble":
        return score_cv_ensemble()
    if args.study == "shift_tta":
        return score_shift_tta("select")
    if args.study == "shift_tta_test":
        return score_shift_tta("test")
    if args.study == "canvas_test":
        return score_shift_tta("canvas_test")
    if args.study == "cv_shift_tta":
        return score_cv_shift_tta()
    if args.study in ("cv_2d", "cv_3d"):
        return cross_validate_shipped(int(args.study[3]))
    if args.study == "cv_2d_seed1":
        return cross_validate_shipped(2, seed=1)
    if args.study == "cv_2d_seeds":
        return score_cv_seeds()
    if args.study == "curve_2d_canvas":
        return score_curve_canvas()

    study = all_studies[args.study]
    recipes = study["recipes"]
    if args.only:
        recipes = {k: v for k, v in recipes.items() if k in args.only}
    dataset = open_dataset("hippocampus")
    _, val_ids = split_cases(dataset.case_ids, 0.2, 0)
    select, test = split_halves(val_ids)
    cases = {"select": select, "test": test, "val": val_ids}[study["score"]]
    metrics, runs = run_study(recipes, Path("study") / args.study, score_cases=cases)
    if study["score"] == "val":  # scored on both halves: say which is which
        metrics["half"] = metrics["case"].map(lambda c: "select" if c in select else "test")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.only:
        metrics.to_csv(OUT / f"{args.study}_metrics.csv", index=False, float_format="%.6g")
        runs.to_csv(OUT / f"{args.study}_runs.csv", index=False)
    print(summarize_study(metrics).round(4).to_string())
    print(runs.to_string(index=False))
    return 0


if __name__ == "__main__":
    from medseg_tf.errors import MedsegError

    try:
        sys.exit(main())
    except MedsegError as exc:  # missing data, bad tables: one line, no traceback
        sys.exit(f"error: {exc}")
