"""Tests of medseg_tf.metrics and medseg_tf.postprocessing (NumPy/SciPy only)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from medseg_tf import io, metrics
from medseg_tf.errors import DataError
from medseg_tf.postprocessing import keep_largest_component


def cube(shape, start, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return m


def ball(shape, center_mm, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center_mm)) <= radius_mm ** 2


def brute_surface(mask):
    """Surface voxels by explicit face-neighbour checks (independent of scipy erosion)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return mask & ~inner


def brute_distances(pred, ref, spacing):
    a = np.argwhere(brute_surface(pred)) * np.asarray(spacing)
    b = np.argwhere(brute_surface(ref)) * np.asarray(spacing)
    d = cdist(a, b)
    return d.min(axis=1), d.min(axis=0)


# --------------------------------------------------------------------------- overlap
def test_overlap_of_shifted_cubes_by_hand():
    # 4x4x4 cubes shifted by one voxel along x: overlap 3*4*4 = 48 voxels of 64 each.
    p = cube((10, 10, 10), (2, 2, 2), (4, 4, 4))
    r = cube((10, 10, 10), (3, 2, 2), (4, 4, 4))
    assert metrics.confusion(p, r) == (48, 16, 16)
    assert metrics.dice(p, r) == pytest.approx(2 * 48 / 128)
    assert metrics.iou(p, r) == pytest.approx(48 / 80)
    assert metrics.precision(p, r) == pytest.approx(48 / 64)
    assert metrics.recall(p, r) == pytest.approx(48 / 64)


def test_precision_recall_asymmetric():
    r = cube((8, 8, 8), (0, 0, 0), (4, 4, 4))          # 64 voxels
    p = cube((8, 8, 8), (0, 0, 0), (4, 4, 2))          # 32 voxels inside r
    assert metrics.precision(p, r) == 1.0
    assert metrics.recall(p, r) == pytest.approx(0.5)
    assert metrics.dice(p, r) == pytest.approx(2 * 32 / 96)


@pytest.mark.parametrize("seed", range(5))
def test_f1_equals_dice_and_iou_relation(seed):
    rng = np.random.default_rng(seed)
    p = rng.random((6, 7, 5)) < 0.4
    r = rng.random((6, 7, 5)) < 0.3
    d = metrics.dice(p, r)
    assert metrics.f1(p, r) == pytest.approx(d, abs=1e-12)
    assert metrics.iou(p, r) == pytest.approx(d / (2 - d), abs=1e-12)


def test_shape_and_spacing_errors():
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hausdorff(np.ones((3, 3, 3)), np.ones((3, 3, 3)), spacing=(1, 1))
    with pytest.raises(ValueError, match="spacing"):
        metrics.assd(np.ones((3, 3, 3)), np.ones((3, 3, 3)), spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="percentile"):
        metrics.hausdorff(np.ones((3, 3, 3)), np.ones((3, 3, 3)), percentile=120)


# --------------------------------------------------------------------------- empty masks
def test_both_empty_is_perfect():
    z = np.zeros((5, 6, 7), dtype=np.uint8)
    for fn in (metrics.dice, metrics.iou, metrics.precision, metrics.recall, metrics.f1):
        assert fn(z, z) == 1.0
    assert metrics.surface_dice(z, z, (1, 1, 1), 1.0) == 1.0
    assert metrics.hausdorff(z, z, (1, 2, 3)) == 0.0
    assert metrics.hausdorff(z, z, (1, 2, 3), percentile=95) == 0.0
    assert metrics.assd(z, z, (1, 2, 3)) == 0.0
    assert metrics.volume_difference(z, z, (1, 2, 3)) == (0.0, 0.0)


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_is_worst(pred_empty):
    spacing = (0.5, 2.0, 3.0)
    shape = (5, 6, 7)
    m = cube(shape, (1, 1, 1), (2, 2, 2))
    z = np.zeros(shape, dtype=bool)
    p, r = (z, m) if pred_empty else (m, z)
    diag = math.sqrt((5 * 0.5) ** 2 + (6 * 2.0) ** 2 + (7 * 3.0) ** 2)
    assert metrics.image_diagonal_mm(shape, spacing) == pytest.approx(diag)
    for fn in (metrics.dice, metrics.iou, metrics.precision, metrics.recall, metrics.f1):
        assert fn(p, r) == 0.0
    assert metrics.surface_dice(p, r, spacing, 5.0) == 0.0
    assert metrics.hausdorff(p, r, spacing) == pytest.approx(diag)
    assert metrics.hausdorff(p, r, spacing, percentile=95) == pytest.approx(diag)
    assert metrics.assd(p, r, spacing) == pytest.approx(diag)
    absolute, rel = metrics.volume_difference(p, r, spacing)
    vol = 8 * 0.5 * 2.0 * 3.0
    assert absolute == pytest.approx(-vol if pred_empty else vol)
    if pred_empty:
        assert rel == pytest.approx(-1.0)
    else:
        assert math.isnan(rel)  # undefined: empty reference


