"""Package a finished training run as a shipped reference model, with a measured model card.

Usage (from the repository root)::

    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus \
        python scripts/make_reference_model.py runs/hippocampus_3d --dest models/hippocampus_3d

What it does:

1. copies ``config.json``, ``split.json``, ``history.csv`` and ``summary.json``
   of the run, and saves ``model.keras`` *without* optimizer state (a few MB);
2. predicts every held-out case of ``split.json["val"]`` on its whole volume,
   in its original space, with :func:`medseg_tf.inference.predict_folder`
   (no TTA, no post-processing), and times it;
3. evaluates the predictions with :func:`medseg_tf.metrics.evaluate_folder`
   (per case and class: Dice, HD95, ...) into ``metrics_val.csv``;
4. exports ``model.onnx`` (``python -m medseg_tf export --format onnx``) and checks that it gives the
   Keras labels on the held-out cases (share of equal voxels and file size on the card);
5. with ``--estimate TABLE --recipe NAME``: the card's unbiased estimate, from a per-case table of
   ``scripts/accuracy_study.py`` scored on cases that chose nothing (``--estimate-note`` says how,
   ``--where half=test`` filters rows); ``--estimate-only --dest models/NAME`` rewrites only that section
   of a shipped model's card;
   ``--rescore --dest models/NAME`` re-predicts the held-out cases of a shipped model as ``predict`` does
   now and rewrites only its ``metrics_val*.csv`` and its card's "Held-out results" section;
   with ``--cv TABLE [--cv-runs RUNS]``, the same for a cross-validation of the recipe (``--cv-only``);
   ``--dest models/B --ensemble-with models/A [--cv TABLE --cv-runs RUNS_A RUNS_B]`` predicts the held-out
   cases with the ensemble of the shipped models A and B (``predict --model A B``), writes
   ``B/metrics_val_ensemble.csv`` and an "Ensemble" section, with the ensemble's cross-validation, into
   both cards;
6. writes ``MODEL_CARD.md`` from those measured numbers.

The test ``tests/test_reference_models.py`` re-predicts some held-out cases
and checks they reproduce ``metrics_val.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _machine() -> str:
    """Cores, CPU (with its widest vector instructions: the two CPUs of this machine kind share a name), RAM."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu += ", AVX-512" if "avx512f" in flags else ", AVX2 only" if "avx2" in flags else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, "
            f"{'%d GPU(s)' % len(gpus) if gpus else 'no GPU'}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}")


def _augmentation_text(augment) -> str:
    """Every ``random_augment`` argument in effect: the config's values over the function's defaults."""
    import inspect

    from medseg_tf.augment import random_augment

    if augment is False:
        return "none"
    params = inspect.signature(random_augment).parameters
    values = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    if isinstance(augment, dict):
        values.update(augment)
    return json.dumps(values)


def onnx_section(dest: Path, dataset, val_ids: list[str]) -> str:
    """Export ``dest/model.onnx`` and measure its label agreement with the Keras model on ``val_ids``."""
    from medseg_tf.export import export_model
    from medseg_tf.inference import load_run, predict_case
    from medseg_tf.onnx_predict import load_onnx, predict_case_onnx

    export_model(dest, "onnx", dest / "model.onnx", overwrite=True)
    keras_model, spec = load_run(dest)
    onnx_model = load_onnx(dest / "model.onnx")
    equal = total = 0
    for case_id in val_ids:
        path = dataset.case(case_id).image_path
        a, _ = predict_case(keras_model, path, spec)
        b, _ = predict_case_onnx(onnx_model, path)
        equal, total = equal + int((a == b).sum()), total + a.size
    return (f"`model.onnx` ({(dest / 'model.onnx').stat().st_size / 1e6:.1f} MB, exported by "
            f"`python -m medseg_tf export --model {dest.as_posix()} --format onnx --out {dest.as_posix()}/model.onnx`) gives the Keras model's labels "
            f"on {100 * equal / total:.3f} % of the voxels of the {len(val_ids)} held-out cases (measured by "
            f"`python scripts/make_reference_model.py`); `python -m medseg_tf predict --model "
            f"{dest.as_posix()}/model.onnx ...` runs it with onnxruntime, without TensorFlow.")


