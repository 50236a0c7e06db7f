"""Run the course notebooks top to bottom, headless (the "main job"), and make student versions.

``python -m medseg_tf course`` executes every ``notebooks/NN_*.ipynb`` in
order with :mod:`nbclient` and, by default, writes the executed notebooks,
the figures and a table of running times into an output folder
(``build/course/<dataset>/``: ``notebooks/``, ``figures/``, ``times.csv``),
so that the repository's tracked files stay as they are. ``--update`` writes
the executed notebooks over the committed ones and the figures into
``figures/`` (``figures/<dataset>/`` for a data set other than the phantom,
so a run on real MRI never overwrites the phantom figures).

While a notebook runs, the runner shows which cell runs, the elapsed time and
the last line the notebook printed (a training epoch, a progress bar); it
stops at the first failing cell, showing that cell and the error. Two notebooks
run side by side by default (``--jobs``, :func:`default_jobs`), each in its own
kernel, 05 after 04 (:data:`RUNS_AFTER`); in full mode the notebooks that time
the machine (:data:`TIMES_MACHINE`) run alone, after the others.

``--student OUT`` writes student versions of the notebooks: every cell tagged
``solution`` is removed and outputs are cleared. :func:`solution_dependencies`
checks statically that no later cell uses a name that only a solution cell
defines. Nothing imports this module.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, TextIO

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from medseg_tf import settings
from medseg_tf.errors import ConfigError

NOTEBOOKS_DIR = settings.REPO_ROOT / "notebooks"
#: Default output folder of ``python -m medseg_tf course`` (git-ignored ``build/``).
DEFAULT_OUT = settings.REPO_ROOT / "build" / "course"
SOLUTION_TAG = "solution"


def list_notebooks(folder: Path = NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """Numbered notebooks ``NN_*.ipynb`` in order; ``only`` keeps those whose name starts with one of its items."""
    books = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        unmatched = [o for o in only if not any(p.name.startswith(o) for p in books)]
        if books and unmatched:
            raise ConfigError("only", f"no notebook in {settings.display_path(folder)} starts with "
                                      f"{', '.join(map(repr, unmatched))} (they are numbered 00, 01, ...)")
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


def collapse_progress(nb) -> None:
    """Merge each cell's consecutive stream outputs and keep what a terminal would show after ``\\r`` redraws.

    A text progress bar redraws its line with carriage returns; saved as is, a notebook would hold every
    intermediate state. After this, each bar is one line: its last state.

    >>> import nbformat
    >>> cell = nbformat.v4.new_code_cell("")
    >>> cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="\\rx:  50%"),
    ...                 nbformat.v4.new_output("stream", name="stdout", text="\\rx: 100%"),
    ...                 nbformat.v4.new_output("stream", name="stdout", text="\\ndone\\n")]
    >>> nb = nbformat.v4.new_notebook(cells=[cell])
    >>> collapse_progress(nb)
    >>> nb.cells[0].outputs[0]["text"]
    'x: 100%\\ndone\\n'
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.get("outputs", []):
            if (merged and out.get("output_type") == "stream" and merged[-1].get("output_type") == "stream"
                    and merged[-1].get("name") == out.get("name")):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream" and "\r" in out["text"]:
                lines = out["text"].split("\n")
                out["text"] = "\n".join(_last_redraw(line) for line in lines)
        cell["outputs"] = merged


def _last_redraw(line: str) -> str:
    """The part of ``line`` a terminal shows last: the text after its last non-trailing carriage return."""
    parts = line.split("\r")
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return parts[-1]


