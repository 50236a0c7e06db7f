"""Nested BraTS regions: labels <-> regions, region metrics (checked by hand)."""

import numpy as np
import pytest

from medseg_tf.regions import BRATS_REGIONS, labels_to_regions, region_metrics, regions_to_labels


def test_labels_to_regions_by_hand():
    label = np.array([0, 1, 2, 3])
    # columns: whole tumour {1,2,3}, tumour core {2,3}, enhancing {3}
    expected = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(labels_to_regions(label), expected)
    brats = np.array([0, 1, 2, 4])  # BraTS numbering: 1 NCR/NET, 2 oedema, 4 enhancing
    np.testing.assert_array_equal(labels_to_regions(brats, BRATS_REGIONS),
                                  [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])


def test_regions_round_trip_and_nesting_rule():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    np.testing.assert_array_equal(regions_to_labels(labels_to_regions(label)), label)
    # probabilities, thresholded at 0.5; a smaller region wins over a larger one
    probs = np.array([[0.9, 0.2, 0.1],   # WT only -> oedema 1
                      [0.9, 0.7, 0.4],   # WT and TC -> non-enhancing 2
                      [0.3, 0.1, 0.8],   # ET without WT -> still enhancing 3 (nnU-Net's rule)
                      [0.5, 0.5, 0.5]])  # nothing above 0.5 -> background
    np.testing.assert_array_equal(regions_to_labels(probs), [1, 2, 3, 0])
    np.testing.assert_array_equal(regions_to_labels(labels_to_regions(np.array([0, 1, 2, 4]), BRATS_REGIONS),
                                                     region_labels=BRATS_REGIONS), [0, 1, 2, 4])
    with pytest.raises(ValueError, match="3 region channels"):
        regions_to_labels(probs[:, :2])


def test_region_metrics_by_hand():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:8, 2:8, 2:8] = 1       # oedema shell
    ref[3:7, 3:7, 3:7] = 2       # core
    ref[4:6, 4:6, 4:6] = 3       # enhancing centre (216 WT, 64 TC, 8 ET voxels)
    pred = ref.copy()
    pred[pred == 3] = 2          # enhancing missed: called non-enhancing
    rows = {r["region"]: r for r in region_metrics(pred, ref, (1.0, 1.0, 1.0))}
    assert rows["whole tumour"]["dice"] == 1.0 and rows["tumour core"]["dice"] == 1.0
    assert rows["whole tumour"]["hd95"] == 0.0
    et = rows["enhancing tumour"]
    assert et["dice"] == 0.0 and et["pred_empty"] and not et["ref_empty"]
    assert et["hd95"] == pytest.approx(np.sqrt(3 * 10.0 ** 2))  # one mask empty: the image diagonal
    pred2 = ref.copy()
    pred2[2, 2:8, 2:8] = 0       # one face of the oedema missed: 36 of 216 WT voxels
    rows2 = {r["region"]: r for r in region_metrics(pred2, ref, (1.0, 1.0, 2.0))}
    assert rows2["whole tumour"]["dice"] == pytest.approx(2 * 180 / (180 + 216))
    assert rows2["tumour core"]["dice"] == 1.0


def test_ensure_phantom_writes_once_and_rewrites_on_another_count(tmp_path):
    from medseg_tf.phantoms import ensure_phantom

    root = ensure_phantom("fundus", tmp_path / "f", n_cases=1)
    stamp = (root / "images" / "fundus_000.png").stat().st_mtime_ns
    assert ensure_phantom("fundus", root, n_cases=1) == root
    assert (root / "images" / "fundus_000.png").stat().st_mtime_ns == stamp  # not rewritten
    ensure_phantom("fundus", root, n_cases=2)
    assert (root / "images" / "fundus_001.png").is_file()
    with pytest.raises(ValueError, match="unknown phantom kind"):
        ensure_phantom("xray", tmp_path / "x")
