"""``tf.data`` input pipelines: 2D slices and 3D patches with foreground oversampling.

The volumes of the course data sets are small, so they are kept in memory as
NumPy arrays and the pipeline has three stages:

1. **Sampling (NumPy, in a Python generator).** Each volume is padded up to
   at least the patch size (image with the volume's minimum intensity, which
   after normalisation is the background; label with 0, background).
   Training: one *epoch* is a shuffled pass over all slices (2D) or all
   volumes (3D), shuffled with ``np.random.default_rng([seed, epoch])``, so
   every epoch is reshuffled but in a reproducible way. For each item a random
   crop of ``patch_size`` is taken; with probability ``foreground_fraction``
   the crop is instead *centred on a foreground voxel* (foreground
   oversampling as in nnU-Net: a foreground class present in the slice/volume
   is picked uniformly, then one of its voxels; the crop is shifted back
   inside the padded volume when needed). In 2D, when an oversampled item
   falls on a slice without foreground, a random slice with foreground is used
   instead: slices without foreground are thereby subsampled to
   ``1 - foreground_fraction`` of their natural share. Validation
   (``training=False``): every slice (2D) or volume (3D) in order, padded and
   **centre-cropped** to ``patch_size``, no shuffling, no augmentation (parts
   of a slice larger than the patch are cut off; use
   :mod:`medseg_tf.inference` for whole volumes). The generator hands its
   samples to TensorFlow a chunk at a time (up to :data:`GENERATOR_CHUNK`,
   then ``unbatch``): the same elements in the same order, with the per-call
   cost of ``Dataset.from_generator`` paid once a chunk.
2. **Augmentation (TensorFlow, parallel).** ``Dataset.map(...,
   num_parallel_calls=AUTOTUNE, deterministic=True)`` of
   :func:`medseg_tf.augment.random_augment`, whose stateless random ops are
   seeded by ``(seed, element index)`` where the index comes from
   ``Dataset.enumerate()`` and counts over all epochs. The result therefore
   does not depend on thread scheduling.
3. **Batching and prefetching** (``batch`` then ``prefetch(AUTOTUNE)``), with
   ``tf.data.Options().deterministic = True``.

Consequently the same arguments (and seed) give exactly the same sequence of
batches from every new iterator, and a different seed gives different
batches.

``cache=True`` computes the padded volumes once, when the data set is built,
and the foreground voxel lists of each slice/volume once, at first use, and
keeps them in memory (training), or caches
the cropped elements with ``Dataset.cache()`` after the first pass
(validation). ``cache=False`` redoes this work for every element: less memory,
more CPU.

Inputs are sequences of NumPy arrays: images float32 ``(X, Y, Z)``, already
normalised by the caller, and labels of an integer dtype with the same shape;
volumes may differ in shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from scipy import ndimage
import tensorflow as tf

from medseg_tf.augment import random_augment
from medseg_tf.preprocessing import neighbour_slice_indices, pad_to_shape
from medseg_tf.runspec import DEFAULT_PATCH, check_context_slices, slices_per_sample

__all__ = ["slice_dataset", "patch_dataset", "volume_slices"]

AUTOTUNE = tf.data.AUTOTUNE


# ----------------------------------------------------------------------------
# Validation of arguments
# ----------------------------------------------------------------------------


def _check_volumes(images, labels) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return images as float32 and labels as given, after checking them."""
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    if not images:
        raise ValueError("images is empty: need at least one volume")
    out_images, out_labels = [], []
    for i, (image, label) in enumerate(zip(images, labels)):
        image, label = np.asarray(image), np.asarray(label)
        if image.ndim != 3:
            raise ValueError(f"case {i}: image must be 3D (X, Y, Z), got shape {image.shape}")
        if label.shape != image.shape:
            raise ValueError(
                f"case {i}: label shape {label.shape} differs from image shape {image.shape}")
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"case {i}: label must have an integer dtype, got {label.dtype}")
        if label.size and label.min() < 0:
            raise ValueError(f"case {i}: label has negative values")
        image = image.astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            raise ValueError(f"case {i}: image contains NaN or infinite values")
        out_images.append(image)
        out_labels.append(label)
    return out_images, out_labels