def resolve_env_paths(env: Mapping[str, str], cwd: Path | None = None) -> dict[str, str]:
    """``env`` with relative ``MEDSEG_*_DIR`` values made absolute from ``cwd`` (default: the current folder).

    The kernel runs in the notebook's folder, so a relative ``MEDSEG_DATA_DIR=mydata`` typed in the
    repository root would otherwise point into ``notebooks/mydata``.
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)
    resolved = dict(env)
    for key, value in env.items():
        if key.startswith("MEDSEG_") and key.endswith("_DIR") and value.strip():
            path = Path(value.strip()).expanduser()
            resolved[key] = str(path if path.is_absolute() else (cwd / path).resolve())
    return resolved


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """What the runner prints while a notebook executes.

    On a terminal one line per notebook is redrawn in place (cell, elapsed time, the last line the
    notebook printed). Elsewhere (a log file, CI) lines are appended: one for every cell that took at
    least ``min_cell_seconds`` and, at most every ``heartbeat_seconds``, the notebook's latest output line.
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 min_cell_seconds: float = 5.0, heartbeat_seconds: float = 15.0):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.min_cell_seconds = min_cell_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.prefix = ""
        self.label = ""
        self.n_cells = 0
        self.tag = ""
        self._lock = threading.Lock()

    def copy(self, prefix: str, tag: str) -> "Progress":
        """A Progress for one of several notebooks running side by side: the same stream and settings,
        appended lines (they cannot share one redrawn line) that start with ``tag``, writes serialised."""
        other = Progress(self.stream, live=False, min_cell_seconds=self.min_cell_seconds,
                         heartbeat_seconds=self.heartbeat_seconds)
        other._lock, other.prefix, other.tag = self._lock, prefix, tag
        return other

    def _width(self) -> int:
        return shutil.get_terminal_size((100, 20)).columns - 1

    def _emit(self, text: str, *, final: bool = False) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\r\x1b[2K" + text[: self._width()] + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def start(self, label: str, n_cells: int) -> None:
        self.label, self.n_cells = self.prefix + label, n_cells
        self.start_time = self.cell_start = self.last_beat = time.perf_counter()
        self.cell = 0
        self.last_line = ""
        self._emit(f"{self.label} ({n_cells} code cells)" if not self.live else self.label)

    def cell_started(self, number: int) -> None:
        self.cell = number
        self.cell_start = time.perf_counter()
        if self.live:
            self._status()

    def cell_finished(self, number: int) -> None:
        took = time.perf_counter() - self.cell_start
        if self.live:
            self._status()
        elif took >= self.min_cell_seconds:
            self._emit(f"    {self._who()}{_clock(time.perf_counter() - self.start_time)}  cell {number}/"
                       f"{self.n_cells} took {took:.1f} s")

    def output_line(self, line: str) -> None:
        self.last_line = line
        now = time.perf_counter()
        if self.live:
            self._status()
        elif now - self.last_beat >= self.heartbeat_seconds:
            self.last_beat = now
            self._emit(f"    {self._who()}{_clock(now - self.start_time)}  cell {self.cell}/{self.n_cells}: "
                       f"{line[:150]}")

    def _who(self) -> str:
        """The notebook's name on its lines when notebooks run side by side (their lines interleave)."""
        return f"{self.tag}  " if self.tag else ""

    def _status(self) -> None:
        text = f"{self.label}  cell {self.cell}/{self.n_cells}  {_clock(time.perf_counter() - self.start_time)}"
        if self.last_line:
            text += f"  | {self.last_line}"
        self._emit(text)

    def finish(self, seconds: float, ok: bool = True) -> None:
        self._emit(f"{self.label}  {'done' if ok else 'FAILED'}  {seconds:.1f} s", final=True)


class _ProgressClient(NotebookClient):
    """A NotebookClient that reports cells and the last printed line to a :class:`Progress`."""

    def __init__(self, nb, progress: Progress, **kw):
        super().__init__(nb, **kw)
        self.progress = progress
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self._number = {index: k + 1 for k, index in enumerate(code)}
        self.on_cell_execute = lambda cell, cell_index: progress.cell_started(self._number.get(cell_index, 0))
        self.on_cell_executed = lambda cell, cell_index, execute_reply: progress.cell_finished(
            self._number.get(cell_index, 0))

    def output(self, outs, msg, display_id, cell_index):
        if msg.get("msg_type") == "stream":
            text = msg["content"].get("text", "")
            lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
            lines = [ln for ln in lines if not ln.startswith(_TF_LOG_PREFIXES)]
            if lines:
                self.progress.output_line(lines[-1])
        return super().output(outs, msg, display_id, cell_index)


def execute_notebook(path: Path, *, timeout: int = 1800, write: bool = True, env: dict | None = None,
                     out_path: Path | None = None, progress: Progress | None = None) -> float:
    """Execute one notebook in its own folder and (by default) save it in place.

    Parameters
    ----------
    path : Path
        The ``.ipynb`` file.
    timeout : int
        Seconds one cell may take.
    write : bool
        Save the executed notebook (only when every cell succeeded), over ``path`` unless ``out_path``
        is given.
    env : dict, optional
        Environment variables set for the kernel (in addition to this process's). Relative
        ``MEDSEG_*_DIR`` paths, here or in this process's environment, are resolved from the current
        folder before the kernel starts (see :func:`resolve_env_paths`).
    out_path : Path, optional
        Where to save the executed notebook instead of ``path`` (its folder is created).
    progress : Progress, optional
        Report cells and printed lines while the notebook runs (see :class:`Progress`).

    Returns
    -------
    float
        Wall time in seconds.

    Raises
    ------
    RuntimeError
        If a cell fails; the message shows the cell and the error.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    kernel_env = resolve_env_paths({**os.environ, **(env or {})})  # the kernel's; this process's stays as it is
    kernel_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    try:
        kw = dict(timeout=timeout, kernel_name="python3", record_timing=False,
                  resources={"metadata": {"path": str(path.parent)}})
        if progress is not None:
            client = _ProgressClient(nb, progress, **kw)
            progress.start(path.stem, sum(c.cell_type == "code" for c in nb.cells))
        else:
            client = NotebookClient(nb, **kw)
        # the kernel's own stderr (TensorFlow's C++ start-up logs) stays out of the terminal;
        # errors in cells still arrive through the notebook's outputs
        client.execute(stderr=subprocess.DEVNULL, env=kernel_env)
    except (CellExecutionError, CellTimeoutError) as exc:
        if progress is not None:
            progress.finish(time.perf_counter() - start, ok=False)
        raise RuntimeError(f"{path.name} failed in {_failing_cell(nb, exc)}\n\n{exc}") from None
    elapsed = time.perf_counter() - start
    if progress is not None:
        progress.finish(elapsed)
    if write:
        strip_tf_logs(nb)
        collapse_progress(nb)
        target = Path(out_path) if out_path is not None else path
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    return elapsed


# =========================================================================== student versions


def is_solution(cell) -> bool:
    """True for a cell whose metadata tags include ``solution``."""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def student_version(nb):
    """A copy of ``nb`` without solution cells, with outputs and execution counts cleared."""
    student = nbformat.from_dict(nb)
    student.cells = [c for c in student.cells if not is_solution(c)]
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return student


def write_student_versions(out_dir: Path, *, folder: Path = NOTEBOOKS_DIR, only: list[str] | None = None,
                           overwrite: bool = False) -> list[Path]:
    """Write :func:`student_version` of every course notebook into ``out_dir``; return the files written.

    Raises
    ------
    medseg_tf.errors.OverwriteError
        If a notebook already exists in ``out_dir`` and ``overwrite`` is false.
    """
    from medseg_tf.errors import OverwriteError

    books = list_notebooks(folder, only)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OverwriteError(f"{settings.display_path(out_dir)}: is a file, not a folder; choose another folder")
    existing = [out_dir / b.name for b in books if (out_dir / b.name).exists()]
    if existing and not overwrite:
        raise OverwriteError(f"{settings.display_path(existing[0])}: already exists; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for book in books:
        target = out_dir / book.name
        nbformat.write(student_version(nbformat.read(book, as_version=4)), target)
        written.append(target)
    return written


def _python_source(cell_source: str) -> str:
    """A cell's source as plain Python (IPython magics and shell escapes translated)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names bound) by one top-level statement (comprehension scopes included, roughly)."""
    read, bound, local = set(), set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (read if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, ast.arg):  # a function's parameters are local to it
            local.add(sub.arg)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in sub.names)
    return read - local, bound


