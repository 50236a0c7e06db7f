"""Random data augmentation applied identically to an image and its label.

Everything here is TensorFlow code that runs in graph mode, so it can be used
inside :meth:`tf.data.Dataset.map` (see :mod:`medseg_tf.pipeline`). All
randomness comes from *stateless* random ops seeded by an explicit shape-(2,)
integer seed: the same ``(image, label, seed)`` always gives the same result,
whatever the number of parallel calls or the order in which elements are
processed. Each transform draws from its own sub-seed
``tf.random.experimental.stateless_fold_in(seed, k)`` with a fixed ``k``, so
switching one transform off does not change the random draws of the others.

What each transform does, in the order applied:

1. **Flips** (``flips=True``): each spatial axis is mirrored with probability
   0.5 (as nnU-Net's mirroring). ``flips`` may instead list the spatial axes
   to mirror, e.g. ``(0,)`` for left-right only in RAS data: mirror only along
   axes where the mirrored anatomy is still plausible *and* the labels keep
   their meaning (mirroring the anterior-posterior axis of a hippocampus swaps
   its Anterior and Posterior parts).
2. **Quarter turns** (``rot90=True``): a rotation by ``k * 90`` degrees,
   ``k`` uniform, in the plane of the first two spatial axes (the image plane
   in 2D; the axial ``(x, y)`` plane of an ``(x, y, z)`` volume in 3D). Turns
   by 90 or 270 degrees would swap the two sizes, so they are only used when
   both sizes are statically equal (square patches); otherwise only 0 or 180
   degrees are drawn, and the shape never changes.
3. **Small rotation and scaling** (with probability ``p``): an angle uniform in
   ``[-max_rotation_deg, max_rotation_deg]`` and a zoom factor uniform in
   ``scale_range`` (``> 1`` enlarges the content), about the centre, resampled
   with ``tf.raw_ops.ImageProjectiveTransformV3``: bilinear for the image,
   nearest neighbour for the label. Points that fall outside are filled by
   repeating the nearest edge value (``fill_mode="NEAREST"``) for both, so the
   label never receives a value it did not have. In 3D the same rotation and
   scaling is applied to every ``(x, y)`` slice, i.e. a rotation about the
   last (``z``) axis; the ``z`` axis is neither rotated nor scaled (volumes
   are often anisotropic along ``z``).
4. **Contrast** (with probability ``p``): ``(x - mean) * c + mean`` with ``c``
   uniform in ``contrast_range``, clipped back to the original intensity
   range.
5. **Gamma** (with probability ``p``): the intensities are mapped to
   ``[0, 1]``, raised to the power ``g`` (log-uniform in ``gamma_range``) and
   mapped back, so the range is preserved.
6. **Gaussian noise** (with probability ``p``): zero-mean noise whose standard
   deviation is uniform in ``[0, noise_std]`` (in the units of the normalised
   image).
7. **Gaussian blur** (with probability ``p``, off unless ``blur_sigma`` is
   given): a separable Gaussian along every spatial axis, sigma uniform in
   ``blur_sigma`` (voxels), edges reflected.
8. **Brightness** (with probability ``p``, off unless ``brightness_range``):
   the image is multiplied by a factor uniform in ``brightness_range``.
9. **Low-resolution simulation** (with probability ``p``, off unless
   ``low_res_range``): each ``(x, y)`` slice is shrunk by a zoom factor uniform
   in ``low_res_range`` (nearest neighbour) and enlarged back (bilinear), as
   nnU-Net's ``SimulateLowResolutionTransform`` (in-plane only here).

Steps 4-9 touch the image only. :data:`NNUNET_AUGMENT` is the set nnU-Net v2
trains with by default (its probabilities folded into one ``p``; no elastic
deformation, which nnU-Net v2 also leaves off), *without* mirroring: add
``flips`` for the axes where a mirror keeps the anatomy and the labels valid. Label values are never changed: the label is
only mirrored, turned and resampled with nearest neighbour, so the set of its
values after augmentation is a subset of the set before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from medseg_tf.runspec import flip_axes

__all__ = ["NNUNET_AUGMENT", "flip_axes", "random_augment"]

# Fixed sub-seed indices (one per random decision), see the module docstring.
_FLIP = 10  # + spatial axis
_ROT90 = 20
_AFFINE_DO, _AFFINE_ANGLE, _AFFINE_SCALE = 30, 31, 32
_CONTRAST_DO, _CONTRAST = 40, 41
_GAMMA_DO, _GAMMA = 50, 51
_NOISE_DO, _NOISE_STD, _NOISE = 60, 61, 62
_BLUR_DO, _BLUR = 70, 71
_BRIGHT_DO, _BRIGHT = 80, 81
_LOWRES_DO, _LOWRES = 90, 91
_BLUR_RADIUS = 3  # voxels: the kernel is 7 wide, enough for sigma <= ~1.5

#: nnU-Net v2's default training augmentation (``nnUNetTrainer.get_training_transforms``) in the
#: arguments of :func:`random_augment`: rotation up to 30 degrees, zoom 0.7-1.4, noise, blur,
#: brightness, contrast, low-resolution simulation and gamma. nnU-Net applies each with its own
#: probability (0.1-0.3); here one ``p = 0.2``. Mirroring is left out on purpose (``flips=False``):
#: choose the valid axes for the anatomy.
NNUNET_AUGMENT = {
    "flips": False, "rot90": False, "max_rotation_deg": 30.0, "scale_range": (0.7, 1.4),
    "gamma_range": (0.7, 1.5), "noise_std": 0.1, "contrast_range": (0.75, 1.25),
    "brightness_range": (0.75, 1.25), "blur_sigma": (0.5, 1.0), "low_res_range": (0.5, 1.0), "p": 0.2,
}


def _sub_seed(seed: tf.Tensor, k: int) -> tf.Tensor:
    """Independent shape-(2,) seed number ``k`` derived from ``seed``."""
    return tf.random.experimental.stateless_fold_in(seed, k)


def _uniform(seed: tf.Tensor, k: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    """Scalar float32 uniform in ``[low, high)`` from sub-seed ``k``."""
    return tf.random.stateless_uniform([], _sub_seed(seed, k), minval=low, maxval=high)


def _happens(seed: tf.Tensor, k: int, probability: float) -> tf.Tensor:
    """Scalar bool, true with the given probability."""
    return _uniform(seed, k) < probability


def _check_range(name: str, value, *, positive: bool) -> tuple[float, float] | None:
    """Validate a ``(low, high)`` argument; ``None`` or ``(1, 1)``-like identity -> None."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) or None, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must satisfy low <= high (finite), got {value!r}")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return low, high


