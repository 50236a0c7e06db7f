"""2D image / mask pairs such as retinal fundus photographs (NumPy, scikit-image, Pillow; no TensorFlow).

A folder of photographs and their masks (DRIVE, STARE, CHASE_DB1, the fundus
phantom of :mod:`medseg_tf.phantom_fundus`)::

    root/
        images/21_training.tif    or fundus_000.png    RGB photograph
        manual/21_manual1.gif     or fundus_000.png    vessel mask (0/255 or 0/1)
        mask/21_training_mask.gif or fundus_000.png    field of view (optional)

:func:`find_pairs` matches the three files of each image by their id: the file
name without extension and without DRIVE's suffixes (``_training``, ``_test``,
``_manual1``, ``_mask`` ...), so both layouts work. :func:`load_pair` reads one
triple and checks it (readable, RGB, binary masks, same size), raising
:class:`~medseg_tf.errors.DataError` naming the file. Arrays are indexed
``(row, column[, channel])``, sizes are in pixels.

Preprocessing for vessels (:func:`preprocess`): the green channel has the best
vessel contrast (haemoglobin absorbs green light), contrast-limited adaptive
histogram equalisation (CLAHE, :func:`clahe`) evens out the illumination, and
statistics are taken inside the field of view only, so the black corners do
not count.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg_tf.errors import ConfigError, DataError

__all__ = ["Pair", "find_pairs", "load_pair", "read_image", "read_mask", "fov_from_image", "eye_from_disc",
           "green_channel",
           "clahe", "preprocess", "PREPROCESSING", "sample_patches", "IMAGE_SUFFIXES"]

#: File extensions read as images or masks.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp", ".ppm")

#: Preprocessing names accepted by :func:`preprocess`.
PREPROCESSING = ("rgb", "green", "green_clahe")

_DRIVE_SUFFIX = re.compile(r"_(training|test)?_?(manual\d|mask)?$")


@dataclass(frozen=True)
class Pair:
    """The files of one 2D case.

    Attributes
    ----------
    case_id : str
    image_path : Path
    mask_path : Path
    fov_path : Path or None
        None when the data set has no field-of-view masks.
    """

    case_id: str
    image_path: Path
    mask_path: Path
    fov_path: Path | None


def _case_key(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    key = _DRIVE_SUFFIX.sub("", stem)
    return key or stem


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(folder, "is a file, not a folder" if folder.exists() else "folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            key = _case_key(p)
            if key in found:
                raise DataError(p, f"two files with the id {key!r} ({found[key].name} and {p.name})")
            found[key] = p
    return found


def find_pairs(root: str | os.PathLike, *, images: str = "images", masks: str = "manual",
               fov: str | None = "mask") -> list[Pair]:
    """List the image / mask (/ field-of-view) triples of a 2D data set.

    Parameters
    ----------
    root : str or PathLike
        The data set folder.
    images, masks : str
        Sub-folders holding the photographs and the reference masks (DRIVE:
        ``"images"``, ``"1st_manual"``).
    fov : str or None
        Sub-folder of field-of-view masks (DRIVE: ``"mask"``); ``None`` or a missing
        folder: no FOV files (estimate them with :func:`fov_from_image`).

    Returns
    -------
    list of Pair
        Sorted by id.

    Raises
    ------
    DataError
        A folder is missing or empty, or an image has no mask.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(root, "is a file, not a data set folder" if root.exists() else "data set folder not found")
    imgs = _listing(root / images)
    if not imgs:
        raise DataError(root / images, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    msks = _listing(root / masks)
    fovs = _listing(root / fov) if fov is not None and (root / fov).is_dir() else {}
    pairs = []
    for key, path in imgs.items():
        if key not in msks:
            raise DataError(path, f"no mask with the id {key!r} in {root / masks}")
        pairs.append(Pair(key, path, msks[key], fovs.get(key)))
    return pairs


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photograph as RGB.

    Returns
    -------
    np.ndarray
        uint8, shape ``(H, W, 3)``.

    Raises
    ------
    DataError
        Missing, unreadable, or not a colour image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("RGB", "RGBA", "P"):
                raise DataError(path, f"expected an RGB photograph, got a {mode!r} image "
                                      "(a mask or grey-level image in the images folder?)")
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(path, f"cannot read as an image ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask (values 0/255 or 0/1; colour masks must be grey).

    Returns
    -------
    np.ndarray
        bool, shape ``(H, W)``.

    Raises
    ------
    DataError
        Missing, unreadable, or not binary.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16") else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(path, f"cannot read as an image ({type(exc).__name__}: {exc})") from None
    values = np.unique(arr)
    if arr.dtype == np.bool_:
        return arr.copy()
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DataError(path, f"not a binary mask: values {shown} (expected 0/255 or 0/1)")
    return arr > 0


def fov_from_image(image: np.ndarray, threshold: float = 20.0) -> np.ndarray:
    """Estimate the camera's field of view: pixels whose red channel exceeds ``threshold``.

    The corners of a fundus photograph are black; the red channel is the
    brightest inside the eye. Holes (dark vessels, the macula) are filled and
    the largest connected component kept.

    Parameters
    ----------
    image : np.ndarray
        uint8 RGB ``(H, W, 3)``.
    threshold : float
        Grey level (0-255) separating the black border from the retina.

    Returns
    -------
    np.ndarray
        bool ``(H, W)``.
    """
    red = np.asarray(image)[..., 0].astype(np.float32)
    fov = ndimage.binary_opening(red > threshold, iterations=2)
    lab, n = ndimage.label(fov)
    if n > 1:
        sizes = ndimage.sum(fov, lab, index=range(1, n + 1))
        fov = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(fov)


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check one image / mask / FOV triple.

    Returns
    -------
    image : np.ndarray
        uint8 ``(H, W, 3)``.
    mask : np.ndarray
        uint8 ``(H, W)``, 0 or 1.
    fov : np.ndarray
        bool ``(H, W)``; estimated with :func:`fov_from_image` when the pair has no FOV file.

    Raises
    ------
    DataError
        Naming the file: unreadable, not RGB, not binary, or a mask whose size
        differs from its image.
    """
    image = read_image(pair.image_path)
    size = f"{image.shape[1]}x{image.shape[0]}"
    mask = read_mask(pair.mask_path)
    if mask.shape != image.shape[:2]:
        raise DataError(pair.mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                                        f"{pair.image_path.name} is {size}")
    if pair.fov_path is not None:
        fov = read_mask(pair.fov_path)
        if fov.shape != image.shape[:2]:
            raise DataError(pair.fov_path, f"field-of-view mask is {fov.shape[1]}x{fov.shape[0]} pixels but its "
                                           f"image {pair.image_path.name} is {size}")
    else:
        fov = fov_from_image(image)
    return image, mask.astype(np.uint8), fov


def eye_from_disc(image: np.ndarray, fov: np.ndarray | None = None, *, top_fraction: float = 0.005) -> str:
    """Which eye an upright fundus photograph shows, from the side its optic disc lies on (a heuristic).

    The optic disc is usually the brightest structure of a fundus photograph and lies on the nasal side:
    on the viewer's right for a right eye, on the left for a left eye (the photograph upright, superior
    at the top, as cameras save it). The brightest pixels are taken as the disc and compared with the
    centre column of the field of view. Meant for macula-centred photographs; on disc-centred ones, or
    where bright reflexes or exudates outshine the disc, the answer is arbitrary: check it.

    Parameters
    ----------
    image : np.ndarray
        ``(rows, columns, 3)`` RGB or ``(rows, columns)`` grey, any dtype.
    fov : np.ndarray, optional
        Boolean field of view ``(rows, columns)`` (default: every pixel).
    top_fraction : float
        Share of the brightest pixels in the field of view taken as the disc, in (0, 1].

    Returns
    -------
    str
        ``"right"`` if those pixels lie mostly right of the field of view's centre column, else ``"left"``.

    Examples
    --------
    >>> img = np.zeros((40, 60)); img[18:22, 50:54] = 1.0
    >>> eye_from_disc(img), eye_from_disc(img[:, ::-1])
    ('right', 'left')
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    image = np.asarray(image, dtype=float)
    gray = image.mean(axis=-1) if image.ndim == 3 else image
    if gray.ndim != 2:
        raise ValueError(f"expected a (rows, columns[, 3]) image, got shape {image.shape}")
    inside = np.ones(gray.shape, bool) if fov is None else np.asarray(fov, bool)
    if inside.shape != gray.shape:
        raise ValueError(f"field of view {inside.shape} does not match the image's rows and columns {gray.shape}")
    values = gray[inside]
    if values.size == 0:
        raise ValueError("the field of view is empty")
    bright = inside & (gray >= np.quantile(values, 1 - top_fraction))
    centre = np.nonzero(inside)[1].mean()
    return "right" if np.nonzero(bright)[1].mean() > centre else "left"


def green_channel(image: np.ndarray) -> np.ndarray:
    """The green channel of an RGB uint8 image, as float32 in [0, 1], shape ``(H, W)``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return image[..., 1].astype(np.float32) / 255.0


def clahe(gray: np.ndarray, *, clip_limit: float = 0.01, kernel_size: int | None = None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (``skimage.exposure.equalize_adapthist``).

    Parameters
    ----------
    gray : np.ndarray
        float in [0, 1], shape ``(H, W)``.
    clip_limit : float
        Contrast limit in (0, 1]: higher gives more contrast (and more noise).
    kernel_size : int, optional
        Tile size in pixels (default: 1/8 of the image).

    Returns
    -------
    np.ndarray
        float32 in [0, 1], same shape.
    """
    from skimage import exposure

    gray = np.clip(np.asarray(gray, dtype=np.float64), 0.0, 1.0)
    return exposure.equalize_adapthist(gray, kernel_size=kernel_size, clip_limit=clip_limit).astype(np.float32)


def preprocess(image: np.ndarray, fov: np.ndarray, method: str = "green_clahe") -> np.ndarray:
    """Network input from a fundus photograph: channels chosen by ``method``, z-scored inside the FOV.

    Parameters
    ----------
    image : np.ndarray
        uint8 RGB ``(H, W, 3)``.
    fov : np.ndarray
        bool ``(H, W)``: statistics are computed inside it, pixels outside are set to 0.
    method : {"rgb", "green", "green_clahe"}
        ``"rgb"``: the three channels, each z-scored; ``"green"``: the green channel;
        ``"green_clahe"``: the green channel after :func:`clahe`.

    Returns
    -------
    np.ndarray
        float32 ``(H, W, C)`` with ``C = 3`` for ``"rgb"``, else 1.
    """
    if method not in PREPROCESSING:
        raise ConfigError("method", f"must be one of {', '.join(PREPROCESSING)}, got {method!r}")
    fov = np.asarray(fov, dtype=bool)
    if not fov.any():
        raise ValueError("the field-of-view mask is empty")
    if method == "rgb":
        x = np.asarray(image, dtype=np.float32) / 255.0
    elif method == "green":
        x = green_channel(image)[..., None]
    else:
        x = clahe(green_channel(image))[..., None]
    x = np.asarray(x, dtype=np.float64)
    inside = x[fov]
    x = (x - inside.mean(axis=0)) / (inside.std(axis=0) + 1e-6)
    x[~fov] = 0.0
    return x.astype(np.float32)


def sample_patches(images, masks, *, patch: int = 64, n: int = 64, foreground_fraction: float = 0.5,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random square training patches from 2D images, some centred on foreground (NumPy, seeded).

    Parameters
    ----------
    images : sequence of np.ndarray
        Preprocessed images ``(H, W, C)``, each at least ``patch`` pixels wide and high.
    masks : sequence of np.ndarray
        Integer masks ``(H, W)``.
    patch : int
        Side of the patches in pixels.
    n : int
        Number of patches in all (images chosen uniformly).
    foreground_fraction : float
        Probability that a patch is centred on a foreground pixel (thin vessels
        are a few % of the pixels).
    seed : int
        Seeds the sampling.

    Returns
    -------
    x : np.ndarray
        float32 ``(n, patch, patch, C)``.
    y : np.ndarray
        int32 ``(n, patch, patch)``.
    """
    rng = np.random.default_rng([seed, 14])
    xs, ys = [], []
    for _ in range(n):
        k = int(rng.integers(len(images)))
        img, msk = np.asarray(images[k]), np.asarray(masks[k])
        h, w = msk.shape
        if h < patch or w < patch:
            raise ValueError(f"image {k} is {w}x{h} pixels, smaller than the patch ({patch})")
        fg = np.argwhere(msk > 0)
        if len(fg) and rng.random() < foreground_fraction:
            r, c = fg[rng.integers(len(fg))]
        else:
            r, c = rng.integers(h), rng.integers(w)
        r0 = int(np.clip(r - patch // 2, 0, h - patch))
        c0 = int(np.clip(c - patch // 2, 0, w - patch))
        xs.append(img[r0:r0 + patch, c0:c0 + patch])
        ys.append(msk[r0:r0 + patch, c0:c0 + patch])
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int32)