def replace_section(card: str, section: str, *, before: str | None = None) -> str:
    """``card`` with its Markdown section of ``section``'s heading (``## ...``, up to the next ``## ``) replaced
    by ``section``; a card without one gets it before the ``before`` heading, or at the end.

    >>> replace_section("# T\\n\\n## A\\nold\\n\\n## B\\nb\\n", "## A\\nnew\\n")
    '# T\\n\\n## A\\nnew\\n\\n## B\\nb\\n'
    >>> replace_section("# T\\n\\n## B\\nb\\n", "## A\\nnew\\n", before="## B")
    '# T\\n\\n## A\\nnew\\n\\n## B\\nb\\n'
    """
    heading = section.splitlines()[0]
    parts = card.rstrip("\n").split("\n\n## ")
    blocks = [parts[0]] + ["## " + part for part in parts[1:]]
    new = section.rstrip("\n")
    headings = [block.splitlines()[0] for block in blocks]
    if heading in headings:
        blocks[headings.index(heading)] = new
    elif before is not None and before in headings:
        blocks.insert(headings.index(before), new)
    else:
        blocks.append(new)
    return "\n\n".join(blocks) + "\n"


def update_onnx_only(dest: Path) -> int:
    """Re-export ``model.onnx`` of a shipped model and rewrite only its card's ONNX section."""
    from medseg_tf.training import TrainConfig, open_dataset

    config = TrainConfig.from_json(dest / "config.json")
    dataset = open_dataset(config.data)
    val_ids = json.loads((dest / "split.json").read_text())["val"]
    card_path = dest / "MODEL_CARD.md"
    card = replace_section(card_path.read_text(), "## Without TensorFlow\n" + onnx_section(dest, dataset, val_ids))
    card_path.write_text(card)
    print(card)
    return 0


def estimate_section(table: Path, recipe: str | None, where: list[str] | None, note: str,
                     class_names: list[str]) -> str:
    """The card's "Estimate on test cases" section from a per-case table of ``scripts/accuracy_study.py``.

    ``where`` holds ``column=value`` filters (e.g. ``half=test``, ``lcc=False``) applied with ``recipe``.
    """
    import pandas as pd

    if not table.is_file():
        sys.exit(f"{table}: no such table")
    est = pd.read_csv(table, dtype={"case": str})
    filters = [f"recipe={recipe}"] if recipe else []
    filters += list(where or [])
    for item in filters:
        column, sep, value = item.partition("=")
        if not sep or column not in est.columns:
            sys.exit(f"--where {item}: expected COLUMN=VALUE with a column of {table}")
        est = est[est[column].astype(str) == value]
    if est.empty:
        sys.exit(f"{table}: no rows match {', '.join(filters)}")
    lines = []
    for cls in class_names:
        d = est.loc[est["class"] == cls, "dice"]
        lines.append(f"| {cls} | {d.mean():.4f} ± {d.std():.4f} | {d.median():.4f} | {len(d)} |")
    rows = f" (rows {', '.join(f'`{f}`' for f in filters)})" if filters else ""
    return f"""## Estimate on test cases
{note}
Table: `{table.as_posix()}`{rows}.

| class | Dice mean ± std (per case) | median | cases |
|---|---|---|---|
{chr(10).join(lines)}
"""


def _class_names(dest: Path) -> list[str]:
    """The foreground class names of a shipped model's data set (``config.json``)."""
    from medseg_tf.training import TrainConfig, open_dataset

    return open_dataset(TrainConfig.from_json(dest / "config.json").data).class_names[1:]


def update_card_section(dest: Path, section: str) -> int:
    """Rewrite one Markdown section of a shipped model's card (a new one goes before the ONNX section)."""
    card_path = dest / "MODEL_CARD.md"
    card_path.write_text(replace_section(card_path.read_text(), section, before="## Without TensorFlow"))
    print(section)
    return 0