# --------------------------------------------------------------------------- volumes
def test_volume_with_anisotropic_spacing():
    m = cube((8, 8, 8), (1, 2, 3), (3, 4, 5))           # 60 voxels
    assert metrics.volume_mm3(m, (0.5, 2.0, 3.0)) == pytest.approx(60 * 3.0)
    r = cube((8, 8, 8), (1, 2, 3), (3, 4, 4))           # 48 voxels
    absolute, rel = metrics.volume_difference(m, r, (0.5, 2.0, 3.0))
    assert absolute == pytest.approx(12 * 3.0)
    assert rel == pytest.approx(12 / 48)


# --------------------------------------------------------------------------- distances
@pytest.mark.parametrize("axis,shift", [(0, 1), (1, 2), (2, 3)])
def test_hausdorff_of_shifted_cube_is_the_shift_in_mm(axis, shift):
    spacing = (0.7, 1.3, 2.5)
    start = [3, 3, 3]
    r = cube((14, 14, 14), start, (6, 6, 6))
    start[axis] += shift
    p = cube((14, 14, 14), start, (6, 6, 6))
    expected = shift * spacing[axis]
    assert metrics.hausdorff(p, r, spacing) == pytest.approx(expected)
    assert metrics.hausdorff(r, p, spacing) == pytest.approx(expected)
    # every directed distance is at most the shift, and some are 0 (shared side faces)
    d_pr, d_rp = metrics.surface_distances(p, r, spacing)
    assert d_pr.max() == pytest.approx(expected) and d_pr.min() == 0.0
    assert 0 < metrics.assd(p, r, spacing) < expected
    assert metrics.surface_dice(p, r, spacing, tolerance_mm=expected) == 1.0
    assert metrics.surface_dice(p, r, spacing, tolerance_mm=0.99 * expected) < 1.0


def test_identical_masks_have_zero_distance():
    rng = np.random.default_rng(3)
    m = rng.random((9, 9, 9)) < 0.3
    spacing = (1.0, 0.5, 2.0)
    assert metrics.hausdorff(m, m, spacing) == 0.0
    assert metrics.assd(m, m, spacing) == 0.0
    assert metrics.surface_dice(m, m, spacing, 0.0) == 1.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.0, 1.5)])
def test_concentric_spheres(spacing):
    # Spheres of radius 6 and 9 mm around the same centre: every surface point of
    # one is 3 mm from the other, up to one voxel of discretisation.
    shape = tuple(int(np.ceil(26 / s)) for s in spacing)
    center = (13.0, 13.0, 13.0)
    small, big = ball(shape, center, 6.0, spacing), ball(shape, center, 9.0, spacing)
    tol = max(spacing)
    for value in (metrics.hausdorff(small, big, spacing),
                  metrics.hausdorff(small, big, spacing, percentile=95),
                  metrics.assd(small, big, spacing)):
        assert abs(value - 3.0) <= tol
    assert metrics.surface_dice(small, big, spacing, tolerance_mm=3.0 + tol) == 1.0
    assert metrics.surface_dice(small, big, spacing, tolerance_mm=3.0 - tol) < 0.2
    # volumes close to 4/3 pi r^3
    vol = metrics.volume_mm3(big, spacing)
    assert vol == pytest.approx(4 / 3 * math.pi * 9.0 ** 3, rel=0.05)
    expected_dice = 2 * 6.0 ** 3 / (6.0 ** 3 + 9.0 ** 3)
    assert metrics.dice(small, big) == pytest.approx(expected_dice, abs=0.03)


