"""Segmentation metrics per case and per class, with voxel spacing in mm (NumPy/SciPy only).

Overlap metrics (:func:`dice`, :func:`iou`, :func:`precision`, :func:`recall`,
:func:`f1`) count voxels; volume and distance metrics (:func:`volume_difference`,
:func:`hausdorff`, :func:`assd`, :func:`surface_dice`) use the voxel spacing, so
their results are in mm^3 and mm whatever the resolution of the image.

Conventions
-----------
Masks
    Any array of the same shape for prediction and reference; non-zero means
    "inside". Spacing is one positive number per array axis, in mm.
Surfaces
    The surface of a mask is the mask minus its binary erosion with the
    *face-connected* structuring element (``connectivity=1``: 6 neighbours in
    3D, 4 in 2D): a voxel is on the surface when at least one of its face
    neighbours is background or lies outside the image (the image border counts
    as background). Distances are measured between surface-voxel centres with
    :func:`scipy.ndimage.distance_transform_edt` and ``sampling=spacing``, so
    they are exact Euclidean distances in mm on the voxel grid.
Hausdorff percentile
    ``hd95`` is ``max(P95(d(pred->ref)), P95(d(ref->pred)))``: the 95th
    percentile of each *directed* set of surface distances, then the larger of
    the two (as MONAI and DeepMind's ``surface-distance``). ``percentile=100``
    is the classic Hausdorff distance.
Empty masks (the rule used everywhere in this module)
    * Both prediction and reference empty (the structure is absent and was
      correctly not found): Dice = IoU = precision = recall = F1 = NSD = 1,
      all distances 0, volume differences 0. This is a *perfect* result, as in
      Metrics Reloaded's recommendation to not penalise correct empty
      predictions; the rows are flagged (``pred_empty`` and ``ref_empty`` both
      True in :func:`case_metrics`) so they can be excluded, e.g.
      ``df[~df.ref_empty]``.
    * Exactly one of them empty (a structure missed or hallucinated): Dice =
      IoU = precision = recall = F1 = NSD = 0 and every distance (HD, HD95,
      ASSD) equals :func:`image_diagonal_mm`, the length of the image's
      diagonal in mm (``sqrt(sum((shape * spacing)**2))``), a finite worst
      value larger than any distance between two voxels of the image.
    * The relative volume difference ``(V_pred - V_ref) / V_ref`` is the only
      value that can be undefined: with an empty reference and a non-empty
      prediction it is NaN. :func:`summarize` never averages a NaN silently: it
      excludes NaNs and reports how many it excluded (column ``n_nan``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "METRIC_COLUMNS",
    "confusion",
    "dice",
    "iou",
    "precision",
    "recall",
    "f1",
    "volume_mm3",
    "volume_difference",
    "surface",
    "surface_distances",
    "image_diagonal_mm",
    "hausdorff",
    "assd",
    "surface_dice",
    "case_metrics",
    "pooled_dice",
    "skeleton",
    "cldice",
    "cldice_parts",
    "fov_scores",
    "roc_auc",
    "evaluate_folder",
    "summarize",
]

#: Metric columns of :func:`case_metrics` rows and :func:`evaluate_folder` tables, in order.
METRIC_COLUMNS = (
    "dice", "iou", "precision", "recall", "f1",
    "vol_pred_ml", "vol_ref_ml", "abs_vol_diff_ml", "rel_vol_diff",
    "hd", "hd95", "assd", "nsd",
)

#: Unit of each metric column ("" for ratios in [0, 1]); distances are in mm of the reference's spacing.
METRIC_UNITS = {
    "dice": "", "iou": "", "precision": "", "recall": "", "f1": "",
    "vol_pred_ml": "ml", "vol_ref_ml": "ml", "abs_vol_diff_ml": "ml", "rel_vol_diff": "",
    "hd": "mm", "hd95": "mm", "assd": "mm", "nsd": "",
}


# --------------------------------------------------------------------------- helpers
def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays of the same shape (ValueError otherwise)."""
    p = np.asarray(pred)
    r = np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    if p.ndim == 0:
        raise ValueError("masks must have at least one axis, got scalars")
    return p.astype(bool, copy=False), r.astype(bool, copy=False)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    """Spacing as a float64 array of length ``ndim`` (1 mm per axis when None)."""
    if spacing is None:
        return np.ones(ndim)
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.size != ndim:
        raise ValueError(f"spacing {tuple(s)} has {s.size} values but the masks have {ndim} axes")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be positive finite millimetres, got {tuple(s)}")
    return s


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """Voxel counts ``(tp, fp, fn)`` of a binary prediction against a binary reference.

    Parameters
    ----------
    pred, ref : np.ndarray
        Masks of the same shape, any dtype (non-zero = inside).

    Returns
    -------
    tuple of int
        True positives, false positives, false negatives (voxel counts).
    """
    p, r = _pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


