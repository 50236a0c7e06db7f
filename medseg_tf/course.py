"""Run the course notebooks top to bottom, headless (the "main job").

``python -m medseg_tf course`` executes every ``notebooks/NN_*.ipynb`` in
order with :mod:`nbclient`, writes the executed notebook back in place
(execution counts 1..N, outputs included) and so regenerates ``figures/``.
It prints which notebook runs and how long it took, and stops at the first
failing cell, showing that cell and the error. Nothing imports this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from medseg_tf import settings

NOTEBOOKS_DIR = settings.REPO_ROOT / "notebooks"


def list_notebooks(folder: Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """Numbered notebooks ``NN_*.ipynb`` in order; ``only`` keeps those whose name starts with one of its items."""
    books = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        books = [p for p in books if any(p.name.startswith(o) for o in only)]
    return books


def _failing_cell(nb, exc: Exception) -> str:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i} (execution count {cell.get('execution_count')}):\n{cell.source}"
    return "(cell not found)"


_TF_LOG_PREFIXES = ("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 ",
                    "To enable the following instructions")


def strip_tf_logs(nb) -> None:
    """Drop TensorFlow's C++ start-up log lines from stderr outputs (they say nothing to a student)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = [ln for ln in out["text"].splitlines(keepends=True)
                         if ln.strip() and not ln.startswith(_TF_LOG_PREFIXES)]
                if not lines:
                    continue
                out["text"] = "".join(lines)
            kept.append(out)
        cell["outputs"] = kept


def execute_notebook(path: Path, *, timeout: int = 1800, write: bool = True, env: dict | None = None) -> float:
    """Execute one notebook in its own folder and (by default) save it in place.

    Parameters
    ----------
    path : Path
        The ``.ipynb`` file.
    timeout : int
        Seconds one cell may take.
    write : bool
        Save the executed notebook over ``path`` (only when every cell succeeded).
    env : dict, optional
        Environment variables set for the kernel (in addition to this process's).

    Returns
    -------
    float
        Wall time in seconds.

    Raises
    ------
    RuntimeError
        If a cell fails; the message shows the cell and the error.
    """
    nb = nbformat.read(path, as_version=4)
    old_env = dict(os.environ)
    os.environ.update(env or {})
    start = time.perf_counter()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        # the kernel's own stderr (TensorFlow's C++ start-up logs) stays out of the terminal;
        # errors in cells still arrive through the notebook's outputs
        client.execute(stderr=subprocess.DEVNULL)
    except (CellExecutionError, CellTimeoutError) as exc:
        raise RuntimeError(f"{path.name} failed in {_failing_cell(nb, exc)}\n\n{exc}") from None
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    elapsed = time.perf_counter() - start
    if write:
        strip_tf_logs(nb)
        nbformat.write(nb, path)
    return elapsed


def run_course(*, quick: bool = False, only: list[str] | None = None, timeout: int = 1800,
               write: bool = True) -> int:
    """Execute the course notebooks in order; return a process exit code (0 = all ran)."""
    books = list_notebooks(only=only)
    if not books:
        print(f"no notebooks found in {NOTEBOOKS_DIR}", file=sys.stderr)
        return 1
    env = {"MEDSEG_QUICK": "1" if quick else "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    print(f"Running {len(books)} notebooks ({'quick' if quick else 'full'} mode, "
          f"dataset={settings.dataset_name()}), figures -> {settings.figures_dir()}", flush=True)
    total = time.perf_counter()
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {book.name} ...", end=" ", flush=True)
        try:
            seconds = execute_notebook(book, timeout=timeout, write=write, env=env)
        except RuntimeError as exc:
            print("FAILED", flush=True)
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{seconds:.1f} s", flush=True)
    print(f"All {len(books)} notebooks ran in {time.perf_counter() - total:.1f} s", flush=True)
    return 0