def _check_common(patch_size, ndim: int, batch_size: int, foreground_fraction: float,
                  repeat) -> tuple[int, ...]:
    patch = tuple(int(s) for s in patch_size)
    if len(patch) != ndim or any(s < 1 for s in patch):
        raise ValueError(f"patch_size must be {ndim} positive ints, got {patch_size!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
    if repeat is not None and (isinstance(repeat, bool) or int(repeat) < 1):
        raise ValueError(f"repeat must be None or a positive int, got {repeat!r}")
    return patch


# ----------------------------------------------------------------------------
# NumPy helpers (padding, cropping, foreground)
# ----------------------------------------------------------------------------


def _pad_to_at_least(image: np.ndarray, label: np.ndarray, size: Sequence[int | None]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``image``/``label`` symmetrically so that axis ``i`` has >= ``size[i]``.

    ``size[i] = None`` leaves axis ``i`` alone. The image is padded with its
    minimum value, the label with 0.
    """
    size = [n if target is None else target for n, target in zip(image.shape, size)]
    if all(n >= t for n, t in zip(image.shape, size)):
        return image, label
    fill = float(image.min()) if image.size else 0.0
    return pad_to_shape(image, size, value=fill)[0], pad_to_shape(label, size, value=0)[0]


def _foreground_by_class(label: np.ndarray) -> dict[int, np.ndarray]:
    """Flat indices (ascending) of the voxels of each foreground class present in ``label``."""
    flat = np.ascontiguousarray(label).ravel()
    return {int(c): idx[0] for c, idx in ndimage.value_indices(flat, ignore_value=0).items()}


def _crop_start(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                foreground: dict[int, np.ndarray] | None) -> tuple[int, ...]:
    """Corner of a random crop; centred on a foreground voxel if ``foreground`` given."""
    if foreground:
        classes = sorted(foreground)
        voxels = foreground[classes[rng.integers(len(classes))]]
        centre = np.unravel_index(voxels[rng.integers(voxels.size)], tuple(shape))
        return tuple(int(min(max(c - p // 2, 0), n - p))
                     for c, p, n in zip(centre, patch, shape))
    return tuple(int(rng.integers(n - p + 1)) for n, p in zip(shape, patch))


def _crop(array: np.ndarray, start: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    return array[tuple(slice(s, s + p) for s, p in zip(start, patch))]


def _centre_start(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    return tuple((n - p) // 2 for n, p in zip(shape, patch))


def volume_slices(image: np.ndarray, axis: int = 2) -> np.ndarray:
    """All 2D slices of a volume along ``axis``, as a batch for a 2D model.

    Parameters
    ----------
    image : np.ndarray
        Volume of shape ``(X, Y, Z)`` (any dtype; a trailing channel axis of
        size 1 is accepted and dropped).
    axis : int
        Slicing axis (0, 1 or 2; negative values count from the end).

    Returns
    -------
    np.ndarray
        float32 ``(n, H, W, 1)`` with ``n = image.shape[axis]`` and ``(H, W)``
        the two other axes in their original order. Slice ``i`` is
        ``np.take(image, i, axis)``.
    """
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 3:
        raise ValueError(f"image must be 3D (X, Y, Z), got shape {image.shape}")
    if not -3 <= axis <= 2:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return np.moveaxis(image, axis, 0).astype(np.float32)[..., np.newaxis]


# ----------------------------------------------------------------------------
# Samplers: each returns a generator function yielding (image, label) crops
# ----------------------------------------------------------------------------


class _Volumes:
    """Volumes padded to at least ``pad`` (``None``: leave that axis alone).

    With ``cache=True`` the padded copies are computed once, here; otherwise
    they are recomputed at every :meth:`get`.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray],
                 pad: Sequence[int | None], cache: bool):
        self.images, self.labels, self._pad, self._cache = images, labels, pad, cache
        self._store = [self._compute(i) for i in range(len(images))] if cache else None

    def _compute(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return _pad_to_at_least(self.images[i], self.labels[i], self._pad)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded ``(image, label)`` of volume ``i``."""
        return self._store[i] if self._store is not None else self._compute(i)

    def __len__(self) -> int:
        return len(self.images)


def _slice_of(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """View of slice ``index`` along ``axis`` (basic indexing: no copy, unlike np.take)."""
    return array[(slice(None),) * axis + (index,)]


def _slice_sampler(volumes: _Volumes, axis: int, patch: tuple[int, int], *, training: bool,
                   seed: int, foreground_fraction: float, epochs: int | None,
                   cache: bool, context_slices: int = 0) -> Callable[[], Iterator]:
    """Generator function of (image (ph, pw, 2*context_slices+1) float32, label (ph, pw) int32) slices."""
    items = [(v, s) for v in range(len(volumes))
             for s in range(volumes.images[v].shape[axis])]

    # Foreground per slice: computed once if cache else on demand.
    fg_cache: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    has_fg = np.array([bool(np.any(_slice_of(volumes.labels[v], axis, s)))
                       for v, s in items])
    fg_items = np.flatnonzero(has_fg)

    def foreground(v: int, s: int, label2d: np.ndarray) -> dict[int, np.ndarray]:
        if not cache:
            return _foreground_by_class(label2d)
        if (v, s) not in fg_cache:
            fg_cache[(v, s)] = _foreground_by_class(label2d)
        return fg_cache[(v, s)]

    def sample(v: int, s: int, rng: np.random.Generator | None, forced: bool):
        image, label = volumes.get(v)
        label2d = _slice_of(label, axis, s)
        image2d = np.stack([_slice_of(image, axis, int(k))  # (H, W, 2*context_slices+1), neighbours as channels
                            for k in neighbour_slice_indices(s, image.shape[axis], context_slices)], axis=-1)
        if rng is None:
            start = _centre_start(label2d.shape, patch)
        else:
            fg = foreground(v, s, label2d) if forced else None
            start = _crop_start(label2d.shape, patch, rng, fg)
        return (_crop(image2d, start, patch).astype(np.float32),
                _crop(label2d, start, patch).astype(np.int32))

    if not training:
        def validation():
            for v, s in items:
                yield sample(v, s, None, False)
        return validation

    def train():
        epoch = 0
        while epochs is None or epoch < epochs:
            rng = np.random.default_rng([seed, epoch])
            for j in rng.permutation(len(items)):
                forced = rng.random() < foreground_fraction
                if forced and not has_fg[j] and fg_items.size:
                    j = fg_items[rng.integers(fg_items.size)]
                v, s = items[j]
                yield sample(v, s, rng, forced)
            epoch += 1
    return train


def _patch_sampler(volumes: _Volumes, patch: tuple[int, int, int], *, training: bool,
                   seed: int, foreground_fraction: float, epochs: int | None,
                   cache: bool) -> Callable[[], Iterator]:
    """Generator function of (image (px, py, pz, 1) float32, label (px, py, pz) int32)."""
    fg_cache: dict[int, dict[int, np.ndarray]] = {}

    def foreground(v: int, label: np.ndarray) -> dict[int, np.ndarray]:
        if not cache:
            return _foreground_by_class(label)
        if v not in fg_cache:
            fg_cache[v] = _foreground_by_class(label)
        return fg_cache[v]

    def sample(v: int, rng: np.random.Generator | None, forced: bool):
        image, label = volumes.get(v)
        if rng is None:
            start = _centre_start(image.shape, patch)
        else:
            fg = foreground(v, label) if forced else None
            start = _crop_start(image.shape, patch, rng, fg)
        return (_crop(image, start, patch)[..., np.newaxis].astype(np.float32),
                _crop(label, start, patch).astype(np.int32))

    if not training:
        def validation():
            for v in range(len(volumes)):
                yield sample(v, None, False)
        return validation

    def train():
        epoch = 0
        while epochs is None or epoch < epochs:
            rng = np.random.default_rng([seed, epoch])
            for v in rng.permutation(len(volumes)):
                forced = rng.random() < foreground_fraction
                yield sample(int(v), rng, forced)
            epoch += 1
    return train


# ----------------------------------------------------------------------------
# tf.data assembly
# ----------------------------------------------------------------------------


def _augment_fn(augment) -> Callable | None:
    """``augment`` -> function(image, label, seed) or None."""
    if augment is False or augment is None:
        return None
    if augment is True:
        return random_augment
    if isinstance(augment, Mapping):
        kwargs = dict(augment)
        return lambda image, label, seed: random_augment(image, label, seed, **kwargs)
    if callable(augment):
        return augment
    raise ValueError(f"augment must be a bool, a dict of random_augment arguments or a "
                     f"callable, got {augment!r}")


#: Most samples handed from the Python generator to TensorFlow per call (then ``unbatch``-ed): the
#: per-call cost of ``Dataset.from_generator`` (about 0.15 ms on a 2-core CPU) is paid once a chunk,
#: not once a sample. The element stream is the same for every chunk size.
GENERATOR_CHUNK = 32
#: Chunks are also kept below about this many bytes of image (3D patches: a few per chunk).
GENERATOR_CHUNK_BYTES = 8 * 2**20


def _chunk_size(patch: tuple[int, ...], channels: int) -> int:
    """Samples per generator call for float32 images of ``patch + (channels,)``."""
    sample_bytes = 4 * channels * int(np.prod(patch))
    return max(1, min(GENERATOR_CHUNK, GENERATOR_CHUNK_BYTES // sample_bytes))


def _chunked(generator: Callable[[], Iterator], size: int) -> Callable[[], Iterator]:
    """Generator function yielding the items of ``generator()`` stacked ``size`` at a time (last chunk shorter)."""
    def chunks():
        items = generator()
        while True:
            chunk = list(itertools.islice(items, size))
            if not chunk:
                return
            yield np.stack([c[0] for c in chunk]), np.stack([c[1] for c in chunk])
    return chunks


def _assemble(generator: Callable[[], Iterator], patch: tuple[int, ...], *, training: bool,
              seed: int, augment, batch_size: int, cache: bool, repeat,
              channels: int = 1) -> tf.data.Dataset:
    spec = (tf.TensorSpec(patch + (channels,), tf.float32), tf.TensorSpec(patch, tf.int32))
    chunk_spec = tuple(tf.TensorSpec((None,) + tuple(s.shape), s.dtype) for s in spec)
    ds = tf.data.Dataset.from_generator(_chunked(generator, _chunk_size(patch, channels)),
                                        output_signature=chunk_spec).unbatch()
    if training:
        fn = _augment_fn(augment)
        if fn is not None:
            base = tf.constant(int(seed), tf.int64)

            def apply(index, element):
                image, label = element
                image, label = fn(image, label, tf.stack([base, index]))
                return tf.ensure_shape(image, spec[0].shape), tf.ensure_shape(label, patch)

            ds = ds.enumerate().map(apply, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(int(batch_size), drop_remainder=True)
    else:
        if cache:
            ds = ds.cache()
        if repeat is not None and int(repeat) > 1:
            ds = ds.repeat(int(repeat))
        ds = ds.batch(int(batch_size))
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(AUTOTUNE).with_options(options)


def slice_dataset(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    axis: int = 2,
    patch_size: Sequence[int] = DEFAULT_PATCH[2],
    batch_size: int = 16,
    training: bool = True,
    seed: int = 0,
    augment: bool | Mapping | Callable = True,
    foreground_fraction: float = 0.5,
    cache: bool = True,
    repeat: int | None = None,
    context_slices: int = 0,
) -> tf.data.Dataset:
    """Batches of 2D slices (and their labels) for training a 2D network.

    Parameters
    ----------
    images : sequence of np.ndarray
        Volumes ``(X, Y, Z)``, float32 (cast if needed), already normalised;
        shapes may differ between volumes.
    labels : sequence of np.ndarray
        Integer label volumes with the same shapes as ``images``.
    axis : int
        Slicing axis (0, 1 or 2): a slice ``np.take(volume, i, axis)`` keeps
        the two other axes in their original order.
    patch_size : (int, int)
        In-plane size ``(ph, pw)`` of the returned slices. Slices are padded
        (image with the volume minimum, label with 0) to at least this size,
        then cropped to it.
    batch_size : int
        Slices per batch.
    training : bool
        True: shuffled (reshuffled every epoch, reproducibly), random crops
        with foreground oversampling, augmentation, ``drop_remainder=True``.
        False: every slice in order, centre crop, no augmentation, last batch
        may be smaller.
    seed : int
        Seeds the crop sampling (``np.random.default_rng([seed, epoch])``) and
        the augmentation (stateless seeds ``(seed, element index)``).
    augment : bool or dict or callable
        True: :func:`medseg_tf.augment.random_augment` with its defaults; a
        dict: keyword arguments for it; a callable ``f(image, label, seed)``:
        used instead; False: no augmentation. Ignored when not training.
    foreground_fraction : float
        Probability that a training crop is centred on a foreground pixel.
    cache : bool
        Keep padded volumes and foreground lists in memory (training) /
        ``Dataset.cache()`` the elements (validation). See the module docstring.
    repeat : int or None
        Number of passes. None: forever when training (use
        ``steps_per_epoch``), once otherwise. One training pass has
        ``n_slices // batch_size`` batches.
    context_slices : int
        "2.5D" input: also give the model the ``context_slices`` neighbouring slices on
        each side, as channels (edge slices repeated at the ends, see
        :func:`medseg_tf.preprocessing.stack_neighbour_slices`); the label is
        that of the middle slice. ``0``: one slice, one channel.

    Returns
    -------
    tf.data.Dataset
        Elements ``(x, y)``: ``x`` float32 ``(B, ph, pw, 2 * context_slices + 1)``,
        ``y`` int32 ``(B, ph, pw)``.
    """
    images, labels = _check_volumes(images, labels)
    patch = _check_common(patch_size, 2, batch_size, foreground_fraction, repeat)
    if not -3 <= int(axis) <= 2:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    axis = int(axis) % 3
    context_slices = check_context_slices(context_slices)
    pad: list[int | None] = list(patch)
    pad.insert(axis, None)
    volumes = _Volumes(images, labels, pad, cache)
    epochs = None if repeat is None else int(repeat)
    generator = _slice_sampler(volumes, axis, patch, training=training, seed=int(seed),
                               foreground_fraction=float(foreground_fraction),
                               epochs=epochs, cache=cache, context_slices=context_slices)
    return _assemble(generator, patch, training=training, seed=seed, augment=augment,
                     batch_size=batch_size, cache=cache, repeat=repeat, channels=slices_per_sample(context_slices))


def patch_dataset(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    patch_size: Sequence[int] = DEFAULT_PATCH[3],
    batch_size: int = 2,
    training: bool = True,
    seed: int = 0,
    augment: bool | Mapping | Callable = True,
    foreground_fraction: float = 0.33,
    cache: bool = True,
    repeat: int | None = None,
) -> tf.data.Dataset:
    """Batches of 3D patches (and their labels) for training a 3D network.

    Same rules as :func:`slice_dataset`, in 3D: volumes are padded (image with
    their minimum, label with 0) to at least ``patch_size``; training takes
    random patches, centred on a foreground voxel with probability
    ``foreground_fraction``, one per volume per pass (shuffled); validation
    takes the centre patch of every volume, in order.

    Parameters
    ----------
    images, labels : sequence of np.ndarray
        As for :func:`slice_dataset`.
    patch_size : (int, int, int)
        Patch size ``(px, py, pz)`` in voxels.
    batch_size, training, seed, augment, foreground_fraction, cache, repeat
        As for :func:`slice_dataset` (one training pass has
        ``n_volumes // batch_size`` batches).

    Returns
    -------
    tf.data.Dataset
        Elements ``(x, y)``: ``x`` float32 ``(B, px, py, pz, 1)``, ``y`` int32
        ``(B, px, py, pz)``.
    """
    images, labels = _check_volumes(images, labels)
    patch = _check_common(patch_size, 3, batch_size, foreground_fraction, repeat)
    volumes = _Volumes(images, labels, list(patch), cache)
    epochs = None if repeat is None else int(repeat)
    generator = _patch_sampler(volumes, patch, training=training, seed=int(seed),
                               foreground_fraction=float(foreground_fraction),
                               epochs=epochs, cache=cache)
    return _assemble(generator, patch, training=training, seed=seed, augment=augment,
                     batch_size=batch_size, cache=cache, repeat=repeat)
