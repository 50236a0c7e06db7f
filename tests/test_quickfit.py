"""Training on in-memory arrays: slices, the region loss, a seeded fit."""

import numpy as np
import pytest

from medseg_tf import quickfit


def test_slices_from_volumes_keeps_foreground_slices_and_pads():
    img = np.random.default_rng(0).normal(size=(10, 13, 6, 2)).astype(np.float32)
    lab = np.zeros((10, 13, 6), np.uint8)
    lab[2:4, 3:5, 1] = 1
    lab[5, 5, 4] = 2
    img2 = np.ones((9, 9, 8), np.float32)  # one channel, other shape
    lab2 = np.zeros((9, 9, 8), np.uint8)
    lab2[1, 1, 0] = 1
    x, y = quickfit.slices_from_volumes([img, img2[..., None].repeat(2, -1)], [lab, lab2], empty_fraction=1.0)
    assert x.shape[1:] == (16, 16, 2) and y.shape == x.shape[:3] and y.dtype == np.int32
    # 2 foreground slices + 2 empty ones from the first volume, 1 + 1 from the second
    assert len(x) == 6 and (y.reshape(6, -1).max(1) > 0).sum() == 3
    for k in range(4):  # each slice of the first volume is one of its axial slices, unchanged
        assert any(np.array_equal(x[k, :10, :13], img[:, :, z]) for z in range(6))
    assert x[:4, 10:].min() == img.min()  # padded with the volume's minimum
    regions = np.stack([lab > 0, lab > 1], -1)
    _, yr = quickfit.slices_from_volumes([img], [regions], empty_fraction=0.0)
    assert yr.dtype == np.float32 and yr.shape == (2, 16, 16, 2)


def test_region_loss_by_hand():
    y = np.zeros((1, 2, 2, 2), np.float32)
    y[0, 0, 0] = [1, 1]
    y[0, 0, 1] = [1, 0]
    perfect = np.clip(y, 1e-7, 1 - 1e-7)
    assert float(quickfit.region_loss(y, perfect)) < 1e-4
    half = np.full_like(y, 0.5)
    # BCE = ln 2; soft Dice per region: (2 * sum(0.5 * y)) / (sum y + 2): region 1 -> 2/4, region 2 -> 1/3
    expected = np.log(2) + 1 - np.mean([2 * 1.0 / (2 + 2), 2 * 0.5 / (1 + 2)])
    assert float(quickfit.region_loss(y, half)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_fit_arrays_learns_regions_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 2)).astype(np.float32)
    regions = np.stack([x[..., 0] > 0.0, x[..., 0] > 0.8], -1).astype(np.float32)  # nested thresholds

    def run():
        model = quickfit.tiny_unet(2, 2, head="sigmoid", depth=2, seed=1)
        return quickfit.fit_arrays(model, x, regions, steps=30, batch_size=8, seed=0, progress=False)

    a, b = run(), run()
    assert np.mean(a[-5:]) < 0.7 * np.mean(a[:3])
    np.testing.assert_allclose(a, b, rtol=1e-4)
    with pytest.raises(ValueError, match="steps"):
        quickfit.fit_arrays(quickfit.tiny_unet(2, 2, depth=2), x, regions, steps=0)
