"""Tests of medseg_tf.augment.random_augment."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medseg_tf.augment import random_augment

keras.utils.set_random_seed(0)

# Keyword arguments switching groups of transforms off.
NO_INTENSITY = dict(gamma_range=None, noise_std=0.0, contrast_range=None)
NO_AFFINE = dict(max_rotation_deg=0.0, scale_range=None)
NO_SPATIAL = dict(flips=False, rot90=False, **NO_AFFINE)


def _volume(shape, seed=0, classes=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape + (1,)).astype(np.float32)
    label = rng.choice(np.asarray(classes), size=shape).astype(np.int32)
    return image, label


def _blocks(shape, block=6):
    """Binary label of blocks of ``block`` voxels (a 2D/3D checkerboard)."""
    grids = np.meshgrid(*[np.arange(n) // block for n in shape], indexing="ij")
    return (sum(grids) % 2).astype(np.int32)


@pytest.mark.parametrize("shape", [(24, 24), (20, 28), (16, 20, 12)])
@pytest.mark.parametrize("channel", [False, True])
def test_shapes_and_dtypes(shape, channel):
    image, label = _volume(shape)
    if channel:
        label = label[..., None]
    x, y = random_augment(image, label.astype(np.uint8), tf.constant([1, 2]), p=1.0)
    assert x.shape == image.shape and x.dtype == tf.float32
    assert y.shape == label.shape and y.dtype == tf.int32
    assert np.isfinite(x.numpy()).all()


def test_same_seed_same_result_different_seed_different():
    image, label = _volume((24, 24))
    a = random_augment(image, label, tf.constant([3, 7]), p=1.0)
    b = random_augment(image, label, tf.constant([3, 7]), p=1.0)
    c = random_augment(image, label, tf.constant([4, 7]), p=1.0)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_graph_mode_in_tf_data_matches_eager():
    image, label = _volume((16, 16, 8))
    seed = tf.constant([5, 6], tf.int64)
    ds = tf.data.Dataset.from_tensors((image, label)).map(
        lambda x, y: random_augment(x, y, seed, p=1.0))
    x_graph, y_graph = next(iter(ds))
    x_eager, y_eager = random_augment(image, label, seed, p=1.0)
    np.testing.assert_allclose(x_graph.numpy(), x_eager.numpy(), atol=1e-5)
    np.testing.assert_array_equal(y_graph.numpy(), y_eager.numpy())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    classes=st.sets(st.integers(0, 6), min_size=1, max_size=4),
    three_d=st.booleans(),
)
def test_label_values_never_change(seed, classes, three_d):
    shape = (12, 12, 6) if three_d else (16, 16)
    image, label = _volume(shape, seed=seed[0] % 1000, classes=tuple(sorted(classes)))
    before = set(np.unique(label))
    x, y = random_augment(image, label, tf.constant(seed, tf.int64), p=1.0,
                          max_rotation_deg=30.0, scale_range=(0.7, 1.4))
    assert y.dtype == tf.int32
    assert set(np.unique(y.numpy())) <= before
    assert np.isfinite(x.numpy()).all()


def _dihedral_2d(a):
    """The 8 flips/quarter turns of a square 2D array (axes 0, 1)."""
    out = []
    for k in range(4):
        r = np.rot90(a, k, axes=(0, 1))
        out += [r, r[::-1]]
    return out


def test_flips_and_rot90_are_exact_and_aligned_2d():
    image, _ = _volume((10, 10))
    label = np.arange(100, dtype=np.int32).reshape(10, 10)  # every pixel distinct
    seen = set()
    for s in range(16):
        x, y = random_augment(image, label, tf.constant([s, 0]), **NO_AFFINE, **NO_INTENSITY)
        candidates = _dihedral_2d(label)
        matches = [i for i, c in enumerate(candidates) if np.array_equal(c, y.numpy())]
        assert len(matches) == 1, "label is not a flip/rotation of the input"
        expected_image = _dihedral_2d(image)[matches[0]]
        np.testing.assert_array_equal(x.numpy(), expected_image)
        seen.add(matches[0])
    assert len(seen) >= 4  # the transforms really vary with the seed


def test_non_square_plane_gets_half_turns_only():
    """(8, 12, 5): quarter turns would change the shape; only flips/half turns remain."""
    image, _ = _volume((8, 12, 5))
    label = np.arange(8 * 12 * 5, dtype=np.int32).reshape(8, 12, 5)
    combos = [tuple(a for a in range(3) if mask >> a & 1) for mask in range(8)]
    for s in range(8):
        x, y = random_augment(image, label, tf.constant([s, 1]), **NO_AFFINE, **NO_INTENSITY)
        assert y.shape == label.shape and x.shape == image.shape
        matches = [axes for axes in combos if np.array_equal(np.flip(label, axes), y.numpy())]
        assert len(matches) == 1
        np.testing.assert_array_equal(x.numpy(), np.flip(image, matches[0]))


@pytest.mark.parametrize("shape", [(40, 40), (32, 32, 6)])
def test_rotation_keeps_image_and_label_aligned(shape):
    """Image = label as float: where the bilinear image is still integral, it equals the label."""
    label = _blocks(shape)
    image = label.astype(np.float32)[..., None]
    for s in range(4):
        x, y = random_augment(image, label, tf.constant([s, 9]), p=1.0, max_rotation_deg=25.0,
                              scale_range=(0.8, 1.25), **NO_INTENSITY)
        x, y = x.numpy()[..., 0], y.numpy()
        integral = np.abs(x - np.round(x)) < 1e-3
        assert integral.mean() > 0.6
        np.testing.assert_array_equal(np.round(x[integral]).astype(np.int32), y[integral])
        assert not np.array_equal(y, label)  # it did move


def test_intensity_transforms_change_image_only():
    image, label = _volume((16, 16, 6))
    changed = 0
    for s in range(4):
        x, y = random_augment(image, label, tf.constant([s, 2]), p=1.0, noise_std=0.0,
                              **NO_SPATIAL)
        np.testing.assert_array_equal(y.numpy(), label)
        x = x.numpy()
        # contrast (clipped) and gamma both keep the intensity range
        assert x.min() >= image.min() - 1e-4 and x.max() <= image.max() + 1e-4
        changed += not np.allclose(x, image)
    assert changed == 4


def test_nothing_enabled_is_identity():
    image, label = _volume((12, 12))
    x, y = random_augment(image, label, tf.constant([0, 0]), **NO_SPATIAL, **NO_INTENSITY)
    np.testing.assert_array_equal(x.numpy(), image)
    np.testing.assert_array_equal(y.numpy(), label)


@pytest.mark.parametrize(
    "kwargs, label_fn, match",
    [
        (dict(), lambda lab: lab.astype(np.float32), "integer dtype"),
        (dict(seed=tf.constant([1, 2, 3])), None, "seed"),
        (dict(seed=tf.constant([1.0, 2.0])), None, "seed"),
        (dict(p=1.5), None, "p must be"),
        (dict(scale_range=(1.2, 0.8)), None, "scale_range"),
        (dict(gamma_range=(0.0, 1.0)), None, "gamma_range"),
        (dict(), lambda lab: lab[:5], "does not match|differs"),
    ],
)
def test_bad_arguments_raise(kwargs, label_fn, match):
    image, label = _volume((8, 8))
    if label_fn is not None:
        label = label_fn(label)
    kwargs = dict(kwargs)
    seed = kwargs.pop("seed", tf.constant([0, 0]))
    with pytest.raises(ValueError, match=match):
        random_augment(image, label, seed, **kwargs)


def test_bad_image_rank_raises():
    with pytest.raises(ValueError, match="image must have shape"):
        random_augment(np.zeros((8, 8), np.float32), np.zeros((8,), np.int32), [0, 0])


def test_flips_along_listed_axes_only():
    """flips=[0] mirrors axis 0 for some seeds and never touches axes 1 and 2."""
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6, 1)
    label = (image[..., 0] % 3).astype(np.int32)
    seen = set()
    for s in range(12):
        out, lab = random_augment(image, label, [s, 1], flips=[0], rot90=False, **NO_AFFINE,
                                  **NO_INTENSITY)
        out = out.numpy()
        if np.array_equal(out, image):
            seen.add("identity")
        else:
            np.testing.assert_array_equal(out, image[::-1])
            np.testing.assert_array_equal(lab.numpy(), label[::-1])
            seen.add("x")
    assert seen == {"identity", "x"}


def test_flip_axes_validation():
    from medseg_tf.augment import flip_axes

    assert flip_axes(True, 2) == (0, 1)
    assert flip_axes([2, 0, 0], 3) == (0, 2)
    with pytest.raises(ValueError, match="spatial axes must be in 0..1"):
        flip_axes([2], 2)
    with pytest.raises(ValueError, match="list of spatial axes"):
        flip_axes("x", 3)
