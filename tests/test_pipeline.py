"""Tests of medseg_tf.pipeline (tf.data slices and patches)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from medseg_tf.pipeline import patch_dataset, slice_dataset, volume_slices

keras.utils.set_random_seed(0)

SPATIAL_ONLY = dict(gamma_range=None, noise_std=0.0, contrast_range=None,
                    max_rotation_deg=0.0, scale_range=None)


def _volumes(n=6, seed=0, image_from_label=False):
    """Small volumes of varying shapes with a small two-class box (~2% foreground)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        shape = (20 + i % 3, 26 + i % 2, 10 + i % 4)
        label = np.zeros(shape, np.uint8)
        c = [int(rng.integers(4, s - 4)) for s in shape]
        label[c[0] - 2:c[0] + 2, c[1] - 3:c[1], c[2] - 1:c[2] + 2] = 1
        label[c[0] - 2:c[0] + 2, c[1]:c[1] + 3, c[2] - 1:c[2] + 2] = 2
        image = (label.astype(np.float32) if image_from_label
                 else rng.normal(size=shape).astype(np.float32) + label)
        images.append(image)
        labels.append(label)
    return images, labels


def _take(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in itertools.islice(ds, n)]


def _same(a, b):
    return all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
               for (xa, ya), (xb, yb) in zip(a, b))


def test_slice_dataset_shapes_and_dtypes():
    images, labels = _volumes()
    ds = slice_dataset(images, labels, patch_size=(32, 32), batch_size=4, augment=False)
    x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 1) and x.dtype == "float32"
    assert y.shape == (4, 32, 32) and y.dtype == "int32"
    assert set(np.unique(y.numpy())) <= {0, 1, 2}

    val = slice_dataset(images, labels, axis=0, patch_size=(16, 16), batch_size=8,
                        training=False)
    batches = _take(val, 100)
    assert all(x.shape[1:] == (16, 16, 1) and y.shape[1:] == (16, 16) for x, y in batches)
    assert sum(x.shape[0] for x, _ in batches) == sum(im.shape[0] for im in images)


def test_patch_dataset_shapes_and_padding():
    images, labels = _volumes(n=3)
    # patch larger than every volume along x and z: volumes get padded
    ds = patch_dataset(images, labels, patch_size=(24, 16, 16), batch_size=2, augment=False,
                       foreground_fraction=1.0)
    x, y = next(iter(ds))
    assert x.shape == (2, 24, 16, 16, 1) and x.dtype == "float32"
    assert y.shape == (2, 24, 16, 16) and y.dtype == "int32"
    assert (y.numpy() > 0).any()  # forced foreground patches
    val = list(patch_dataset(images, labels, patch_size=(24, 16, 16), batch_size=2,
                             training=False))
    assert [x.shape[0] for x, _ in val] == [2, 1]


@pytest.mark.parametrize("kind", ["slices", "patches"])
def test_same_seed_same_batches_different_seed_different(kind):
    images, labels = _volumes()
    if kind == "slices":
        make = lambda seed: slice_dataset(images, labels, patch_size=(24, 24), batch_size=4,
                                          seed=seed)
    else:
        make = lambda seed: patch_dataset(images, labels, patch_size=(16, 16, 8),
                                          batch_size=2, seed=seed)
    a, b, c = _take(make(1), 3), _take(make(1), 3), _take(make(2), 3)
    assert _same(a, b)
    assert not _same(a, c)


def test_training_reshuffles_each_epoch_and_repeat_counts():
    images, labels = _volumes()
    n_slices = sum(im.shape[2] for im in images)
    ds = slice_dataset(images, labels, patch_size=(24, 24), batch_size=5, augment=False,
                       foreground_fraction=0.0, repeat=2)
    batches = _take(ds, 1000)
    per_epoch = n_slices // 5
    assert len(batches) == (2 * n_slices) // 5
    first = np.concatenate([x for x, _ in batches[:per_epoch]])
    second = np.concatenate([x for x, _ in batches[per_epoch:2 * per_epoch]])
    assert not np.array_equal(first, second)