def _rot90(x: tf.Tensor, k: tf.Tensor, quarter_turns: bool) -> tf.Tensor:
    """Rotate ``x`` by ``k * 90`` degrees in the plane of axes 0 and 1.

    ``x`` has rank 3 (H, W, C) or 4 (D, H, W, C). Same convention as
    ``np.rot90(x, k, axes=(0, 1))``.
    """
    perm = [1, 0] + list(range(2, x.shape.rank))

    def turn1():
        return tf.transpose(tf.reverse(x, [1]), perm)

    def turn2():
        return tf.reverse(x, [0, 1])

    def turn3():
        return tf.reverse(tf.transpose(x, perm), [1])

    if quarter_turns:
        return tf.switch_case(k, [lambda: x, turn1, turn2, turn3])
    return tf.cond(tf.equal(k, 2), turn2, lambda: x)


def _affine_matrix(height: tf.Tensor, width: tf.Tensor, angle: tf.Tensor,
                   scale: tf.Tensor) -> tf.Tensor:
    """Shape-(1, 8) projective transform (output -> input pixel coordinates).

    Rotation by ``angle`` (radians) and zoom by ``scale`` about the centre of an
    ``height x width`` image, in the format of ``ImageProjectiveTransformV3``.
    """
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zero = tf.zeros_like(a0)
    return tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, zero, zero]), [1, 8])