def _fold_cells(summary, cls: str) -> str:
    """A class's row of ``crossval.summarize_folds`` as Markdown cells: mean over cases | fold mean ± std | range."""
    row = summary.loc[cls]
    return (f"{row['mean']:.4f} | {row['fold_mean']:.4f} ± {row['fold_std']:.4f} | "
            f"{row['fold_min']:.4f} - {row['fold_max']:.4f}")


def cv_section(table: Path, runs: Path | None, note: str, class_names: list[str]) -> str:
    """The card's "Cross-validation of the recipe" section from a ``crossval.cross_validate`` table."""
    import pandas as pd

    from medseg_tf.crossval import summarize_folds

    if not table.is_file():
        sys.exit(f"{table}: no such table")
    cv = pd.read_csv(table, dtype={"case": str})
    missing = {"fold", "class", "dice"} - set(cv.columns)
    if missing:
        sys.exit(f"{table}: not a cross-validation table (no column {', '.join(sorted(missing))})")
    summary = summarize_folds(cv)
    folds = cv["fold"].nunique()
    lines = [f"| {cls} | {_fold_cells(summary, cls)} | {int(summary.loc[cls, 'cases'])} |"
             for cls in class_names if cls in summary.index]
    minutes = ""
    if runs is not None:
        if not runs.is_file():
            sys.exit(f"{runs}: no such table")
        m = pd.read_csv(runs)["minutes"]
        minutes = (f" Training minutes per fold on this 2-core CPU: {', '.join(f'{v:.1f}' for v in m)} "
                   f"(`{runs.as_posix()}`).")
    return f"""## Cross-validation of the recipe
{note}{minutes}
Table: `{table.as_posix()}` ({folds} folds, every case scored once by the fold model that did not train on it).

| class | Dice mean over cases | mean ± std over folds | fold range | cases |
|---|---|---|---|---|
{chr(10).join(lines)}
"""


def _predict_and_score(model, dataset, val_ids: list[str], tmp: Path, name: str = "pred", **options) -> tuple:
    """Predict ``val_ids`` of ``dataset`` with ``model`` (a run folder, or a list of them: their ensemble) as
    ``predict`` does, into ``tmp/name``, and score them: (per-case table of ``evaluate_folder``, seconds per
    volume including I/O). The images are linked once into ``tmp/images``."""
    from medseg_tf.inference import predict_folder
    from medseg_tf.metrics import evaluate_folder

    images = tmp / "images"
    if not images.is_dir():
        images.mkdir()
        for case_id in val_ids:
            os.symlink(dataset.case(case_id).image_path, images / f"{case_id}.nii.gz")
    start = time.perf_counter()
    timing = predict_folder(model, images, tmp / name, progress=False, **options)
    seconds = (time.perf_counter() - start) / max(1, len(timing))
    return evaluate_folder(tmp / name, dataset.root / "labelsTr", progress=False), seconds


