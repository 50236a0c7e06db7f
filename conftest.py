"""Test-wide settings (applies to tests/ and to the notebooks nbval runs).

Set before any kernel starts, so notebooks executed by nbval inherit them:
quick mode on, figures and runs written to temporary folders (the committed
figures/ stay as the full run made them; one pair of folders per pytest-xdist
worker, removed when the run ends: a run's trainings fill about half a
gigabyte), a non-interactive matplotlib backend, and the real hippocampus cases
read from ../shared (unless the caller set a folder). To keep the runs and
figures of a test session, give the folders yourself (``MEDSEG_RUNS_DIR=/tmp/r
MEDSEG_FIGURES_DIR=/tmp/f python -m pytest``): folders the caller chose are
never removed.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_HIPPOCAMPUS = (ROOT.parent / "shared" / "data" / "msd_hippocampus").resolve()

os.environ["MEDSEG_QUICK"] = "1"
# Temporary figure and run folders, one pair per process: the suite runs on two pytest-xdist workers
# (pyproject.toml), which inherit the controller's environment; a worker replaces the controller's
# folders with its own, so two notebooks or tests never write the same run folder at once. Where the
# caller chose a folder (the variable set before pytest started), each worker uses a subfolder of it
# named after the worker (gw0, gw1).
_OWN = "_MEDSEG_CONFTEST_TMP"  # the variables this file set, not the caller
_own = set(filter(None, os.environ.get(_OWN, "").split(",")))
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
#: The temporary folders this process made (pytest_unconfigure removes them; a caller's folder is never here).
MADE_HERE: list[str] = []
for _name, _prefix in (("MEDSEG_FIGURES_DIR", "medseg_figures_"), ("MEDSEG_RUNS_DIR", "medseg_runs_")):
    if _name not in os.environ or (_worker and _name in _own):
        os.environ[_name] = tempfile.mkdtemp(prefix=f"{_prefix}{_worker}_" if _worker else _prefix)
        MADE_HERE.append(os.environ[_name])
        _own.add(_name)
    elif _worker:
        os.environ[_name] = os.path.join(os.environ[_name], _worker)
os.environ[_OWN] = ",".join(sorted(_own))
os.environ.setdefault("MEDSEG_HIPPOCAMPUS_DIR", str(SHARED_HIPPOCAMPUS))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# before anything imports TensorFlow (kernels inherit it): TF_ENABLE_ONEDNN_OPTS=1 unless set (medseg_tf's docstring)
import medseg_tf  # noqa: E402,F401


def _notebook_chains() -> dict[str, str]:
    """The course runner's :data:`medseg_tf.course.RUNS_AFTER` as test files: {later notebook: first one}."""
    from medseg_tf.course import RUNS_AFTER, list_notebooks

    by_number = {p.name[:2]: p.relative_to(ROOT).as_posix() for p in list_notebooks(ROOT / "notebooks")}
    return {by_number[later]: by_number[first] for later, first in RUNS_AFTER.items()
            if later in by_number and first in by_number}


#: Notebooks that run on the worker of the notebook named first, after it: 05 evaluates the models that
#: 04 trained (found in that worker's runs folder; elsewhere 05 would train quick ones of its own).
NOTEBOOK_CHAINS = _notebook_chains()


def pytest_unconfigure(config):
    """Remove the temporary run and figure folders this process made (each xdist worker its own)."""
    for folder in MADE_HERE:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """Mark nbval's notebook cells slow; on a pytest-xdist worker, put the notebooks first.

    Notebook cells count as slow: ``pytest -m "not slow"`` is the fast loop without them. With
    ``--dist loadfile`` (pyproject.toml) each file runs on one worker, so the cells of a notebook share
    their kernel; the notebooks are the longest files, and one started last would leave the other
    worker idle at the end, hence notebooks first, in their numbered order (``--no-loadscope-reorder``
    keeps this order).
    """
    notebook = {id(item): str(getattr(item, "path", "")) for item in items
                if str(getattr(item, "path", "")).endswith(".ipynb")}
    for item in items:
        if id(item) in notebook:
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a stable sort: a notebook's cells keep their order
        items.sort(key=lambda item: (0, notebook[id(item)]) if id(item) in notebook else (1, ""))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: ignored when xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, except that each notebook of :data:`NOTEBOOK_CHAINS` joins its first notebook.

    (Not ``--dist loadgroup`` with ``xdist_group`` marks: under pytest 9, xdist 3.8 renames the grouped
    items through a field pytest no longer reads, so the groups are silently ignored.)
    """
    from xdist.scheduler import LoadFileScheduling

    if config.getvalue("dist") != "loadfile":
        return None  # another --dist chosen on the command line: xdist's own scheduler

    class CourseScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return NOTEBOOK_CHAINS.get(scope, scope)

    return CourseScheduling(config, log)
