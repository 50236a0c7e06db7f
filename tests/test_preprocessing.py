"""Intensity normalisation, resampling, padding, cropping."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg_tf import preprocessing as pp


def test_zscore_whole_and_masked(rng):
    x = rng.normal(50, 7, size=(10, 11, 12))
    z = pp.zscore(x)
    assert z.dtype == np.float32
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    mask = np.zeros(x.shape, bool)
    mask[2:8] = True
    x[~mask] = 0
    zm = pp.zscore(x, mask)
    assert abs(zm[mask].mean()) < 1e-5 and abs(zm[mask].std() - 1) < 1e-4
    assert np.all(pp.zscore(np.full((3, 3, 3), 5.0)) == 0)
    with pytest.raises(ValueError, match="no voxel"):
        pp.zscore(x, np.zeros_like(mask))


def test_clip_percentiles_and_ct_window():
    x = np.arange(1000, dtype=float)
    c = pp.clip_percentiles(x, 1, 99)
    assert c.min() == pytest.approx(9.99) and c.max() == pytest.approx(989.01)
    hu = np.array([-1000.0, -160, 40, 240, 3000])
    np.testing.assert_allclose(pp.ct_window(hu, center=40, width=400), [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        pp.ct_window(hu, 0, 0)


def test_resample_shapes_and_label_values(rng):
    label = np.zeros((20, 20, 10), np.uint8)
    label[5:15, 5:15, 2:8] = 1
    label[8:12, 8:12, 4:6] = 2
    out = pp.resample_label(label, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0))
    assert out.shape == (20, 20, 20) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 2}
    # the volume in mm^3 is preserved approximately
    assert np.sum(out == 1) * 1.0 == pytest.approx(np.sum(label == 1) * 2.0, rel=0.1)
    image = rng.normal(size=(20, 20, 10)).astype(np.float32)
    assert pp.resample_image(image, (1, 1, 2), (2, 2, 2)).shape == (10, 10, 10)
    assert pp.resample_to_spacing(image, (1, 1, 2), (1, 1, 1), order=3).dtype == np.float32
    back = pp.resample_to_spacing(out, (1, 1, 1), (1, 1, 2), order=0, shape=label.shape)
    assert back.shape == label.shape and np.mean(back == label) > 0.97


def test_linear_resampling_preserves_a_ramp():
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], (16, 4, 4)).copy()
    up = pp.resample_image(ramp, (2, 1, 1), (1, 1, 1))
    inner = up[2:-2, 0, 0]
    np.testing.assert_allclose(np.diff(inner), 0.5, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)), st.sampled_from([8, 16, 32]))
def test_pad_to_multiple_and_back(shape, multiple):
    x = np.arange(np.prod(shape)).reshape(shape)
    padded, pads = pp.pad_to_multiple(x, multiple)
    assert all(n % multiple == 0 for n in padded.shape)
    np.testing.assert_array_equal(pp.unpad(padded, pads), x)


def test_pad_keeps_channel_axis():
    x = np.ones((5, 6, 7, 2))
    padded, pads = pp.pad_to_multiple(x, 4)
    assert padded.shape == (8, 8, 8, 2)
    assert pp.unpad(padded, pads).shape == x.shape


def test_crop_to_foreground():
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:8, 10:12, 3:4] = 2
    image = np.random.default_rng(0).normal(size=label.shape)
    im, lab, box = pp.crop_to_foreground(image, label, margin=2)
    assert lab.shape == (7, 6, 5)
    assert lab.sum() == label.sum()
    np.testing.assert_array_equal(im, image[box])
    _, _, whole = pp.crop_to_foreground(image, np.zeros_like(label))
    assert whole == (slice(0, 20),) * 3


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("context", [0, 1, 2])
def test_stack_neighbour_slices_by_hand(axis, context):
    image = np.random.default_rng(3).normal(size=(3, 4, 5)).astype(np.float32)
    out = pp.stack_neighbour_slices(image[..., None], axis, context)
    ax = axis % 3
    n = image.shape[ax]
    assert out.shape == image.shape + (2 * context + 1,) and out.dtype == image.dtype
    np.testing.assert_array_equal(out[..., context], image)  # the middle channel is the image
    for i in range(n):
        for c in range(2 * context + 1):
            j = min(max(i + c - context, 0), n - 1)  # edge slices repeated
            np.testing.assert_array_equal(np.take(out[..., c], i, axis=ax), np.take(image, j, axis=ax))
    assert pp.neighbour_slice_indices(0, n, context).tolist() == [
        min(max(c - context, 0), n - 1) for c in range(2 * context + 1)]


def test_stack_neighbour_slices_bad_input():
    with pytest.raises(ValueError, match="context_slices must be >= 0"):
        pp.stack_neighbour_slices(np.zeros((2, 2, 2)), 2, -1)
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        pp.stack_neighbour_slices(np.zeros((2, 2)), 0, 1)


def test_resample_label_onehot_keeps_values_and_volumes_closer_than_nearest():
    from medseg_tf.phantom import make_phantom_case

    label = np.zeros((12, 10, 6), np.int16)
    label[3:9, 2:8, 1:5] = 1
    label[5:7, 4:6, 2:4] = 3
    same = pp.resample_label_onehot(label, (1, 1, 1), (1, 1, 1))
    np.testing.assert_array_equal(same, label)
    out = pp.resample_label_onehot(label, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0))
    assert out.shape == pp.resample_label(label, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0)).shape
    assert out.dtype == np.int16 and set(np.unique(out)) <= {0, 1, 3}
    with pytest.raises(ValueError, match="integer"):
        pp.resample_label_onehot(label.astype(np.float32), (1, 1, 1), (2, 2, 2))

    # on phantom cases with anisotropic voxels, volumes (mm^3, on the output grid's actual spacing)
    # change less than with nearest neighbour, which duplicates or drops whole source slices
    change = {"nearest": [], "onehot": []}
    for seed in range(8):
        _, lab, affine = make_phantom_case(seed)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        for name, fn in (("nearest", pp.resample_label), ("onehot", pp.resample_label_onehot)):
            res = fn(lab, spacing, (1.0, 1.0, 1.0))
            voxel = np.prod([n * s / m for n, s, m in zip(lab.shape, spacing, res.shape)])
            for value in (1, 2):
                before = np.sum(lab == value) * np.prod(spacing)
                change[name].append(np.sum(res == value) * voxel / before - 1)
    mean_abs = {k: float(np.mean(np.abs(v))) for k, v in change.items()}
    assert mean_abs["onehot"] < 0.75 * mean_abs["nearest"]
    assert max(np.abs(change["onehot"])) < 0.10