def heldout_section(dest: Path, dataset, val_ids: list[str], config) -> str:
    """Predict the held-out cases with ``dest``'s model as ``predict`` does now, write ``metrics_val.csv`` and
    ``metrics_val_tta_lcc.csv`` into ``dest`` and return the card's "Held-out results" section."""
    from medseg_tf.inference import tta_axes_from_config
    from medseg_tf.metrics import summarize

    use_tta = bool(tta_axes_from_config(config.to_dict()))  # only flips the model was trained with
    with tempfile.TemporaryDirectory() as tmp:
        table, seconds = _predict_and_score(dest, dataset, val_ids, Path(tmp))
        table_tta, _ = _predict_and_score(dest, dataset, val_ids, Path(tmp), "pred_tta_lcc", tta=use_tta, lcc=True)
    table.to_csv(dest / "metrics_val.csv", index=False)
    table_tta.to_csv(dest / "metrics_val_tta_lcc.csv", index=False)

    rows = []
    for label, tab in (("", table), (" (TTA + LCC)" if use_tta else " (LCC)", table_tta)):
        summ = summarize(tab)
        for cls in dataset.class_names[1:]:
            get = lambda metric, stat: summ.loc[(cls, metric), stat]  # noqa: E731
            rows.append(f"| {cls}{label} | {get('dice', 'mean'):.4f} ± {get('dice', 'std'):.4f} | "
                        f"{get('dice', 'median'):.4f} | {get('hd95', 'mean'):.2f} ± {get('hd95', 'std'):.2f} | "
                        f"{get('assd', 'mean'):.3f} | {get('nsd', 'mean'):.4f} |")
    return f"""## Held-out results (whole volumes, original space)
Measured by this script (`predict_folder` then `evaluate_folder`; per-case tables in `metrics_val.csv`, and
`metrics_val_tta_lcc.csv` with largest-connected-component post-processing (`predict --lcc`), plus flip
test-time augmentation (`--tta`) when the model was trained with flips),
{len(val_ids)} cases, prediction {seconds:.2f} s per volume including I/O ({_machine()}).
Empty masks: see `medseg_tf.metrics` (no case here has an empty reference).

| class | Dice mean ± std | Dice median | HD95 (mm) mean ± std | ASSD (mm) | surface Dice @1 mm |
|---|---|---|---|---|---|
{chr(10).join(rows)}

For reference, nnU-Net reports about 0.90 (Anterior) and 0.89 (Posterior) Dice after a full GPU training
(on the MSD test cases, whose labels are not public: other cases than these).
"""


def ensemble_cv_text(cv: Path, cv_runs: list[Path], class_names: list[str]) -> str:
    """The "Ensemble" section's cross-validation part: every recipe of ``cv`` (a per-case table with
    ``recipe``, ``fold``, ``case``, ``class``, ``dice``, holding the ensemble as ``2d x2`` and its single
    members, e.g. ``accuracy_study.py cv_2d_seeds``) summarised over folds, the ensemble minus the first
    single model case by case, and the training minutes of both members per fold (``cv_runs``: one runs
    table per member, summed fold by fold)."""
    import pandas as pd

    from medseg_tf.crossval import paired_difference, summarize_folds

    if not cv.is_file():
        sys.exit(f"{cv}: no such table")
    per_case = pd.read_csv(cv, dtype={"case": str})
    if not {"recipe", "fold", "case", "class", "dice"} <= set(per_case.columns) or \
            "2d x2" not in set(per_case["recipe"]) or per_case["recipe"].nunique() < 2:
        sys.exit(f"{cv}: not a cross-validation table of an ensemble and its members (rows recipe=2d x2 and others)")
    rows = []
    for recipe, group in per_case.groupby("recipe", sort=False):
        folds = summarize_folds(group)
        for cls in class_names:
            rows.append(f"| {recipe} | {cls} | {_fold_cells(folds, cls)} |")
    single = [r for r in per_case["recipe"].unique() if r != "2d x2"][0]
    diff = paired_difference(per_case, "2d x2", single)
    gains = "; ".join(f"{idx} {row['diff']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"
                      for idx, row in diff.iterrows())
    fold_minutes = ""
    if cv_runs:
        for path in cv_runs:
            if not path.is_file():
                sys.exit(f"{path}: no such table")
        tables = [pd.read_csv(path)["minutes"].to_numpy() for path in cv_runs]
        if len({len(t) for t in tables}) > 1:
            sys.exit(f"{', '.join(p.as_posix() for p in cv_runs)}: the runs tables have different numbers of folds")
        per_fold = sum(tables)
        fold_minutes = (f" Training the {len(tables)} members of a fold took "
                        f"{', '.join(f'{v:.1f}' for v in per_fold)} minutes on this 2-core CPU (folds "
                        f"0-{len(per_fold) - 1}; {', '.join(f'`{p.as_posix()}`' for p in cv_runs)}).")
    return f"""
Cross-validation (the unbiased estimate of the ensemble): the recipe trained once per seed on the same five folds
of the 200 shared cases, each case scored once by its fold's models, which never trained on it, and by their
ensemble. Table: `{cv.as_posix()}`.{fold_minutes}

| members | class | Dice mean over cases | mean ± std over folds | fold range |
|---|---|---|---|---|
{chr(10).join(rows)}

Ensemble minus `{single}` alone, case by case (mean, 95 % bootstrap interval over cases): {gains}.
"""


