"""Command line: a thin layer over the functions the notebooks call.

``python -m medseg_tf --help`` lists every command. Heavy modules
(TensorFlow) are imported only by the commands that need them, so ``--help``
and the data commands start fast. Nothing imports this module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from medseg_tf.errors import ConfigError, MedsegError, OverwriteError
from medseg_tf.phantoms import PHANTOM_KINDS
from medseg_tf.runspec import CHECKPOINTS, LOSS_NAMES, NORMS, OPTIMIZER_NAMES, SCHEDULES


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _number(kind, *, low=None, low_open: bool = False, high=None, high_open: bool = False):
    """An argparse ``type`` that parses ``kind`` and refuses values outside the given bounds."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and value != value:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, low=1)
NON_NEGATIVE_INT = _number(int, low=0)
POSITIVE_FLOAT = _number(float, low=0, low_open=True, high=float("inf"), high_open=True)
NON_NEGATIVE_FLOAT = _number(float, low=0, high=float("inf"), high_open=True)
OPEN_FRACTION = _number(float, low=0, low_open=True, high=1, high_open=True)
MAX_PHANTOM_CASES = 10_000  # 1-6 GB of phantoms, by kind: more is a typo, not a data set

#: Config keys whose command-line option has another name.
_FLAG_OF_KEY = {"learning_rate": "--lr", "out_dir": "--out", "tolerance_mm": "--tolerance", "task": "TASK"}


def _flag(key: str) -> str:
    return _FLAG_OF_KEY.get(key, "--" + key.replace("_", "-"))


def _same_or_inside(a: Path, b: Path) -> bool:
    """True when folder ``a`` is ``b`` or lies inside it."""
    a, b = a.expanduser().resolve(), b.expanduser().resolve()
    return a == b or b in a.parents


def _cmd_course(args) -> int:
    from medseg_tf import course, settings

    if args.student:
        for flag, given in (("--update", args.update), ("--out", args.out), ("--quick", args.quick)):
            if given:
                raise ConfigError(None, f"--student writes student versions and runs nothing; it takes no {flag}")
        written = course.write_student_versions(args.student, only=args.only, overwrite=args.overwrite)
        print(f"wrote {len(written)} student notebooks (solution cells removed, outputs cleared) to "
              f"{settings.display_path(args.student)}")
        return 0
    if args.update and args.out:
        raise SystemExit("error: --update writes the committed notebooks in place; it takes no --out")
    # MEDSEG_QUICK=1 in the environment means quick mode here too, as it does for the notebooks and tests
    return course.run_course(quick=args.quick or settings.quick_mode(), only=args.only, timeout=args.timeout,
                             write=not args.no_write, out=args.out, update=args.update, jobs=args.jobs)


def _cmd_site(args) -> int:
    from medseg_tf import settings
    from medseg_tf.site import build_site

    index = build_site(args.out, notebooks=args.notebooks, overwrite=args.overwrite)
    print(f"site written to {settings.display_path(args.out)}; open {settings.display_path(index)}")
    return 0


