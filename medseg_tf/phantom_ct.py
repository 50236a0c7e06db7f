"""A deterministic abdominal CT phantom in Hounsfield units, MSD layout (no TensorFlow).

CT is the one modality whose intensities have a physical unit: the Hounsfield
unit (HU), the X-ray attenuation relative to water (0 HU) and air (-1000 HU).
The phantom imitates an organ + lesion task such as MSD Task03 Liver or Task10
Colon, at a coarse resolution that trains on a laptop:

* air outside the body (-1000 HU), a gas pocket inside it (bowel, -1000 to -900);
* an elliptical body with a subcutaneous fat layer (about -100 HU), muscle and
  other soft tissue (20-60 HU);
* an organ (label 1, "liver", 50-70 HU) holding 1-3 round lesions (label 2,
  "tumour") only 10-25 HU darker than the organ: with the noise below, lesions
  are hard to see in a wide window and visible in a narrow one;
* a vertebra (cortical bone 700-1200 HU, cancellous bone about 250-400 HU),
  so bone voxels exceed 400 HU;
* scanner-like noise: Gaussian, slightly correlated in-plane, standard deviation
  8-15 HU, and values rounded to whole HU as scanners store them;
* thick slices: in-plane spacing 3.2-4.0 mm (a real CT has about 0.7 mm over 512
  pixels; the phantom is coarser so that it trains on a CPU), slice thickness
  5-7.5 mm, so voxels are anisotropic by a factor of about 2.

Arrays are stored in RAS voxel order (``x`` increases towards the patient's
Right, ``y`` towards Anterior, ``z`` towards Superior, as everywhere in the
package): the organ lies at large ``x`` (the liver is on the patient's right),
the spine at small ``y`` (posterior). Same ``seed`` gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["make_ct_case", "write_ct_dataset", "CT_LABELS", "CT_DEFAULT_CASES", "HU_AIR", "HU_FAT",
           "HU_BONE_MIN"]

#: Label values and names (like MSD Task03 Liver).
CT_LABELS = {0: "background", 1: "liver", 2: "tumour"}

#: Number of cases written by default.
CT_DEFAULT_CASES = 16

#: Hounsfield units of air and (typical) fat; the lowest value of cortical bone in the phantom.
HU_AIR, HU_FAT, HU_BONE_MIN = -1000.0, -100.0, 700.0


def _ellipsoid(grid: np.ndarray, centre, radii) -> np.ndarray:
    """Normalised ellipsoid radius: < 1 inside, 1 on the surface (grid in mm, shape (..., 3))."""
    return np.sqrt((((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1))


def make_ct_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one CT phantom case.

    Parameters
    ----------
    seed : int
        Everything about the case follows from it.

    Returns
    -------
    image : np.ndarray
        float32, shape ``(X, Y, Z)`` (about 80-113 x 62-88 x 19-32 voxels), in HU,
        whole numbers from -1024 up to about 1200.
    label : np.ndarray
        uint8, same shape, values {0 background, 1 liver, 2 tumour}; every case has
        at least one lesion.
    affine : np.ndarray
        4x4 voxel-to-world matrix (mm, RAS), spacing about (3.2-4, 3.2-4, 5-7.5) mm.
    """
    rng = np.random.default_rng([seed, 20261204, 3])
    inplane = rng.uniform(3.2, 4.0)
    thick = rng.uniform(5.0, 7.5)
    spacing = np.array([inplane, inplane, thick])
    extent = np.array([rng.uniform(320, 360), rng.uniform(250, 280), rng.uniform(140, 160)])
    shape = tuple(int(round(e / s)) for e, s in zip(extent, spacing))
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3) mm, RAS
    x, y, z = grid[..., 0], grid[..., 1], grid[..., 2]

    # body: elliptic cylinder (x: left-right, y: posterior-anterior), radius varying slowly along z
    a0, b0 = rng.uniform(135, 150), rng.uniform(95, 110)
    a = a0 * (1 + 0.03 * np.sin(z / 40.0))
    b = b0 * (1 + 0.03 * np.cos(z / 50.0))
    body_r = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    body = body_r < 1.0
    fat_depth = rng.uniform(12, 22)  # mm of subcutaneous fat
    inner = np.sqrt((x / (a - fat_depth)) ** 2 + (y / (b - fat_depth)) ** 2) < 1.0

    hu = np.full(shape, HU_AIR, dtype=np.float64)
    hu[body] = HU_FAT + rng.uniform(-15, 15)
    muscle = rng.uniform(40, 55)
    soft = rng.uniform(20, 35)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 6.0 / spacing)
    texture /= texture.std() + 1e-8
    hu[inner] = soft + 6.0 * texture[inner]
    # visceral fat blobs inside the abdomen
    fat_blobs = ndimage.gaussian_filter(rng.standard_normal(shape), 10.0 / spacing)
    fat_blobs /= fat_blobs.std() + 1e-8
    hu[inner & (fat_blobs > 1.1)] = HU_FAT + rng.uniform(-10, 10)
    # a muscle ring just inside the fat (abdominal wall, back muscles)
    wall = inner & (np.sqrt((x / (a - fat_depth - 12)) ** 2 + (y / (b - fat_depth - 12)) ** 2) >= 1.0)
    hu[wall] = muscle + 4.0 * texture[wall]

    # vertebra: posterior midline, cortical shell and cancellous core; paraspinal muscles
    spine_c = np.array([rng.uniform(-5, 5), -0.55 * b0])
    spine_r = rng.uniform(16, 20)
    d_spine = np.sqrt((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2)
    for side in (-1, 1):
        para = _ellipsoid(grid[..., :2], (spine_c[0] + side * 35, spine_c[1] - 5), (22, 18)) < 1
        hu[para & inner] = muscle + 4.0 * texture[para & inner]
    hu[d_spine < spine_r] = rng.uniform(700, 1100)
    hu[d_spine < spine_r - rng.uniform(3.5, 5)] = rng.uniform(250, 380)

    # organ (label 1): a large smooth blob on the patient's right (x > 0 in RAS), anterior of the spine
    centre = np.array([rng.uniform(45, 60), rng.uniform(-5, 20), rng.uniform(-10, 10)])
    radii = np.array([rng.uniform(65, 80), rng.uniform(55, 70), rng.uniform(55, 70)])
    warp = ndimage.gaussian_filter(rng.standard_normal(shape), 25.0 / spacing)
    warp /= warp.std() + 1e-8
    organ_r = _ellipsoid(grid, centre, radii) + 0.08 * warp
    organ = (organ_r < 1.0) & inner & ~wall
    organ_hu = rng.uniform(50, 70)
    hu[organ] = organ_hu + 3.0 * texture[organ]

    # lesions (label 2): 1-3 spheres inside the organ, 10-25 HU darker
    label = organ.astype(np.uint8)
    organ_pts = np.argwhere(organ_r < 0.75)
    n_lesions = int(rng.integers(1, 4))
    for _ in range(n_lesions):
        c = grid[tuple(organ_pts[rng.integers(len(organ_pts))])]
        r = rng.uniform(12, 22)
        lesion = (_ellipsoid(grid, c, [r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)]) < 1.0) & organ
        hu[lesion] = organ_hu - rng.uniform(10, 25) + 2.0 * texture[lesion]
        label[lesion] = 2

    # a gas pocket (bowel) on the patient's left (x < 0), anterior
    gas_c = [-rng.uniform(40, 80), rng.uniform(20, 50), rng.uniform(-40, 40)]
    gas = (_ellipsoid(grid, gas_c, [rng.uniform(12, 20), rng.uniform(10, 15), rng.uniform(15, 30)]) < 1) & inner
    gas &= label == 0
    hu[gas] = rng.uniform(-1000, -900)

    # partial volume across thick slices (blur along z more than in-plane), then scanner noise
    hu = ndimage.gaussian_filter(hu, [0.4, 0.4, 0.6])
    noise_sd = rng.uniform(8, 15)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), [0.7, 0.7, 0.0])
    noise *= noise_sd / (noise.std() + 1e-8)
    hu = hu + noise
    hu = np.clip(np.rint(hu), -1024, 3071)  # the range a 12-bit scanner stores

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * spacing + np.array([0.0, 0.0, rng.uniform(-300, -200)])
    return hu.astype(np.float32), label, affine


def write_ct_dataset(out_dir: str | os.PathLike, n_cases: int = CT_DEFAULT_CASES, seed: int = 0, *,
                     overwrite: bool = False) -> Path:
    """Write ``n_cases`` CT phantom cases in MSD layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Parameters
    ----------
    out_dir : str or PathLike
        Target folder; written atomically (see :func:`medseg_tf.datasets.write_msd_dataset`).
    n_cases : int
        Number of cases (about 0.3 s each).
    seed : int
        Case ``i`` is generated from seed ``seed * 100_000 + i``.
    overwrite : bool
        Replace an existing phantom folder.
    """
    from medseg_tf.datasets import write_generated_dataset

    return write_generated_dataset(
        out_dir, make_ct_case, "ct", n_cases, seed, name="PhantomCT", labels=CT_LABELS, modality={0: "CT"},
        description="Synthetic abdominal CT phantom in HU generated by medseg_tf.phantom_ct (seed %d)" % seed,
        overwrite=overwrite)
