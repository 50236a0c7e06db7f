"""A deterministic multi-modal brain tumour MRI phantom, stored as MSD Task01 (no TensorFlow).

Brain tumour segmentation (BraTS, MSD Task01) uses four MRI sequences of the same
head, co-registered on one grid, skull-stripped (zero outside the brain) and
stored as one 4D NIfTI per case with the channels last: ``(X, Y, Z, 4)`` in the
order FLAIR, T1w, T1gd (T1 after gadolinium contrast), T2w. Each sequence shows
a different part of the tumour, which is why all four are needed:

========================  =======  ======  ======  ======
tissue (label)            FLAIR    T1w     T1gd    T2w
========================  =======  ======  ======  ======
white matter              mid      bright  bright  dark
grey matter               mid+     mid     mid     mid
CSF (ventricles)          dark     dark    dark    bright
oedema (1)                bright   mid-    mid-    bright
non-enhancing core (2)    mid+     dark    dark    bright
enhancing tumour (3)      mid+     mid-    bright  mid
========================  =======  ======  ======  ======

Label values follow MSD Task01: 0 background, 1 oedema, 2 non-enhancing tumour
(necrosis included), 3 enhancing tumour. Labels are disjoint; the *regions*
BraTS evaluates are nested: whole tumour {1, 2, 3} contains tumour core {2, 3},
which contains enhancing tumour {3} (see :mod:`medseg_tf.regions`). Spatially
the enhancing tumour is a rim around the non-enhancing centre, the oedema an
irregular halo around both. One case in five has no enhancing part (a
low-grade-like tumour), so the enhancing region is empty there, as in the real
data.

Every channel has its own smooth multiplicative bias field, Rician noise and
intensity scale; the grid is 3 mm isotropic (BraTS is 1 mm, resampled by the
organisers to one common grid; the phantom is coarser so that it trains on a
CPU) with a fixed shape, in RAS voxel order. Same ``seed`` gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["make_brain_case", "write_brain_dataset", "BRAIN_LABELS", "BRAIN_MODALITIES", "BRAIN_SHAPE",
           "BRAIN_SPACING", "BRAIN_DEFAULT_CASES"]

#: Label values and names, as in MSD Task01 BrainTumour's dataset.json.
BRAIN_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}

#: Channel index -> sequence name, as in MSD Task01's dataset.json ``modality``.
BRAIN_MODALITIES = {0: "FLAIR", 1: "T1w", 2: "t1gd", 3: "T2w"}

#: Grid of every case: shape (X, Y, Z) and isotropic spacing in mm.
BRAIN_SHAPE = (48, 56, 44)
BRAIN_SPACING = 3.0

#: Number of cases written by default.
BRAIN_DEFAULT_CASES = 16

# mean intensity of each tissue in each channel (FLAIR, T1w, T1gd, T2w), before bias, noise and scale
_TISSUE = {
    "wm": (0.50, 0.80, 0.80, 0.30),
    "gm": (0.60, 0.55, 0.57, 0.50),
    "csf": (0.12, 0.20, 0.20, 1.00),
    "edema": (0.95, 0.45, 0.47, 0.80),
    "necrotic": (0.70, 0.25, 0.25, 0.90),
    "enhancing": (0.70, 0.45, 1.00, 0.60),
}


def _smooth(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def make_brain_case(seed: int, *, bias_strength: float | None = None, return_bias: bool = False):
    """Generate one 4-channel brain tumour case.

    Parameters
    ----------
    seed : int
        Everything about the case follows from it.
    bias_strength : float, optional
        Standard deviation of the log bias field of each channel inside the brain
        (its mean there is 0; default: drawn per case in 0.08-0.2). Larger values make the field stronger (0.3 gives
        intensity changes of about +-35 % across the brain).
    return_bias : bool
        Also return the multiplicative bias field that was applied.

    Returns
    -------
    image : np.ndarray
        float32, shape ``(48, 56, 44, 4)``, channels FLAIR, T1w, T1gd, T2w; exactly
        0 outside the brain, positive inside.
    label : np.ndarray
        uint8, shape ``(48, 56, 44)``, values {0, 1, 2, 3} (no 3 in one case in five).
    affine : np.ndarray
        4x4 voxel-to-world matrix (3 mm isotropic, RAS).
    bias : np.ndarray
        Only with ``return_bias``: float32 ``(48, 56, 44, 4)``, the multiplicative
        field of each channel (1 outside the brain). ``image / bias`` is the
        image without bias (still with noise).
    """
    rng = np.random.default_rng([seed, 20261204, 1])
    shape = BRAIN_SHAPE
    h = BRAIN_SPACING
    axes = [(np.arange(n) - (n - 1) / 2.0) * h for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # mm, RAS

    # brain: a warped ellipsoid (left-right, posterior-anterior, inferior-superior radii in mm)
    radii = np.array([rng.uniform(58, 66), rng.uniform(70, 78), rng.uniform(52, 58)])
    warp = _smooth(rng, shape, 6.0)
    r = np.sqrt(((grid / radii) ** 2).sum(-1)) + 0.03 * warp
    brain = r < 1.0
    gm_band = r > rng.uniform(0.78, 0.84) + 0.06 * _smooth(rng, shape, 2.0)
    texture = _smooth(rng, shape, 1.5)

    # ventricles: two ellipsoids either side of the midline
    csf = np.zeros(shape, bool)
    for side in (-1, 1):
        c = np.array([side * rng.uniform(7, 10), rng.uniform(-5, 8), rng.uniform(2, 10)])
        csf |= np.sqrt((((grid - c) / [6.0, rng.uniform(18, 24), 7.0]) ** 2).sum(-1)) < 1.0

    # tumour: in one hemisphere, away from the midline and the surface
    side = rng.choice([-1, 1])
    t_c = np.array([side * rng.uniform(22, 32), rng.uniform(-30, 30), rng.uniform(-10, 20)])
    t_warp = _smooth(rng, shape, 3.0)
    dist = np.sqrt(((grid - t_c) ** 2).sum(-1)) + 2.5 * t_warp  # mm, irregular
    core_r = rng.uniform(12, 20)
    enhancing = seed % 5 != 4
    rim = rng.uniform(4.0, 6.5) if enhancing else 0.0
    edema_r = core_r + rng.uniform(8, 16)
    e_warp = _smooth(rng, shape, 2.5)
    label = np.zeros(shape, np.uint8)
    label[(dist + 4.0 * e_warp < edema_r) & brain] = 1
    label[(dist < core_r) & brain] = 2 if not enhancing else 3
    if enhancing:
        label[(dist < core_r - rim) & brain] = 2
    label[~brain] = 0

    # clean images: tissue means per channel, texture (WM/GM) and per-case contrast
    tissue = np.zeros(shape, np.int8)  # 0 wm, 1 gm, 2 csf, 3 edema, 4 necrotic, 5 enhancing
    tissue[gm_band] = 1
    tissue[csf] = 2
    tissue[label == 1] = 3
    tissue[label == 2] = 4
    tissue[label == 3] = 5
    means = np.array([_TISSUE[k] for k in ("wm", "gm", "csf", "edema", "necrotic", "enhancing")])
    means = means * rng.uniform(0.9, 1.1, means.shape)  # per-case contrast
    clean = means[tissue] + 0.04 * texture[..., None]  # (X, Y, Z, 4)
    clean = ndimage.gaussian_filter(clean, [0.7, 0.7, 0.7, 0])  # partial volume
    clean = np.clip(clean, 0.02, None)

    # acquisition per channel: bias field, Rician noise, scale; zero outside the brain (skull-stripped)
    strength = rng.uniform(0.08, 0.2) if bias_strength is None else float(bias_strength)
    image = np.zeros((*shape, 4), np.float32)
    bias = np.ones((*shape, 4), np.float32)
    for ch in range(4):
        log_field = _smooth(rng, shape, 12.0)
        log_field = (log_field - log_field[brain].mean()) / (log_field[brain].std() + 1e-8)  # unit sd in the brain
        field = np.exp(strength * log_field)
        sigma = rng.uniform(0.02, 0.04)
        signal = clean[..., ch] * field
        noisy = np.sqrt((signal + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
        scale = 10 ** rng.uniform(2.5, 3.5)
        image[..., ch] = np.where(brain, noisy * scale, 0.0)
        bias[..., ch] = np.where(brain, field, 1.0)

    affine = np.diag([h, h, h, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * h
    if return_bias:
        return image, label, affine, bias
    return image, label, affine


def write_brain_dataset(out_dir: str | os.PathLike, n_cases: int = BRAIN_DEFAULT_CASES, seed: int = 0, *,
                        overwrite: bool = False) -> Path:
    """Write ``n_cases`` brain tumour phantom cases as MSD Task01 does (4D NIfTI, channels last).

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
        out_dir, make_brain_case, "brain", n_cases, seed, name="PhantomBrainTumour", labels=BRAIN_LABELS,
        modality=BRAIN_MODALITIES,
        description="Synthetic 4-channel brain tumour MRI phantom generated by medseg_tf.phantom_brain "
                    "(seed %d)" % seed,
        overwrite=overwrite)
