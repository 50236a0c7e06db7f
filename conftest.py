"""Test-wide settings (applies to tests/ and to the notebooks nbval runs).

Set before any kernel starts, so notebooks executed by nbval inherit them:
quick mode on, figures written to a temporary folder (the committed figures/
stay as the full run made them), a non-interactive matplotlib backend, and the
real hippocampus cases read from ../shared (unless the caller set a folder).
"""

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHARED_HIPPOCAMPUS = (ROOT.parent / "shared" / "data" / "msd_hippocampus").resolve()

os.environ["MEDSEG_QUICK"] = "1"
os.environ.setdefault("MEDSEG_FIGURES_DIR", tempfile.mkdtemp(prefix="medseg_figures_"))
os.environ.setdefault("MEDSEG_RUNS_DIR", tempfile.mkdtemp(prefix="medseg_runs_"))
os.environ.setdefault("MEDSEG_HIPPOCAMPUS_DIR", str(SHARED_HIPPOCAMPUS))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# before anything imports TensorFlow (kernels inherit it): TF_ENABLE_ONEDNN_OPTS=1 unless set (medseg_tf's docstring)
import medseg_tf  # noqa: E402,F401


def pytest_collection_modifyitems(items):
    """Notebook cells run by nbval count as slow: ``pytest -m "not slow"`` is the fast loop without them."""
    import pytest

    for item in items:
        if str(getattr(item, "path", "")).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
