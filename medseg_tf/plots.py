"""Plotting helpers shared by the notebooks (matplotlib only, no TensorFlow).

All figures are saved through :func:`save_figure`, so one setting
(``MEDSEG_FIGURES_DIR``) decides where they go and every file is written the
same way (PNG, 150 dpi, tight bounding box, no timestamp metadata so the same
run gives the same bytes).

Display convention of the course
--------------------------------
Volumes are arrays in RAS voxel order: index ``x`` grows toward the patient's
Right, ``y`` toward Anterior, ``z`` toward Superior. A 2D slice ``a`` with
axes ``(horizontal, vertical)`` is drawn with ``imshow(a.T, origin="lower")``,
so the first axis grows to the viewer's right and the second grows upward.
Hence, in an axial slice ``image[:, :, z]``, the patient's Right is on the
viewer's right and Anterior is at the top: the **neurological** convention
("left is left", as if looking down at the head from above, or from behind).
Radiological viewers show the mirror image (patient's Right on the viewer's
left, as if facing the patient from the feet). Every anatomical figure
therefore carries the orientation letters of its edges
(:func:`orientation_labels`, :data:`ORIENTATION_LETTERS`) and a bar of known
length in mm (:func:`scale_bar`); :func:`overlay` draws both when given
``plane`` and ``spacing``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects

from medseg_tf import settings

#: Colours of label 1, 2, ... in overlays (label 0 is transparent).
LABEL_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3")


def save_figure(fig: matplotlib.figure.Figure, name: str, *, dpi: int = 150) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>`` (PNG; also SVG with ``MEDSEG_FIGURE_FORMATS=png,svg``).

    Returns the PNG's path.

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
    if "svg" in settings.figure_formats():  # for slides: a vector copy next to the PNG
        fig.savefig(path.with_suffix(".svg"), bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return path


#: Letters at the (left, right, bottom, top) edges of a slice of a RAS volume drawn as in :func:`overlay`.
ORIENTATION_LETTERS = {
    "axial": ("L", "R", "P", "A"),      # image[:, :, z]: x (L->R) across, y (P->A) up
    "coronal": ("L", "R", "I", "S"),    # image[:, y, :]: x (L->R) across, z (I->S) up
    "sagittal": ("P", "A", "I", "S"),   # image[x, :, :]: y (P->A) across, z (I->S) up
}

#: Plane of the slices taken along each array axis of a RAS volume.
PLANES = ("sagittal", "coronal", "axial")


def plane_of_axis(axis: int) -> str:
    """Name of the plane of slices taken along RAS array ``axis`` (0 sagittal, 1 coronal, 2 axial)."""
    return PLANES[int(axis) % 3]


#: A dark outline, so that light text and bars stay readable on bright image regions.
_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="black")]


def orientation_labels(ax, plane: str, *, color: str = "#ffe119", fontsize: float = 10) -> None:
    """Write the patient-direction letters at the four edges of a slice drawn as in :func:`overlay`.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes showing a slice of a RAS volume with ``imshow(a.T, origin="lower")``.
    plane : {"axial", "coronal", "sagittal"}
        Which slice it is (see :data:`ORIENTATION_LETTERS`; the module docstring
        states the convention).
    color, fontsize
        Text colour and size in points.
    """
    if plane not in ORIENTATION_LETTERS:
        raise ValueError(f"plane must be one of {sorted(ORIENTATION_LETTERS)}, got {plane!r}")
    edge_letters(ax, *ORIENTATION_LETTERS[plane], color=color, fontsize=fontsize)


def edge_letters(ax, left: str, right: str, bottom: str, top: str, *, color: str = "#ffe119",
                 fontsize: float = 10) -> None:
    """Write a letter (or short word) inside each edge of ``ax``, outlined so it reads on any image.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    left, right, bottom, top : str
        The text at the middle of each edge, as the viewer sees the axes.
    color, fontsize
        Text colour and size in points.
    """
    style = {"transform": ax.transAxes, "color": color, "fontsize": fontsize, "fontweight": "bold",
             "path_effects": _OUTLINE}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)


#: Edge letters (left, right, bottom, top) of an upright fundus photograph: S(uperior) at the top,
#: N(asal) on the side of the optic disc, T(emporal) on the other; the disc of a right eye is on the
#: viewer's right.
FUNDUS_LETTERS = {"right": ("T", "N", "I", "S"), "left": ("N", "T", "I", "S")}


def fundus_labels(ax, eye: str, *, color: str = "#ffe119", fontsize: float = 10) -> None:
    """Write the orientation letters of an upright fundus photograph at the edges of ``ax``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes showing the photograph upright (``imshow(rgb)``: row 0 at the top, superior).
    eye : {"right", "left"}
        Which eye; :func:`medseg_tf.images2d.eye_from_disc` finds it from the optic disc.
    color, fontsize
        Text colour and size in points.

    See :data:`FUNDUS_LETTERS`.
    """
    if eye not in FUNDUS_LETTERS:
        raise ValueError(f"eye must be 'right' or 'left', got {eye!r}")
    edge_letters(ax, *FUNDUS_LETTERS[eye], color=color, fontsize=fontsize)


def nice_length(extent_mm: float, fraction: float = 0.25) -> float:
    """A round bar length (1, 2 or 5 times a power of ten) close to ``fraction`` of ``extent_mm``."""
    target = max(float(extent_mm) * fraction, 1e-6)
    power = 10.0 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5, 10) if m * power <= target))


def scale_bar(ax, mm: float | None = None, spacing: float = 1.0, *, loc: str = "lower right",
              color: str = "white", fontsize: float = 9):
    """Draw a horizontal bar ``mm`` millimetres long on a slice drawn as in :func:`overlay`.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes whose horizontal data unit is one pixel (as after ``imshow``).
    mm : float, optional
        Bar length in mm; default a round length near a quarter of the slice width.
    spacing : float
        Pixel size along the horizontal axis of the display, in mm.
    loc : str
        Matplotlib location code of the bar.
    color, fontsize
        Colour of bar and text, text size in points.

    Returns
    -------
    mpl_toolkits.axes_grid1.anchored_artists.AnchoredSizeBar
        The artist added to ``ax``; its bar is ``mm / spacing`` pixels long.
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    spacing = float(spacing)
    if not spacing > 0:
        raise ValueError(f"spacing must be a positive pixel size in mm, got {spacing}")
    if mm is None:
        x0, x1 = ax.get_xlim()
        mm = nice_length(abs(x1 - x0) * spacing)
    label = f"{mm:g} mm"
    bar = AnchoredSizeBar(ax.transData, float(mm) / spacing, label, loc, pad=0.3, borderpad=0.3,
                          sep=2, frameon=False, color=color, size_vertical=0,
                          fontproperties={"size": fontsize})
    for artist in (*bar.size_bar.get_children(), *bar.txt_label.get_children()):
        artist.set_path_effects(_OUTLINE)
    ax.add_artist(bar)
    return bar