def test_cache_flag_does_not_change_batches():
    images, labels = _volumes()
    kw = dict(patch_size=(24, 24), batch_size=4, seed=3, augment=False)
    assert _same(_take(slice_dataset(images, labels, cache=True, **kw), 3),
                 _take(slice_dataset(images, labels, cache=False, **kw), 3))
    kw3 = dict(patch_size=(16, 16, 8), batch_size=2, seed=3, augment=False)
    assert _same(_take(patch_dataset(images, labels, cache=True, **kw3), 3),
                 _take(patch_dataset(images, labels, cache=False, **kw3), 3))


@pytest.mark.parametrize("chunk", [1, 7])
def test_generator_chunk_size_does_not_change_the_stream(monkeypatch, chunk):
    """Samples reach TensorFlow a chunk at a time; any chunk size gives the same batches."""
    import medseg_tf.pipeline as pipeline

    images, labels = _volumes()
    kw = dict(patch_size=(24, 24), batch_size=4, seed=5, context_slices=1)
    kw3 = dict(patch_size=(16, 16, 8), batch_size=2, seed=5)
    default = (_take(slice_dataset(images, labels, **kw), 6),
               _take(patch_dataset(images, labels, **kw3), 4),
               _take(slice_dataset(images, labels, training=False, **kw), 100))
    monkeypatch.setattr(pipeline, "GENERATOR_CHUNK", chunk)
    assert pipeline._chunk_size((24, 24), 3) == chunk
    changed = (_take(slice_dataset(images, labels, **kw), 6),
               _take(patch_dataset(images, labels, **kw3), 4),
               _take(slice_dataset(images, labels, training=False, **kw), 100))
    for a, b in zip(default, changed):
        assert len(a) == len(b) and _same(a, b)


def test_chunk_size_stays_below_the_byte_cap():
    import medseg_tf.pipeline as pipeline

    assert pipeline._chunk_size((48, 64), 5) == pipeline.GENERATOR_CHUNK  # 61 kB a slice
    assert pipeline._chunk_size((48, 64, 48), 1) == pipeline.GENERATOR_CHUNK_BYTES // (4 * 48 * 64 * 48)
    assert pipeline._chunk_size((512, 512, 512), 1) == 1


def test_image_and_label_stay_aligned_through_augmentation():
    images, labels = _volumes(image_from_label=True)
    ds = slice_dataset(images, labels, patch_size=(24, 24), batch_size=8, seed=5,
                       augment=SPATIAL_ONLY, foreground_fraction=1.0)
    for x, y in _take(ds, 3):
        np.testing.assert_array_equal(x[..., 0], y.astype(np.float32))
    ds3 = patch_dataset(images, labels, patch_size=(16, 16, 8), batch_size=2, seed=5,
                        augment=SPATIAL_ONLY, foreground_fraction=1.0)
    for x, y in _take(ds3, 2):
        np.testing.assert_array_equal(x[..., 0], y.astype(np.float32))


def _foreground_share(ds, n):
    return float(np.mean([(y > 0).mean() for _, y in _take(ds, n)]))


def test_foreground_oversampling_raises_foreground_share():
    images, labels = _volumes(n=8)
    kw = dict(patch_size=(12, 12), batch_size=16, augment=False, seed=0)
    base = _foreground_share(slice_dataset(images, labels, foreground_fraction=0.0, **kw), 10)
    over = _foreground_share(slice_dataset(images, labels, foreground_fraction=0.9, **kw), 10)
    assert over > 3 * base
    kw3 = dict(patch_size=(10, 10, 6), batch_size=4, augment=False, seed=0)
    base3 = _foreground_share(patch_dataset(images, labels, foreground_fraction=0.0, **kw3), 6)
    over3 = _foreground_share(patch_dataset(images, labels, foreground_fraction=1.0, **kw3), 6)
    assert over3 > 3 * base3


def test_no_foreground_anywhere_still_works():
    images, labels = _volumes(n=2)
    labels = [np.zeros_like(lab) for lab in labels]
    x, y = next(iter(slice_dataset(images, labels, patch_size=(16, 16), batch_size=4,
                                   foreground_fraction=1.0)))
    assert x.shape == (4, 16, 16, 1) and not y.numpy().any()