def ensemble_section(members: list[Path], dataset, val_ids: list[str], cv_text: str, note: str) -> str:
    """Predict the held-out cases with the ensemble of ``members`` (shipped model folders trained on the same
    split), write ``metrics_val_ensemble.csv`` into the last member and return the cards' "Ensemble" section
    (``cv_text``: :func:`ensemble_cv_text`, or empty).

    The ensemble is the mean of the members' class probabilities (``predict --model A B``).
    """
    from medseg_tf.crossval import split_halves
    from medseg_tf.metrics import summarize

    splits = [json.loads((m / "split.json").read_text())["val"] for m in members]
    if any(sorted(s) != sorted(val_ids) for s in splits):
        sys.exit(f"{', '.join(m.as_posix() for m in members)}: the members hold out different cases")
    with tempfile.TemporaryDirectory() as tmp:
        table, seconds = _predict_and_score(list(members), dataset, val_ids, Path(tmp))
    table.to_csv(members[-1] / "metrics_val_ensemble.csv", index=False)
    classes = dataset.class_names[1:]
    summ = summarize(table)
    heldout = [f"| {cls} | {summ.loc[(cls, 'dice'), 'mean']:.4f} ± {summ.loc[(cls, 'dice'), 'std']:.4f} | "
               f"{summ.loc[(cls, 'hd95'), 'mean']:.2f} | {summ.loc[(cls, 'nsd'), 'mean']:.4f} |" for cls in classes]
    _, test = split_halves(val_ids)
    on_test = table[table["case"].isin(test)]
    test_rows = [f"| {cls} | {on_test.loc[on_test['class'] == cls, 'dice'].mean():.4f} |" for cls in classes]
    minutes = [json.loads((m / "summary.json").read_text()).get("seconds_this_session", float("nan")) / 60
               for m in members]
    return f"""## Ensemble of {' and '.join(m.name for m in members)}
The mean of the {len(members)} models' class probabilities on each image's grid, then the arg-max:
`python -m medseg_tf predict --model {' '.join(m.as_posix() for m in members)} --images IMAGES --out OUT`
(`medseg_tf.inference.predict_ensemble`). {note}
Training minutes of the members (their `summary.json`): {', '.join(f'{m.name} {v:.1f}' for m, v in zip(members, minutes))}.
{cv_text}
The held-out cases of the split ({len(val_ids)}; `{members[-1].as_posix()}/metrics_val_ensemble.csv`; prediction
{seconds:.2f} s per volume including I/O, {_machine()}):

| class | Dice mean ± std | HD95 (mm) mean | surface Dice @1 mm |
|---|---|---|---|
{chr(10).join(heldout)}

Of these, the {len(test)} test cases (`crossval.split_halves`), which chose neither the recipe nor the 2D canvas (the
cross-validation above, which chose the ensemble, covers them too):

| class | Dice mean |
|---|---|
{chr(10).join(test_rows)}
"""


def update_ensemble(members: list[Path], cv: Path | None, cv_runs: list[Path], note: str) -> int:
    """Write the "Ensemble" section into every member's card (``metrics_val_ensemble.csv`` into the last)."""
    from medseg_tf.training import TrainConfig, open_dataset

    for member in members:
        if not (member / "MODEL_CARD.md").is_file():
            sys.exit(f"{member}: not a shipped model (no MODEL_CARD.md)")
    dataset = open_dataset(TrainConfig.from_json(members[0] / "config.json").data)
    cv_text = ensemble_cv_text(cv, cv_runs, dataset.class_names[1:]) if cv is not None else ""
    val_ids = json.loads((members[0] / "split.json").read_text())["val"]
    section = ensemble_section(members, dataset, val_ids, cv_text, note)
    for member in members:
        card_path = member / "MODEL_CARD.md"
        card_path.write_text(replace_section(card_path.read_text(encoding="utf-8"), section, before="## Without TensorFlow"),
                             encoding="utf-8")
    print(section)
    return 0