def solution_dependencies(nb) -> list[str]:
    """Later cells that read a name whose latest binding came from a solution cell.

    Walks the code cells in order, statement by statement; a name bound (or rebound) by a
    solution cell and read by a later non-solution cell before any non-solution cell rebinds it
    is a dependency: removing the solutions would break or change that cell.

    Returns
    -------
    list of str
        One message per dependency, e.g. ``"cell 12 reads 'model', last set by solution cell 10"``
        (cell numbers are 0-based positions in the notebook). Empty when the notebook is safe.
    """
    last_binder: dict[str, tuple[int, bool]] = {}
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        solution = is_solution(cell)
        try:
            tree = ast.parse(_python_source(cell.source))
        except SyntaxError as exc:
            problems.append(f"cell {index} does not parse: {exc.msg}")
            continue
        for statement in tree.body:
            read, bound = _names(statement)
            if not solution:
                for name in sorted(read - bound):
                    binder = last_binder.get(name)
                    if binder and binder[1]:
                        problems.append(f"cell {index} reads {name!r}, last set by solution cell {binder[0]}")
            for name in bound:
                last_binder[name] = (index, solution)
    return sorted(set(problems), key=problems.index)


# =========================================================================== the course run


def figures_dir_for(dataset: str, root: Path) -> Path:
    """Figures folder of a course run: ``root`` for the phantom, ``root/<dataset>`` otherwise."""
    return Path(root) if dataset == "phantom" else Path(root) / dataset


