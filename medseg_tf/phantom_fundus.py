"""A deterministic retinal fundus photograph phantom with vessel masks, DRIVE-like layout (no TensorFlow).

Retinal vessel segmentation (DRIVE, STARE, CHASE_DB1) works on 2D colour
photographs of the back of the eye, a completely different kind of data from
the 3D scans of the other phantoms:

* RGB, 8 bits per channel, indexed ``(row, column, channel)`` like any photo
  (not RAS, no spacing in mm: sizes are in pixels);
* a circular field of view (FOV): the camera sees a disc, the corners are black
  and are excluded from every metric (each DRIVE image comes with a FOV mask);
* an orange-red background, a bright yellowish optic disc where the vessels
  enter, a darker macula (fovea) on the other side;
* a branching vessel tree from the optic disc: trunks 6.5-8 px wide split into
  thinner branches down to 1 px, so much of the vessel *length* is 1-2 px wide.
  Vessels absorb green light most, so they have the best contrast in the green
  channel;
* uneven illumination (vignetting and a smooth gradient), a slight blur and
  noise.

Same ``seed`` gives the same bytes. :func:`write_fundus_dataset` writes PNG
triples ``images/<id>.png`` (RGB), ``manual/<id>.png`` (vessels, 0/255),
``mask/<id>.png`` (FOV, 0/255), as DRIVE's ``images/``, ``1st_manual/``,
``mask/`` folders; read them with :func:`medseg_tf.images2d.read_pairs`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg_tf.errors import OverwriteError

__all__ = ["make_fundus_case", "write_fundus_dataset", "FUNDUS_SIZE", "FUNDUS_DEFAULT_CASES",
           "FUNDUS_MAX_WIDTH", "FUNDUS_FOLDERS"]

#: Image size (rows, columns) in pixels.
FUNDUS_SIZE = (256, 256)

#: Widest vessel trunk, in pixels (trunks are drawn 6.5 px to this wide).
FUNDUS_MAX_WIDTH = 8.0

#: Number of images written by default.
FUNDUS_DEFAULT_CASES = 12

#: Sub-folders written by :func:`write_fundus_dataset`: image, vessel mask, field of view.
FUNDUS_FOLDERS = ("images", "manual", "mask")


def _branches(rng: np.random.Generator, start: np.ndarray, angle: float, width: float, turn: float,
              depth: int, out: list) -> None:
    """Grow one vessel (and its children) as a list of (row, col, width) points, 0.5 px apart."""
    length = rng.uniform(25, 45) * (1.4 if depth == 0 else 1.0) * max(width, 2.0) / 4.0 + 15
    n = int(length / 0.5)
    pts = np.empty((n, 3))
    p, a = start.astype(float), angle
    for i in range(n):
        a += turn * 0.5 + rng.normal(0, 0.03)
        p = p + 0.5 * np.array([np.sin(a), np.cos(a)])
        pts[i] = (p[0], p[1], width)
    out.append(pts)
    if width <= 1.05 or depth >= 6:
        return
    split = rng.uniform(25, 40) * np.pi / 180
    w1 = max(1.0, width * rng.uniform(0.72, 0.85))
    w2 = max(1.0, width * rng.uniform(0.5, 0.65))
    sign = rng.choice([-1, 1])
    _branches(rng, p, a + sign * split * 0.4, w1, turn * 0.8, depth + 1, out)
    _branches(rng, p, a - sign * split, w2, -turn * 0.5 + rng.normal(0, 0.01), depth + 1, out)


def _draw(points: list, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage (0..1) of discs of diameter ``width`` at every point (max over points)."""
    cov = np.zeros(shape)
    for pts in points:
        for r0, c0, w in pts:
            rad = w / 2.0
            lo_r, hi_r = int(np.floor(r0 - rad - 1)), int(np.ceil(r0 + rad + 2))
            lo_c, hi_c = int(np.floor(c0 - rad - 1)), int(np.ceil(c0 + rad + 2))
            lo_r, lo_c = max(lo_r, 0), max(lo_c, 0)
            hi_r, hi_c = min(hi_r, shape[0]), min(hi_c, shape[1])
            if lo_r >= hi_r or lo_c >= hi_c:
                continue
            rr, cc = np.ogrid[lo_r:hi_r, lo_c:hi_c]
            d = np.sqrt((rr - r0) ** 2 + (cc - c0) ** 2) - rad
            np.maximum(cov[lo_r:hi_r, lo_c:hi_c], np.clip(0.5 - d, 0.0, 1.0), out=cov[lo_r:hi_r, lo_c:hi_c])
    return cov


