"""Course settings read from environment variables (no TensorFlow import).

Every notebook reads the same few switches, documented in the README:

``MEDSEG_QUICK``
    ``1`` shrinks epochs and case counts (used by the tests); never changes
    the code path.
``MEDSEG_DATASET``
    ``phantom`` (default, generated offline) or ``hippocampus`` (MSD Task04).
``MEDSEG_HIPPOCAMPUS_DIR``
    An MSD Task04 folder (default ``data/Task04_Hippocampus``).
``MEDSEG_DATA_DIR``
    Where generated and downloaded data live (default ``<repo>/data``).
``MEDSEG_FIGURES_DIR``
    Where notebooks save figures (default ``<repo>/figures``, ``<repo>/figures/<dataset>``
    for a data set other than the phantom).
``MEDSEG_RUNS_DIR``
    Where training runs are written (default ``<repo>/runs``).
``MEDSEG_TEXT_PROGRESS``
    ``1`` draws progress bars as text lines even in a notebook (the course runner sets it, so that
    saved notebooks show each bar's last state, readable on the web, instead of an empty widget).

A relative path in a ``MEDSEG_*_DIR`` variable is resolved from the current folder. A notebook's
kernel runs in ``notebooks/``, so ``python -m medseg_tf course`` resolves such paths from the folder
where the command was typed before it starts the kernels.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The repository root (the folder holding ``medseg_tf/``).
REPO_ROOT = Path(__file__).resolve().parent.parent

DATASETS = ("phantom", "hippocampus")

# TensorFlow's C++ logging (read when TensorFlow loads, so set here: every notebook imports this module
# first). 3 keeps its INFO/WARNING/ERROR lines, such as "failed call to cuInit" on a machine without a
# GPU, out of the notebooks; set TF_CPP_MIN_LOG_LEVEL=0 before starting Jupyter to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else default


def quick_mode() -> bool:
    """True when ``MEDSEG_QUICK`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("MEDSEG_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def dataset_name() -> str:
    """The data set the notebooks use: ``"phantom"`` (default) or ``"hippocampus"``."""
    name = os.environ.get("MEDSEG_DATASET", "phantom").strip().lower() or "phantom"
    if name not in DATASETS:
        raise ValueError(f"MEDSEG_DATASET={name!r}: expected one of {', '.join(DATASETS)}")
    return name


def data_dir() -> Path:
    """Folder for generated and downloaded data (``MEDSEG_DATA_DIR``, default ``<repo>/data``)."""
    return _env_path("MEDSEG_DATA_DIR", REPO_ROOT / "data")


def hippocampus_dir() -> Path:
    """MSD Task04 folder (``MEDSEG_HIPPOCAMPUS_DIR``, default ``<data>/Task04_Hippocampus``)."""
    return _env_path("MEDSEG_HIPPOCAMPUS_DIR", data_dir() / "Task04_Hippocampus")


def hippocampus_sample_dir() -> Path:
    """The 8 real MSD Task04 cases shipped with the repository (``<repo>/data/hippocampus_sample``).

    They are in the validation split of both shipped reference models, so the notebooks can show real
    anatomy and evaluate the shipped models offline. CC-BY-SA 4.0: see the folder's README.
    """
    return REPO_ROOT / "data" / "hippocampus_sample"


#: The shipped reference models (``<repo>/models``).
MODELS_DIR = REPO_ROOT / "models"


def phantom_dir() -> Path:
    """Folder of the generated phantom data set (``<data>/phantom``)."""
    return data_dir() / "phantom"


def _figures_path() -> Path:
    default = REPO_ROOT / "figures"
    if dataset_name() != "phantom":
        default = default / dataset_name()
    return _env_path("MEDSEG_FIGURES_DIR", default)


def figures_dir() -> Path:
    """Folder where notebooks save figures, created if absent.

    ``MEDSEG_FIGURES_DIR`` when set; otherwise ``<repo>/figures`` for the phantom and
    ``<repo>/figures/<dataset>`` for another data set, so that a run on real MRI never overwrites
    the phantom figures. (``python -m medseg_tf course`` sets it to its output folder.)
    """
    path = _figures_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


#: Figure formats :func:`medseg_tf.plots.save_figure` can write besides PNG.
FIGURE_FORMATS = ("png", "svg")


def figure_formats() -> tuple[str, ...]:
    """Formats every figure is saved in (``MEDSEG_FIGURE_FORMATS``, e.g. ``png,svg``; PNG always)."""
    raw = os.environ.get("MEDSEG_FIGURE_FORMATS", "png")
    wanted = {f.strip().lower() for f in raw.split(",") if f.strip()} | {"png"}
    unknown = sorted(wanted - set(FIGURE_FORMATS))
    if unknown:
        raise ValueError(f"MEDSEG_FIGURE_FORMATS={raw!r}: unknown format(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(FIGURE_FORMATS)}")
    return tuple(f for f in FIGURE_FORMATS if f in wanted)


def runs_dir() -> Path:
    """Folder where training runs are written (``MEDSEG_RUNS_DIR``, default ``<repo>/runs``)."""
    return _env_path("MEDSEG_RUNS_DIR", REPO_ROOT / "runs")


def pick(full, quick):
    """Return ``quick`` in quick mode and ``full`` otherwise.

    Notebooks use it for sizes only (epochs, case counts), never to switch code.
    """
    return quick if quick_mode() else full


def describe() -> str:
    """One line naming the active settings, printed at the top of each notebook."""
    return (
        f"dataset={dataset_name()} quick={quick_mode()} data_dir={display_path(data_dir())} "
        f"figures_dir={display_path(_figures_path())}"
    )


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printed in outputs: relative to the repository when inside it, so no machine path leaks.

    >>> display_path(REPO_ROOT / "figures" / "a.png")
    'figures/a.png'
    """
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def progress_bar(*args, **kwargs):
    """A tqdm progress bar (same arguments as ``tqdm.tqdm``).

    A widget in a live notebook and text on a terminal (``tqdm.auto``); text on standard output when
    ``MEDSEG_TEXT_PROGRESS=1``, as the course runner sets it for the notebooks it saves.

    >>> bar = progress_bar(range(3), disable=True)
    >>> sum(bar)
    3
    """
    if os.environ.get("MEDSEG_TEXT_PROGRESS") == "1":
        from tqdm.std import tqdm

        kwargs.setdefault("file", sys.stdout)
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
