"""Every phantom kind behind one name, generated on first use (NumPy / SciPy / nibabel, no TensorFlow).

========  ==========================================  ==================================
kind      module                                      layout
========  ==========================================  ==================================
mri       :mod:`medseg_tf.phantom` (hippocampus-like)   MSD (Task04-like)
ct        :mod:`medseg_tf.phantom_ct` (HU, liver)       MSD (Task03-like)
brain     :mod:`medseg_tf.phantom_brain` (4 channels)   MSD 4D (Task01-like)
fundus    :mod:`medseg_tf.phantom_fundus` (RGB photos)  PNG triples (DRIVE-like)
========  ==========================================  ==================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medseg_tf import settings

__all__ = ["PHANTOM_KINDS", "phantom_writer", "ensure_phantom"]

#: The phantom kinds, in the order the CLI lists them.
PHANTOM_KINDS = ("mri", "ct", "brain", "fundus")


def phantom_writer(kind: str):
    """``(write_function, default_number_of_cases)`` of a phantom kind."""
    if kind == "mri":
        from medseg_tf.phantom import DEFAULT_CASES, write_phantom_dataset
        return write_phantom_dataset, DEFAULT_CASES
    if kind == "ct":
        from medseg_tf.phantom_ct import CT_DEFAULT_CASES, write_ct_dataset
        return write_ct_dataset, CT_DEFAULT_CASES
    if kind == "brain":
        from medseg_tf.phantom_brain import BRAIN_DEFAULT_CASES, write_brain_dataset
        return write_brain_dataset, BRAIN_DEFAULT_CASES
    if kind == "fundus":
        from medseg_tf.phantom_fundus import FUNDUS_DEFAULT_CASES, write_fundus_dataset
        return write_fundus_dataset, FUNDUS_DEFAULT_CASES
    raise ValueError(f"unknown phantom kind {kind!r}: expected one of {', '.join(PHANTOM_KINDS)}")


def _n_cases(root: Path) -> int | None:
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    items = meta.get("training", meta.get("images"))
    return len(items) if isinstance(items, list) else None


def ensure_phantom(kind: str, root: str | os.PathLike | None = None, n_cases: int | None = None,
                   seed: int = 0) -> Path:
    """The folder of a phantom data set, written (deterministically) unless it is already there.

    Parameters
    ----------
    kind : {"mri", "ct", "brain", "fundus"}
    root : str or PathLike, optional
        Default ``settings.data_dir() / f"phantom_{kind}"``.
    n_cases : int, optional
        Default: the kind's default number of cases.
    seed : int

    A folder holding a phantom data set with another number of cases (and only
    such a folder) is rewritten; anything else there is refused (see the writers).
    """
    write, default = phantom_writer(kind)
    n = default if n_cases is None else int(n_cases)
    root = Path(root) if root is not None else settings.data_dir() / f"phantom_{kind}"
    have = _n_cases(root)
    if have == n:
        return root
    return write(root, n_cases=n, seed=seed, overwrite=have is not None)
