"""A deterministic, MRI-like synthetic data set in MSD layout (no TensorFlow).

The course's default data: it lets every notebook run offline, on a laptop,
in seconds, yet it behaves like a real MRI segmentation problem rather than
clean shapes:

* a two-part curved structure (label 1 "Anterior", a thick head; label 2
  "Posterior", a thinner body/tail), like the hippocampus of MSD Task04, whose
  head/body boundary is *not* visible in the intensities (the network must use
  shape and position, as for the real data);
* surrounding tissue with white-matter / grey-matter texture and a dark
  CSF-filled cavity touching the structure (like the temporal horn);
* partial-volume edges (voxels on a boundary get a mixture of intensities);
* a smooth multiplicative bias field, Rician noise, and per-case contrast and
  intensity scale (raw values from about 1e2 to 1e4, never normalised);
* per-case size, position, rotation, shape and anisotropic voxel spacing
  (0.9-1.1 mm in-plane, 1.0-2.0 mm through-plane), and a voxel order that is
  RAS for some cases and LAS or RPS for others (so orientation handling matters);
* about 5 % foreground.

Same ``seed`` gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["make_phantom_case", "write_phantom_dataset", "PHANTOM_LABELS", "DEFAULT_CASES"]

#: Label values and names (like MSD Task04 Hippocampus).
PHANTOM_LABELS = {0: "background", 1: "Anterior", 2: "Posterior"}

#: Number of cases the course generates by default.
DEFAULT_CASES = 40


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random 3x3 rotation with angles up to ``max_deg`` about each axis."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox, *, scale: float = 1.0) -> np.ndarray:
    """Gaussian-smoothed white noise normalised to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return scale * (field - field.mean()) / (field.std() + 1e-8)


def make_phantom_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one phantom case.

    Parameters
    ----------
    seed : int
        Everything about the case follows from it.

    Returns
    -------
    image : np.ndarray
        float32, shape ``(X, Y, Z)`` (about 36-44 x 48-60 x 20-40 voxels),
        raw MRI-like intensities (positive, unnormalised).
    label : np.ndarray
        uint8, same shape, values {0, 1, 2}.
    affine : np.ndarray
        4x4 voxel-to-world matrix (mm); spacing and axis directions vary per case.
    """
    rng = np.random.default_rng([seed, 20261125])
    spacing = np.array([rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1), rng.uniform(1.0, 2.0)])
    extent_mm = np.array([rng.uniform(36, 44), rng.uniform(48, 60), rng.uniform(36, 44)])
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing))

    # voxel centres in mm, relative to the volume centre (a RAS grid for now)
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3) mm

    # --- the two-part structure: a swept sphere along a curved centre line ---
    n_pts = 48
    t = np.linspace(0.0, 1.0, n_pts)
    length = rng.uniform(32, 42)
    bend = rng.uniform(3, 7) * rng.choice([-1, 1])
    centre_line = np.stack([bend * np.sin(np.pi * t), (t - 0.5) * length,
                            rng.uniform(-3, 3) * (t - 0.5) ** 2 * 4], axis=-1)
    centre_line = centre_line @ _rotation(rng, 15).T + rng.uniform(-3, 3, 3)
    r_head, r_tail = rng.uniform(5.5, 6.8), rng.uniform(3.8, 4.6)
    radius = r_tail + (r_head - r_tail) * np.clip(1.4 * t - 0.2, 0, 1) ** 1.5  # t=1 is +y: the head is anterior
    split = rng.uniform(0.45, 0.6)  # fraction of the length (from posterior) that is "Posterior"

    pts = grid.reshape(-1, 3)
    best = np.full(len(pts), np.inf)
    best_k = np.zeros(len(pts), dtype=np.int64)
    for k in range(n_pts):  # signed distance to the union of spheres, and the nearest sphere
        d = np.sqrt(((pts - centre_line[k]) ** 2).sum(axis=1)) - radius[k]
        closer = d < best
        best[closer] = d[closer]
        best_k[closer] = k
    sdf = best.reshape(shape)
    part = np.where(best_k.reshape(shape) >= int(split * n_pts), 1, 2)  # anterior end -> 1

    h = float(np.mean(spacing))
    struct_frac = np.clip(0.5 - sdf / h, 0.0, 1.0)  # partial-volume fraction of each voxel
    label = np.where(sdf <= 0, part, 0).astype(np.uint8)

    # --- surrounding tissue: white/grey matter texture, a CSF cavity --------
    sigma_vox = 4.0 / spacing
    tissue = _smooth_field(rng, shape, sigma_vox)
    wm_frac = 1.0 / (1.0 + np.exp(-tissue / 0.35))  # soft WM/GM mixture
    cavity_c = centre_line[int(0.75 * n_pts)] + np.array([rng.choice([-1, 1]) * rng.uniform(5, 8), 0, 0])
    cavity_d = np.sqrt((((grid - cavity_c) / np.array([2.5, 8.0, 2.5])) ** 2).sum(-1)) - 1.0
    csf_frac = np.clip(0.5 - cavity_d * 2.0, 0, 1) * (1 - struct_frac)

    wm, gm, csf = rng.uniform(0.75, 0.9), rng.uniform(0.45, 0.55), rng.uniform(0.08, 0.2)
    hip = gm + rng.uniform(0.04, 0.1)  # hippocampus is grey matter, slightly brighter here
    background = wm_frac * wm + (1 - wm_frac) * gm
    clean = (1 - struct_frac - csf_frac) * background + struct_frac * hip + csf_frac * csf

    # --- acquisition: bias field, contrast, Rician noise, scale ---------------
    bias = np.exp(_smooth_field(rng, shape, 14.0 / spacing, scale=rng.uniform(0.08, 0.2)))
    gamma = rng.uniform(0.8, 1.25)
    signal = (clean ** gamma) * bias
    sigma = rng.uniform(0.025, 0.06)
    noisy = np.sqrt((signal + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
    image = (noisy * 10 ** rng.uniform(2.3, 4.0)).astype(np.float32)

    # --- geometry: RAS grid, stored in RAS / LAS / RPS voxel order ---------
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * spacing + rng.uniform(-20, 20, 3)
    flips = [(), (0,), (0, 1)][seed % 3]
    for ax in flips:  # store the array flipped along ax; the affine keeps world positions
        image = np.flip(image, axis=ax)
        label = np.flip(label, axis=ax)
        flip = np.eye(4)
        flip[ax, ax] = -1
        flip[ax, 3] = shape[ax] - 1
        affine = affine @ flip
    return np.ascontiguousarray(image), np.ascontiguousarray(label), affine


def write_phantom_dataset(out_dir: str | os.PathLike, n_cases: int = DEFAULT_CASES, seed: int = 0, *,
                          overwrite: bool = False) -> Path:
    """Write ``n_cases`` phantom cases in MSD layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Parameters
    ----------
    out_dir : str or PathLike
        Target folder; written atomically (see :func:`medseg_tf.datasets.write_msd_dataset`).
    n_cases : int
        Number of cases (default 40, a few seconds).
    seed : int
        Case ``i`` is generated from seed ``seed * 100_000 + i``.
    overwrite : bool
        Replace an existing phantom folder.
    """
    from medseg_tf.datasets import write_generated_dataset

    return write_generated_dataset(
        out_dir, make_phantom_case, "phantom", n_cases, seed, name="Phantom", labels=PHANTOM_LABELS,
        modality={0: "MRI"},
        description="Synthetic MRI-like phantom generated by medseg_tf.phantom (seed %d)" % seed,
        overwrite=overwrite)
