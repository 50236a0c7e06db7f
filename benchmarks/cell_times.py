"""Where a notebook's running time goes: execute it top to bottom and print the seconds of each slow cell.

    python benchmarks/cell_times.py notebooks/04_training.ipynb            # full mode
    python benchmarks/cell_times.py notebooks/04_training.ipynb --quick    # MEDSEG_QUICK=1

The notebook runs in a fresh kernel with the course runner's settings (``medseg_tf.course``: inline figures,
TensorFlow's C++ logs off), its figures and training runs go to a temporary folder (so nothing tracked changes,
and notebook 05 trains quick models of its own instead of reading 04's), and nothing is written back. The
times are nbclient's own (``record_timing``: from the kernel receiving a cell to its reply). A measurement
script for instructors planning a lesson and for the README's "Running times"; nothing imports it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def _seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return float("nan")
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--quick", action="store_true", help="quick mode (MEDSEG_QUICK=1)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="show cells at least this slow (default 1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take")
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        print(f"{args.notebook}: no such notebook", file=sys.stderr)
        return 1
    nb = nbformat.read(args.notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="cell_times_") as tmp:
        env = {**os.environ, "MEDSEG_QUICK": "1" if args.quick else "0", "TF_CPP_MIN_LOG_LEVEL": "3",
               "MPLBACKEND": "module://matplotlib_inline.backend_inline", "MEDSEG_TEXT_PROGRESS": "1",
               "MEDSEG_FIGURES_DIR": str(Path(tmp) / "figures"), "MEDSEG_RUNS_DIR": str(Path(tmp) / "runs")}
        start = time.perf_counter()
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", record_timing=True,
                                resources={"metadata": {"path": str(args.notebook.resolve().parent)}})
        client.execute(env=env)
        total = time.perf_counter() - start
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    print(f"{args.notebook.name} ({'quick' if args.quick else 'full'} mode): {total:.1f} s in all, "
          f"{len(code)} code cells")
    print("| cell | seconds | first line |")
    print("|---|---|---|")
    for number, (_, cell) in enumerate(code, start=1):
        seconds = _seconds(cell)
        if seconds >= args.min_seconds:
            first = next((line for line in cell.source.splitlines() if line.strip()), "")[:80]
            print(f"| {number} | {seconds:.1f} | `{first}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
