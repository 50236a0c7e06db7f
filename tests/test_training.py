"""The trainer: config JSON, schedules, runtime, run folders, resume, multi-worker custom step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

from medseg_tf import training as T
from medseg_tf.errors import ConfigError, DataError, OverwriteError

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- config


def test_config_json_round_trip(tmp_path):
    config = T.TrainConfig(data="some/folder", dims=3, patch_size=[32, 48, 32], target_spacing=[1, 1, 1.5],
                           model={"depth": 3, "base_filters": 8, "norm": "instance"},
                           loss={"name": "focal", "gamma": 1.0}, optimizer={"name": "sgd", "momentum": 0.9},
                           schedule="cosine", augment={"rotate": 0.1}, max_cases=10, jit_compile=False,
                           out_dir="x")
    path = config.to_json(tmp_path / "c.json")
    raw = json.loads(path.read_text())
    assert raw["patch_size"] == [32, 48, 32] and raw["target_spacing"] == [1.0, 1.0, 1.5]
    assert list(raw) == T.TrainConfig.field_names()
    again = T.TrainConfig.from_json(path)
    assert again == config
    assert isinstance(again.patch_size, tuple) and isinstance(again.target_spacing, tuple)
    # defaults fill in a per-dims patch size and survive the round trip
    default = T.TrainConfig(dims=3)
    assert default.patch_size == (48, 64, 48)
    assert T.TrainConfig.from_json(default.to_json(tmp_path / "d.json")) == default


def test_config_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"dims": 2, "epoch": 3, "lr": 0.1}))
    with pytest.raises(DataError, match=r"bad\.json.*unknown config key\(s\) 'epoch', 'lr'"):
        T.TrainConfig.from_json(path)
    with pytest.raises(ValueError, match="unknown config key"):
        T.TrainConfig.from_dict({"dimz": 2})
    path.write_text("{not json")
    with pytest.raises(DataError, match="JSON"):
        T.TrainConfig.from_json(path)
    with pytest.raises(DataError, match="not found"):
        T.TrainConfig.from_json(tmp_path / "missing.json")
    path.write_text(json.dumps({"dims": 2, "patch_size": [64, 64, 64]}))
    with pytest.raises(DataError, match="patch_size"):
        T.TrainConfig.from_json(path)
    bad = [dict(dims=4), dict(schedule="step"), dict(loss="hinge"), dict(optimizer="lion"),
           dict(val_fraction=1.0), dict(epochs=0), dict(mixed_precision="yes"),
           dict(model={"num_classes": 3}), dict(slice_axis=3), dict(context_slices=-1),
           dict(dims=3, context_slices=1)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            T.TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown config key"):
        T.TrainConfig().replace(epoch=3)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = T.TrainConfig.from_json(path)
    assert all(s % config.divisor == 0 for s in config.patch_size)


# ---------------------------------------------------------------- schedules, runtime


def test_schedules():
    lr, epochs, steps = 0.01, 10, 5
    poly = T.make_schedule("poly", lr, epochs=epochs, steps_per_epoch=steps)
    for step in (0, 4, 5, 23, 49):
        want = lr * (1 - (step // steps) / epochs) ** 0.9
        assert float(poly(step)) == pytest.approx(want, rel=1e-6)
    assert float(poly(49)) > 0
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(poly))
    assert float(again(23)) == pytest.approx(float(poly(23)))
    cosine = T.make_schedule("cosine", lr, epochs=epochs, steps_per_epoch=steps)
    assert float(cosine(0)) == pytest.approx(lr)
    assert float(cosine(25)) == pytest.approx(lr / 2, rel=1e-5)
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-9)
    assert T.make_schedule("constant", lr, epochs=epochs, steps_per_epoch=steps) == lr
    with pytest.raises(ValueError):
        T.make_schedule("step", lr, epochs=epochs, steps_per_epoch=steps)
    sgd = T.make_optimizer("sgd", 0.1)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.99
    assert T.make_optimizer({"name": "adam", "clipnorm": 1.0}, 0.1).clipnorm == 1.0


def test_runtime_on_cpu(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    runtime = T.resolve_runtime(T.TrainConfig())
    if runtime.device != "CPU":
        pytest.skip("this test describes the CPU defaults")
    from medseg_tf.runtime import cpu_has_bf16

    assert T.TrainConfig().dims == 2
    assert (runtime.precision, runtime.jit_compile, runtime.strategy_name) == ("float32", False, "default")
    line = T.describe_runtime()
    assert "CPU" in line and "float32" in line and "XLA: off" in line and "default (1 replica)" in line
    auto3d = T.resolve_runtime(T.TrainConfig(dims=3, patch_size=[16, 16, 16]))
    assert auto3d.precision == ("mixed_bfloat16" if cpu_has_bf16() else "float32")  # native bfloat16 or none
    assert auto3d.mixed_precision == cpu_has_bf16()
    forced = T.resolve_runtime(T.TrainConfig(mixed_precision=True, jit_compile=True))
    assert forced.precision == "mixed_bfloat16" and forced.jit_compile  # a CPU's mixed policy
    assert "mixed_bfloat16" in forced.describe() and "XLA: on" in forced.describe()
    assert T.resolve_runtime(T.TrainConfig(mixed_precision=False)).precision == "float32"
    named = T.resolve_runtime(T.TrainConfig(mixed_precision="mixed_float16"))
    assert named.precision == "mixed_float16" and named.mixed_precision


@pytest.mark.parametrize("name, jit", [("adam", False), ("adamw", False), ("adam", True)])
def test_fused_adam_update_equals_keras_adam(name, jit):
    import tensorflow as tf
    from medseg_tf.schedules import fuse_adam_update

    rng = np.random.default_rng(1)
    start = rng.normal(size=(40, 6)).astype("float32")
    grads = [rng.normal(scale=s, size=start.shape).astype("float32") for s in (1.0, 0.1, 3.0, 1e-3, 1.0)]
    result = {}
    for fused in (False, True):
        schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
        optimizer = T.make_optimizer(name, schedule)
        variable = keras.Variable(start)
        optimizer.build([variable])
        if fused:  # make_optimizer fuses Adam under TensorFlow; the reference is Keras' own update
            assert fuse_adam_update(optimizer) is optimizer and "update_step" in vars(optimizer)
        else:
            vars(optimizer).pop("update_step")
        step = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]), jit_compile=jit)
        for g in grads:
            step(tf.constant(g))
        result[fused] = variable.numpy()
        # the instance only: its config and saved form are Keras' own Adam / AdamW
        assert keras.saving.serialize_keras_object(optimizer)["class_name"] == type(optimizer).__name__
    assert np.abs(result[True] - start).max() > 0.01  # it trained
    np.testing.assert_allclose(result[True], result[False], rtol=1e-5, atol=1e-6)


def test_fuse_adam_update_leaves_other_optimizers_alone():
    from medseg_tf.schedules import fuse_adam_update

    for optimizer in (keras.optimizers.SGD(0.1), keras.optimizers.Adam(0.1, amsgrad=True),
                      keras.optimizers.RMSprop(0.1)):
        assert "update_step" not in vars(fuse_adam_update(optimizer))


def test_training_graph_updates_each_variable_with_one_fused_kernel():
    import tensorflow as tf

    config = T.TrainConfig(dims=2, patch_size=[32, 32], batch_size=2, model={"depth": 2, "base_filters": 4})
    model = T.build_model(config, 3, ["background", "a", "b"], T.resolve_runtime(config))
    x = tf.zeros((2, 32, 32, 1))
    y = tf.zeros((2, 32, 32), "int32")
    graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
    op_types = [op.type for op in graph.get_operations()]
    assert op_types.count("ResourceApplyAdam") == len(model.trainable_variables)


def test_precision_setting_is_checked_where_it_is_read():
    assert T.TrainConfig(mixed_precision="mixed_bfloat16").mixed_precision == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="mixed_precision.*mixed_bfloat16.*got 'bf16'"):
        T.TrainConfig(mixed_precision="bf16")
    with pytest.raises(ConfigError, match="jit_compile.*got 'yes'"):
        T.TrainConfig(jit_compile="yes")


def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path):
    from medseg_tf.runtime import cpu_has_bf16

    for i, (flags, expected) in enumerate((("fpu sse avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                                           ("fpu sse avx2 avx512f", False))):
        fake = tmp_path / f"cpuinfo{i}"
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_bf16(str(fake)) is expected
    assert cpu_has_bf16(str(tmp_path / "absent")) is False


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_train_step(phantom_root, policy):
    """The GPU precision (mixed_float16, with loss scaling) and the CPU one (mixed_bfloat16, without)
    both build and train here: float32 weights and output, finite loss."""
    runtime = T.resolve_runtime(T.TrainConfig(mixed_precision=policy))
    config = T.TrainConfig(data=str(phantom_root), patch_size=(16, 16), model={"depth": 1, "base_filters": 4})
    before = keras.config.dtype_policy().name
    model = T.build_model(config, 3, ["bg", "a", "b"], runtime)
    assert keras.config.dtype_policy().name == before  # the global policy is restored
    assert model.layers[1].dtype_policy.name == policy
    assert {w.dtype for w in model.weights} == {"float32"}
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    out = model(np.zeros((1, 16, 16, 1), np.float32))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
    logs = model.train_on_batch(x, (x[..., 0] > 1).astype(np.int32), return_dict=True)
    assert np.isfinite(logs["loss"])


# ---------------------------------------------------------------- training runs


class Capture(keras.callbacks.Callback):
    """Keeps the weights at the end of training."""

    def on_train_end(self, logs=None):
        self.weights = [np.array(w) for w in self.model.weights]


class Kill(keras.callbacks.Callback):
    """Simulates a crash right after an epoch has been backed up."""

    def __init__(self, after_epoch: int):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise RuntimeError("simulated crash")


def tiny_config(phantom_root, out_dir) -> T.TrainConfig:
    return T.TrainConfig(data=str(phantom_root), dims=2, patch_size=(32, 32), max_cases=4,
                         model={"depth": 2, "base_filters": 4}, learning_rate=1e-2, epochs=2,
                         steps_per_epoch=3, batch_size=4, out_dir=str(out_dir))


def _scalar_tags(folder: Path) -> set[str]:
    """Tags of the TensorBoard scalars written in ``folder``."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            tags |= {v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "scalars"}
    return tags