@pytest.mark.parametrize("seed", range(12))
def test_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(4, 10, size=3))
    spacing = tuple(rng.uniform(0.4, 3.0, size=3))
    p = rng.random(shape) < rng.uniform(0.05, 0.6)
    r = rng.random(shape) < rng.uniform(0.05, 0.6)
    p[tuple(rng.integers(0, n) for n in shape)] = True   # never empty
    r[tuple(rng.integers(0, n) for n in shape)] = True
    assert np.array_equal(metrics.surface(p), brute_surface(p))
    d_pr, d_rp = brute_distances(p, r, spacing)
    got_pr, got_rp = metrics.surface_distances(p, r, spacing)
    np.testing.assert_allclose(got_pr, d_pr, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got_rp, d_rp, rtol=1e-9, atol=1e-9)
    assert metrics.hausdorff(p, r, spacing) == pytest.approx(max(d_pr.max(), d_rp.max()))
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assert metrics.hausdorff(p, r, spacing, percentile=95) == pytest.approx(hd95)
    mean = np.concatenate([d_pr, d_rp]).mean()
    assert metrics.assd(p, r, spacing) == pytest.approx(mean)
    tau = float(rng.uniform(0.5, 3.0))
    nsd = (np.sum(d_pr <= tau) + np.sum(d_rp <= tau)) / (d_pr.size + d_rp.size)
    assert metrics.surface_dice(p, r, spacing, tau) == pytest.approx(nsd)


def test_surface_connectivity():
    m = cube((7, 7, 7), (1, 1, 1), (5, 5, 5))
    assert metrics.surface(m).sum() == 125 - 27         # 3x3x3 interior remains
    assert metrics.surface(m, connectivity=3).sum() == 125 - 27
    # a voxel touching the background only at a corner is interior with faces, surface with corners
    m2 = np.ones((5, 5, 5), dtype=bool)
    m2[0, 0, 0] = False
    assert not metrics.surface(m2)[1, 1, 1]
    assert metrics.surface(m2, connectivity=3)[1, 1, 1]
    # the image border counts as background
    assert metrics.surface(np.ones((3, 3, 3))).sum() == 26


