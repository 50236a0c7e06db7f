"""The CT phantom in Hounsfield units."""

import numpy as np

from medseg_tf.datasets import MSDDataset
from medseg_tf.phantom_ct import CT_LABELS, HU_AIR, make_ct_case, write_ct_dataset


def test_ct_case_is_deterministic_and_seed_dependent():
    a, b, c = make_ct_case(5), make_ct_case(5), make_ct_case(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_ct_case_hounsfield_ranges_labels_and_thick_slices():
    for seed in range(4):
        image, label, affine = make_ct_case(seed)
        assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape
        assert set(np.unique(label)) == {0, 1, 2}
        np.testing.assert_array_equal(image, np.rint(image))  # whole HU, as scanners store them
        assert image.min() >= -1024 and image.max() <= 3071
        # air around the body: the corners are about -1000 HU
        corner = image[:3, :3, :]
        assert abs(np.median(corner) - HU_AIR) < 30
        # fat exists (about -100 HU), bone exceeds 400 HU
        assert np.mean((image > -150) & (image < -50)) > 0.03
        assert np.mean(image > 400) > 0.001 and image.max() > 600
        organ, lesion = image[label == 1], image[label == 2]
        assert 20 <= np.median(organ) <= 80  # soft tissue
        # the lesion is only a few HU darker than the organ: less than two noise standard deviations apart
        gap = np.median(organ) - np.median(lesion)
        assert 5 <= gap <= 30, gap
        assert gap < 2.5 * organ.std()
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        assert spacing[2] >= 1.4 * spacing[:2].max()  # thick slices
        # the organ is on the patient's right: larger x in RAS world coordinates than the body centre
        xs = np.argwhere(label == 1)[:, 0].mean()
        assert xs > (image.shape[0] - 1) / 2


def test_ct_noise_is_scanner_like():
    image, label, _ = make_ct_case(2)
    # noise + texture inside the organ: a few HU to a few tens of HU, as in a portal-venous CT
    organ = image[label == 1]
    assert 5 < organ.std() < 25


def test_write_ct_dataset_msd_layout(tmp_path):
    root = write_ct_dataset(tmp_path / "ct", n_cases=2, seed=0)
    ds = MSDDataset(root)
    assert ds.labels == CT_LABELS and ds.modality == {0: "CT"} and len(ds) == 2
    image, label = ds.load_case(0)
    np.testing.assert_array_equal(image.data, make_ct_case(0)[0])