@pytest.mark.slow
def test_train_resume_and_overwrite(phantom_root, tmp_path, capsys):
    config = tiny_config(phantom_root, tmp_path / "full")
    keep = Capture()
    run = T.train(config, verbose=1, callbacks=[keep])
    assert run == tmp_path / "full"
    printed = capsys.readouterr().out
    assert "Epoch 2/2" in printed and "val_dice_mean:" in printed  # Keras progress bar
    assert {"config.json", "split.json", "model.keras", "history.csv", "summary.json", "logs"} <= set(
        os.listdir(run))
    assert not (run / "backup").exists()
    assert T.TrainConfig.from_json(run / "config.json") == config
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 4 and not set(split["train"]) & set(split["val"])
    history = T.read_history(run / "history.csv")
    assert [r["epoch"] for r in history] == [0, 1]
    assert {"loss", "val_loss", "val_dice_Anterior", "val_dice_Posterior", "val_dice_mean",
            "learning_rate"} <= set(history[0])
    summary = json.loads((run / "summary.json").read_text())
    best = max(history, key=lambda r: r["val_dice_mean"])
    assert summary["best_val_dice_mean"] == pytest.approx(best["val_dice_mean"])
    assert summary["best_epoch"] == best["epoch"] + 1
    assert _scalar_tags(run / "logs" / "validation") >= {"epoch_dice_mean", "epoch_loss"}
    assert "epoch_learning_rate" in _scalar_tags(run / "logs" / "train")
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert model.output_shape[-1] == 3

    # a complete run is never overwritten silently
    with pytest.raises(OverwriteError, match="complete"):
        T.train(config, verbose=0)
    assert (run / "summary.json").is_file()

    # crash after epoch 1, then resume: same final weights as the uninterrupted run
    resumed = config.replace(out_dir=str(tmp_path / "resumed"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train(resumed, verbose=0, callbacks=[Kill(after_epoch=0)])
    folder = tmp_path / "resumed"
    assert not (folder / "summary.json").exists() and (folder / "backup").is_dir()
    with pytest.raises(OverwriteError, match="interrupted run with a different config"):
        T.train(resumed.replace(learning_rate=0.5), verbose=0)
    with pytest.raises(OverwriteError, match="resume=False"):
        T.train(resumed, verbose=0, resume=False)
    again = Capture()
    capsys.readouterr()
    T.train(resumed, verbose=2, callbacks=[again])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("device: ") and printed[1].startswith("resuming ")
    assert len([line for line in printed if line.startswith("epoch ")]) == 1
    assert printed[2].startswith("epoch 2/2") and "samples/s" in printed[2] and "val_dice_mean" in printed[2]
    assert len(again.weights) == len(keep.weights)
    for a, b in zip(keep.weights, again.weights):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)
    history_b = T.read_history(folder / "history.csv")
    assert [r["epoch"] for r in history_b] == [0, 1]
    for row_a, row_b in zip(history, history_b):
        assert row_b["loss"] == pytest.approx(row_a["loss"], rel=1e-5)
        assert row_b["val_dice_mean"] == pytest.approx(row_a["val_dice_mean"], abs=1e-6)
    assert json.loads((folder / "summary.json").read_text())["resumed_from_epoch"] == 1
    assert not (folder / "backup").exists()


@pytest.mark.slow
def test_context_slices_train_and_predict(phantom_root, tmp_path):
    """A 2.5D run: 3 input channels in training, and predict_case stacks the neighbours itself."""
    from medseg_tf.inference import load_run, predict_case

    config = tiny_config(phantom_root, tmp_path / "ctx").replace(context_slices=1, epochs=1)
    run = T.train(config, verbose=0)
    model, saved = load_run(run)
    assert model.input_shape[-1] == 3 and saved["context_slices"] == 1
    image_path = sorted((phantom_root / "imagesTr").glob("*.nii.gz"))[0]
    label, _ = predict_case(model, image_path, saved)
    assert label.shape == nib.load(image_path).shape and set(np.unique(label)) <= {0, 1, 2}


def test_refuses_foreign_folder(phantom_root, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OverwriteError, match="holds no run"):
        T.train(tiny_config(phantom_root, folder), verbose=0)
    assert (folder / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- multi-worker


def tiny_distributed_run(strategy, norm, loss, optimizer, global_batch=8):
    """Train a tiny U-Net for 2 x 3 steps with the custom step; return weights and history."""
    import tensorflow as tf

    from medseg_tf.losses import dice_metrics, get_loss
    from medseg_tf.models import unet

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = unet((None, None, 1), 3, depth=1, base_filters=4, norm=norm)
        model.compile(optimizer=T.make_optimizer(optimizer, 0.05), loss=get_loss(loss),
                      metrics=dice_metrics(["bg", "a", "b"]))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 1)).astype("float32")
    y = (x[..., 0] > 0.7).astype("int32") + 2 * (x[..., 0] < -0.7).astype("int32")
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch)
    val_ds = tf.data.Dataset.from_tensor_slices((x[:8], y[:8])).batch(4)
    history = T.fit_distributed(model, train_ds, strategy=strategy, epochs=2, steps_per_epoch=3,
                                global_batch_size=global_batch, validation_data=val_ds)
    return [np.array(w) for w in model.weights], history


