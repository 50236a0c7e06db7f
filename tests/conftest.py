"""Shared fixtures."""

import os
from pathlib import Path

import numpy as np
import pytest


def hippocampus_dir() -> Path:
    return Path(os.environ["MEDSEG_HIPPOCAMPUS_DIR"])


@pytest.fixture(scope="session")
def hippocampus_root() -> Path:
    """The real MSD Task04 cases; skip when absent, fail under CI."""
    root = hippocampus_dir()
    if not (root / "dataset.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the real hippocampus cases are missing at {root}")
        pytest.skip(f"real MSD hippocampus cases not found at {root} (set MEDSEG_HIPPOCAMPUS_DIR)")
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small phantom data set (8 cases) written once per session."""
    from medseg_tf.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "Phantom", n_cases=8, seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
