"""Tests of medseg_tf.explain: attribution on models whose answer is known, batched ensembles."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medseg_tf import explain, inference, models
from medseg_tf.runspec import RunSpec
from medseg_tf.uncertainty import mutual_information


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def region_only_model(ndim: int, size: int = 16, region=None) -> tuple[keras.Model, np.ndarray]:
    """Two classes, the same everywhere, decided only by the mean image value inside ``region``.

    Layers: mask the input to the region ("masked"), a bias-free 1x1 convolution with positive weights
    ("features"), global average, a dense layer (class 1 wins when the region is bright) broadcast back
    to every voxel. Nothing outside the region can change the output.
    """
    L = keras.layers
    Conv, Pool, Up = ((L.Conv2D, L.GlobalAveragePooling2D, L.UpSampling2D) if ndim == 2
                      else (L.Conv3D, L.GlobalAveragePooling3D, L.UpSampling3D))
    mask = np.zeros((size,) * ndim + (1,), np.float32)
    if region is None:
        region = (slice(4, 8), slice(9, 13)) + ((slice(6, 10),) if ndim == 3 else ())
    mask[region] = 1
    inputs = keras.Input((size,) * ndim + (1,))
    x = L.Lambda(lambda t: t * mask, name="masked")(inputs)
    x = Conv(4, 1, use_bias=False, kernel_initializer="ones", name="features")(x)
    x = Pool()(x)
    x = L.Dense(2, name="decide")(x)
    x = Up(size)(L.Reshape((1,) * ndim + (2,))(x))
    model = keras.Model(inputs, L.Activation("softmax", name="output")(x), name="region_only")
    n_in = mask.sum()
    f = 4 * n_in / size ** ndim                         # sum of the 4 pooled features for an all-ones region
    model.get_layer("decide").set_weights([np.stack([-np.ones(4), np.ones(4)], axis=1).astype(np.float32),
                                           np.array([1.8 * f, 0.0], np.float32)])
    return model, mask[..., 0] > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_grad_cam_lands_in_the_region_the_output_depends_on(ndim):
    model, region = region_only_model(ndim)
    image = np.random.default_rng(1).random((16,) * ndim).astype(np.float32) + 0.5
    cam = explain.grad_cam(model, image, layer="features", class_index=1,
                           region=np.ones(image.shape, bool), divisor=1)
    assert cam.shape == image.shape and cam.max() == pytest.approx(1.0)
    assert np.all(cam[~region] == 0) and np.all(cam[region] > 0)


def test_occlusion_sensitivity_is_zero_where_the_model_does_not_look():
    model, region = region_only_model(2)
    image = np.random.default_rng(2).random((16, 16)).astype(np.float32)
    image[region] = 1.0
    assert model.predict_on_batch(image[None, ..., None]).argmax(-1).min() == 1     # class 1 everywhere
    sens = explain.occlusion_sensitivity(model, image, class_index=1, patch=3, stride=1, fill=0.0, batch_size=64)
    near = np.zeros_like(region)
    rows, cols = np.nonzero(region)
    near[max(rows.min() - 2, 0):rows.max() + 3, max(cols.min() - 2, 0):cols.max() + 3] = True
    assert np.all(sens[~near] == 0)            # every patch covering these voxels misses the region
    assert np.all(sens[region] > 0) and sens.max() == 1.0
    # model-agnostic: the same map from a predict_batch callable
    same = explain.occlusion_sensitivity(lambda b: model.predict_on_batch(b), image[..., None], class_index=1,
                                         patch=3, stride=1, fill=0.0, batch_size=7)
    np.testing.assert_array_equal(sens, same)


def test_attribution_bad_input_one_line_errors():
    model, region = region_only_model(2)
    image = np.ones((16, 16), np.float32)
    with pytest.raises(ValueError, match="layer 'nope' does not exist in model 'region_only'.*features"):
        explain.grad_cam(model, image, layer="nope", class_index=1, divisor=1)
    with pytest.raises(ValueError, match=r"class 2 is outside the model's classes 0\.\.1"):
        explain.grad_cam(model, image, layer="features", class_index=2, divisor=1)
    with pytest.raises(ValueError, match="region is empty"):
        explain.grad_cam(model, image, layer="features", class_index=1, region=np.zeros((16, 16), bool), divisor=1)
    with pytest.raises(ValueError, match="not a 2D feature map"):
        explain.grad_cam(model, image, layer="decide", class_index=1, divisor=1)
    with pytest.raises(ValueError, match="outside the model's classes"):
        explain.occlusion_sensitivity(model, image, class_index=5, patch=4)
    with pytest.raises(ValueError, match="predicts no voxel of class 0"):
        explain.occlusion_sensitivity(model, image, class_index=0, patch=4)


def test_mc_dropout_passes_differ_and_need_dropout_layers():
    config = {"dims": 2, "slice_axis": 2, "depth": 2}
    net = models.unet((None, None, 1), 3, depth=2, base_filters=4, dropout=0.5)
    image = np.random.default_rng(3).normal(size=(12, 10, 3)).astype(np.float32)
    stack = explain.ensemble_predict(net, image, config, passes=3, mc_dropout=True)
    assert stack.shape == (3, 12, 10, 3, 3)
    np.testing.assert_allclose(stack.sum(-1), 1.0, atol=1e-5)
    assert np.abs(stack[0] - stack[1]).max() > 1e-3 and mutual_information(stack).max() > 0
    again = explain.ensemble_predict(net, image, config, passes=3, mc_dropout=True)
    np.testing.assert_allclose(stack, again, atol=1e-6)            # seeded masks
    plain = models.unet((None, None, 1), 3, depth=2, base_filters=4)
    with pytest.raises(ValueError, match="has no dropout layers"):
        explain.ensemble_predict(plain, image, config, passes=3, mc_dropout=True)
    with pytest.raises(ValueError, match="N >= 2"):
        explain.ensemble_predict(net, image, config, passes=1, mc_dropout=True)


def test_tta_ensemble_matches_single_predictions_batched():
    # 3D sliding window (volume larger than the patch) and a 2.5D model: each pass equals predict_volume
    net3 = models.unet((None, None, None, 1), 3, depth=2, base_filters=4)
    vol = np.random.default_rng(4).normal(size=(13, 9, 11)).astype(np.float32)
    config3 = {"dims": 3, "depth": 2, "patch_size": [8, 8, 8]}
    flips = explain.flip_transforms([0])
    stack = explain.ensemble_predict(net3, vol, config3, transforms=flips, batch_size=3)
    single = inference.predict_volume(net3, vol, dims=3, patch_size=[8, 8, 8], divisor=4)
    np.testing.assert_allclose(stack[0], single, atol=1e-5)
    flipped = np.flip(inference.predict_volume(net3, np.flip(vol, 0).copy(), dims=3, patch_size=[8, 8, 8],
                                               divisor=4), 0)
    np.testing.assert_allclose(stack[1], flipped, atol=1e-5)

    net2 = models.unet((None, None, 3), 3, depth=2, base_filters=4)
    config2 = {"dims": 2, "slice_axis": 1, "context_slices": 1, "depth": 2}
    shifts = explain.shift_transforms([(0, 0, 0), (1, 0, -1)])
    stack = explain.ensemble_predict(net2, vol, config2, transforms=shifts)
    patch2 = RunSpec.coerce(config2).patch_size   # slices are padded to at least the training patch, as predict does
    np.testing.assert_allclose(stack[0], inference.predict_volume(net2, vol, dims=2, axis=1, context_slices=1, divisor=4,
                                                                  patch_size=patch2), atol=1e-5)
    assert stack.shape == (2, 13, 9, 11, 3)
    with pytest.raises(ValueError, match="N >= 2"):
        explain.ensemble_predict(net2, vol, config2, transforms=shifts[:1])


def test_tta_of_a_flip_equivariant_model_has_zero_mutual_information():
    inputs = keras.Input((None, None, None, 1))
    net = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="softmax")(inputs))
    vol = np.random.default_rng(5).normal(size=(8, 8, 8)).astype(np.float32)
    stack = explain.ensemble_predict(net, vol, {"dims": 3, "divisor": 1}, transforms=explain.flip_transforms([0, 1, 2]))
    assert stack.shape[0] == 8
    np.testing.assert_allclose(mutual_information(stack), 0.0, atol=1e-5)
    shifted = explain.ensemble_predict(net, vol, {"dims": 3, "divisor": 1},
                                       transforms=explain.shift_transforms([(0, 0, 0), (2, -1, 0)]))
    np.testing.assert_allclose(shifted[1][:6, 1:], shifted[0][:6, 1:], atol=1e-6)   # interior: same voxels
