"""Tests of medseg_tf.inference (whole-volume prediction, sliding window, TTA, files)."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from medseg_tf import inference, io, preprocessing, sliding
from medseg_tf.errors import OverwriteError


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def pointwise_model(dims: int, num_classes: int = 3, in_channels: int = 1) -> keras.Model:
    """A 1x1(x1) convolution + softmax: its output at a voxel depends on that voxel only."""
    Conv = keras.layers.Conv3D if dims == 3 else keras.layers.Conv2D
    inputs = keras.Input((None,) * dims + (in_channels,))
    outputs = Conv(num_classes, 1, activation="softmax")(inputs)
    return keras.Model(inputs, outputs)


def reference_pointwise(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """What a pointwise model gives, computed in NumPy from its weights."""
    kernel, bias = (np.asarray(w) for w in model.layers[-1].get_weights())
    logits = image[..., None] * kernel.reshape(-1)[None] + bias
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def threshold_model(dims: int = 3) -> keras.Model:
    """Two classes, class 1 where the (normalised) intensity is > 0."""
    model = pointwise_model(dims, num_classes=2)
    k = np.zeros((1,) * dims + (1, 2), np.float32)
    k[..., 0, 1] = 20.0
    model.layers[-1].set_weights([k, np.zeros(2, np.float32)])
    return model


class CountingModel:
    """Wraps a model and counts predict_on_batch calls and their batch sizes."""

    def __init__(self, model):
        self.model = model
        self.input_shape = model.input_shape
        self.batches: list[int] = []

    def predict_on_batch(self, x):
        self.batches.append(x.shape[0])
        return self.model.predict_on_batch(x)


def divisible_model(dims: int, depth: int = 2) -> keras.Model:
    """A small encoder-decoder that only accepts sizes divisible by 2**depth."""
    L = keras.layers
    Conv, Pool, Up = ((L.Conv3D, L.MaxPooling3D, L.UpSampling3D) if dims == 3
                      else (L.Conv2D, L.MaxPooling2D, L.UpSampling2D))
    inputs = keras.Input((None,) * dims + (1,))
    x = inputs
    for _ in range(depth):
        x = Pool(2)(Conv(4, 3, padding="same", activation="relu")(x))
    for _ in range(depth):
        x = Conv(4, 3, padding="same", activation="relu")(Up(2)(x))
    return keras.Model(inputs, Conv(3, 1, activation="softmax")(x))


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("patch", [(16, 16, 16), (15, 20, 9), (8,)])
def test_gaussian_importance_map(patch):
    w = inference.gaussian_importance_map(patch)
    assert w.shape == patch and w.dtype == np.float32
    assert np.all(w > 0) and w.max() == pytest.approx(1.0)
    for axis in range(len(patch)):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=1e-6)
    # decreases from the centre along each axis
    profile = w[tuple(slice(None) if a == 0 else p // 2 for a, p in enumerate(patch))]
    half = profile[(patch[0] - 1) // 2 + 1:]
    assert np.all(np.diff(half) < 0)
    # sigma = patch / 8: one sigma from the centre the weight is exp(-1/2) of the peak
    p = 17
    g = inference.gaussian_importance_map((p,), sigma_scale=1 / 8)
    x = np.arange(p) - (p - 1) / 2
    np.testing.assert_allclose(g, np.exp(-x ** 2 / (2 * (p / 8) ** 2)), rtol=1e-6)


@pytest.mark.parametrize("size,patch,overlap", [(16, 16, 0.5), (40, 16, 0.5), (41, 16, 0.25),
                                                (100, 32, 0.5), (17, 16, 0.0)])
def test_sliding_window_starts_cover_the_axis(size, patch, overlap):
    starts = inference.sliding_window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(0 < b - a <= patch * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()
    with pytest.raises(ValueError, match="overlap"):
        inference.sliding_window_starts(size, patch, 1.0)


# --------------------------------------------------------------------------- volumes
def test_sliding_window_equals_full_volume_for_pointwise_model():
    model = pointwise_model(3)
    image = np.random.default_rng(0).normal(size=(37, 21, 18)).astype(np.float32)
    expected = reference_pointwise(model, image)
    full = inference.predict_volume(model, image, dims=3, divisor=8)
    assert full.shape == (37, 21, 18, 3) and full.dtype == np.float32
    np.testing.assert_allclose(full, expected, atol=1e-5)
    counting = CountingModel(model)
    windows = inference.predict_volume(counting, image, dims=3, patch_size=(16, 16, 32),
                                       overlap=0.5, batch_size=4, divisor=8)
    np.testing.assert_allclose(windows, full, atol=1e-5)
    # 37 -> 4 windows, 21 -> 2, 18 padded to 32 -> 1: 8 windows in batches of 4
    assert counting.batches == [4, 4]
    tta = inference.predict_volume(model, image, dims=3, patch_size=(16, 16, 16), tta=True,
                                   divisor=8)
    np.testing.assert_allclose(tta, full, atol=1e-5)


def test_sliding_window_blends_a_position_dependent_model():
    # A model that is not translation-equivariant (large receptive field, zero padding):
    # windows disagree near their borders, but the blend stays a probability map.
    model = divisible_model(3, depth=2)
    image = np.random.default_rng(1).normal(size=(30, 20, 12)).astype(np.float32)
    probs = inference.predict_volume(model, image, dims=3, patch_size=(16, 16, 8), divisor=4)
    assert probs.shape == (30, 20, 12, 3)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_2d_slices_in_batched_calls(axis):
    model = pointwise_model(2)
    image = np.random.default_rng(axis).normal(size=(11, 14, 9)).astype(np.float32)
    counting = CountingModel(model)
    probs = inference.predict_volume(counting, image, dims=2, axis=axis, batch_size=4, divisor=4)
    assert probs.shape == (11, 14, 9, 3)
    np.testing.assert_allclose(probs, reference_pointwise(model, image), atol=1e-5)
    n = image.shape[axis]
    assert counting.batches == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert len(counting.batches) == math.ceil(n / 4)


def test_2d_slices_are_padded_to_at_least_the_training_patch():
    """Training pads a slice smaller than the patch up to the patch (centred); prediction does the same.

    Without ``patch_size`` slices are padded only to a multiple of the divisor, a smaller canvas than the
    one the model learned on: the shipped 2D hippocampus model lost 0.008 Dice on its select cases that way
    (``scripts/accuracy_study.py shift_tta``).
    """
    shapes = []

    class Recording(CountingModel):
        def predict_on_batch(self, x):
            shapes.append(x.shape[1:3])
            return super().predict_on_batch(x)

    model = pointwise_model(2)
    image = np.random.default_rng(3).normal(size=(11, 14, 5)).astype(np.float32)
    plain = inference.predict_volume(Recording(model), image, dims=2, axis=2, divisor=4)
    assert set(shapes) == {(12, 16)}
    shapes.clear()
    canvas = inference.predict_volume(Recording(model), image, dims=2, axis=2, divisor=4, patch_size=(16, 24))
    assert set(shapes) == {(16, 24)}
    np.testing.assert_allclose(canvas, plain, atol=1e-5)   # a pointwise model does not care; the canvas does
    shapes.clear()
    inference.predict_volume(Recording(model), image, dims=2, axis=2, divisor=4, patch_size=(8, 18))
    assert set(shapes) == {(12, 20)}   # at least the patch, then a multiple of the divisor
    recorded = []   # the model-agnostic path (ONNX, explain) reads the patch from the run spec
    sliding.predict_image(lambda b: recorded.append(b.shape[1:3]) or model.predict_on_batch(b), image,
                          {"dims": 2, "depth": 2, "patch_size": [16, 24]})
    assert set(recorded) == {(16, 24)}


def test_padding_for_models_that_need_divisible_sizes():
    image = np.random.default_rng(2).normal(size=(13, 10, 7)).astype(np.float32)
    p3 = inference.predict_volume(divisible_model(3), image, dims=3, divisor=4)
    assert p3.shape == (13, 10, 7, 3)
    p2 = inference.predict_volume(divisible_model(2), image, dims=2, axis=1, divisor=4)
    assert p2.shape == (13, 10, 7, 3)
    with pytest.raises(ValueError, match="divisible"):
        inference.predict_volume(divisible_model(3), image, dims=3, patch_size=(10, 8, 8), divisor=4)


def test_tta_with_flip_equivariant_model_is_unchanged():
    # A 3x3x3 box filter (symmetric kernel, zero padding) commutes with flips but
    # mixes neighbours, so mirroring back the wrong way would show.
    inputs = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(2, 3, padding="same", activation="softmax")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((3, 3, 3, 1, 2), np.float32)
    kernel[..., 0, 1] = 1.0
    kernel[1, 1, 1, 0, 1] = -3.0
    conv.set_weights([kernel, np.array([0.0, 0.1], np.float32)])
    image = np.random.default_rng(3).normal(size=(9, 7, 6)).astype(np.float32)
    plain = inference.predict_volume(model, image, dims=3, divisor=1)
    tta = inference.predict_volume(model, image, dims=3, divisor=1, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-5)
    # the same model is not equivariant to a shift: flips really were undone
    shifted = inference.predict_volume(model, np.roll(image, 1, axis=0), dims=3, divisor=1)
    assert not np.allclose(np.roll(plain, 1, axis=0), shifted, atol=1e-3)


def test_predict_volume_argument_errors():
    model = pointwise_model(3)
    with pytest.raises(ValueError, match="dims"):
        inference.predict_volume(model, np.zeros((4, 4, 4)), dims=4)
    with pytest.raises(ValueError, match="channel"):
        inference.predict_volume(model, np.zeros((4, 4, 4, 2)), dims=3)
    with pytest.raises(ValueError, match="shape"):
        inference.predict_volume(model, np.zeros((4, 4)), dims=3)


# --------------------------------------------------------------------------- files
def write_image(path, data, affine):
    return io.save_nifti(np.asarray(data, np.float32), path, affine=affine)


# voxel axes pointing Left, Superior, Posterior with anisotropic spacing: far from RAS
ODD_AFFINE = np.array([[-0.8, 0.0, 0.0, 20.0],
                       [0.0, 0.0, -2.0, 10.0],
                       [0.0, 1.5, 0.0, -5.0],
                       [0.0, 0.0, 0.0, 1.0]])


def test_predict_case_returns_the_original_grid(tmp_path):
    rng = np.random.default_rng(4)
    image = rng.normal(size=(14, 9, 11)).astype(np.float32)
    path = write_image(tmp_path / "img.nii.gz", image, ODD_AFFINE)
    assert io.load_nifti(path).orientation != ("R", "A", "S")
    config = {"dims": 3, "normalization": "zscore"}
    labels, affine = inference.predict_case(threshold_model(3), path, config)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(affine, ODD_AFFINE, atol=1e-5)
    expected = (preprocessing.normalize(image, "zscore") > 0).astype(np.uint8)
    np.testing.assert_array_equal(labels, expected)

    # 2D slices along the RAS z axis, with TTA: same labels for a pointwise model
    labels2d, _ = inference.predict_case(threshold_model(2), path,
                                         {"dims": 2, "slice_axis": 2, "divisor": 4}, tta=True)
    np.testing.assert_array_equal(labels2d, expected)

    # resampled to 1 mm and back: the original grid again, nearly the same labels
    labels_rs, _ = inference.predict_case(threshold_model(3), path,
                                          {"dims": 3, "target_spacing": [1.0, 1.0, 1.0]})
    assert labels_rs.shape == image.shape
    assert np.mean(labels_rs == expected) > 0.75


def test_predict_case_lcc_removes_a_small_island(tmp_path):
    image = np.zeros((20, 20, 20), np.float32)
    image[3:12, 3:12, 3:12] = 10.0       # the structure
    image[16, 16, 16] = 10.0             # a one-voxel island
    path = write_image(tmp_path / "blob.nii.gz", image, np.diag([1.0, 1.0, 2.0, 1.0]))
    config = {"dims": 3, "normalization": "zscore", "divisor": 4}
    plain, _ = inference.predict_case(threshold_model(3), path, config)
    cleaned, _ = inference.predict_case(threshold_model(3), path, config, lcc=True)
    assert plain[16, 16, 16] == 1 and cleaned[16, 16, 16] == 0
    assert cleaned.sum() == 9 ** 3 and plain.sum() == 9 ** 3 + 1


def test_predict_folder_from_run_dir(tmp_path):
    from medseg_tf import models

    rng = np.random.default_rng(5)
    task = tmp_path / "Task" / "imagesTr"
    task.mkdir(parents=True)
    affines = [ODD_AFFINE, np.diag([1.0, 1.2, 0.9, 1.0])]
    shapes = [(14, 9, 11), (12, 16, 10)]
    for i, (shape, affine) in enumerate(zip(shapes, affines)):
        write_image(task / f"case_{i}.nii.gz", rng.normal(size=shape), affine)
    (task / "._case_0.nii.gz").write_bytes(b"macOS junk")
    run = tmp_path / "run"
    run.mkdir()
    models.unet((None, None, 1), num_classes=3, depth=2, base_filters=4).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dims": 2, "slice_axis": 2, "depth": 2,
                                                 "normalization": "zscore", "target_spacing": None}))
    out = tmp_path / "preds"
    df = inference.predict_folder(run, tmp_path / "Task", out, progress=False)
    assert list(df.columns) == ["case", "seconds"] and list(df["case"]) == ["case_0", "case_1"]
    assert (df["seconds"] > 0).all()
    for i, (shape, affine) in enumerate(zip(shapes, affines)):
        vol = io.load_nifti(out / f"case_{i}.nii.gz")
        assert vol.shape == shape and vol.data.dtype == np.uint8
        np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
        assert set(np.unique(vol.data)) <= {0, 1, 2}
    assert sorted(p.name for p in out.iterdir()) == ["case_0.nii.gz", "case_1.nii.gz"]

    before = (out / "case_1.nii.gz").stat().st_mtime_ns
    with pytest.raises(OverwriteError, match="overwrite=True"):
        inference.predict_folder(run, task, out, progress=False)
    assert (out / "case_1.nii.gz").stat().st_mtime_ns == before
    df2 = inference.predict_folder(run, task, out, overwrite=True, progress=False)
    assert len(df2) == 2

    with pytest.raises(ValueError, match="config"):
        inference.predict_folder(threshold_model(3), task, tmp_path / "other", progress=False)


def test_divisor_read_from_the_run_spec():
    from medseg_tf.errors import ConfigError
    from medseg_tf.runspec import RunSpec

    assert RunSpec.coerce({"model": {"depth": 5}, "patch_size": [64, 64]}).divisor == 32
    assert RunSpec.coerce({"depth": 3}).divisor == 8  # older run folders: depth at the top level
    assert RunSpec.coerce({"divisor": 4}).divisor == 4  # older run folders: divisor = 2**depth
    assert RunSpec.coerce({}).divisor == 16
    with pytest.raises(ConfigError, match="differs from model.depth"):
        RunSpec.coerce({"depth": 2, "model": {"depth": 5}})
    with pytest.raises(ConfigError, match="power of 2"):
        RunSpec.coerce({"divisor": 12})


def test_tta_mirrors_only_the_requested_axes(monkeypatch):
    calls = []

    def fake_predict_3d(model, x, *args):
        calls.append(x.copy())
        return np.repeat(x[..., :1], 2, axis=-1)

    monkeypatch.setattr(inference, "_predict_3d", fake_predict_3d)
    image = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    out = inference.predict_volume(None, image, dims=3, tta=True, tta_axes=(0,))
    assert len(calls) == 2  # identity and the x mirror only
    np.testing.assert_array_equal(calls[1][..., 0], image[::-1])
    np.testing.assert_allclose(out[..., 0], image, atol=1e-6)  # flipped back before averaging
    calls.clear()
    inference.predict_volume(None, image, dims=3, tta=True, tta_axes=(0, 1, 2))
    assert len(calls) == 8


def test_context_slices_stacked_after_each_flip(monkeypatch):
    """A 2.5D model gets neighbours as channels, built after the TTA mirror (so they stay neighbours)."""
    calls = []

    def fake_predict_2d(model, x, axis, *args):
        calls.append(x.copy())
        return np.repeat(x[..., 1:2], 2, axis=-1)  # "probabilities" = the middle channel

    monkeypatch.setattr(inference, "_predict_2d", fake_predict_2d)
    image = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    out = inference.predict_volume(None, image, dims=2, axis=2, context_slices=1, tta=True, tta_axes=(2,))
    assert len(calls) == 2 and all(c.shape == (4, 5, 6, 3) for c in calls)
    np.testing.assert_array_equal(calls[0], preprocessing.stack_neighbour_slices(image, 2, 1))
    np.testing.assert_array_equal(calls[1], preprocessing.stack_neighbour_slices(image[:, :, ::-1], 2, 1))
    np.testing.assert_allclose(out[..., 0], image, atol=1e-6)
    with pytest.raises(ValueError, match="0 unless dims=2"):
        inference.predict_volume(None, image, dims=3, context_slices=1)
    with pytest.raises(ValueError, match="one-channel"):
        inference.predict_volume(None, np.stack([image, image], -1), dims=2, context_slices=1)


def test_tta_axes_follow_training_augmentation():
    assert inference.tta_axes_from_config({"dims": 3, "augment": True}) == (0, 1, 2)
    assert inference.tta_axes_from_config({"dims": 3, "augment": {"gamma_range": None}}) == (0, 1, 2)
    assert inference.tta_axes_from_config({"dims": 3, "augment": {"flips": False}}) == ()
    assert inference.tta_axes_from_config({"dims": 3, "augment": False, "tta_axes": [0]}) == (0,)
    # a list of patch axes: left-right (x) only
    assert inference.tta_axes_from_config({"dims": 3, "augment": {"flips": [0]}}) == (0,)
    # 2D: slice axes map to the in-plane volume axes; the through-plane axis is never mirrored
    assert inference.tta_axes_from_config({"dims": 2, "slice_axis": 2, "augment": True}) == (0, 1)
    assert inference.tta_axes_from_config({"dims": 2, "slice_axis": 2, "augment": {"flips": [0]}}) == (0,)
    assert inference.tta_axes_from_config({"dims": 2, "slice_axis": 0, "augment": {"flips": [1]}}) == (2,)
    assert inference.tta_axes_from_config({"dims": 2, "slice_axis": 1, "augment": {"flips": [0, 1]}}) == (0, 2)


def test_predict_case_refuses_tta_for_a_model_trained_without_flips(tmp_path):
    path = io.save_nifti(np.ones((8, 8, 8), np.float32), tmp_path / "img.nii.gz", affine=np.eye(4))
    with pytest.raises(ValueError, match="trained without flip augmentation"):
        inference.predict_case(None, path, {"dims": 3, "augment": {"flips": False}}, tta=True)
