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


def triplanar(image: np.ndarray, label: np.ndarray | None = None, spacing=(1.0, 1.0, 1.0),
              center: tuple[int, int, int] | None = None, title: str | None = None,
              figsize=(9.0, 3.2)) -> matplotlib.figure.Figure:
    """Axial, coronal and sagittal slices of a RAS volume through ``center``.

    Parameters
    ----------
    image : np.ndarray
        ``(X, Y, Z)`` in RAS voxel order (see :func:`medseg_tf.io.reorient_to_ras`).
    label : np.ndarray, optional
        Integer label map of the same shape, drawn on top.
    spacing : sequence of 3 floats
        Voxel size in mm; sets each panel's aspect ratio so anatomy is not stretched.
    center : (x, y, z), optional
        Voxel the three planes pass through (default: centre of the foreground,
        or of the volume).
    """
    image = np.asarray(image)
    if center is None:
        if label is not None and np.any(label > 0):
            center = tuple(int(round(c)) for c in np.argwhere(label > 0).mean(axis=0))
        else:
            center = tuple(n // 2 for n in image.shape[:3])
    sx, sy, sz = (float(s) for s in spacing)
    views = [  # (name, 2D slice as (horizontal, vertical), aspect = vertical/horizontal spacing)
        ("axial (z={})".format(center[2]), np.s_[:, :, center[2]], sy / sx),
        ("coronal (y={})".format(center[1]), np.s_[:, center[1], :], sz / sx),
        ("sagittal (x={})".format(center[0]), np.s_[center[0], :, :], sz / sy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=figsize)
    for ax, (name, index, aspect) in zip(axes, views):
        overlay(ax, image[index], None if label is None else label[index], title=name)
        for im in ax.get_images():
            im.axes.set_aspect(aspect)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def label_legend(ax, names: dict[int, str] | list[str], *, loc: str = "lower right") -> None:
    """Add a legend of label colours (label 0 omitted) to ``ax``."""
    from matplotlib.patches import Patch

    items = names.items() if isinstance(names, dict) else enumerate(names)
    handles = [Patch(color=LABEL_COLORS[(int(k) - 1) % len(LABEL_COLORS)], label=f"{k}: {v}")
               for k, v in items if int(k) != 0]
    ax.legend(handles=handles, loc=loc, fontsize=8, framealpha=0.8)
