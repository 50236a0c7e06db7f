"""The synthetic MRI-like phantom."""

import numpy as np

from medseg_tf.datasets import MSDDataset
from medseg_tf.phantom import PHANTOM_LABELS, make_phantom_case, write_phantom_dataset


def test_case_is_deterministic_and_seed_dependent():
    a = make_phantom_case(3)
    b = make_phantom_case(3)
    c = make_phantom_case(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_case_looks_like_mri():
    fg, spacings, shapes, maxima, orientations = [], [], [], [], set()
    for seed in range(12):
        image, label, affine = make_phantom_case(seed)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape and image.ndim == 3
        assert set(np.unique(label)) == {0, 1, 2}
        assert np.all(np.isfinite(image)) and image.min() >= 0  # Rician magnitudes are positive
        fg.append(np.mean(label > 0))
        spacings.append(np.sqrt((affine[:3, :3] ** 2).sum(0)))
        shapes.append(image.shape)
        maxima.append(image.max())
        orientations.add(tuple(np.sign(np.diag(affine)[:3])))
        # partial volume / noise: many distinct intensities, no two-level image
        assert len(np.unique(image)) > 0.9 * image.size
        # the structure is a bit brighter than CSF and darker than white matter: not trivially separable
        inside, outside = image[label > 0], image[label == 0]
        assert outside.min() < inside.mean() < outside.max()
    assert 0.03 < np.mean(fg) < 0.07, np.mean(fg)
    spacings = np.array(spacings)
    assert np.all(spacings[:, 2] > spacings[:, :2].max(axis=1) - 0.1)  # thicker through-plane
    assert spacings[:, 2].std() > 0.1  # spacing varies between cases
    assert len(set(shapes)) > 6
    assert max(maxima) / min(maxima) > 5  # intensity scale varies between cases
    assert len(orientations) >= 2  # stored voxel order differs between cases


def test_write_dataset_msd_layout_and_same_bytes(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", n_cases=3, seed=1)
    b = write_phantom_dataset(tmp_path / "b", n_cases=3, seed=1)
    ds = MSDDataset(a)
    assert ds.labels == PHANTOM_LABELS and len(ds) == 3
    for sub in ("imagesTr", "labelsTr"):
        for f in sorted((a / sub).iterdir()):
            assert f.read_bytes() == (b / sub / f.name).read_bytes()
    image, label = ds.load_case(0)
    assert image.orientation == ("R", "A", "S")