class SaveWeights(keras.callbacks.Callback):
    """Saves all weights to ``path`` (.npz) at the end of training."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        np.savez(self.path, *[np.array(w) for w in self.model.weights])


WORKER = textwrap.dedent("""
    import sys
    from medseg_tf import training as T
    runtime = T.resolve_runtime()  # first: creates MultiWorkerMirroredStrategy from TF_CONFIG
    assert runtime.strategy_name == "multi_worker" and runtime.num_replicas == 2, runtime.describe()
    import numpy as np
    phantom, out, index, tests = sys.argv[1:5]
    sys.path.insert(0, tests)
    from test_training import SaveWeights, tiny_config, tiny_distributed_run

    # the whole trainer (U-Net with BatchNorm, Dice + CE, Adam), folder written by the chief
    config = tiny_config(phantom, f"{out}/run").replace(batch_size=2)
    T.train(config, verbose=2, callbacks=[SaveWeights(f"{out}/bn{index}.npz")])
    # a plain SGD run, to compare with one process on the global batch
    plain, _ = tiny_distributed_run(runtime.strategy, None, "ce", "sgd")
    np.savez(f"{out}/plain{index}.npz", *plain)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_custom_step(phantom_root, tmp_path):
    """Two workers on 127.0.0.1 (MultiWorkerMirroredStrategy, custom step) end with identical weights."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ports = [_free_port(), _free_port()]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="-1")
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(phantom_root), str(tmp_path), str(index),
             str(Path(__file__).parent)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    epoch_lines = [[line for line in out.splitlines() if line.startswith("epoch ")] for out in outputs]
    assert len(epoch_lines[0]) == 2 and "multi_worker (2 replicas)" in outputs[0]
    # the chief wrote a complete run folder; both workers logged the same validation Dice
    run = tmp_path / "run"
    assert (run / "summary.json").is_file() and not (run / "backup").exists()
    assert [r["epoch"] for r in T.read_history(run / "history.csv")] == [0, 1]
    dice = [[line.split("val_dice_mean ")[1].split()[0] for line in lines] for lines in epoch_lines]
    assert dice[0] == dice[1]
    bn = [np.load(tmp_path / f"bn{i}.npz") for i in range(2)]
    plain = [np.load(tmp_path / f"plain{i}.npz") for i in range(2)]
    assert len(bn[0].files) > 10
    for key in bn[0].files:  # trainable weights and BatchNorm statistics alike
        assert np.array_equal(bn[0][key], bn[1][key]), key
    for key in plain[0].files:
        assert np.array_equal(plain[0][key], plain[1][key]), key

    # together the two workers took the same SGD steps as one process on the global batch
    import tensorflow as tf

    single, history = tiny_distributed_run(tf.distribute.get_strategy(), None, "ce", "sgd")
    for key, value in zip(plain[0].files, single):
        assert np.allclose(plain[0][key], value, rtol=1e-4, atol=1e-6), key
    assert np.all(np.isfinite(history["loss"]))
