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


# --------------------------------------------------------------------------- evaluation figures
#: Error categories of :func:`error_map`: code -> (name, colour). Code 0 (background in both) is transparent.
ERROR_COLORS = {
    1: ("match", "#4daf4a"),
    2: ("false positive", "#ffd92f"),
    3: ("false negative", "#e7298a"),
    4: ("wrong class", "#8c510a"),
}


def error_map(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Voxel-wise agreement of a predicted label map with the reference, as codes.

    Parameters
    ----------
    reference, prediction : np.ndarray
        Integer label maps of the same shape (any number of axes); 0 is background.

    Returns
    -------
    np.ndarray
        uint8, same shape: 0 both background, 1 match (same non-zero label),
        2 false positive (predicted foreground on reference background),
        3 false negative (reference foreground predicted as background),
        4 wrong class (both foreground, different labels). See :data:`ERROR_COLORS`.
    """
    ref, pred = np.asarray(reference), np.asarray(prediction)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    codes = np.zeros(ref.shape, dtype=np.uint8)
    ref_fg, pred_fg = ref != 0, pred != 0
    codes[ref_fg & pred_fg & (ref == pred)] = 1
    codes[pred_fg & ~ref_fg] = 2
    codes[ref_fg & ~pred_fg] = 3
    codes[ref_fg & pred_fg & (ref != pred)] = 4
    return codes


def error_legend(target, *, loc: str = "lower right", **kwargs) -> None:
    """Add a legend of the :data:`ERROR_COLORS` categories to an axes or a figure.

    Parameters
    ----------
    target : matplotlib.axes.Axes or matplotlib.figure.Figure
    loc : str
        Legend location.
    **kwargs
        Passed to ``legend`` (e.g. ``ncol=4, bbox_to_anchor=(0.5, 0)``).
    """
    from matplotlib.patches import Patch

    handles = [Patch(color=color, label=name) for name, color in ERROR_COLORS.values()]
    target.legend(handles=handles, loc=loc, **{"fontsize": 7, "framealpha": 0.8, **kwargs})


def error_overlay(ax, image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, *,
                  alpha: float = 0.75, title: str | None = None, legend: bool = False) -> None:
    """Show a 2D ``image`` (rows, cols) in grey with the :func:`error_map` of a prediction on top.

    Same display convention as :func:`overlay` (first axis left to right,
    second bottom to top). Matches are green, false positives yellow, false
    negatives magenta, wrong classes brown (:data:`ERROR_COLORS`).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    image, reference, prediction : np.ndarray
        2D arrays of the same shape; ``reference`` and ``prediction`` are integer label maps.
    alpha : float
        Opacity of the error colours.
    title : str, optional
    legend : bool
        Add :func:`error_legend`.
    """
    image = np.asarray(image)
    codes = error_map(reference, prediction)
    if image.shape != codes.shape or image.ndim != 2:
        raise ValueError(f"error_overlay needs 2D arrays of one shape, got image {image.shape} and "
                         f"labels {codes.shape}")
    ax.imshow(image.T, cmap="gray", origin="lower", interpolation="nearest")
    rgba = np.zeros(codes.T.shape + (4,), dtype=float)
    for code, (_, color) in ERROR_COLORS.items():
        rgba[codes.T == code] = (*matplotlib.colors.to_rgba(color)[:3], alpha)
    ax.imshow(rgba, origin="lower", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        error_legend(ax)


def pick_slice(label: np.ndarray, axis: int = 2) -> int:
    """Index of the slice along ``axis`` with the most foreground voxels (middle slice if none).

    Parameters
    ----------
    label : np.ndarray
        Label map (X, Y, Z); non-zero is foreground.
    axis : int
        Axis the slices are taken along.

    Returns
    -------
    int
        On a tie, the first such slice.
    """
    lab = np.asarray(label)
    if lab.ndim != 3:
        raise ValueError(f"pick_slice needs a 3D label map, got shape {lab.shape}")
    axis = int(axis) % 3
    counts = np.count_nonzero(lab, axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.any() else lab.shape[axis] // 2


def best_median_worst(scores) -> list[tuple[str, str]]:
    """The best, median and worst case of a per-case score (higher = better, e.g. Dice).

    Parameters
    ----------
    scores : mapping or pandas.Series
        Case id -> score. NaN scores are ignored.

    Returns
    -------
    list of (role, case)
        ``[("best", id), ("median", id), ("worst", id)]``. Cases are sorted by
        score, ties by case id; "median" is the case at position ``n // 2`` of
        the ascending order (the upper median for an even count). With one
        case, all three roles name it.
    """
    items = [(str(k), float(v)) for k, v in dict(scores).items()]
    items = [(k, v) for k, v in items if np.isfinite(v)]
    if not items:
        raise ValueError("best_median_worst needs at least one finite score")
    ascending = sorted(items, key=lambda kv: (kv[1], kv[0]))
    return [("best", ascending[-1][0]), ("median", ascending[len(ascending) // 2][0]),
            ("worst", ascending[0][0])]


def segmentation_gallery(cases, *, axis: int = 2, panel_size: float = 2.2) -> matplotlib.figure.Figure:
    """One row per case: image, reference, prediction and error map on its most-foreground slice.

    Parameters
    ----------
    cases : sequence of mapping
        Each with ``title`` (str), ``image`` (float (X, Y, Z), RAS voxel order),
        ``reference`` and ``prediction`` (integer label maps of the same shape)
        and optionally ``spacing`` (3 floats in mm; sets the panel aspect so the
        anatomy is not stretched).
    axis : int
        Axis the slices are taken along (2: axial (X, Y) slices). The slice is
        :func:`pick_slice` of the reference (of the prediction when the reference is empty).
    panel_size : float
        Height of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(cases)`` rows x 4 columns of axes.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("segmentation_gallery needs at least one case")
    axis = int(axis) % 3
    fig, axes = plt.subplots(len(cases), 4, figsize=(4 * panel_size, len(cases) * panel_size),
                             squeeze=False)
    for row, case in zip(axes, cases):
        image, ref, pred = (np.asarray(case[k]) for k in ("image", "reference", "prediction"))
        if not image.shape == ref.shape == pred.shape or image.ndim != 3:
            raise ValueError(f"case {case.get('title')!r}: image, reference and prediction must be 3D "
                             f"arrays of one shape, got {image.shape}, {ref.shape}, {pred.shape}")
        k = pick_slice(ref if np.any(ref) else pred, axis)
        im2, ref2, pred2 = (np.take(a, k, axis=axis) for a in (image, ref, pred))
        overlay(row[0], im2, None, title=f"{case['title']} ({'xyz'[axis]}={k})")
        overlay(row[1], im2, ref2, title="reference")
        overlay(row[2], im2, pred2, title="prediction")
        error_overlay(row[3], im2, ref2, pred2, title="errors")
        spacing = case.get("spacing")
        if spacing is not None:
            h, v = (float(s) for i, s in enumerate(spacing) if i != axis)
            for ax in row:
                ax.set_aspect(v / h)
    fig.tight_layout()
    error_legend(fig, loc="upper center", ncol=len(ERROR_COLORS), bbox_to_anchor=(0.5, 0.0), fontsize=8)
    return fig


def metric_boxplots(df, metrics, *, x: str = "class", hue: str | None = None,
                    titles: dict[str, str] | None = None,
                    panel_size: tuple[float, float] = (3.2, 3.0)) -> matplotlib.figure.Figure:
    """Box plot with every case as a dot (seaborn box + strip), one panel per metric.

    Parameters
    ----------
    df : pandas.DataFrame
        Long table, one row per case and class (e.g. from
        :func:`medseg_tf.metrics.evaluate_folder`), holding the columns ``x``,
        ``hue`` (if given) and ``metrics``.
    metrics : sequence of str
        Metric columns, one panel each (e.g. ``["dice", "hd95"]``).
    x : str
        Column on the horizontal axis (default the class name).
    hue : str, optional
        Column splitting each box (e.g. the model variant); a legend is added
        to the first panel.
    titles : dict, optional
        Panel title per metric (e.g. ``{"hd95": "HD95 (mm)"}``); default the column name.
    panel_size : (float, float)
        Width and height of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        One row of ``len(metrics)`` axes.
    """
    import warnings

    import seaborn as sns

    metrics = list(metrics)
    if not metrics:
        raise ValueError("metric_boxplots needs at least one metric column")
    missing = [c for c in [x, *([hue] if hue else []), *metrics] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the table; available: {list(df.columns)}")
    titles = titles or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_size[0] * len(metrics), panel_size[1]),
                             squeeze=False)
    for i, (ax, metric) in enumerate(zip(axes[0], metrics)):
        with warnings.catch_warnings():  # seaborn 0.13 passes bxp(vert=...), deprecated in Matplotlib 3.11
            warnings.filterwarnings("ignore", message=".*vert: bool.*", category=DeprecationWarning)
            sns.boxplot(data=df, x=x, y=metric, hue=hue, ax=ax, showfliers=False, whis=(0, 100),
                        boxprops={"alpha": 0.45}, legend=bool(hue) and i == 0)
        dots = {"color": "0.15"} if not hue else {"dodge": True}
        sns.stripplot(data=df, x=x, y=metric, hue=hue, ax=ax, size=3.5, jitter=0.2, alpha=0.85,
                      legend=False, **dots)
        ax.set_title(titles.get(metric, metric), fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("")
        if hue and i == 0 and ax.get_legend() is not None:
            ax.get_legend().set_title(None)
            for text in ax.get_legend().get_texts():
                text.set_fontsize(7)
    fig.tight_layout()
    return fig