# --------------------------------------------------------------------------- overlap
def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |P & R| / (|P| + |R|)`` in [0, 1].

    Both masks empty gives 1.0 (see the module's empty-mask rule). Spacing does
    not matter: every voxel of a grid has the same volume.

    Parameters
    ----------
    pred, ref : np.ndarray
        Masks of the same shape, any dtype (non-zero = inside).
    """
    tp, fp, fn = confusion(pred, ref)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union (Jaccard index) ``|P & R| / |P | R|`` in [0, 1].

    Related to Dice by ``IoU = D / (2 - D)``; both masks empty gives 1.0.
    """
    tp, fp, fn = confusion(pred, ref)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Precision (positive predictive value) ``|P & R| / |P|`` in [0, 1].

    Undefined for an empty prediction; by this module's rule it is 1.0 when the
    reference is empty too and 0.0 when the reference is not (nothing found).
    """
    tp, fp, fn = confusion(pred, ref)
    if tp + fp == 0:
        return 1.0 if fn == 0 else 0.0
    return tp / (tp + fp)


def recall(pred: np.ndarray, ref: np.ndarray) -> float:
    """Recall (sensitivity) ``|P & R| / |R|`` in [0, 1].

    Undefined for an empty reference; by this module's rule it is 1.0 when the
    prediction is empty too and 0.0 when it is not (a hallucinated structure).
    """
    tp, fp, fn = confusion(pred, ref)
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """F1 score, the harmonic mean ``2 P R / (P + R)`` of precision and recall.

    For binary masks F1 *is* the Dice coefficient: with ``P = TP / (TP + FP)``
    and ``R = TP / (TP + FN)``,

    ``2 P R / (P + R) = 2 TP^2 / (TP (TP + FN) + TP (TP + FP)) = 2 TP / (2 TP + FP + FN)``,

    which is Dice's ``2 |P & R| / (|P| + |R|)`` because ``|P| = TP + FP`` and
    ``|R| = TP + FN``. The two names come from two fields (information
    retrieval and ecology); this function computes F1 from precision and recall
    so the identity can be checked numerically. Returns 0.0 when precision and
    recall are both 0, and follows the empty-mask rule otherwise.
    """
    p, r = precision(pred, ref), recall(pred, ref)
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


# --------------------------------------------------------------------------- volume
def volume_mm3(mask: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Volume of a mask in mm^3: number of voxels times ``prod(spacing)``.

    Parameters
    ----------
    mask : np.ndarray
        Any shape, non-zero = inside.
    spacing : sequence of float, optional
        Voxel size in mm per axis (1 mm when omitted).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    return float(np.count_nonzero(m) * np.prod(_spacing(spacing, m.ndim)))


def volume_difference(pred: np.ndarray, ref: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[float, float]:
    """Signed volume difference of a prediction, absolute (mm^3) and relative (fraction).

    Parameters
    ----------
    pred, ref : np.ndarray
        Masks of the same shape.
    spacing : sequence of float, optional
        Voxel size in mm per axis.

    Returns
    -------
    (float, float)
        ``V_pred - V_ref`` in mm^3 (positive = over-segmentation) and
        ``(V_pred - V_ref) / V_ref`` (e.g. 0.1 = 10 % too large). The relative
        difference is 0.0 when both are empty and NaN when only the reference
        is empty (undefined; see the module's empty-mask rule).
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing, p.ndim)
    vp, vr = volume_mm3(p, s), volume_mm3(r, s)
    if vr == 0:
        rel = 0.0 if vp == 0 else float("nan")
    else:
        rel = (vp - vr) / vr
    return vp - vr, rel


# --------------------------------------------------------------------------- surfaces
def surface(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Surface voxels of a mask: the mask minus its binary erosion.

    Parameters
    ----------
    mask : np.ndarray
        Any shape, non-zero = inside.
    connectivity : int
        Connectivity of the erosion's structuring element
        (:func:`scipy.ndimage.generate_binary_structure`): 1 (default) = face
        neighbours only (6 in 3D), so a voxel is on the surface when one of its
        faces touches background; ``mask.ndim`` = also edge and corner
        neighbours (26 in 3D, a thicker surface). Voxels on the image border
        count as surface (outside the image is background).

    Returns
    -------
    np.ndarray of bool
        Same shape as ``mask``.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if not 1 <= connectivity <= max(m.ndim, 1):
        raise ValueError(f"connectivity must be in 1..{m.ndim} for a {m.ndim}D mask, got {connectivity}")
    if not m.any():
        return np.zeros_like(m)
    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                      connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty masks.

    Parameters
    ----------
    pred, ref : np.ndarray
        Masks of the same shape, both non-empty (ValueError otherwise; the
        metric functions apply the empty-mask rule before calling this).
    spacing : sequence of float, optional
        Voxel size in mm per axis (1 mm when omitted).
    connectivity : int
        Surface definition, see :func:`surface`.

    Returns
    -------
    (np.ndarray, np.ndarray)
        float64 1D arrays: for each surface voxel of ``pred`` (in C order) the
        distance to the nearest surface voxel of ``ref``, and vice versa.
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing, p.ndim)
    if not p.any() or not r.any():
        raise ValueError("surface distances need two non-empty masks")
    sp, sr = surface(p, connectivity), surface(r, connectivity)
    # Crop to the bounding box of both surfaces: every query point and every
    # feature point lies inside it, so the Euclidean distances are unchanged.
    idx = np.nonzero(sp | sr)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    sp, sr = sp[box], sr[box]
    dist_to_ref = ndimage.distance_transform_edt(~sr, sampling=s)
    dist_to_pred = ndimage.distance_transform_edt(~sp, sampling=s)
    return dist_to_ref[sp].astype(np.float64), dist_to_pred[sr].astype(np.float64)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length in mm of the image diagonal, ``sqrt(sum((shape * spacing)**2))``.

    The worst-case distance used when exactly one of the two masks is empty.
    """
    shp = np.asarray(shape, dtype=np.float64)
    return float(np.sqrt(np.sum((shp * _spacing(spacing, shp.size)) ** 2)))


def _hd_from(d_pr: np.ndarray, d_rp: np.ndarray, percentile: float) -> float:
    if percentile == 100:
        return float(max(d_pr.max(), d_rp.max()))
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def _assd_from(d_pr: np.ndarray, d_rp: np.ndarray) -> float:
    return float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))


def _nsd_from(d_pr: np.ndarray, d_rp: np.ndarray, tolerance_mm: float) -> float:
    hits = np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm)
    return float(hits / (d_pr.size + d_rp.size))


def _empty_rule(p: np.ndarray, r: np.ndarray, s: np.ndarray, both: float) -> float | None:
    """Distance for empty masks: ``both`` if both empty, the diagonal if one is, None otherwise."""
    pe, re_ = not p.any(), not r.any()
    if pe and re_:
        return both
    if pe or re_:
        return image_diagonal_mm(p.shape, s)
    return None


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
              percentile: float = 100, connectivity: int = 1) -> float:
    """(Percentile) Hausdorff distance between the surfaces of two masks, in mm.

    Parameters
    ----------
    pred, ref : np.ndarray
        Masks of the same shape.
    spacing : sequence of float, optional
        Voxel size in mm per axis.
    percentile : float
        100 (default) for the Hausdorff distance (largest surface distance);
        95 for HD95, the larger of the two directed 95th percentiles
        (``numpy.percentile``, linear interpolation), robust to a few outliers.
    connectivity : int
        Surface definition, see :func:`surface`.

    Returns
    -------
    float
        Distance in mm; 0 when both are empty and the image diagonal when
        exactly one is (module's empty-mask rule).
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    p, r = _pair(pred, ref)
    s = _spacing(spacing, p.ndim)
    special = _empty_rule(p, r, s, both=0.0)
    if special is not None:
        return special
    return _hd_from(*surface_distances(p, r, s, connectivity), percentile)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
         connectivity: int = 1) -> float:
    """Average symmetric surface distance in mm.

    The mean of all surface distances in both directions,
    ``(sum d(P->R) + sum d(R->P)) / (|S_P| + |S_R|)``, with ``S`` the surface
    voxels. 0 when both masks are empty, the image diagonal when exactly one is.
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing, p.ndim)
    special = _empty_rule(p, r, s, both=0.0)
    if special is not None:
        return special
    return _assd_from(*surface_distances(p, r, s, connectivity))


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                 tolerance_mm: float = 1.0, connectivity: int = 1) -> float:
    """Normalised surface Dice (NSD, Nikolov et al. 2021) at a tolerance in mm.

    The fraction of surface voxels of both masks that lie within
    ``tolerance_mm`` of the other mask's surface:
    ``(|{p in S_P: d(p, S_R) <= tau}| + |{r in S_R: d(r, S_P) <= tau}|) / (|S_P| + |S_R|)``.
    Surface voxels are counted (not weighted by surface-element area as in
    DeepMind's implementation), which is close for smooth shapes.

    Returns
    -------
    float
        In [0, 1]; 1 when both masks are empty, 0 when exactly one is.
    """
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    p, r = _pair(pred, ref)
    s = _spacing(spacing, p.ndim)
    pe, re_ = not p.any(), not r.any()
    if pe or re_:
        return 1.0 if pe and re_ else 0.0
    return _nsd_from(*surface_distances(p, r, s, connectivity), tolerance_mm)


# --------------------------------------------------------------------------- per case
def _binary_row(p: np.ndarray, r: np.ndarray, s: np.ndarray, tolerance_mm: float,
                connectivity: int) -> dict:
    """All metrics of one binary pair (surface distances computed once)."""
    tp, fp, fn = confusion(p, r)
    voxel_ml = float(np.prod(s)) / 1000.0
    vp, vr = (tp + fp) * voxel_ml, (tp + fn) * voxel_ml
    _, rel = volume_difference(p, r, s)
    row = {
        "dice": dice(p, r), "iou": iou(p, r), "precision": precision(p, r),
        "recall": recall(p, r), "f1": f1(p, r),
        "vol_pred_ml": vp, "vol_ref_ml": vr, "abs_vol_diff_ml": abs(vp - vr), "rel_vol_diff": rel,
    }
    special = _empty_rule(p, r, s, both=0.0)
    if special is not None:
        row.update(hd=special, hd95=special, assd=special, nsd=surface_dice(p, r, s, tolerance_mm))
    else:
        d_pr, d_rp = surface_distances(p, r, s, connectivity)
        row.update(hd=_hd_from(d_pr, d_rp, 100), hd95=_hd_from(d_pr, d_rp, 95),
                   assd=_assd_from(d_pr, d_rp), nsd=_nsd_from(d_pr, d_rp, tolerance_mm))
    row["pred_empty"] = tp + fp == 0
    row["ref_empty"] = tp + fn == 0
    return row


def case_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Sequence[float],
                 class_names: Mapping[int, str], tolerance_mm: float = 1.0, *,
                 include_background: bool = False, connectivity: int = 1) -> list[dict]:
    """All metrics of one case, one row per class.

    Parameters
    ----------
    pred_labels, ref_labels : np.ndarray
        Integer label maps of the same shape, e.g. (X, Y, Z).
    spacing : sequence of float
        Voxel size in mm per axis.
    class_names : mapping int -> str
        The labels to evaluate and their names, e.g. ``{0: "background",
        1: "Anterior", 2: "Posterior"}``. Label 0 is skipped unless
        ``include_background``.
    tolerance_mm : float
        Tolerance of the normalised surface Dice.
    include_background : bool
        Also evaluate label 0.
    connectivity : int
        Surface definition, see :func:`surface`.

    Returns
    -------
    list of dict
        One dict per class with keys ``label`` (int), ``class`` (name), the
        :data:`METRIC_COLUMNS` (``dice``, ``iou``, ``precision``, ``recall``,
        ``f1``, ``vol_pred_ml``, ``vol_ref_ml``, ``abs_vol_diff_ml`` =
        ``|V_pred - V_ref|`` in ml, ``rel_vol_diff`` = signed
        ``(V_pred - V_ref) / V_ref``, ``hd``, ``hd95``, ``assd`` in mm, ``nsd``)
        and the flags ``pred_empty`` and ``ref_empty`` (bool). Empty masks
        follow the module's rule.
    """
    pl, rl = np.asarray(pred_labels), np.asarray(ref_labels)
    if pl.shape != rl.shape:
        raise ValueError(f"prediction shape {pl.shape} differs from reference shape {rl.shape}")
    s = _spacing(spacing, pl.ndim)
    rows = []
    for label in sorted(int(k) for k in class_names):
        if label == 0 and not include_background:
            continue
        row = {"label": label, "class": str(class_names[label])}
        row.update(_binary_row(pl == label, rl == label, s, tolerance_mm, connectivity))
        rows.append(row)
    return rows


def pooled_dice(preds: Iterable[np.ndarray], refs: Iterable[np.ndarray], label: int) -> float:
    """Dice of one label pooled over many cases: ``2 sum|P&R| / (sum|P| + sum|R|)``.

    Pooling counts voxels over the whole data set, so big structures weigh more
    and a missed small structure barely moves it, unlike the mean of per-case
    Dice where every case counts the same. Compare the two to see whether a
    model fails on a few (small) cases.

    Parameters
    ----------
    preds, refs : iterables of np.ndarray
        Label maps, paired in order; each pair has the same shape.
    label : int
        The label to evaluate.

    Returns
    -------
    float
        1.0 if the label is absent from every prediction and reference.
    """
    tp = size = 0
    for p, r in zip(preds, refs, strict=True):
        pb, rb = _pair(np.asarray(p) == label, np.asarray(r) == label)
        tp += int(np.count_nonzero(pb & rb))
        size += int(np.count_nonzero(pb)) + int(np.count_nonzero(rb))
    return 1.0 if size == 0 else 2.0 * tp / size


# --------------------------------------------------------------------------- thin structures, field of view
def skeleton(mask: np.ndarray) -> np.ndarray:
    """Centre lines of a binary mask (``skimage.morphology.skeletonize``, 2D or 3D), bool, same shape."""
    from skimage.morphology import skeletonize

    return skeletonize(np.asarray(mask) != 0).astype(bool)


def cldice_parts(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Topology precision and sensitivity of clDice (Shit et al., CVPR 2021).

    ``Tprec = |S(P) & R| / |S(P)|``: the share of the predicted centre lines that
    lies inside the reference; ``Tsens = |S(R) & P| / |S(R)|``: the share of the
    reference centre lines covered by the prediction. ``S`` is :func:`skeleton`.
    An empty skeleton gives 1.0 for its ratio when the other mask is empty too,
    else 0.0 (the module's empty-mask rule).

    Returns
    -------
    (float, float)
        ``(Tprec, Tsens)`` in [0, 1].
    """
    p, r = _pair(pred, ref)
    sp, sr = skeleton(p), skeleton(r)
    n_sp, n_sr = int(np.count_nonzero(sp)), int(np.count_nonzero(sr))
    tprec = (1.0 if not r.any() else 0.0) if n_sp == 0 else np.count_nonzero(sp & r) / n_sp
    tsens = (1.0 if not p.any() else 0.0) if n_sr == 0 else np.count_nonzero(sr & p) / n_sr
    return float(tprec), float(tsens)


def cldice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Centre-line Dice (clDice): the harmonic mean of :func:`cldice_parts`, in [0, 1].

    Dice counts pixels, so for vessels it is dominated by the few wide trunks:
    missing every 1-2 px capillary costs little Dice but breaks the tree. clDice
    counts *centre-line length*, where thin and wide vessels weigh the same per
    unit length, so it drops when thin branches are missed or broken. Both
    masks empty gives 1.0, exactly one empty gives 0.0.
    """
    tprec, tsens = cldice_parts(pred, ref)
    return 0.0 if tprec + tsens == 0 else 2.0 * tprec * tsens / (tprec + tsens)


def _in_fov(pred: np.ndarray, ref: np.ndarray, fov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p, r = _pair(pred, ref)
    if fov is None:
        return p.ravel(), r.ravel()
    f = np.asarray(fov) != 0
    if f.shape != p.shape:
        raise ValueError(f"field-of-view shape {f.shape} differs from the mask shape {p.shape}")
    return p[f], r[f]


def fov_scores(pred: np.ndarray, ref: np.ndarray, fov: np.ndarray | None = None) -> dict[str, float]:
    """Pixel scores counted inside a field of view only (the DRIVE convention).

    The black corners of a fundus photograph are easy true negatives: counting
    them inflates accuracy and specificity. Every score here counts only pixels
    where ``fov`` is non-zero.

    Parameters
    ----------
    pred, ref : np.ndarray
        Binary masks, same shape.
    fov : np.ndarray, optional
        Field-of-view mask, same shape (None: the whole image).

    Returns
    -------
    dict
        ``dice``, ``accuracy``, ``sensitivity`` (recall), ``specificity``,
        ``precision``; empty masks follow the module's rule (specificity 1.0
        when there is no negative pixel).
    """
    p, r = _in_fov(pred, ref, fov)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    tn = int(p.size - tp - fp - fn)
    return {
        "dice": 1.0 if 2 * tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn),
        "accuracy": 1.0 if p.size == 0 else (tp + tn) / p.size,
        "sensitivity": (1.0 if fp == 0 else 0.0) if tp + fn == 0 else tp / (tp + fn),
        "specificity": 1.0 if tn + fp == 0 else tn / (tn + fp),
        "precision": (1.0 if fn == 0 else 0.0) if tp + fp == 0 else tp / (tp + fp),
    }


def roc_auc(scores: np.ndarray, ref: np.ndarray, fov: np.ndarray | None = None) -> float:
    """Area under the ROC curve of per-pixel scores (e.g. probabilities), inside ``fov``.

    The probability that a random vessel pixel scores higher than a random
    background pixel (ties count half), computed from ranks (Mann-Whitney U).
    Threshold-free, so it is what the vessel literature reports next to accuracy.

    Returns
    -------
    float
        In [0, 1]; NaN when the reference has no positive or no negative pixel.
    """
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(ref) != 0
    if s.shape != r.shape:
        raise ValueError(f"scores shape {s.shape} differs from the reference shape {r.shape}")
    if fov is not None:
        f = np.asarray(fov) != 0
        s, r = s[f], r[f]
    else:
        s, r = s.ravel(), r.ravel()
    n_pos, n_neg = int(r.sum()), int((~r).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[r].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- folders
def _read_class_names(labels_dir: Path) -> dict[int, str] | None:
    """Label names from ``labels_dir/../dataset.json`` (MSD layout), or None."""
    from medseg_tf.errors import DataError

    path = labels_dir.parent / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text())["labels"]
        return {int(k): str(v) for k, v in labels.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(path, f"cannot read the 'labels' mapping ({exc})") from exc


def _integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    """Label map as int64, DataError if it holds non-integer values."""
    from medseg_tf.errors import DataError

    arr = np.asarray(data)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    rounded = np.rint(arr)
    if not np.all(np.isfinite(arr)) or np.max(np.abs(arr - rounded), initial=0) > 1e-3:
        raise DataError(path, "a label map must hold integer labels, found non-integer values")
    return rounded.astype(np.int64)


def msd_labels_folder(folder: str | os.PathLike) -> Path:
    """The label folder to read: ``folder/labelsTr`` when ``folder`` is an MSD data set, else ``folder``.

    So ``evaluate --labels`` accepts the same MSD folder that ``predict --images`` does.
    """
    folder = Path(folder)
    if (folder / "dataset.json").is_file() and (folder / "labelsTr").is_dir():
        return folder / "labelsTr"
    return folder


def _check_declared_labels(labels: np.ndarray, names: Mapping[int, str] | None, path: Path) -> None:
    """DataError when a label map holds a value that is neither background (0) nor a declared class."""
    from medseg_tf.errors import DataError

    values = np.unique(labels)
    if names is None:
        bad = values[values < 0]
        declared = "non-negative labels"
    else:
        classes = sorted(k for k in names if k != 0)  # dataset.json may list background (0) too
        bad = np.setdiff1d(values, np.asarray([0, *classes], dtype=values.dtype))
        declared = f"labels {{{', '.join(str(k) for k in [0, *classes])}}} of dataset.json"
    if bad.size:
        raise DataError(path, f"holds label value(s) {', '.join(str(int(v)) for v in bad)} outside the "
                              f"declared {declared}")


def evaluate_folder(pred_dir: str | os.PathLike, labels_dir: str | os.PathLike, *,
                    class_names: Mapping[int, str] | None = None, tolerance_mm: float = 1.0,
                    progress: bool = True):
    """Evaluate every predicted label map of a folder against the reference labels.

    Each ``pred_dir/<case>.nii.gz`` is compared with ``labels_dir/<case>.nii.gz``
    (same file name). Both are read with :func:`medseg_tf.io.load_nifti` in
    their stored voxel order; they must have the same shape and affine (a
    prediction written with the source image as reference does). The spacing
    is the reference's. References without a prediction are not evaluated.

    Parameters
    ----------
    pred_dir : path
        Folder of predicted label maps (``.nii.gz`` or ``.nii``).
    labels_dir : path
        Folder of reference label maps, e.g. an MSD ``labelsTr/``.
    class_names : mapping int -> str, optional
        Labels to evaluate. Default: the ``labels`` of
        ``labels_dir/../dataset.json`` (MSD layout) if present; otherwise, per
        case, the non-zero labels found in either map, named ``label_<k>``
        (then a class absent from both maps gets no row for that case).
    tolerance_mm : float
        Tolerance of the normalised surface Dice.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per case and class: ``case``, ``label``, ``class``, the
        :data:`METRIC_COLUMNS`, ``pred_empty``, ``ref_empty``.

    Raises
    ------
    medseg_tf.errors.DataError
        A folder holds no NIfTI files, a reference is missing, or a prediction's
        shape or affine differs from its reference's (the error names the file).
    """
    import pandas as pd
    from medseg_tf.settings import progress_bar as tqdm

    from medseg_tf import io
    from medseg_tf.errors import DataError

    pred_dir, labels_dir = Path(pred_dir), Path(labels_dir)
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        from medseg_tf.errors import ConfigError

        raise ConfigError("tolerance_mm", f"must be a distance >= 0 mm, got {tolerance_mm}")
    labels_dir = msd_labels_folder(labels_dir)
    for folder in (pred_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(folder, "is a file, not a folder" if folder.exists() else "folder not found")
    preds = io.nifti_files(pred_dir)
    if not preds:
        raise DataError(pred_dir, "holds no NIfTI files (.nii.gz or .nii)")
    names = dict(class_names) if class_names is not None else _read_class_names(labels_dir)

    rows = []
    for pred_path in tqdm(preds, desc="evaluate", unit="case", disable=not progress):
        case = io.case_id(pred_path)
        ref_path = labels_dir / pred_path.name
        if not ref_path.is_file():
            alt = labels_dir / (case + (".nii" if pred_path.name.endswith(".nii.gz") else ".nii.gz"))
            if not alt.is_file():
                raise DataError(pred_path, f"no reference label map {ref_path} for this prediction")
            ref_path = alt
        pred_vol, ref_vol = io.load_nifti(pred_path), io.load_nifti(ref_path)
        pred_data, ref_data = np.asarray(pred_vol.data), np.asarray(ref_vol.data)
        for path, arr in ((pred_path, pred_data), (ref_path, ref_data)):
            if arr.ndim != 3 and not (arr.ndim == 4 and arr.shape[-1] == 1):
                raise DataError(path, f"expected a 3D label map, got shape {arr.shape}")
        pred_data = pred_data.reshape(pred_data.shape[:3])  # a stored (X, Y, Z, 1) map is (X, Y, Z)
        ref_data = ref_data.reshape(ref_data.shape[:3])
        if pred_data.shape != ref_data.shape:
            raise DataError(pred_path, f"shape {pred_data.shape} differs from the reference's "
                                       f"{ref_data.shape} ({ref_path})")
        if not np.allclose(pred_vol.affine, ref_vol.affine, rtol=1e-4, atol=1e-3):
            raise DataError(pred_path, f"affine differs from the reference's ({ref_path}); was it "
                                       "written on another grid or orientation?")
        pl, rl = _integer_labels(pred_data, pred_path), _integer_labels(ref_data, ref_path)
        for path, arr in ((pred_path, pl), (ref_path, rl)):  # class_names given: a subset to score
            _check_declared_labels(arr, names if class_names is None else None, path)
        case_names = names
        if case_names is None:
            present = sorted(set(np.unique(pl).tolist()) | set(np.unique(rl).tolist()))
            case_names = {k: f"label_{k}" for k in present if k != 0}
        for row in case_metrics(pl, rl, ref_vol.spacing, case_names, tolerance_mm):
            rows.append({"case": case, **row})
    columns = ["case", "label", "class", *METRIC_COLUMNS, "pred_empty", "ref_empty"]
    return pd.DataFrame(rows, columns=columns)


def summarize(df, metrics: Sequence[str] | None = None):
    """Mean, standard deviation and median of each metric per class.

    Means are per case, then averaged (each case counts once, whatever its
    size). Empty masks follow the module's rule: rows with both masks empty
    count as Dice 1 and distance 0 (leave them out with
    ``df[~df.ref_empty]``), a structure missed or hallucinated counts as Dice 0
    and the worst-case distance. NaNs (only the relative volume difference can
    be NaN, for an empty reference) are excluded and counted, never averaged
    silently.

    Parameters
    ----------
    df : pandas.DataFrame
        A table from :func:`evaluate_folder` (or rows of :func:`case_metrics`
        with a ``class`` column).
    metrics : sequence of str, optional
        Metric columns to summarise (default: those of :data:`METRIC_COLUMNS`
        present in ``df``).

    Returns
    -------
    pandas.DataFrame
        Index (``class``, ``metric``), columns ``n`` (values used), ``n_nan``
        (values excluded), ``mean``, ``std`` (sample, ddof=1; NaN when ``n < 2``), ``median``.
        Classes keep their order of appearance in ``df``.
    """
    import pandas as pd

    if "class" not in df.columns:
        raise ValueError("summarize needs a 'class' column (a table from evaluate_folder)")
    if metrics is None:
        metrics = [m for m in METRIC_COLUMNS if m in df.columns]
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise ValueError(f"unknown metric columns {missing}; available: {list(df.columns)}")
    records = []
    for cls, group in df.groupby("class", sort=False):
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").astype(float)
            valid = values.dropna()
            records.append({
                "class": cls, "metric": metric, "n": int(valid.size),
                "n_nan": int(values.size - valid.size),
                "mean": float(valid.mean()) if valid.size else math.nan,
                "std": float(valid.std(ddof=1)) if valid.size > 1 else math.nan,
                "median": float(valid.median()) if valid.size else math.nan,
            })
    return pd.DataFrame.from_records(records).set_index(["class", "metric"])