#: Pace assumed by :func:`teaching_minutes`: prose read aloud and discussed, and one exercise.
WORDS_PER_MINUTE = 100
MINUTES_PER_EXERCISE = 10


_EXERCISES_HEADING = re.compile(r"^#+[^\n]*\bExercises?\b[^\n]*$", re.M)
_EXERCISE_ITEM = re.compile(r"^(?:\*\*)?(?:Exercise\s+)?(\d+)(?:\.\s|\.\*\*|\s\()", re.M)


def count_exercises(nb) -> int:
    """Exercises of a notebook: the numbered items (``1. ...``, ``**1.**``, ``**Exercise 1.**``) under its
    "Exercises" heading, in the prose students see; without such a heading, the blocks of solution cells."""
    text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown" and not is_solution(c))
    numbers = set()
    for heading in _EXERCISES_HEADING.finditer(text):
        rest = text[heading.end():]
        end = re.search(r"^#+ ", rest, re.M)
        numbers |= {int(n) for n in _EXERCISE_ITEM.findall(rest[:end.start()] if end else rest)}
    if numbers:
        return len(numbers)
    return sum(1 for prev, cell in zip(nb.cells, nb.cells[1:]) if is_solution(cell) and not is_solution(prev))


def notebook_stats(nb) -> dict:
    """Code cells, words of prose (markdown) and exercises (:func:`count_exercises`)."""
    exercises = count_exercises(nb)
    words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    return {"code_cells": sum(c.cell_type == "code" for c in nb.cells), "words": words, "exercises": exercises}


