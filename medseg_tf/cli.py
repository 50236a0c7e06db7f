"""Command line: a thin layer over the functions the notebooks call.

``python -m medseg_tf --help`` lists every command. Heavy modules
(TensorFlow) are imported only by the commands that need them, so ``--help``
and the data commands start fast. Nothing imports this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg_tf.errors import MedsegError


def _cmd_course(args) -> int:
    from medseg_tf.course import run_course

    return run_course(quick=args.quick, only=args.only, timeout=args.timeout, write=not args.no_write)


def _cmd_data_phantom(args) -> int:
    import time

    from medseg_tf.phantom import write_phantom_dataset

    start = time.perf_counter()
    out = write_phantom_dataset(args.out, n_cases=args.cases, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.cases} phantom cases to {out} in {time.perf_counter() - start:.1f} s")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m medseg_tf``."""
    parser = argparse.ArgumentParser(
        prog="python -m medseg_tf",
        description="medseg-tf: medical image segmentation course (Keras 3 / TensorFlow).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("course", help="run every notebook top to bottom and regenerate figures/",
                       description="Execute notebooks/NN_*.ipynb in order (in place), printing each one's time; "
                                   "stops at the first failing cell. Reads MEDSEG_DATASET etc. (see README).")
    p.add_argument("--quick", action="store_true", help="quick mode (MEDSEG_QUICK=1): fewer epochs and cases")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only notebooks whose name starts with these")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take (default 1800)")
    p.add_argument("--no-write", action="store_true", help="do not save executed notebooks")
    p.set_defaults(func=_cmd_course)

    data = sub.add_parser("data", help="make, download and check data sets (MSD layout)")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = dsub.add_parser("phantom", help="write the synthetic MRI-like phantom data set")
    p.add_argument("--out", type=Path, required=True, help="output folder (MSD layout)")
    p.add_argument("--cases", type=int, default=40, help="number of cases (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing phantom folder")
    p.set_defaults(func=_cmd_data_phantom)

    p = dsub.add_parser("download", help="download an MSD task (checksummed, resumable)")
    p.add_argument("task", help="e.g. Task04_Hippocampus (or Task04, hippocampus)")
    p.add_argument("--out", type=Path, required=True, help="folder that will hold TaskXX_Name/")
    p.add_argument("--url", help="alternative URL of the .tar archive")
    p.add_argument("--md5", help="expected MD5 of the archive (default: the published one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_download)

    p = dsub.add_parser("check", help="validate an MSD folder and print a per-case table")
    p.add_argument("dir", type=Path, help="folder holding dataset.json")
    p.set_defaults(func=_cmd_data_check)
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. Errors about user input print one line, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
