"""From a data-set name to an MSD data set: the one resolver above :mod:`~medseg_tf.datasets` and
:mod:`~medseg_tf.phantom` (NumPy only).

``"phantom"`` is generated on first use under ``settings.phantom_dir()``; ``"hippocampus"`` is read from
``settings.hippocampus_dir()`` (``MEDSEG_HIPPOCAMPUS_DIR``); ``"hippocampus_sample"`` is the 8 real cases
shipped in ``data/hippocampus_sample``; anything else is the path of an MSD folder. Training
(``RunSpec.data``), the notebooks and the command line all go through :func:`open_dataset`, so
:mod:`~medseg_tf.datasets` (reading and writing the MSD layout) and :mod:`~medseg_tf.phantom`
(generating cases) need not know each other's place in the course.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg_tf import settings
from medseg_tf.datasets import MSDDataset
from medseg_tf.errors import ConfigError, DataError, OverwriteError

__all__ = ["open_dataset", "course_dataset", "NAMES"]

#: Data-set names :func:`open_dataset` knows (anything else is a folder path).
NAMES = (*settings.DATASETS, "hippocampus_sample")


def _phantom() -> MSDDataset:
    from medseg_tf.phantom import DEFAULT_CASES, write_phantom_dataset

    root = settings.phantom_dir()
    if not (root / "dataset.json").is_file():
        try:
            write_phantom_dataset(root, n_cases=DEFAULT_CASES, seed=0)
        except (OverwriteError, OSError):
            if not (root / "dataset.json").is_file():  # not written meanwhile by another process
                raise
    return MSDDataset(root)


def open_dataset(data: str | os.PathLike) -> MSDDataset:
    """The MSD data set named by ``data``: a name of :data:`NAMES`, or the path of an MSD folder.

    Raises
    ------
    DataError
        The folder is missing or is not an MSD data set (the message says how to get the real data).
    """
    name = str(data)
    if name == "phantom":
        return _phantom()
    if name == "hippocampus":
        root = settings.hippocampus_dir()
        if not (root / "dataset.json").is_file():
            raise DataError(root, "MSD Task04 Hippocampus not found. Download it with "
                                  "`python -m medseg_tf data download Task04_Hippocampus --out data`, or set "
                                  "MEDSEG_HIPPOCAMPUS_DIR to a folder holding dataset.json, imagesTr/, labelsTr/")
        return MSDDataset(root)
    if name == "hippocampus_sample":
        return MSDDataset(settings.hippocampus_sample_dir())
    return MSDDataset(Path(name).expanduser())


def course_dataset(name: str | None = None) -> MSDDataset:
    """The data set the notebooks use: ``name``, default ``settings.dataset_name()`` (``MEDSEG_DATASET``).

    ``phantom`` is generated under ``settings.phantom_dir()`` on first use (deterministic, a few
    seconds); ``hippocampus`` is read from ``settings.hippocampus_dir()`` and must exist (download it with
    ``python -m medseg_tf data download Task04_Hippocampus --out data``).
    """
    name = name or settings.dataset_name()
    if name not in settings.DATASETS:
        raise ConfigError("MEDSEG_DATASET", f"{name!r} is unknown: expected one of {', '.join(settings.DATASETS)}")
    return open_dataset(name)
