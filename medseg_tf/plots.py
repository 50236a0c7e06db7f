"""Plotting helpers shared by the notebooks (matplotlib only, no TensorFlow).

All figures are saved through :func:`save_figure`, so one setting
(``MEDSEG_FIGURES_DIR``) decides where they go and every file is written the
same way (PNG, 110 dpi, tight bounding box, no timestamp metadata so the same
run gives the same bytes).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from medseg_tf import settings

#: Colours of label 1, 2, ... in overlays (label 0 is transparent).
LABEL_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3")


def save_figure(fig: matplotlib.figure.Figure, name: str, *, dpi: int = 110) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>`` (PNG) and return the path.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure to save.
    name : str
        File name such as ``"01_triplanar.png"``; ``.png`` is added if missing.
    dpi : int
        Resolution in dots per inch.
    """
    if not name.endswith(".png"):
        name += ".png"
    path = settings.figures_dir() / name
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def overlay(ax, image: np.ndarray, label: np.ndarray | None = None, *, alpha: float = 0.45,
            title: str | None = None) -> None:
    """Show a 2D ``image`` (rows, cols) in grey with ``label`` (same shape, ints) on top.

    The array's first axis runs left to right and its second bottom to top
    (radiological display of a RAS slice: x to the right, y up); label 0 is
    transparent.
    """
    ax.imshow(np.asarray(image).T, cmap="gray", origin="lower", interpolation="nearest")
    if label is not None:
        lab = np.asarray(label).T
        rgba = np.zeros(lab.shape + (4,), dtype=float)
        for value in np.unique(lab):
            if value == 0:
                continue
            color = matplotlib.colors.to_rgba(LABEL_COLORS[(int(value) - 1) % len(LABEL_COLORS)])
            rgba[lab == value] = (*color[:3], alpha)
        ax.imshow(rgba, origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