def _transform_slices(x: tf.Tensor, matrix: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Apply a (1, 8) transform to a batch ``(N, H, W, C)`` of slices."""
    shape = tf.shape(x)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=matrix,
        output_shape=shape[1:3],
        fill_value=tf.constant(0.0, tf.float32),
        interpolation=interpolation,
        fill_mode="NEAREST",
    )


def _affine(x: tf.Tensor, matrix: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Rotate/scale ``x`` (H, W, C) or (X, Y, Z, C) in the plane of axes 0 and 1."""
    if x.shape.rank == 3:
        out = _transform_slices(x[tf.newaxis], matrix, interpolation)[0]
    else:  # (X, Y, Z, C) -> (Z, X, Y, C): every z slice gets the same transform
        slices = tf.transpose(x, [2, 0, 1, 3])
        out = tf.transpose(_transform_slices(slices, matrix, interpolation), [1, 2, 0, 3])
    return tf.ensure_shape(out, x.shape)


def _gaussian_blur(x: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Blur ``x`` (spatial..., C) with a separable Gaussian of ``sigma`` voxels, edges reflected."""
    offsets = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel = tf.reshape(kernel / tf.reduce_sum(kernel), [-1, 1, 1])
    rank = x.shape.rank
    for axis in range(rank - 1):
        perm = [a for a in range(rank) if a != axis] + [axis]
        moved = tf.transpose(x, perm)
        shape = tf.shape(moved)
        flat = tf.reshape(moved, [-1, shape[-1], 1])
        flat = tf.pad(flat, [[0, 0], [_BLUR_RADIUS, _BLUR_RADIUS], [0, 0]], mode="REFLECT")
        flat = tf.nn.conv1d(flat, kernel, stride=1, padding="VALID")
        inverse = [perm.index(a) for a in range(rank)]
        x = tf.transpose(tf.reshape(flat, shape), inverse)
    return x


def _low_resolution(x: tf.Tensor, zoom: tf.Tensor) -> tf.Tensor:
    """Shrink each (x, y) slice of ``x`` by ``zoom`` (nearest) and enlarge it back (bilinear)."""
    slices = x[tf.newaxis] if x.shape.rank == 3 else tf.transpose(x, [2, 0, 1, 3])
    size = tf.shape(slices)[1:3]
    small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * zoom), tf.int32), 1)
    out = tf.image.resize(tf.image.resize(slices, small, method="nearest"), size, method="bilinear")
    out = out[0] if x.shape.rank == 3 else tf.transpose(out, [1, 2, 0, 3])
    return tf.ensure_shape(out, x.shape)


def random_augment(
    image,
    label,
    seed,
    *,
    flips: bool | Sequence[int] = True,
    rot90: bool = True,
    max_rotation_deg: float = 15.0,
    scale_range: Sequence[float] | None = (0.9, 1.1),
    gamma_range: Sequence[float] | None = (0.7, 1.5),
    noise_std: float = 0.05,
    contrast_range: Sequence[float] | None = (0.75, 1.25),
    p: float = 0.25,
    blur_sigma: Sequence[float] | None = None,
    brightness_range: Sequence[float] | None = None,
    low_res_range: Sequence[float] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly augment one image and its label with the same spatial transform.

    Parameters
    ----------
    image : tf.Tensor or array-like
        float32 (cast if needed), shape ``(H, W, 1)`` for a 2D slice or
        ``(X, Y, Z, 1)`` for a 3D patch (channels last; more channels work too).
        Intensities are expected to be normalised (e.g. z-scored).
    label : tf.Tensor or array-like
        Integer class map with the same spatial shape, either without channel
        axis (``(H, W)`` / ``(X, Y, Z)``) or with a trailing axis of size 1.
        Any integer dtype; it is returned as int32 **in the same layout as
        given** (with the trailing 1 only if it had one).
    seed : tf.Tensor or array-like
        Shape ``(2,)`` int32/int64 seed of the stateless random ops. Same seed
        and inputs give the same output; in a ``tf.data`` pipeline derive it
        from a base seed and the element index (see :mod:`medseg_tf.pipeline`).
    flips : bool or sequence of int
        Mirror each spatial axis with probability 0.5 (``True``), none
        (``False``), or only the listed spatial axes of the patch (``0`` is
        the first spatial axis, e.g. ``x`` of an ``(x, y, z)`` patch).
    rot90 : bool
        Turn by a random multiple of 90 degrees in the plane of the first two
        spatial axes (90/270 degrees only for statically square planes,
        otherwise 0/180).
    max_rotation_deg : float
        Largest small-rotation angle in degrees (``0`` disables rotation).
    scale_range : (float, float) or None
        Zoom factor range; ``None`` or ``(1, 1)`` disables scaling.
    gamma_range : (float, float) or None
        Gamma exponent range; ``None`` disables gamma.
    noise_std : float
        Largest standard deviation of the additive Gaussian noise (``0``
        disables it).
    contrast_range : (float, float) or None
        Contrast factor range; ``None`` disables it.
    p : float
        Probability of applying each of rotation/scale, contrast, gamma,
        noise, blur, brightness and low resolution, independently (default
        0.25, similar to nnU-Net's 0.1-0.3).
    blur_sigma : (float, float) or None
        Range of the Gaussian blur's sigma in voxels (at most 1.5); ``None``
        (default) disables blur.
    brightness_range : (float, float) or None
        Multiplicative brightness factor range; ``None`` (default) disables it.
    low_res_range : (float, float) or None
        Zoom factor range of the low-resolution simulation, in ``(0, 1]``;
        ``None`` (default) disables it.

    Returns
    -------
    image : tf.Tensor
        float32, same shape as the input image.
    label : tf.Tensor
        int32, same shape as the input label; its values are a subset of the
        input label's values.

    Raises
    ------
    ValueError
        If shapes, dtypes, the seed or an argument are invalid.

    Notes
    -----
    3D inputs get flips on all three axes, quarter turns in the ``(x, y)``
    plane, and rotation/scaling about the ``z`` axis applied slice by slice
    (``z`` itself is not rescaled), plus the intensity transforms. See the
    module docstring for the exact definitions.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    label = tf.convert_to_tensor(label)
    seed = tf.convert_to_tensor(seed)

    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            f"image must have shape (H, W, C) or (X, Y, Z, C), got shape {image.shape}")
    if not label.dtype.is_integer:
        raise ValueError(f"label must have an integer dtype, got {label.dtype.name}")
    if label.shape.rank == rank - 1:
        label_has_channel = False
        label = label[..., tf.newaxis]
    elif label.shape.rank == rank and label.shape[-1] in (1, None):
        label_has_channel = True
    else:
        raise ValueError(
            f"label shape {label.shape} does not match image shape {image.shape} "
            "(expected the same spatial shape, with or without a trailing 1)")
    if not image.shape[:-1].is_compatible_with(label.shape[:-1]):
        raise ValueError(
            f"label spatial shape {label.shape[:-1]} differs from image {image.shape[:-1]}")
    label = tf.cast(label, tf.int32)
    if seed.shape != (2,) or seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be an int32/int64 tensor of shape (2,), got "
                         f"{seed.dtype.name} {seed.shape}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if max_rotation_deg < 0 or noise_std < 0:
        raise ValueError("max_rotation_deg and noise_std must be >= 0, got "
                         f"{max_rotation_deg} and {noise_std}")
    scale_range = _check_range("scale_range", scale_range, positive=True)
    gamma_range = _check_range("gamma_range", gamma_range, positive=True)
    contrast_range = _check_range("contrast_range", contrast_range, positive=True)
    blur_sigma = _check_range("blur_sigma", blur_sigma, positive=True)
    if blur_sigma is not None and blur_sigma[1] > 1.5:
        raise ValueError(f"blur_sigma must be at most 1.5 voxels (kernel radius {_BLUR_RADIUS}), got {blur_sigma}")
    brightness_range = _check_range("brightness_range", brightness_range, positive=True)
    low_res_range = _check_range("low_res_range", low_res_range, positive=True)
    if low_res_range is not None and low_res_range[1] > 1.0:
        raise ValueError(f"low_res_range must lie in (0, 1], got {low_res_range}")

    def both(fn, x, y):
        return fn(x), fn(y)

    # 1. flips
    for axis in flip_axes(flips, rank - 1):
        do = _happens(seed, _FLIP + axis, 0.5)
        image, label = tf.cond(
            do, lambda a=axis: both(lambda t: tf.reverse(t, [a]), image, label),
            lambda: (image, label))

    # 2. quarter turns in the plane of axes 0 and 1
    if rot90:
        size0, size1 = image.shape[0], image.shape[1]
        quarter = size0 is not None and size0 == size1
        k = tf.random.stateless_uniform([], _sub_seed(seed, _ROT90), 0, 4, dtype=tf.int32)
        if not quarter:
            k = 2 * (k // 2)
        image = _rot90(image, k, quarter)
        label = _rot90(label, k, quarter)

    # 3. small rotation and scaling
    has_rotation = max_rotation_deg > 0
    has_scale = scale_range is not None and scale_range != (1.0, 1.0)
    if (has_rotation or has_scale) and p > 0:
        max_rad = math.radians(max_rotation_deg)
        angle = _uniform(seed, _AFFINE_ANGLE, -max_rad, max_rad) if has_rotation else 0.0
        scale = (_uniform(seed, _AFFINE_SCALE, *scale_range) if has_scale
                 else tf.constant(1.0))
        shape = tf.shape(image)
        matrix = _affine_matrix(shape[0], shape[1], tf.cast(angle, tf.float32), scale)
        image, label = tf.cond(
            _happens(seed, _AFFINE_DO, p),
            lambda: (_affine(image, matrix, "BILINEAR"), _affine(label, matrix, "NEAREST")),
            lambda: (image, label))

    # 4-6. intensity transforms (image only)
    if contrast_range is not None and contrast_range != (1.0, 1.0) and p > 0:
        factor = _uniform(seed, _CONTRAST, *contrast_range)

        def contrasted(x=image):
            low, high = tf.reduce_min(x), tf.reduce_max(x)
            mean = tf.reduce_mean(x)
            return tf.clip_by_value((x - mean) * factor + mean, low, high)
        image = tf.cond(_happens(seed, _CONTRAST_DO, p), contrasted, lambda x=image: x)

    if gamma_range is not None and gamma_range != (1.0, 1.0) and p > 0:
        log_gamma = _uniform(seed, _GAMMA, math.log(gamma_range[0]), math.log(gamma_range[1]))

        def gammaed(x=image):
            low, high = tf.reduce_min(x), tf.reduce_max(x)
            extent = high - low
            unit = (x - low) / tf.maximum(extent, 1e-7)
            return tf.pow(tf.clip_by_value(unit, 0.0, 1.0), tf.exp(log_gamma)) * extent + low
        image = tf.cond(_happens(seed, _GAMMA_DO, p), gammaed, lambda x=image: x)

    if noise_std > 0 and p > 0:
        std = _uniform(seed, _NOISE_STD, 0.0, noise_std)

        def noisy(x=image):
            return x + tf.random.stateless_normal(tf.shape(x), _sub_seed(seed, _NOISE), stddev=std)
        image = tf.cond(_happens(seed, _NOISE_DO, p), noisy, lambda x=image: x)

    if blur_sigma is not None and p > 0:
        sigma = _uniform(seed, _BLUR, *blur_sigma)
        image = tf.cond(_happens(seed, _BLUR_DO, p), lambda: _gaussian_blur(image, sigma), lambda: image)

    if brightness_range is not None and brightness_range != (1.0, 1.0) and p > 0:
        factor = _uniform(seed, _BRIGHT, *brightness_range)
        image = tf.cond(_happens(seed, _BRIGHT_DO, p), lambda x=image: x * factor, lambda x=image: x)

    if low_res_range is not None and low_res_range != (1.0, 1.0) and p > 0:
        zoom = _uniform(seed, _LOWRES, *low_res_range)
        image = tf.cond(_happens(seed, _LOWRES_DO, p), lambda: _low_resolution(image, zoom), lambda: image)

    if not label_has_channel:
        label = label[..., 0]
    return image, label