# --------------------------------------------------------------------------- per case
def test_case_metrics_rows():
    shape = (12, 12, 12)
    spacing = (1.0, 2.0, 0.5)
    ref = np.zeros(shape, np.uint8)
    ref[cube(shape, (2, 2, 2), (4, 4, 4))] = 1
    ref[cube(shape, (7, 7, 7), (3, 3, 3))] = 2
    pred = np.zeros(shape, np.uint8)
    pred[cube(shape, (3, 2, 2), (4, 4, 4))] = 1        # label 1 shifted by 1 voxel, label 2 missed
    pred[np.random.default_rng(0).random(shape) < 0.02] = 1   # plus scattered false positives
    names = {0: "background", 1: "A", 2: "B", 3: "C"}
    rows = metrics.case_metrics(pred, ref, spacing, names, tolerance_mm=1.0)
    assert [r["class"] for r in rows] == ["A", "B", "C"]
    a, b, c = rows
    assert set(metrics.METRIC_COLUMNS) <= set(a)
    assert a["dice"] == pytest.approx(metrics.dice(pred == 1, ref == 1))
    assert a["f1"] == pytest.approx(a["dice"])
    assert a["hd"] == pytest.approx(metrics.hausdorff(pred == 1, ref == 1, spacing))
    assert a["hd95"] == pytest.approx(metrics.hausdorff(pred == 1, ref == 1, spacing, 95))
    assert a["assd"] == pytest.approx(metrics.assd(pred == 1, ref == 1, spacing))
    assert a["nsd"] == pytest.approx(metrics.surface_dice(pred == 1, ref == 1, spacing, 1.0))
    d_pr, d_rp = brute_distances(pred == 1, ref == 1, spacing)
    assert a["hd95"] == pytest.approx(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    assert a["vol_ref_ml"] == pytest.approx(64 * 1.0 / 1000)
    n_pred = int((pred == 1).sum())
    assert a["vol_pred_ml"] == pytest.approx(n_pred * 1.0 / 1000)
    assert a["abs_vol_diff_ml"] == pytest.approx(abs(n_pred - 64) / 1000)
    assert a["rel_vol_diff"] == pytest.approx((n_pred - 64) / 64)
    assert b["dice"] == 0.0 and b["pred_empty"] and not b["ref_empty"]
    assert b["hd"] == pytest.approx(metrics.image_diagonal_mm(shape, spacing))
    assert b["rel_vol_diff"] == pytest.approx(-1.0)
    assert c["dice"] == 1.0 and c["hd"] == 0.0 and c["pred_empty"] and c["ref_empty"]
    with_bg = metrics.case_metrics(pred, ref, spacing, names, include_background=True)
    assert with_bg[0]["class"] == "background"


def test_pooled_dice_differs_from_mean_dice():
    shape = (10, 10, 10)
    big = cube(shape, (0, 0, 0), (8, 8, 8)).astype(np.uint8)      # 512 voxels, found perfectly
    small = cube(shape, (4, 4, 4), (2, 2, 2)).astype(np.uint8)    # 8 voxels, missed
    preds, refs = [big, np.zeros(shape, np.uint8)], [big, small]
    per_case = [metrics.dice(p == 1, r == 1) for p, r in zip(preds, refs)]
    assert per_case == [1.0, 0.0]
    assert metrics.pooled_dice(preds, refs, 1) == pytest.approx(2 * 512 / (512 + 520))
    assert metrics.pooled_dice([np.zeros(shape)], [np.zeros(shape)], 1) == 1.0


# --------------------------------------------------------------------------- folders
def _write_case(folder, name, data, affine):
    return io.save_nifti(np.asarray(data, np.uint8), folder / f"{name}.nii.gz", affine=affine)


@pytest.fixture
def folders(tmp_path):
    root = tmp_path / "Task"
    labels_dir, pred_dir = root / "labelsTr", tmp_path / "preds"
    labels_dir.mkdir(parents=True)
    pred_dir.mkdir()
    (root / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    affine = np.diag([0.5, 1.0, 2.0, 1.0])
    shape = (10, 12, 8)
    rng = np.random.default_rng(0)
    refs, preds = [], []
    for i in range(3):
        ref = np.zeros(shape, np.uint8)
        ref[cube(shape, (1 + i, 2, 1), (4, 5, 3))] = 1
        ref[cube(shape, (6, 2, 4), (3, 4, 3))] = 2
        pred = ref.copy()
        pred[rng.random(shape) < 0.05] = 1
        if i == 2:
            ref[ref == 2] = 0       # class 2 absent from the reference: rel_vol_diff undefined
        refs.append(ref)
        preds.append(pred)
        _write_case(labels_dir, f"case_{i}", ref, affine)
        _write_case(pred_dir, f"case_{i}", pred, affine)
    return pred_dir, labels_dir, refs, preds, (0.5, 1.0, 2.0)


def test_evaluate_folder_and_summarize(folders):
    pred_dir, labels_dir, refs, preds, spacing = folders
    (pred_dir / "._case_0.nii.gz").write_bytes(b"macOS resource fork")   # hidden: ignored
    df = metrics.evaluate_folder(pred_dir, labels_dir, progress=False)
    assert list(df["case"]) == ["case_0", "case_0", "case_1", "case_1", "case_2", "case_2"]
    assert list(df["class"][:2]) == ["Anterior", "Posterior"]
    for i, (p, r) in enumerate(zip(preds, refs)):
        expected = metrics.case_metrics(p, r, spacing, {1: "Anterior", 2: "Posterior"})
        got = df[df.case == f"case_{i}"]
        for row, exp in zip(got.to_dict("records"), expected):
            for key in metrics.METRIC_COLUMNS:
                assert row[key] == pytest.approx(exp[key], nan_ok=True), key
    summary = metrics.summarize(df)
    assert summary.loc[("Posterior", "rel_vol_diff"), "n_nan"] == 1
    assert summary.loc[("Posterior", "rel_vol_diff"), "n"] == 2
    assert not summary[["mean", "median"]].isna().any().any()
    dice_a = df[df["class"] == "Anterior"]["dice"]
    assert summary.loc[("Anterior", "dice"), "mean"] == pytest.approx(dice_a.mean())
    assert summary.loc[("Anterior", "dice"), "median"] == pytest.approx(np.median(dice_a))
    assert summary.loc[("Anterior", "dice"), "std"] == pytest.approx(np.std(dice_a, ddof=1))
    only = metrics.summarize(df, metrics=["dice", "hd95"])
    assert list(only.index.get_level_values("metric")) == ["dice", "hd95"] * 2


def test_evaluate_folder_without_dataset_json(folders):
    pred_dir, labels_dir, *_ = folders
    (labels_dir.parent / "dataset.json").unlink()
    df = metrics.evaluate_folder(pred_dir, labels_dir, progress=False)
    assert set(df["class"]) == {"label_1", "label_2"}
    df2 = metrics.evaluate_folder(pred_dir, labels_dir, class_names={1: "one"}, progress=False)
    assert list(df2["class"].unique()) == ["one"]


def test_evaluate_folder_rejects_mismatched_files(folders):
    pred_dir, labels_dir, refs, preds, _ = folders
    bad = pred_dir / "case_1.nii.gz"
    io.save_nifti(np.zeros((10, 12, 9), np.uint8), bad, affine=np.diag([0.5, 1.0, 2.0, 1.0]),
                  overwrite=True)
    with pytest.raises(DataError, match="case_1.nii.gz.*shape"):
        metrics.evaluate_folder(pred_dir, labels_dir, progress=False)
    io.save_nifti(preds[1], bad, affine=np.diag([0.5, 1.0, 2.5, 1.0]), overwrite=True)
    with pytest.raises(DataError, match="case_1.nii.gz.*affine"):
        metrics.evaluate_folder(pred_dir, labels_dir, progress=False)
    bad.unlink()
    _write_case(pred_dir, "case_9", preds[0], np.diag([0.5, 1.0, 2.0, 1.0]))
    with pytest.raises(DataError, match="case_9.nii.gz.*no reference"):
        metrics.evaluate_folder(pred_dir, labels_dir, progress=False)


def test_summarize_needs_class_column():
    import pandas as pd

    with pytest.raises(ValueError, match="class"):
        metrics.summarize(pd.DataFrame({"dice": [1.0]}))


# --------------------------------------------------------------------------- postprocessing
def test_keep_largest_component_removes_islands():
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[cube(lab.shape, (1, 1, 1), (4, 4, 4))] = 1      # main structure of class 1
    lab[10, 10, 10] = 1                                  # island of class 1
    lab[cube(lab.shape, (6, 6, 6), (3, 3, 3))] = 2      # main structure of class 2
    lab[0, 11, 0] = 2                                    # island of class 2
    out = keep_largest_component(lab)
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert out[10, 10, 10] == 0 and out[0, 11, 0] == 0
    assert (out == 1).sum() == 64 and (out == 2).sum() == 27
    only1 = keep_largest_component(lab, classes=[1])
    assert only1[10, 10, 10] == 0 and only1[0, 11, 0] == 2
    assert lab[10, 10, 10] == 1                          # input untouched


def test_keep_largest_component_connectivity():
    lab = np.zeros((6, 6, 6), np.int32)
    lab[1:3, 1:3, 1:3] = 1          # 8 voxels
    lab[3, 3, 3] = 1                # touches the block only at a corner
    assert keep_largest_component(lab, connectivity=1)[3, 3, 3] == 0
    assert keep_largest_component(lab, connectivity=3)[3, 3, 3] == 1
    with pytest.raises(ValueError, match="integer"):
        keep_largest_component(lab.astype(float))


def test_numpy_layer_does_not_import_tensorflow():
    code = ("import sys, medseg_tf.metrics, medseg_tf.postprocessing; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_folder_takes_a_trailing_channel_and_names_other_shapes(tmp_path):
    ref = np.zeros((6, 7, 5), np.uint8)
    ref[2:4, 2:5, 1:4] = 1
    for sub in ("pred", "ref"):
        (tmp_path / sub).mkdir()
    io.save_nifti(ref, tmp_path / "ref" / "c.nii.gz", affine=np.eye(4))
    io.save_nifti(ref[..., None], tmp_path / "pred" / "c.nii.gz", affine=np.eye(4))   # (X, Y, Z, 1)
    table = metrics.evaluate_folder(tmp_path / "pred", tmp_path / "ref", progress=False)
    assert table["dice"].tolist() == [1.0]
    io.save_nifti(np.stack([ref, ref], -1), tmp_path / "pred" / "c.nii.gz", affine=np.eye(4), overwrite=True)
    with pytest.raises(DataError, match=r"pred/c.nii.gz: expected a 3D label map, got shape \(6, 7, 5, 2\)"):
        metrics.evaluate_folder(tmp_path / "pred", tmp_path / "ref", progress=False)