def _cmd_data_phantom(args) -> int:
    import time

    from medseg_tf.phantoms import phantom_writer

    write, default_cases = phantom_writer(args.kind)
    n_cases = args.cases or default_cases
    start = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        raise OverwriteError(f"{args.out}: is a file, not a folder; choose another --out")
    out = write(args.out, n_cases=n_cases, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {n_cases} {args.kind} phantom cases to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_data_dicom(args) -> int:
    from medseg_tf import settings
    from medseg_tf.itk import dicom_to_nifti, read_dicom_series

    out = dicom_to_nifti(args.dir, args.out, series_id=args.series, overwrite=args.overwrite)
    vol = read_dicom_series(args.dir, args.series)
    print(f"wrote {settings.display_path(out)}: shape {'x'.join(map(str, vol.shape))}, spacing "
          f"{'x'.join(f'{s:.3g}' for s in vol.spacing)} mm, orientation {''.join(vol.orientation)}")
    return 0


def _cmd_data_download(args) -> int:
    from medseg_tf.download import download_task

    path = download_task(args.task, args.out, url=args.url, md5=args.md5, progress=not args.no_progress)
    print(f"{path}")
    return 0


def _cmd_data_check(args) -> int:
    import pandas as pd

    from medseg_tf.datasets import check_dataset

    table = check_dataset(args.dir)
    with pd.option_context("display.max_rows", None, "display.width", 160):
        print(table.drop(columns=["error"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    bad = table[table["error"] != ""]
    print(f"\n{len(table) - len(bad)} of {len(table)} cases OK")
    for msg in bad["error"]:
        print(f"ERROR {msg}", file=sys.stderr)
    return 1 if len(bad) else 0


def _spec_from_args(args, command: str):
    """The run spec of ``--config`` (or the defaults) with the options given on the command line."""
    from medseg_tf.runspec import RunSpec

    if not args.config and not args.data:
        raise ConfigError(None, f"{command}: give --config FILE.json, or --data DIR (or 'phantom') with --dims")
    config = RunSpec.from_json(args.config) if args.config else RunSpec(data=str(args.data))
    changes = {k: v for k, v in {
        "data": str(args.data) if args.data else None, "dims": args.dims, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
        "patch_size": tuple(args.patch_size) if args.patch_size else None, "loss": args.loss,
        "optimizer": args.optimizer, "learning_rate": args.lr, "schedule": args.schedule, "seed": args.seed,
        "max_cases": args.max_cases, "val_fraction": args.val_fraction,
        "context_slices": args.context_slices, "checkpoint": args.checkpoint,
        "out_dir": str(args.out) if args.out else None,
    }.items() if v is not None}
    if getattr(args, "folds", None) is not None:
        changes["folds"] = args.folds
        changes["fold"] = getattr(args, "fold", None) or 0
    elif getattr(args, "fold", None) is not None:
        changes["fold"] = args.fold
    if args.dims and args.dims != config.dims and not args.patch_size:
        changes["patch_size"] = None  # the default patch of the new dimensionality
    if args.no_augment:
        changes["augment"] = False
    model_changes = {k: v for k, v in {"depth": args.depth, "base_filters": args.base_filters,
                                       "max_filters": args.max_filters, "norm": args.norm}.items() if v is not None}
    if model_changes:
        changes["model"] = {**config.model, **model_changes}
    return config.replace(**changes) if changes else config


def _cmd_train(args) -> int:
    from medseg_tf.training import train

    run_dir = train(_spec_from_args(args, "train"), overwrite=args.overwrite, resume=not args.no_resume,
                    verbose=2)
    print(f"run folder: {run_dir}")
    return 0


def _cmd_cv(args) -> int:
    import pandas as pd

    from medseg_tf.crossval import cross_validate, summarize_folds

    if args.val_fraction is not None:
        raise ConfigError("val_fraction", "does not apply to cv: each fold validates on 1/--folds of the cases")
    spec = _spec_from_args(args, "cv")
    table = cross_validate(spec, args.out or f"cv_{Path(spec.data).name}_{spec.dims}d", folds=args.folds,
                           checkpoint=args.checkpoint or "last", overwrite=args.overwrite)
    with pd.option_context("display.width", 160):
        print(summarize_folds(table).to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\n{len(table)} case-class rows from {args.folds} folds; each case scored by the model that did not "
          "train on it (Dice: per case, then averaged)")
    return 0


def _training_split_overlap(model_dir: Path, case_ids) -> list[str]:
    """Case ids among ``case_ids`` that the run folder's ``split.json`` lists as training cases."""
    import json

    try:
        train = set(json.loads((Path(model_dir) / "split.json").read_text())["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return sorted(set(case_ids) & train)


def _warn_training_cases(model_dir: Path, case_ids, where: str) -> None:
    overlap = _training_split_overlap(model_dir, case_ids)
    if overlap:
        shown = ", ".join(overlap[:3]) + (", ..." if len(overlap) > 3 else "")
        print(f"warning: {len(overlap)} of {len(case_ids)} {where} are in the model's training split "
              f"({shown}; {Path(model_dir) / 'split.json'}): their scores will look better than on unseen "
              "cases", file=sys.stderr)


def _cmd_predict(args) -> int:
    models = args.model
    for inp, what in ((args.images, "--images"), *((m, "--model") for m in models)):
        if inp.exists() and (_same_or_inside(args.out, inp) or _same_or_inside(inp, args.out)):
            raise ConfigError("out", f"{args.out} is, holds or lies inside the {what} folder {inp}; choose an "
                                     "output folder apart from the inputs")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError("out", f"{args.out} is a file, not a folder")
    for model in models:
        if model.is_file() and not _is_onnx(model):
            raise ConfigError("model", f"{model} is a file; give the run folder that holds model.keras (and its "
                                       "config.json), or an .onnx file")
    if len(set(models)) < len(models):
        raise ConfigError("model", "names the same model twice; an ensemble averages different models")
    ensemble = len(models) > 1
    if ensemble and any(_is_onnx(m) for m in models):
        raise ConfigError("model", "an ensemble takes run folders (Keras models) only, not .onnx files")
    if ensemble and args.temperature is not None:
        raise ConfigError("temperature", f"applies to one model, not to an ensemble of {len(models)}")
    extra = {}
    if _is_onnx(models[0]):  # ONNX Runtime only: no TensorFlow import on this path
        from medseg_tf.onnx_predict import predict_folder_onnx as predict_folder
        if args.temperature is not None:
            raise ConfigError("temperature", "applies to run folders (Keras models) only, not to an .onnx file")
    else:
        from medseg_tf.inference import predict_folder
        extra["temperature"] = args.temperature
    table = predict_folder(list(models) if ensemble else models[0], args.images, args.out, tta=args.tta,
                           lcc=args.lcc, overwrite=args.overwrite, progress=not args.no_progress,
                           batch_size=args.batch_size, **extra)
    if len(table):
        print(f"predicted {len(table)} volumes into {args.out}"
              + (f" with an ensemble of {len(models)} models" if ensemble else "") + ": "
              f"{table['seconds'].mean():.3f} s per volume (median {table['seconds'].median():.3f} s)")
        _report_trust(args, table)
        for model in models:
            if model.is_dir():
                _warn_training_cases(model, list(table["case"]), "images")
    return 0


def _report_trust(args, table) -> None:
    """Print the temperature and per-case uncertainty, and one warning line per out-of-distribution case."""
    if "uncertainty" not in table:
        return
    source = "--temperature" if args.temperature is not None else "calibration.json"
    print(f"temperature {table['temperature'].iloc[0]:.3g} ({source}); per-case uncertainty (expected "
          f"mislabelled voxels per predicted foreground voxel): median {table['uncertainty'].median():.3f}, "
          f"max {table['uncertainty'].max():.3f}")
    if "ood" not in table:
        return
    for row in table[table["ood"]].itertuples():
        print(f"warning: {row.case}: out-of-distribution score {row.ood_score:.1f} > threshold "
              f"{row.ood_threshold:.1f} ({Path(args.model[0]) / 'calibration.json'}): the image is unlike the "
              "validation cases (orientation, modality, intensity, noise, field of view?); check it before "
              "trusting its segmentation", file=sys.stderr)


def _is_onnx(path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def _cmd_export(args) -> int:
    from medseg_tf import settings
    from medseg_tf.export import export_model, file_size_mb

    quantize = "int8" if args.int8 else ("float16" if args.float16 else None)
    if args.int8 and args.float16:
        raise ConfigError("int8", "cannot be combined with --float16; choose one")
    if quantize and args.format != "litert":
        raise ConfigError(quantize, f"quantises LiteRT models only (--format litert), not {args.format}")
    for given, name in ((args.calibration_cases is not None, "calibration_cases"),
                        (args.calibration is not None, "calibration")):
        if given and not args.int8:
            raise ConfigError(name, "applies to --int8 only")
    out = export_model(args.model, args.format, args.out, quantize=quantize, calibration_data=args.calibration,
                       calibration_cases=args.calibration_cases or 8, overwrite=args.overwrite)
    print(f"wrote {settings.display_path(out)} ({args.format}{' ' + quantize if quantize else ''}, "
          f"{file_size_mb(out):.1f} MB)")
    return 0


def _cmd_bench(args) -> int:
    from medseg_tf import benchmark, settings

    images, labels = [], None
    for flag, given in (("cases", args.cases is not None), ("images", args.images is not None)):
        if given and not args.model:
            raise ConfigError(flag, "applies only with --model (prediction of whole volumes)")
    if args.model:
        folder = args.images or settings.hippocampus_sample_dir()
        if not Path(folder).is_dir():
            raise ConfigError("images", f"{folder} is not a folder of images")
        root = Path(folder) / "imagesTr" if (Path(folder) / "imagesTr").is_dir() else Path(folder)
        images = sorted(p for p in root.glob("*.nii*") if not p.name.startswith("."))[:args.cases or 8]
        if not images:
            raise ConfigError("images", f"{folder} holds no NIfTI images")
        label_dir = root.parent / "labelsTr"
        if label_dir.is_dir() and all((label_dir / p.name).is_file() for p in images):
            labels = [label_dir / p.name for p in images]
    if args.out is not None and args.out.suffix.lower() != ".csv":
        raise ConfigError("out", f"{args.out} must be a .csv file")
    if args.out is not None:
        benchmark.check_bench_file(args.out)  # before the measurements, not after
    rows = benchmark.bench(dims=args.dims, models=args.model or (), precisions=args.precision,
                           xla=[x == "on" for x in args.xla], batch_sizes=args.batch_size, data=args.data,
                           images=images, labels=labels, steps=args.steps, repeats=args.repeats, quick=args.quick,
                           progress=not args.no_progress)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_rows", None):
        print(benchmark.bench_table(rows).to_string(index=False))
    info = rows[0] if rows else {}
    print(f"{info.get('device', '')}, {info.get('cpu', '')}; Keras {info.get('keras', '')} on "
          f"{info.get('backend', '')}; matmul peak {info.get('matmul_peak_gflops', float('nan')):.0f} GFLOP/s; "
          f"load average {info.get('load_avg', float('nan')):.1f} at the start (figures depend on the machine "
          "and its load)")
    if args.out is not None:
        import shlex

        benchmark.append_bench(rows, args.out, command=shlex.join(["python", "-m", "medseg_tf", *sys.argv[1:]]))
        print(f"appended {len(rows)} row(s) to {settings.display_path(args.out)}")
    return 0


def _cmd_evaluate(args) -> int:
    import pandas as pd

    from medseg_tf.metrics import METRIC_UNITS, evaluate_folder, msd_labels_folder, summarize

    if args.out.suffix.lower() != ".csv":
        raise ConfigError("out", f"{args.out} must be a .csv file (the per-case table)")
    if args.out.is_dir():
        raise ConfigError("out", f"{args.out} is a folder; give a .csv file path")
    if args.out.exists() and not args.overwrite:
        raise OverwriteError(f"{args.out}: already exists; pass --overwrite to replace it")
    if args.model is not None and not (args.model / "split.json").is_file():
        raise ConfigError("model", f"{args.model} is not a run folder with a split.json (the model whose "
                                   "training cases to warn about)")
    table = evaluate_folder(args.pred, args.labels, tolerance_mm=args.tolerance, progress=not args.no_progress)
    if args.model is not None:
        _warn_training_cases(args.model, sorted(set(table["case"])), "predicted cases")
    if not (msd_labels_folder(args.labels).parent / "dataset.json").is_file():
        print(f"note: no dataset.json declares the labels of {args.labels}; every non-zero value found is scored "
              f"as its own class: {', '.join(map(str, table['class'].unique()))}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    summary = summarize(table)
    summary.insert(0, "unit", [METRIC_UNITS.get(m, "") for m in summary.index.get_level_values("metric")])
    with pd.option_context("display.width", 160, "display.max_rows", None):
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nper-case table: {args.out} (distances in mm, volumes in ml; surface Dice (nsd) at "
          f"{args.tolerance:g} mm)")
    return 0


def _add_spec_options(p) -> None:
    """The run-spec options shared by ``train`` and ``cv`` (they override the ``--config`` file)."""
    p.add_argument("--config", type=Path, help="run spec JSON file (see configs/ and medseg_tf.runspec)")
    p.add_argument("--data", help="MSD folder, or a course data set: phantom, hippocampus or hippocampus_sample")
    p.add_argument("--dims", type=int, choices=(2, 3), default=None, help="2D slices or 3D patches")
    p.add_argument("--context-slices", type=NON_NEGATIVE_INT,
                   help="2D only: neighbouring slices on each side given as extra channels (2.5D; default 0)")
    p.add_argument("--epochs", type=POSITIVE_INT, help="number of epochs")
    p.add_argument("--steps-per-epoch", type=POSITIVE_INT, help="training batches per epoch")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="batch size per replica (the global batch is this times the number of replicas)")
    p.add_argument("--patch-size", type=POSITIVE_INT, nargs="+", help="training crop in voxels (2 or 3 ints)")
    p.add_argument("--loss", choices=LOSS_NAMES, help="training loss")
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, help="optimizer (sgd: nnU-Net's Nesterov SGD)")
    p.add_argument("--lr", type=POSITIVE_FLOAT, help="initial learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, help="random seed (split, sampling, augmentation, weights)")
    p.add_argument("--max-cases", type=_number(int, low=2), help="use only the first N cases (N >= 2)")
    p.add_argument("--val-fraction", type=OPEN_FRACTION, help="share of cases held out for validation")
    p.add_argument("--depth", type=POSITIVE_INT, help="U-Net depth (number of poolings)")
    p.add_argument("--base-filters", type=POSITIVE_INT, help="filters of the first level")
    p.add_argument("--max-filters", type=POSITIVE_INT, help="cap on the filters of any level (default: no cap)")
    p.add_argument("--norm", choices=NORMS, help="normalisation layer")
    p.add_argument("--no-augment", action="store_true", help="no data augmentation")
    p.add_argument("--checkpoint", choices=CHECKPOINTS,
                   help="keep the best validation epoch (train's default) or the last one (cv's default)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m medseg_tf``."""
    parser = _Parser(
        prog="python -m medseg_tf",
        description="medseg-tf: medical image segmentation course (Keras 3 / TensorFlow).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("course", help="run every notebook top to bottom (output in build/course/)",
                       description="Execute notebooks/NN_*.ipynb in order, showing each cell's progress; stops at "
                                   "the first failing cell. By default the executed notebooks, figures and "
                                   "times.csv go to build/course/<dataset>/ and no tracked file changes; "
                                   "--update rewrites the committed notebooks and figures/. Reads MEDSEG_DATASET "
                                   "etc. (see README).")
    p.add_argument("--quick", action="store_true", help="quick mode (MEDSEG_QUICK=1): fewer epochs and cases")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only notebooks whose name starts with these")
    p.add_argument("--timeout", type=POSITIVE_INT, default=1800, help="seconds one cell may take (default 1800)")
    p.add_argument("--jobs", type=POSITIVE_INT, metavar="N",
                   help="notebooks run side by side, each in its own kernel (default: 2 on a machine with 2 "
                        "or more cores); in full mode notebooks 04, 06 and 09 time the machine and run alone; "
                        "05 always runs after 04")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder for executed notebooks, figures, times.csv (default build/course/<dataset>)")
    p.add_argument("--update", action="store_true",
                   help="write the executed notebooks over notebooks/ and figures into figures/ "
                        "(figures/<dataset>/ for real data)")
    p.add_argument("--no-write", action="store_true", help="do not save executed notebooks")
    p.add_argument("--student", type=Path, metavar="OUT",
                   help="write student versions (solution cells removed, outputs cleared) to OUT; runs nothing")
    p.add_argument("--overwrite", action="store_true", help="with --student: replace notebooks already in OUT")
    p.set_defaults(func=_cmd_course)

    p = sub.add_parser("site", help="render the executed notebooks into a static web site (offline)",
                       description="Build a static HTML site (Sphinx + MyST-NB, MathJax bundled locally, nothing "
                                   "downloaded) from the executed notebooks; open OUT/index.html in a browser.")
    p.add_argument("out", type=Path, help="output folder of the site")
    p.add_argument("--notebooks", type=Path, metavar="DIR",
                   help="folder of executed notebooks (default notebooks/; e.g. build/course/phantom/notebooks)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing site folder")
    p.set_defaults(func=_cmd_site)

    data = sub.add_parser("data", help="make, download and check data sets (MSD layout)")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser("phantom", help="write a synthetic phantom data set (MRI, CT, brain tumour, fundus)",
                       description=("Write a deterministic synthetic data set (the same --seed gives the same "
                                    "files) in the MSD layout: imagesTr/, labelsTr/ and dataset.json (fundus: "
                                    "images/, manual/ and mask/ PNG triples)."))
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (MSD layout; fundus: images/, manual/, mask/ PNG triples)")
    p.add_argument("--kind", choices=PHANTOM_KINDS, default="mri",
                   help="mri: hippocampus-like MRI (default); ct: abdominal CT in HU, organ + lesions; "
                        "brain: 4-channel brain tumour MRI (MSD Task01 layout); fundus: retinal photographs "
                        "with vessel masks")
    p.add_argument("--cases", type=_number(int, low=1, high=MAX_PHANTOM_CASES), default=None,
                   help=f"number of cases, at most {MAX_PHANTOM_CASES} (default 40 for mri, 16 for ct and brain, "
                        "12 for fundus)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing phantom folder")
    p.set_defaults(func=_cmd_data_phantom)

    p = dsub.add_parser("download", help="download an MSD task (checksummed, resumable)",
                       description=("Download and unpack a Medical Segmentation Decathlon task: the archive is "
                                    "checked against its published MD5, an interrupted download resumes, and the "
                                    "task folder appears only once it is complete."))
    p.add_argument("task", help="e.g. Task04_Hippocampus (or Task04, hippocampus)")
    p.add_argument("--out", type=Path, required=True, help="folder that will hold TaskXX_Name/")
    p.add_argument("--url", help="alternative URL of the .tar archive")
    p.add_argument("--md5", help="expected MD5 of the archive (default: the published one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_download)

    p = dsub.add_parser("dicom", help="convert a DICOM series folder to one NIfTI file (RAS affine)",
                       description=("Read a DICOM series with SimpleITK (LPS) and write it as one NIfTI file whose"
                                    " affine maps voxels to RAS millimetres."))
    p.add_argument("dir", type=Path, help="folder holding the series' .dcm files")
    p.add_argument("--out", type=Path, required=True, help="output .nii.gz")
    p.add_argument("--series", help="SeriesInstanceUID, when the folder holds several series")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_data_dicom)

    p = dsub.add_parser("check", help="validate an MSD folder and print a per-case table",
                       description=("Check every case of an MSD folder (files readable, image and label on the "
                                    "same grid, labels declared in dataset.json, finite values) and print a per-"
                                    "case table; exit status 1 if any case fails."))
    p.add_argument("dir", type=Path, help="folder holding dataset.json")
    p.set_defaults(func=_cmd_data_check)
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = sub.add_parser("train", help="train a U-Net from a JSON config or from options",
                       description="Train a 2D or 3D U-Net and write a run folder (config.json, split.json, "
                                   "model.keras, history.csv, logs/). Options given here override the config "
                                   "file. An interrupted run resumes from its last completed epoch.")
    _add_spec_options(p)
    p.add_argument("--folds", type=_number(int, low=2), help="cross-validation folds (train one fold: --fold)")
    p.add_argument("--fold", type=NON_NEGATIVE_INT, help="the fold validated on, 0 .. folds-1")
    p.add_argument("--out", type=Path, help="run folder (default runs/<data>_<dims>d)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing complete run folder")
    p.add_argument("--no-resume", action="store_true", help="do not resume an interrupted run")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("cv", help="k-fold cross-validation of a recipe: one model per fold, every case scored once",
                       description="Train one model per fold (run folders OUT/fold_<k>), predict each fold's "
                                   "validation cases with the model that did not train on them, and write "
                                   "OUT/cv_metrics.csv and OUT/cv_summary.csv. Each fold keeps its last epoch "
                                   "by default, so no validation case chooses anything.")
    _add_spec_options(p)
    p.add_argument("--folds", type=_number(int, low=2), default=5, help="number of folds (default 5)")
    p.add_argument("--out", type=Path, help="folder of the fold runs and tables (default runs/cv_<data>_<dims>d)")
    p.add_argument("--overwrite", action="store_true", help="replace existing fold runs and tables")
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("predict", help="segment whole volumes with a trained model",
                       description="Predict label maps for every image of a folder (MSD imagesTs/-like, or an "
                                   "MSD folder whose imagesTr/ is used), written as NIfTI on the source grid.")
    p.add_argument("--model", type=Path, required=True, nargs="+",
                   help="run folder (model.keras + config.json), or an exported .onnx file (no TensorFlow needed); "
                        "not the model.keras file itself. Several run folders: their ensemble (mean class "
                        "probabilities; 2D and 3D may be mixed, e.g. the folds of a cross-validation)")
    p.add_argument("--images", type=Path, required=True, help="folder of .nii.gz images, or an MSD folder")
    p.add_argument("--out", type=Path, required=True, help="output folder for <case>.nii.gz label maps")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--lcc", action="store_true", help="keep the largest connected component per class")
    p.add_argument("--temperature", type=POSITIVE_FLOAT, default=None,
                   help="divide the log-probabilities by T before the softmax (calibration; labels unchanged; "
                        "default: the run folder's calibration.json, else 1); reported as per-case uncertainty; "
                        "Keras run folders only")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="slices or windows per model call")
    p.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a trained model: ONNX, LiteRT (float16/int8), SavedModel",
                       description="Write a run folder's model in a deployment format. ONNX runs with "
                                   "onnxruntime alone (predict --model FILE.onnx needs no TensorFlow); LiteRT can "
                                   "quantise to float16 or int8 (calibrated on training cases); 3D models do not "
                                   "convert to LiteRT (no MaxPool3D kernel).")
    p.add_argument("--model", type=Path, required=True, help="run folder (model.keras + config.json) or .keras file")
    p.add_argument("--format", required=True, choices=("onnx", "litert", "saved_model"), help="output format")
    p.add_argument("--out", type=Path, required=True, help="output .onnx / .tflite file, or SavedModel folder")
    p.add_argument("--int8", action="store_true", help="litert: int8 post-training quantisation")
    p.add_argument("--float16", action="store_true", help="litert: float16 weights")
    p.add_argument("--calibration", help="int8: data set of the calibration cases (default: the run's data)")
    p.add_argument("--calibration-cases", type=POSITIVE_INT, default=None,
                   help="int8: training cases drawn for calibration (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="measure training/inference speed, memory and FLOP efficiency",
                       description="Time training (synthetic batch and input pipeline), the model call and "
                                   "end-to-end prediction; FLOPs and the share of a matmul peak measured on the "
                                   "spot. Medians of repeats; rows appended to --out. Figures depend on the "
                                   "machine and its load.")
    p.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[3],
                   help="U-Nets of the reference recipes to time (default 3)")
    p.add_argument("--model", type=Path, nargs="+",
                   help="instead: time these models end to end (run folders, .onnx, .tflite, SavedModel folders)")
    p.add_argument("--images", type=Path, help="with --model: images to predict (default data/hippocampus_sample)")
    p.add_argument("--cases", type=POSITIVE_INT, default=None, help="with --model: number of images (default 8)")
    p.add_argument("--precision", nargs="+", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                   default=["float32"], help="Keras dtype policies to time (default float32)")
    p.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off"], help="XLA compilation (default off)")
    p.add_argument("--batch-size", type=POSITIVE_INT, nargs="+", help="batch sizes (default: the recipe's)")
    p.add_argument("--data", nargs="+", default=["synthetic"],
                   help="training data: synthetic and/or phantom, hippocampus, an MSD folder (input pipeline)")
    p.add_argument("--steps", type=POSITIVE_INT, default=10, help="timed training steps per repeat (default 10)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="repeats; the median is reported (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny nets, few steps: checks the code path, not speed")
    p.add_argument("--out", type=Path, help="append the rows to this CSV (e.g. benchmarks/bench.csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("evaluate", help="per-case, per-class metrics of predictions against labels",
                       description="Dice, IoU, precision, recall, volume difference, HD, HD95, ASSD and "
                                   "surface Dice per case and class (spacing in mm); prints mean/std/median.")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    p.add_argument("--labels", type=Path, required=True,
                   help="folder of reference label maps (e.g. labelsTr), or an MSD folder (its labelsTr/ is used)")
    p.add_argument("--model", type=Path,
                   help="run folder that made the predictions: warns when a case is in its training split")
    p.add_argument("--out", type=Path, required=True, help="CSV file for the per-case table")
    p.add_argument("--tolerance", type=NON_NEGATIVE_FLOAT, default=1.0, help="surface Dice tolerance in mm (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def _quiet_tensorflow_logs() -> None:
    """Keep TensorFlow's C++ log lines off the terminal (before TensorFlow is imported).

    ``TF_CPP_MIN_LOG_LEVEL=3`` hides its later INFO/WARNING/ERROR lines (such as "failed call to
    cuInit" on a machine without a GPU); the lines absl prints while TensorFlow loads ignore it, so the
    import itself runs with the process's stderr sent to /dev/null (Python errors still show: they are
    raised, not logged). Set ``TF_CPP_MIN_LOG_LEVEL`` yourself to see them.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401 - imported here only to silence its start-up logs
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def _interrupt_on_sigterm(command: str) -> Callable[[], None]:
    """Let ``kill`` (SIGTERM) stop ``command`` as Ctrl-C does, so its clean-up runs (temporary folders, locks).

    The first SIGTERM raises KeyboardInterrupt in the main thread and puts the previous handler back, so a
    second one ends the process at once. ``course`` keeps the default (it runs notebooks in worker
    threads, which an exception in the main thread would not stop), and so does any caller not in the
    main thread (where handlers cannot be set). Returns the function that restores the previous handler.
    """
    import signal
    import threading

    if command == "course" or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    restore = previous if previous is not None else signal.SIG_DFL  # None: set outside Python

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, restore)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, restore)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. Errors about user input print one line, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    restore = _interrupt_on_sigterm(args.command)
    try:
        return _run(args)
    finally:
        restore()


def _run(args) -> int:
    """Run the parsed command; user errors become one line and exit code 1."""
    try:
        if args.command in ("train", "predict", "export", "bench") and not (
                args.command == "predict" and all(_is_onnx(m) for m in args.model)):  # the commands that load TensorFlow
            _quiet_tensorflow_logs()
        return int(args.func(args) or 0)
    except ConfigError as exc:
        if exc.key is None:
            print(f"error: {exc.problem}", file=sys.stderr)
        else:
            given = getattr(args, exc.key, None) is not None
            print(f"error: {_flag(exc.key) if given else f'config key {exc.key!r}'}: {exc.problem}", file=sys.stderr)
        return 1
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a user sees one line; MEDSEG_DEBUG=1 shows the traceback
        if os.environ.get("MEDSEG_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename:  # e.g. a file given where a folder is needed
            print(f"error: {exc.filename}: {exc.strerror or type(exc).__name__} (MEDSEG_DEBUG=1 shows the "
                  "traceback)", file=sys.stderr)
            return 1
        text = " ".join(str(exc).split()) or "(no message)"
        print(f"error: {type(exc).__name__}: {text[:400]} (MEDSEG_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