def teaching_minutes(words: int, exercises: int, run_seconds: float) -> int:
    """A rough lesson length: prose at :data:`WORDS_PER_MINUTE`, :data:`MINUTES_PER_EXERCISE` per
    exercise, plus the notebook's running time; rounded up to 5 minutes."""
    minutes = words / WORDS_PER_MINUTE + MINUTES_PER_EXERCISE * exercises + run_seconds / 60
    return int(5 * -(-minutes // 5))


def _write_times(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["notebook", "mode", "dataset", "code_cells", "words", "exercises",
                                               "seconds", "teaching_minutes"])
        writer.writeheader()
        writer.writerows(rows)


#: Notebooks that need another one's results, by number: 05 evaluates the models that 04 trained (found in
#: the runs folder; without them it trains quick ones of its own). Side by side (``jobs > 1``), a notebook
#: named here runs after the one it names, in the same slot.
RUNS_AFTER = {"05": "04"}


def work_units(books: list[Path]) -> list[list[Path]]:
    """``books`` grouped into units that run one after another (see :data:`RUNS_AFTER`), in numbered order.

    >>> [[p.name[:2] for p in unit] for unit in work_units([Path(f"{n}_x.ipynb") for n in ("03", "04", "05", "06")])]
    [['03'], ['04', '05'], ['06']]
    """
    units: list[list[Path]] = []
    unit_of: dict[str, list[Path]] = {}
    for book in books:
        number, first = book.name[:2], RUNS_AFTER.get(book.name[:2])
        if first in unit_of:
            unit_of[first].append(book)
            unit_of[number] = unit_of[first]
        else:
            unit_of[number] = [book]
            units.append(unit_of[number])
    return units


#: Notebooks whose full-mode results include speeds they measure (training samples per second, milliseconds
#: per volume, training minutes): in full mode each runs alone, so that it measures an otherwise idle machine,
#: with the notebooks of its :data:`RUNS_AFTER` chain. In quick mode, whose speeds mean little, they share it.
TIMES_MACHINE = frozenset({"04", "06", "09"})


def default_jobs(quick: bool) -> int:
    """Notebooks run side by side by default: two on a machine with 2 or more cores, in either mode.

    A notebook rarely keeps two cores busy (a quick run mostly imports libraries and traces graphs, one
    core's work; a full one also waits on Python between TensorFlow's calls), so two share a 2-core
    machine well. In full mode :func:`run_course` still runs the notebooks of :data:`TIMES_MACHINE` alone.
    """
    return min(2, os.cpu_count() or 1)


def split_units(units: list[list[Path]], quick: bool) -> tuple[list[list[Path]], list[list[Path]]]:
    """Split work units into those that may share the machine and those that must run alone.

    In quick mode every unit may share; in full mode a unit with a notebook of :data:`TIMES_MACHINE` runs
    alone.

    >>> units = work_units([Path(f"{n}_x.ipynb") for n in ("03", "04", "05", "07")])
    >>> [[[p.name[:2] for p in u] for u in part] for part in split_units(units, quick=False)]
    [[['03'], ['07']], [['04', '05']]]
    >>> [len(part) for part in split_units(units, quick=True)]
    [3, 0]
    """
    if quick:
        return list(units), []
    alone = [unit for unit in units if any(book.name[:2] in TIMES_MACHINE for book in unit)]
    return [unit for unit in units if unit not in alone], alone


def run_course(*, quick: bool = False, only: list[str] | None = None, timeout: int = 1800,
               write: bool = True, out: Path | None = None, update: bool = False,
               folder: Path = NOTEBOOKS_DIR, progress: Progress | None = None, jobs: int | None = None) -> int:
    """Execute the course notebooks in order; return a process exit code (0 = all ran).

    Parameters
    ----------
    quick : bool
        Quick mode (``MEDSEG_QUICK=1``) for the kernels.
    only : list of str, optional
        Run only notebooks whose name starts with one of these.
    timeout : int
        Seconds one cell may take.
    write : bool
        Save the executed notebooks (and ``times.csv``).
    out : Path, optional
        Output folder (default ``build/course/<dataset>``): executed notebooks go to ``out/notebooks``,
        figures to ``out/figures``, running times to ``out/times.csv``. Ignored with ``update``.
    update : bool
        Write the executed notebooks over the ones in ``folder`` and the figures into ``figures/``
        (``figures/<dataset>/`` unless the data set is the phantom); times go to
        ``build/course/<dataset>/times.csv``.
    folder : Path
        Where the numbered notebooks are (default ``notebooks/``).
    progress : Progress, optional
        Where progress is shown (default: standard output).
    jobs : int, optional
        Notebooks run side by side, each in its own kernel (default :func:`default_jobs`); a notebook of
        :data:`RUNS_AFTER` waits for the one it needs. Each notebook's results are the same either way
        (each seeds itself); the speeds it measures are not, as it shares the CPU, so in full mode the
        notebooks of :data:`TIMES_MACHINE` run alone, after the others (:func:`split_units`).
    """
    dataset = settings.dataset_name()
    books = list_notebooks(folder, only=only)
    if not books:
        print(f"no notebooks found in {settings.display_path(folder)}", file=sys.stderr)
        return 1
    if update:
        out_root = DEFAULT_OUT / dataset
        figures = figures_dir_for(dataset, settings.REPO_ROOT / "figures")
    else:
        out_root = Path(out).resolve() if out is not None else DEFAULT_OUT / dataset
        figures = out_root / "figures"
    env = {"MEDSEG_QUICK": "1" if quick else "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
           "MEDSEG_FIGURES_DIR": str(figures), "MEDSEG_TEXT_PROGRESS": "1"}
    progress = progress or Progress()
    units = work_units(books)
    shared, alone = split_units(units, quick)
    jobs = max(1, min(default_jobs(quick) if jobs is None else int(jobs), len(shared) or 1))
    where = "in place" if update else f"to {settings.display_path(out_root / 'notebooks')}"
    side_by_side = f", {jobs} side by side" if jobs > 1 else ""
    if jobs > 1 and alone:
        order = " then ".join("+".join(book.name[:2] for book in unit) for unit in alone)
        side_by_side += f"; then, alone because they time the machine: {order}"
    print(f"Running {len(books)} notebooks ({'quick' if quick else 'full'} mode, dataset={dataset}{side_by_side}); "
          f"executed notebooks {where if write else '(not saved)'}, figures to {settings.display_path(figures)}",
          flush=True)
    total = time.perf_counter()
    rows: dict[str, dict] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def run_unit(unit: list[Path]) -> None:
        for book in unit:
            if failures:  # another notebook failed: start nothing new
                return
            i = books.index(book) + 1
            shown = progress
            if jobs == 1:
                progress.prefix = f"[{i}/{len(books)}] "
            else:
                shown = progress.copy(f"[{i}/{len(books)}] ", book.stem[:2])
            target = None if update else out_root / "notebooks" / book.name
            try:
                seconds = execute_notebook(book, timeout=timeout, write=write, env=env, out_path=target,
                                           progress=shown)
            except RuntimeError as exc:
                with lock:
                    failures.append(str(exc))
                return
            stats = notebook_stats(nbformat.read(book, as_version=4))
            with lock:
                rows[book.name] = {"notebook": book.stem, "mode": "quick" if quick else "full",
                                   "dataset": dataset, **stats, "seconds": round(seconds, 1),
                                   "teaching_minutes": teaching_minutes(stats["words"], stats["exercises"],
                                                                        seconds)}
                if write:
                    _write_times(out_root / "times.csv", [rows[b.name] for b in books if b.name in rows])

    if jobs == 1:
        for unit in units:
            run_unit(unit)
    else:  # longest first, roughly: chains (two notebooks in one slot), then the later notebooks, which train
        # and evaluate more; a long one started last would leave the other slots idle at the end
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            ordered = sorted(shared, key=lambda unit: (len(unit), unit[0].name), reverse=True)
            for future in [pool.submit(run_unit, unit) for unit in ordered]:
                future.result()
        for unit in alone:  # full mode: each with the machine to itself, once the others have finished
            run_unit(unit)
    if failures:
        print(failures[0], file=sys.stderr)
        return 1
    print(f"All {len(books)} notebooks ran in {time.perf_counter() - total:.1f} s"
          + (f"; times in {settings.display_path(out_root / 'times.csv')}" if write else ""), flush=True)
    return 0