def _layout(seed: int) -> tuple[np.random.Generator, np.ndarray, float, int]:
    """The first draws of a case: its generator, FOV centre (row, column) and radius in px, and eye (+1/-1).

    ``eye=+1`` puts the optic disc right of the centre (a right eye, see :func:`fundus_eye`).
    """
    rng = np.random.default_rng([seed, 20261204, 2])
    h, w = FUNDUS_SIZE
    centre = np.array([h / 2 + rng.uniform(-4, 4), w / 2 + rng.uniform(-4, 4)])
    fov_r = rng.uniform(0.44, 0.47) * min(h, w)
    eye = int(rng.choice([-1, 1]))  # optic disc on the left or right of the image
    return rng, centre, fov_r, eye


def fundus_eye(seed: int) -> str:
    """Which eye the photograph of ``seed`` shows: ``"right"`` (optic disc on the viewer's right) or ``"left"``.

    Upright photographs, as cameras save them: the disc lies on the nasal side, the viewer's right for a
    right eye. The same draw as :func:`make_fundus_case`, so the two always agree.

    >>> sorted({fundus_eye(s) for s in range(12)})
    ['left', 'right']
    """
    return "right" if _layout(seed)[3] > 0 else "left"


def make_fundus_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one fundus photograph with its vessel mask and field of view.

    Parameters
    ----------
    seed : int
        Everything about the image follows from it.

    Returns
    -------
    image : np.ndarray
        uint8, shape ``(256, 256, 3)``, RGB.
    vessels : np.ndarray
        uint8, shape ``(256, 256)``, 1 on vessel pixels (inside the FOV only), else 0.
    fov : np.ndarray
        bool, shape ``(256, 256)``, True inside the camera's field of view.
    """
    rng, centre, fov_r, eye = _layout(seed)
    h, w = FUNDUS_SIZE
    rr, cc = np.mgrid[0:h, 0:w].astype(float)
    rad = np.sqrt((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / fov_r  # 1 at the FOV edge
    fov = rad < 1.0

    disc = centre + np.array([rng.uniform(-10, 10), eye * rng.uniform(0.5, 0.6) * fov_r])
    macula = centre + np.array([rng.uniform(-6, 6), -eye * rng.uniform(0.2, 0.3) * fov_r])
    disc_r = rng.uniform(0.11, 0.14) * fov_r

    # background colour with choroidal texture
    base = np.array([rng.uniform(0.72, 0.85), rng.uniform(0.33, 0.42), rng.uniform(0.10, 0.18)])
    tex = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6.0)
    tex /= tex.std() + 1e-8
    img = base[None, None, :] * (1 + 0.05 * tex[..., None])
    # macula: darker, optic disc: bright yellow with a soft edge
    d_mac = np.sqrt((rr - macula[0]) ** 2 + (cc - macula[1]) ** 2) / (0.18 * fov_r)
    img *= (1 - 0.25 * np.exp(-d_mac ** 2))[..., None]
    d_disc = np.sqrt((rr - disc[0]) ** 2 + (cc - disc[1]) ** 2) / disc_r
    disc_w = 1 / (1 + np.exp((d_disc - 1) * 8))
    disc_col = np.array([0.98, rng.uniform(0.75, 0.85), rng.uniform(0.45, 0.6)])
    img = img * (1 - disc_w[..., None]) + disc_col * disc_w[..., None]

    # vessel tree: 4 trunks from the disc (up/down, towards and away from the macula)
    points: list = []
    towards = np.arctan2(macula[0] - disc[0], macula[1] - disc[1])
    for k, (offset, turn) in enumerate([(-0.9, 0.012), (0.9, -0.012), (-2.3, -0.004), (2.3, 0.004)]):
        a = towards + offset * (1 if eye > 0 else -1) + rng.normal(0, 0.1)
        width = rng.uniform(6.5, FUNDUS_MAX_WIDTH) * (1.0 if k < 2 else 0.8)
        t = turn * (1 if eye > 0 else -1) * (1 if k < 2 else 1)
        _branches(rng, disc + rng.normal(0, 2, 2), a, width, t, 0, points)
    cov = _draw(points, (h, w)) * fov
    vessels = (cov >= 0.5).astype(np.uint8)
    absorb = np.array([0.25, 0.55, 0.35]) * rng.uniform(0.85, 1.1)  # green absorbs most
    img = img * (1 - cov[..., None] * absorb)

    # illumination: vignetting and a smooth gradient; blur; noise; black outside the FOV
    grad = 1 + 0.15 * ((rr - centre[0]) * np.cos(rng.uniform(0, 2 * np.pi)) / fov_r)
    light = (1 - 0.35 * np.clip(rad, 0, 1) ** 2) * grad * rng.uniform(0.85, 1.05)
    img = img * light[..., None]
    img = ndimage.gaussian_filter(img, [0.6, 0.6, 0])
    img = img + rng.normal(0, 0.012, img.shape)
    edge = np.clip((1.0 - rad) * fov_r, 0, 1)  # one-pixel soft edge of the FOV
    img = img * edge[..., None] + rng.normal(0, 0.004, img.shape) * (1 - edge[..., None])
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return image, vessels, fov


def write_fundus_dataset(out_dir: str | os.PathLike, n_cases: int = FUNDUS_DEFAULT_CASES, seed: int = 0, *,
                         overwrite: bool = False) -> Path:
    """Write ``n_cases`` fundus phantoms as PNG triples in a DRIVE-like layout, atomically.

    Layout::

        out_dir/
            images/fundus_000.png   RGB photograph
            manual/fundus_000.png   vessel mask, 0 or 255
            mask/fundus_000.png     field of view, 0 or 255
            dataset.json            name, seed, image ids

    Parameters
    ----------
    out_dir : str or PathLike
        Target folder, written into a temporary sibling and renamed into place.
    n_cases : int
        Number of images.
    seed : int
        Image ``i`` is generated from seed ``seed * 100_000 + i``.
    overwrite : bool
        Replace an existing folder written by this function (one holding only its
        ``dataset.json`` and the three sub-folders).
    """
    from PIL import Image

    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    out_dir = Path(out_dir)
    written = set(FUNDUS_FOLDERS) | {"dataset.json"}
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise OverwriteError(f"{out_dir}: folder exists and is not empty; pass overwrite=True "
                                 "(or --overwrite) to replace it")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in written)
        if foreign or not (out_dir / "dataset.json").is_file():
            raise OverwriteError(f"{out_dir}: refusing to replace a folder this command did not write "
                                 f"({', '.join(foreign[:3]) or 'no dataset.json'})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for sub in FUNDUS_FOLDERS:
            (tmp / sub).mkdir()
        ids = []
        for i in range(n_cases):
            image, vessels, fov = make_fundus_case(seed * 100_000 + i)
            cid = f"fundus_{i:03d}"
            Image.fromarray(image, mode="RGB").save(tmp / "images" / f"{cid}.png")
            Image.fromarray((vessels * 255).astype(np.uint8), mode="L").save(tmp / "manual" / f"{cid}.png")
            Image.fromarray((fov * 255).astype(np.uint8), mode="L").save(tmp / "mask" / f"{cid}.png")
            ids.append(cid)
        meta = {"name": "PhantomFundus", "description": "Synthetic fundus photographs generated by "
                "medseg_tf.phantom_fundus (seed %d)" % seed, "licence": "CC0 (generated)",
                "size": list(FUNDUS_SIZE), "images": ids, "seed": seed}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
