"""Post-processing of predicted label maps (NumPy/SciPy only).

A network decides voxel by voxel, so its label maps can contain small islands
far from the organ. When every class is known to be one connected structure
(each hippocampus subfield is), keeping only the largest connected component
of each class removes them: cheap, and it lowers the Hausdorff distance a lot
while barely changing Dice.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]


def keep_largest_component(labels: np.ndarray, classes: Iterable[int] | None = None,
                           connectivity: int = 1) -> np.ndarray:
    """Keep only the largest connected component of each class; the rest becomes 0.

    Parameters
    ----------
    labels : np.ndarray
        Integer label map, any shape (e.g. (X, Y, Z)); 0 is background.
    classes : iterable of int, optional
        Labels to clean (default: every non-zero label present). Other labels
        are left as they are.
    connectivity : int
        Which neighbours join two voxels into one component
        (:func:`scipy.ndimage.generate_binary_structure`): 1 (default) = face
        neighbours only (6 in 3D), 2 = also edges (18), 3 = also corners (26).
        Lower connectivity splits more, so it removes more.

    Returns
    -------
    np.ndarray
        A new label map, same shape and dtype. Each class is processed on its
        own mask (components of different classes touching each other do not
        merge). On a tie between equally large components, the one found first
        in C (row-major) scan order is kept.
    """
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iub":
        raise ValueError(f"labels must be an integer array, got dtype {lab.dtype}")
    if lab.ndim == 0:
        raise ValueError("labels must have at least one axis")
    if not 1 <= connectivity <= lab.ndim:
        raise ValueError(f"connectivity must be in 1..{lab.ndim} for a {lab.ndim}D map, got {connectivity}")
    structure = ndimage.generate_binary_structure(lab.ndim, connectivity)
    if classes is None:
        classes = [int(c) for c in np.unique(lab) if c != 0]
    out = lab.copy()
    for c in classes:
        if int(c) == 0:
            raise ValueError("class 0 is background and cannot be cleaned")
        components, n = ndimage.label(lab == c, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        out[(components != keep) & (components > 0)] = 0
    return out
