"""The run spec: one schema for training and prediction, read without TensorFlow."""

import inspect
import json
import subprocess
import sys

import pytest

from medseg_tf import settings
from medseg_tf.errors import ConfigError, DataError
from medseg_tf.runspec import (DEFAULT_PATCH, LOSS_NAMES, NORMALIZATIONS, NORMS, OPTIMIZER_NAMES, SCHEDULES,
                               UNET_DEFAULT_DEPTH, UNET_KEYWORDS, RunSpec, flip_axes, round_up)


def test_runspec_imports_no_tensorflow():
    code = ("import sys, medseg_tf.runspec as r; r.RunSpec.load(r'%s'); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad"
            % (settings.MODELS_DIR / "hippocampus_3d"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_name_lists_are_the_libraries_own():
    from medseg_tf import losses, models, preprocessing, training

    assert set(LOSS_NAMES) == set(losses.LOSSES)
    assert set(OPTIMIZER_NAMES) == set(training.OPTIMIZERS)
    signature = inspect.signature(models.unet).parameters
    assert set(UNET_KEYWORDS) == set(signature) - {"input_shape", "num_classes"}
    assert UNET_DEFAULT_DEPTH == signature["depth"].default
    for name in NORMALIZATIONS:
        preprocessing.normalize(preprocessing.np.ones((4, 4, 4)), name)
    for name in SCHEDULES:
        training.make_schedule(name, 1e-3, epochs=2, steps_per_epoch=2)
    for norm in NORMS:
        models.unet((16, 16, 1), 2, depth=1, base_filters=4, norm=norm)


@pytest.mark.parametrize("name", ["hippocampus_2d", "hippocampus_3d"])
def test_shipped_run_folders_load_and_derive(name):
    spec = RunSpec.load(settings.MODELS_DIR / name)
    raw = json.loads((settings.MODELS_DIR / name / "config.json").read_text())
    assert spec.dims == raw["dims"] and spec.divisor == 2 ** raw["model"]["depth"]
    assert spec.input_channels == 2 * raw.get("context_slices", 0) + 1
    assert spec.mirror_axes == ()  # both were trained without flips
    assert spec["patch_size"] == tuple(raw["patch_size"])  # reads like the JSON dict


def test_a_setting_prediction_needs_is_accepted_by_training(tmp_path):
    """The bug this module fixes: tta_axes in config.json made training refuse the file."""
    from medseg_tf.training import TrainConfig

    raw = json.loads((settings.MODELS_DIR / "hippocampus_3d" / "config.json").read_text())
    raw["tta_axes"] = [0]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    spec = TrainConfig.from_json(path)
    assert spec.mirror_axes == (0,) and RunSpec.load(tmp_path) == spec


def test_derived_values():
    spec = RunSpec(dims=2, slice_axis=0, context_slices=1, model={"depth": 2}, patch_size=(8, 12),
                   augment={"flips": [1]})
    assert (spec.divisor, spec.slices_per_sample, spec.input_channels) == (4, 3, 3)
    assert spec.in_plane_axes == (1, 2) and spec.mirror_axes == (2,)  # slice axis 1 is volume axis 2
    assert RunSpec(dims=3).patch_size == DEFAULT_PATCH[3] and RunSpec(dims=3, augment=False).mirror_axes == ()
    assert flip_axes([1, 0, 1], 3) == (0, 1) and round_up(17, 8) == 24


@pytest.mark.parametrize("changes, key", [
    ({"dims": 4}, "dims"), ({"patch_size": (7, 7, 7), "dims": 3}, "patch_size"),
    ({"model": {"depth": "x"}}, "model"), ({"model": {"widht": 3}}, "model"),
    ({"overlap": 1.0}, "overlap"), ({"tta_axes": [3]}, "tta_axes"), ({"normalization": "ct"}, "normalization"),
    ({"epochs": 0}, "epochs"), ({"seed": -1}, "seed"), ({"learning_rate": "fast"}, "learning_rate"),
    ({"augment": {"flips": [5]}}, "augment"), ({"loss": "l2"}, "loss"),
])
def test_impossible_values_name_their_key(changes, key):
    with pytest.raises(ConfigError) as info:
        RunSpec(**changes)
    assert info.value.key == key


def test_bad_files_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"dims": 2, "epoch": 3}')
    with pytest.raises(DataError, match=r"config\.json.*unknown config key\(s\) 'epoch'"):
        RunSpec.load(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        RunSpec.load(tmp_path)