def _decorate(ax, plane: str | None, spacing, scale_mm: float | None) -> None:
    """Aspect ratio, orientation letters and scale bar of an anatomical slice (see :func:`overlay`)."""
    if spacing is not None:
        h, v = (float(s) for s in spacing)
        ax.set_aspect(v / h)
    if plane is not None:
        orientation_labels(ax, plane)
    if spacing is not None:
        scale_bar(ax, scale_mm, h)


def overlay(ax, image: np.ndarray, label: np.ndarray | None = None, *, alpha: float = 0.45,
            title: str | None = None, plane: str | None = None, spacing=None,
            scale_mm: float | None = None) -> None:
    """Show a 2D ``image`` ``(horizontal, vertical)`` in grey with ``label`` (same shape, ints) on top.

    The array's first axis runs left to right and its second bottom to top
    (``imshow(a.T, origin="lower")``); for a slice of a RAS volume this is the
    neurological convention (patient's Right on the viewer's right in axial and
    coronal views; see the module docstring). Label 0 is transparent.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    image : np.ndarray
        2D ``(horizontal, vertical)`` slice.
    label : np.ndarray, optional
        Integer label map of the same shape.
    alpha : float
        Opacity of the label colours.
    title : str, optional
    plane : {"axial", "coronal", "sagittal"}, optional
        Write the orientation letters of this plane on the edges (:func:`orientation_labels`).
    spacing : (float, float), optional
        Pixel size in mm along the two axes of ``image``: sets the aspect ratio
        and adds a :func:`scale_bar`.
    scale_mm : float, optional
        Length of that bar in mm (default: a round length near a quarter of the width).
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
        ax.set_title(title, fontsize=10)
    _decorate(ax, plane, spacing, scale_mm)


def triplanar(image: np.ndarray, label: np.ndarray | None = None, spacing=(1.0, 1.0, 1.0),
              center: tuple[int, int, int] | None = None, title: str | None = None,
              figsize=(9.0, 3.2), scale_mm: float | None = None, *,
              same_scale: bool = True) -> matplotlib.figure.Figure:
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
    figsize : (width, height) in inches
        With ``same_scale`` the height is a minimum: the figure grows until the tallest panel fits.
    scale_mm : float, optional
        Length of the scale bar in every panel (default: with ``same_scale``, one round length near a
        quarter of the narrowest panel's width, the same in all three; otherwise a round length near a
        quarter of each panel's width).
    same_scale : bool
        Draw the three panels at one display scale (the same number of screen pixels per mm), so
        their sizes compare as the anatomy does (default). False: each panel fills its own third.

    Each panel carries its orientation letters and a scale bar (module docstring).
    """
    image = np.asarray(image)
    if center is None:
        if label is not None and np.any(label > 0):
            center = tuple(int(round(c)) for c in np.argwhere(label > 0).mean(axis=0))
        else:
            center = tuple(n // 2 for n in image.shape[:3])
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = image.shape[:3]
    views = [  # (plane, 2D slice as (horizontal, vertical), in-plane spacing (horizontal, vertical), extent mm)
        ("axial", f"z={center[2]}", np.s_[:, :, center[2]], (sx, sy), (nx * sx, ny * sy)),
        ("coronal", f"y={center[1]}", np.s_[:, center[1], :], (sx, sz), (nx * sx, nz * sz)),
        ("sagittal", f"x={center[0]}", np.s_[center[0], :, :], (sy, sz), (ny * sy, nz * sz)),
    ]
    gridspec = None
    if same_scale:
        widths = [extent[0] for *_, extent in views]
        gridspec = {"width_ratios": widths}
        if scale_mm is None:  # one bar length for one scale
            scale_mm = nice_length(min(widths))
    fig, axes = plt.subplots(1, 3, figsize=figsize, gridspec_kw=gridspec)
    for ax, (plane, where, index, pixel, _) in zip(axes, views):
        overlay(ax, image[index], None if label is None else label[index], title=f"{plane} ({where})",
                plane=plane, spacing=pixel, scale_mm=scale_mm)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    for _ in range(4 if same_scale else 0):  # grow the figure until no panel is limited by its height
        width, height = fig.get_size_inches()
        boxes = [ax.get_position(original=True) for ax in axes]  # the space each panel is given
        short = max(box.width * width * extent[1] / extent[0] - box.height * height  # inches missing
                    for box, (*_, extent) in zip(boxes, views))
        if short <= 0.005 * height:
            break
        fig.set_size_inches(width, height + short + 0.01)
        fig.tight_layout()
    return fig


def label_legend(ax, names: dict[int, str] | list[str], *, loc: str = "lower right", **kwargs) -> None:
    """Add a legend of label colours (label 0 omitted) to ``ax``, an Axes or a whole Figure.

    On a figure, place it outside the panels so that it covers no anatomy, e.g.
    ``label_legend(fig, names, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.06))``;
    ``kwargs`` go to ``legend``.
    """
    from matplotlib.patches import Patch

    items = names.items() if isinstance(names, dict) else enumerate(names)
    handles = [Patch(color=LABEL_COLORS[(int(k) - 1) % len(LABEL_COLORS)], label=f"{k}: {v}")
               for k, v in items if int(k) != 0]
    ax.legend(handles=handles, loc=loc, fontsize=8, framealpha=0.8, **kwargs)


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
    target.legend(handles=handles, loc=loc, **{"fontsize": 8, "framealpha": 0.8, **kwargs})


def error_overlay(ax, image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, *,
                  alpha: float = 0.75, title: str | None = None, legend: bool = False,
                  plane: str | None = None, spacing=None, scale_mm: float | None = None) -> None:
    """Show a 2D ``image`` ``(horizontal, vertical)`` in grey with the :func:`error_map` of a prediction on top.

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
    plane, spacing, scale_mm
        Orientation letters, pixel size in mm and scale bar, as in :func:`overlay`.
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
        ax.set_title(title, fontsize=10)
    _decorate(ax, plane, spacing, scale_mm)
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
        anatomy is not stretched and adds a scale bar to every panel).
    axis : int
        Axis the slices are taken along (2: axial (X, Y) slices). The slice is
        :func:`pick_slice` of the reference (of the prediction when the reference is empty).
    panel_size : float
        Height of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(cases)`` rows x 4 columns of axes. The first panel of each row
        carries the orientation letters of the plane.
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
        spacing = case.get("spacing")
        pixel = None if spacing is None else tuple(float(s) for i, s in enumerate(spacing) if i != axis)
        plane = plane_of_axis(axis)
        overlay(row[0], im2, None, title=f"{case['title']} ({'xyz'[axis]}={k})", plane=plane, spacing=pixel)
        overlay(row[1], im2, ref2, title="reference", spacing=pixel)
        overlay(row[2], im2, pred2, title="prediction", spacing=pixel)
        error_overlay(row[3], im2, ref2, pred2, title="errors", spacing=pixel)
    fig.tight_layout()
    error_legend(fig, loc="upper center", ncol=len(ERROR_COLORS), bbox_to_anchor=(0.5, 0.0), fontsize=8)
    return fig


def metric_boxplots(df, metrics, *, x: str = "class", hue: str | None = None,
                    titles: dict[str, str] | None = None,
                    panel_size: tuple[float, float] = (3.2, 3.0),
                    ncols: int | None = None) -> matplotlib.figure.Figure:
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
    ncols : int, optional
        Panels per row (default: all in one row); more metrics wrap onto
        further rows, so a figure stays readable on a slide.

    Boxes show the quartiles and whiskers the minimum and maximum (every case counts; a note under the
    figure says so); scores bounded by [0, 1] (Dice, IoU, NSD ...) are drawn on that whole range.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(metrics)`` axes, row by row.
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
    ncols = min(int(ncols or len(metrics)), len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                             squeeze=False)
    for ax in axes.flat[len(metrics):]:
        fig.delaxes(ax)
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics)):
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
        bounded = metric in _UNIT_INTERVAL_METRICS
        if bounded:  # scores in [0, 1] on their whole range, so that figures compare at a glance
            ax.set_ylim(0, 1.02)
        if hue and i == 0 and ax.get_legend() is not None:
            if bounded:
                sns.move_legend(ax, "lower left")   # scores seldom sit near 0: the legend hides no box there
            ax.get_legend().set_title(None)
            for text in ax.get_legend().get_texts():
                text.set_fontsize(9)
    fig.tight_layout()
    fig.text(0.01, 0.0, "boxes: quartiles; whiskers: minimum to maximum; dots: cases", fontsize=8, va="top")
    return fig


#: Metrics bounded by [0, 1], drawn by :func:`metric_boxplots` on that whole range.
_UNIT_INTERVAL_METRICS = {"dice", "iou", "nsd", "precision", "recall", "f1", "accuracy", "specificity"}