def rescore(dest: Path) -> int:
    """Re-predict a shipped model's held-out cases with the current ``predict`` and rewrite that section."""
    from medseg_tf.training import TrainConfig, open_dataset

    config = TrainConfig.from_json(dest / "config.json")
    val_ids = json.loads((dest / "split.json").read_text())["val"]
    return update_card_section(dest, heldout_section(dest, open_dataset(config.data), val_ids, config))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="finished run folder (with summary.json)")
    parser.add_argument("--dest", type=Path, required=True, help="models/<name> folder to write")
    parser.add_argument("--onnx-only", action="store_true",
                        help="only re-export model.onnx of --dest and rewrite its card's ONNX section")
    parser.add_argument("--rescore", action="store_true",
                        help="only re-predict the held-out cases of --dest as predict does now: rewrite its "
                             "metrics_val*.csv and its card's 'Held-out results' section")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    parser.add_argument("--note", default="", help="a sentence about the training conditions for the card")
    parser.add_argument("--estimate", type=Path, help="per-case metrics CSV (scripts/accuracy_study.py) of cases "
                                                      "that chose nothing: the card's unbiased estimate")
    parser.add_argument("--recipe", help="the rows of --estimate to use (its 'recipe' column)")
    parser.add_argument("--where", nargs="*", metavar="COLUMN=VALUE",
                        help="further row filters of --estimate, e.g. half=test lcc=False")
    parser.add_argument("--estimate-note", default="", help="how the --estimate cases were kept apart")
    parser.add_argument("--estimate-only", action="store_true",
                        help="only rewrite the card's 'Estimate on test cases' section of --dest from --estimate")
    parser.add_argument("--cv", type=Path, help="cross-validation table of the recipe (crossval.cross_validate, "
                                                "e.g. benchmarks/accuracy/cv_2d_metrics.csv)")
    parser.add_argument("--cv-runs", type=Path, nargs="+", default=[],
                        help="its runs table (minutes per fold); with --ensemble-with, one per member")
    parser.add_argument("--cv-note", default="", help="how the folds were run, for the card")
    parser.add_argument("--cv-only", action="store_true",
                        help="only rewrite the card's 'Cross-validation of the recipe' section of --dest from --cv")
    parser.add_argument("--command", help="the training command for the card (default: `train --config "
                                          "configs/<dest name>.json` and this script)")
    parser.add_argument("--ensemble-with", type=Path, nargs="+", metavar="MODEL",
                        help="only write the 'Ensemble' section into the cards of these shipped models and --dest "
                             "(the ensemble of them all) and --dest/metrics_val_ensemble.csv; --cv then holds the "
                             "ensemble's cross-validation (rows recipe=2d x2), --cv-runs one runs table per member")
    parser.add_argument("--ensemble-note", default="", help="a sentence about the ensemble for the cards")
    args = parser.parse_args(argv)
    if args.ensemble_with:
        members = [*args.ensemble_with, args.dest]
        if len({m.resolve() for m in members}) < len(members):
            parser.error("--ensemble-with: a model is named twice")
        return update_ensemble(members, args.cv, args.cv_runs, args.ensemble_note)
    if len(args.cv_runs) > 1:
        parser.error("--cv-runs: one table (several only with --ensemble-with)")
    cv_runs = args.cv_runs[0] if args.cv_runs else None
    if args.onnx_only:
        return update_onnx_only(args.dest)
    if args.rescore:
        return rescore(args.dest)
    if args.estimate_only:
        if args.estimate is None:
            parser.error("--estimate-only needs --estimate TABLE")
        return update_card_section(args.dest, estimate_section(args.estimate, args.recipe, args.where,
                                                               args.estimate_note, _class_names(args.dest)))
    if args.cv_only:
        if args.cv is None:
            parser.error("--cv-only needs --cv TABLE")
        return update_card_section(args.dest, cv_section(args.cv, cv_runs, args.cv_note, _class_names(args.dest)))
    if args.run is None:
        parser.error("the run folder is required (unless --onnx-only)")

    import keras

    from medseg_tf.datasets import MSDDataset
    from medseg_tf.training import TrainConfig, open_dataset

    run, dest = args.run, args.dest
    if not (run / "summary.json").is_file():
        sys.exit(f"{run}: no summary.json; the run is not finished")
    if dest.exists() and any(dest.iterdir()) and not args.overwrite:
        sys.exit(f"{dest}: exists and is not empty; pass --overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "split.json", "history.csv", "summary.json"):
        shutil.copy2(run / name, dest / name)
    model = keras.saving.load_model(run / "model.keras", compile=False)
    model.save(dest / "model.keras")  # no optimizer state: weights and architecture only

    config = TrainConfig.from_json(run / "config.json")
    dataset = open_dataset(config.data)
    assert isinstance(dataset, MSDDataset)
    val_ids = json.loads((run / "split.json").read_text())["val"]
    summary = json.loads((run / "summary.json").read_text())

    heldout_text = heldout_section(dest, dataset, val_ids, config)

    onnx_text = onnx_section(dest, dataset, val_ids)

    estimate_text = ""
    if args.estimate is not None:
        estimate_text = "\n" + estimate_section(args.estimate, args.recipe, args.where, args.estimate_note,
                                                 dataset.class_names[1:])

    if args.cv is not None:
        estimate_text += "\n" + cv_section(args.cv, cv_runs, args.cv_note, dataset.class_names[1:])

    size_mb = (dest / "model.keras").stat().st_size / 1e6
    command_text = args.command or (
        f"`MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python -m medseg_tf train --config\n"
        f"  configs/{dest.name}.json --out {run.resolve().name}` then\n"
        f"  `python scripts/make_reference_model.py runs/{run.resolve().name} --dest {dest}`.")
    checkpoint_text = ("The model of the last epoch was kept, so the held-out cases chose no epoch."
                       if config.checkpoint == "last" else
                       "The held-out cases also chose the saved epoch (best validation Dice), so the numbers "
                       "below are validation, not test, figures.")
    augment_text = _augmentation_text(config.augment)
    context_text = (f", \"2.5D\": each slice comes with its {config.context_slices} neighbouring slices on each "
                    f"side as {2 * config.context_slices + 1} input channels," if config.context_slices else "")
    card = f"""# Reference model: {dest.name}

A {config.dims}D U-Net ({', '.join(f'{k}={v}' for k, v in config.model.items())}; {model.count_params():,}
parameters, `model.keras` {size_mb:.1f} MB){context_text} trained with `medseg_tf` on MSD Task04 Hippocampus.

## Data
- MSD Task04 Hippocampus (CC-BY-SA 4.0; Antonelli et al., Nature Communications 2022): the {len(dataset)} cases
  of `{dataset.root.name}` read through `medseg_tf.datasets.MSDDataset`, z-scored per volume.
- Split by case (seed {config.effective_split_seed}): {len(dataset) - len(val_ids)} training, {len(val_ids)} held-out
  validation cases (`split.json`). {checkpoint_text} The 60 official cases missing from the shared folder were
  never seen.

## Training
- Config: `config.json` (loss {config.loss}, optimizer {config.optimizer}, lr {config.learning_rate},
  schedule {config.schedule}, {config.epochs} epochs x {config.steps_per_epoch} steps, batch {config.batch_size},
  patch {list(config.patch_size)}, augmentation: {augment_text}).
- Command: {command_text}
- Training time: {summary.get('seconds_this_session', float('nan')) / 60:.1f} min wall
  ({"kept the last epoch" if config.checkpoint == "last" else "kept the best epoch"}; best validation epoch
  {summary.get('best_epoch')} of {summary.get('epochs')}), {summary.get('runtime', '')}.
- Machine: {_machine()}.{(chr(10) + "- Note: " + args.note) if args.note else ""}

{heldout_text}{estimate_text}
## Without TensorFlow
{onnx_text}
"""
    (dest / "MODEL_CARD.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    from medseg_tf.errors import MedsegError

    try:
        sys.exit(main())
    except MedsegError as exc:  # missing data, bad tables: one line, no traceback
        sys.exit(f"error: {exc}")