def _centre_crop_pad(slice2d, patch, fill):
    pads = [((max(p - n, 0)) // 2, max(p - n, 0) - max(p - n, 0) // 2)
            for n, p in zip(slice2d.shape, patch)]
    padded = np.pad(slice2d, pads, constant_values=fill)
    starts = [(n - p) // 2 for n, p in zip(padded.shape, patch)]
    return padded[starts[0]:starts[0] + patch[0], starts[1]:starts[1] + patch[1]]


def test_validation_is_deterministic_unaugmented_centre_crop():
    images, labels = _volumes(n=3)
    patch = (24, 20)  # pads x (20..22 -> 24), crops y (26..27 -> 20)
    ds = slice_dataset(images, labels, patch_size=patch, batch_size=7, training=False,
                       augment=True, seed=4)
    first, second = _take(ds, 100), _take(ds, 100)
    assert _same(first, second)
    x = np.concatenate([b[0] for b in first])[..., 0]
    y = np.concatenate([b[1] for b in first])
    expected_x = np.stack([_centre_crop_pad(s[..., 0], patch, im.min())
                           for im in images for s in volume_slices(im)])
    expected_y = np.stack([_centre_crop_pad(s[..., 0], patch, 0)
                           for lab in labels for s in volume_slices(lab)])
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)


def test_context_slices_give_neighbours_as_channels():
    """2.5D: channel c of slice i is slice clip(i + c - k); the label is the middle slice's."""
    from medseg_tf.preprocessing import stack_neighbour_slices

    images, labels = _volumes(n=2)
    patch = (24, 32)
    plain = _take(slice_dataset(images, labels, patch_size=patch, batch_size=5, training=False), 100)
    ctx = _take(slice_dataset(images, labels, patch_size=patch, batch_size=5, training=False, context_slices=1), 100)
    x = np.concatenate([b[0] for b in ctx])
    assert x.shape[-1] == 3
    np.testing.assert_array_equal(x[..., 1:2], np.concatenate([b[0] for b in plain]))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ctx]), np.concatenate([b[1] for b in plain]))
    expected = np.concatenate([
        np.stack([_centre_crop_pad(np.moveaxis(stack_neighbour_slices(im, 2, 1)[..., c], 2, 0)[i], patch,
                                   im.min()) for c in range(3)], axis=-1)[None]
        for im in images for i in range(im.shape[2])])
    np.testing.assert_array_equal(x, expected)
    train = slice_dataset(images, labels, patch_size=patch, batch_size=4, context_slices=2)
    xb, yb = next(iter(train))
    assert xb.shape == (4, *patch, 5) and yb.shape == (4, *patch)
    with pytest.raises(ValueError, match="context"):
        slice_dataset(images, labels, patch_size=patch, context_slices=-1)


def test_volume_slices():
    image = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    for axis in (0, 1, 2, -1):
        out = volume_slices(image, axis=axis)
        assert out.dtype == np.float32
        assert out.shape == (image.shape[axis],) + tuple(
            n for a, n in enumerate(image.shape) if a != axis % 3) + (1,)
        np.testing.assert_array_equal(out[1, ..., 0], np.take(image, 1, axis=axis))
    with pytest.raises(ValueError, match="3D"):
        volume_slices(np.zeros((3, 4)))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(labels=lambda ls: ls[:-1]), "labels"),
        (dict(labels=lambda ls: [lab[:-1] for lab in ls]), "shape"),
        (dict(labels=lambda ls: [lab.astype(np.float32) for lab in ls]), "integer"),
        (dict(patch_size=(16, 16, 16)), "patch_size"),
        (dict(foreground_fraction=1.5), "foreground_fraction"),
        (dict(batch_size=0), "batch_size"),
        (dict(axis=3), "axis"),
        (dict(repeat=0), "repeat"),
    ],
)
def test_bad_arguments_raise(change, match):
    images, labels = _volumes(n=2)
    change = dict(change)
    if "labels" in change:
        labels = change.pop("labels")(labels)
    with pytest.raises(ValueError, match=match):
        slice_dataset(images, labels, **change)


def test_nan_image_raises():
    images, labels = _volumes(n=2)
    images[1][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="case 1"):
        patch_dataset(images, labels)
