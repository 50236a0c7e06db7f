"""Nested tumour regions (BraTS): labels <-> regions, region-based metrics (NumPy only, no TensorFlow).

A brain tumour label map has disjoint labels (MSD Task01: 1 oedema, 2
non-enhancing tumour, 3 enhancing tumour), but the BraTS challenge evaluates
three *nested regions*, each a union of labels:

* whole tumour (WT) = {1, 2, 3}: everything abnormal, what FLAIR shows;
* tumour core (TC) = {2, 3}: what a surgeon removes;
* enhancing tumour (ET) = {3}: what takes up contrast in T1gd.

WT contains TC, which contains ET. Networks trained on the regions directly
(one sigmoid output per region, as nnU-Net does for BraTS) predict overlapping
masks; :func:`regions_to_labels` turns them back into one label map by
nesting: a voxel is ET if the ET output says so, else non-enhancing core if the
TC output says so, else oedema if the WT output says so.

BraTS itself numbers the labels differently (1 necrotic / non-enhancing core,
2 oedema, 4 enhancing); :data:`BRATS_REGIONS` gives the same three regions for
those files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medseg_tf import metrics

__all__ = ["MSD_TASK01_REGIONS", "BRATS_REGIONS", "labels_to_regions", "regions_to_labels", "region_metrics"]

#: Region name -> label values, for MSD Task01 label maps (0 bg, 1 oedema, 2 non-enhancing, 3 enhancing).
MSD_TASK01_REGIONS: dict[str, tuple[int, ...]] = {
    "whole tumour": (1, 2, 3),
    "tumour core": (2, 3),
    "enhancing tumour": (3,),
}

#: The same regions for label maps numbered as the BraTS challenge does (1 NCR/NET, 2 ED, 4 ET).
BRATS_REGIONS: dict[str, tuple[int, ...]] = {
    "whole tumour": (1, 2, 4),
    "tumour core": (1, 4),
    "enhancing tumour": (4,),
}


def labels_to_regions(label: np.ndarray, regions: Mapping[str, Sequence[int]] = MSD_TASK01_REGIONS
                      ) -> np.ndarray:
    """One binary mask per region, stacked channels last.

    Parameters
    ----------
    label : np.ndarray
        Integer label map, any shape ``S`` (e.g. ``(X, Y, Z)``).
    regions : mapping name -> label values
        Default :data:`MSD_TASK01_REGIONS` (WT, TC, ET in that order).

    Returns
    -------
    np.ndarray
        uint8, shape ``(*S, R)`` with ``R = len(regions)``, channel ``k`` is 1
        where the label is one of the values of region ``k``.
    """
    label = np.asarray(label)
    return np.stack([np.isin(label, list(values)) for values in regions.values()], axis=-1).astype(np.uint8)


def regions_to_labels(regions: np.ndarray, *, threshold: float = 0.5,
                      region_labels: Mapping[str, Sequence[int]] = MSD_TASK01_REGIONS) -> np.ndarray:
    """Nested region masks (or sigmoid probabilities) back to one label map.

    Parameters
    ----------
    regions : np.ndarray
        Shape ``(*S, R)``, binary masks or probabilities, channels ordered from
        the largest region to the smallest (WT, TC, ET).
    threshold : float
        A region is present where its channel is ``> threshold``.
    region_labels : mapping name -> label values
        The regions of the channels, nested: each contains the next. The label a
        region contributes is the one value it has and the next region lacks
        (WT {1,2,3} minus TC {2,3} gives 1, TC minus ET gives 2, ET gives 3).

    Returns
    -------
    np.ndarray
        uint8, shape ``S``. Later (smaller) regions overwrite earlier ones, so an
        enhancing voxel outside the predicted whole tumour still counts as
        enhancing (nnU-Net's rule for BraTS).
    """
    regions = np.asarray(regions)
    sets = [set(v) for v in region_labels.values()]
    if regions.shape[-1] != len(sets):
        raise ValueError(f"expected {len(sets)} region channels ({', '.join(region_labels)}), "
                         f"got shape {regions.shape}")
    out = np.zeros(regions.shape[:-1], np.uint8)
    for k, values in enumerate(sets):
        own = values - (sets[k + 1] if k + 1 < len(sets) else set())
        if len(own) != 1:
            raise ValueError(f"regions must be nested with one label each step; region {k} adds {sorted(own)}")
        out[regions[..., k] > threshold] = own.pop()
    return out


def region_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Sequence[float], *,
                   regions: Mapping[str, Sequence[int]] = MSD_TASK01_REGIONS) -> list[dict]:
    """Dice and HD95 (mm) per nested region, as BraTS reports them.

    Parameters
    ----------
    pred_labels, ref_labels : np.ndarray
        Integer label maps of the same shape.
    spacing : sequence of float
        Voxel size in mm.
    regions : mapping name -> label values

    Returns
    -------
    list of dict
        One row per region: ``region``, ``dice``, ``hd95`` (the package's HD95:
        the larger of the two directed 95th percentiles, in mm), ``ref_empty``,
        ``pred_empty``. Empty masks follow :mod:`medseg_tf.metrics`'s rule (both
        empty: Dice 1, HD95 0; one empty: Dice 0, HD95 = the image diagonal).
    """
    p, r = np.asarray(pred_labels), np.asarray(ref_labels)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    rows = []
    for name, values in regions.items():
        pm, rm = np.isin(p, list(values)), np.isin(r, list(values))
        rows.append({"region": name, "dice": metrics.dice(pm, rm),
                     "hd95": metrics.hausdorff(pm, rm, spacing, percentile=95),
                     "ref_empty": not rm.any(), "pred_empty": not pm.any()})
    return rows
