"""One training entry point driven by one config: :func:`train` (Keras 3 / TensorFlow).

A run is described by a :class:`TrainConfig` (saved as JSON next to the
results) and produces a *run folder*::

    runs/phantom_2d/
        config.json     # the TrainConfig used
        split.json      # {"train": [case ids], "val": [case ids]} (split by case, seeded)
        model.keras     # the model of the epoch with the best val_dice_mean
        history.csv     # one row per epoch (column epoch counts from 0, as Keras writes it): loss,
                        #   dice_<class> (training batches), val_loss, val_dice_<class>, val_dice_mean,
                        #   learning_rate
        summary.json    # written last: best_epoch (counted from 1) and its Dice, time, runtime;
                        #   its presence marks the run complete
        logs/           # TensorBoard event files
        backup/         # only while running: BackupAndRestore state (weights, optimizer, epoch)

What happens, in order:

1. **Runtime** (:func:`resolve_runtime`): the distribution strategy
   (``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set,
   ``MirroredStrategy`` with several GPUs, the default strategy otherwise),
   mixed precision (``mixed_float16``) and XLA compilation. ``"auto"`` turns both
   on only on a GPU: on this course's 2-core CPU XLA made 2D training 1.3x and
   3D training ~10x *slower*, and CPUs have no fast float16.
2. **Data**: the cases of an MSD folder (:func:`open_dataset`) are split by case,
   never by slice (:func:`medseg_tf.datasets.split_cases`, seeded); each image
   is z-scored per volume after clipping to its 0.5-99.5 % percentiles (the
   normalisation :mod:`medseg_tf.inference` applies) and, if
   ``target_spacing`` is given, resampled. Training batches come from
   :func:`medseg_tf.pipeline.slice_dataset` (2D) or
   :func:`~medseg_tf.pipeline.patch_dataset` (3D); validation uses the same
   functions with ``training=False`` and a "patch" as large as the largest
   validation slice/volume (rounded up to a multiple of ``2**depth``), i.e.
   whole slices/volumes, padded.
3. **Model**: :func:`medseg_tf.models.unet` with ``config.model`` as keyword
   arguments, compiled with :func:`medseg_tf.losses.get_loss` and the streaming
   per-class Dice metrics (:func:`medseg_tf.losses.dice_metrics`, logged as
   ``val_dice_<class name>`` and ``val_dice_mean``).
4. **Fit** with ``steps_per_epoch`` batches per epoch, then one validation pass.
   Under ``MultiWorkerMirroredStrategy`` Keras 3's ``fit`` fails on TF 2.21 /
   Keras 3.15 ("unsupported type PerReplica to a Tensor", keras-team/keras#20585),
   so :func:`fit_distributed` drives the same model with a custom train step.

Interrupted runs (killed process, exception) resume from their last completed
epoch with the same result: ``keras.callbacks.BackupAndRestore`` restores the
weights, optimizer state and epoch, the training data stream (deterministic
for a given seed) skips the batches already used, ``history.csv`` is cut back
to the restored epoch and the "best model" threshold is taken from it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import inspect
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medseg_tf import settings
from medseg_tf.errors import ConfigError, DataError, OverwriteError, RunLockedError
from medseg_tf.losses import dice_metrics, get_loss
from medseg_tf.runspec import LOSS_NAMES, OPTIMIZER_NAMES, SCHEDULES, RunSpec, name_and_kwargs, round_up

__all__ = [
    "TrainConfig",
    "Runtime",
    "PolyDecay",
    "SCHEDULES",
    "OPTIMIZERS",
    "make_schedule",
    "make_optimizer",
    "resolve_runtime",
    "describe_runtime",
    "open_dataset",
    "load_volumes",
    "make_datasets",
    "build_model",
    "resolve_run_dir",
    "read_history",
    "EpochLogger",
    "TensorBoardScalars",
    "ThrottledProgbar",
    "fit_distributed",
    "train",
]


#: Optimizer names known to :func:`make_optimizer` and their default keyword arguments
#: (``sgd`` is nnU-Net's: Nesterov momentum 0.99).
OPTIMIZERS: dict[str, tuple[type, dict]] = {
    "adam": (keras.optimizers.Adam, {}),
    "adamw": (keras.optimizers.AdamW, {"weight_decay": 1e-4}),
    "sgd": (keras.optimizers.SGD, {"momentum": 0.99, "nesterov": True}),
    "rmsprop": (keras.optimizers.RMSprop, {}),
}

#: Files and folders a run writes (the only things ``overwrite=True`` deletes).
RUN_FILES = ("config.json", "split.json", "model.keras", "history.csv", "summary.json")
RUN_DIRS = ("logs", "backup")
#: The lock file a training run holds (see :func:`_lock_run_dir`); not part of a run's results.
LOCK_FILE = ".lock"

#: The spec of a training run: :class:`medseg_tf.runspec.RunSpec` (one schema for training and prediction).
TrainConfig = RunSpec


def _loss_name_kwargs(spec) -> tuple[str, dict]:
    return name_and_kwargs("loss", spec, LOSS_NAMES)


def _optimizer_name_kwargs(spec) -> tuple[str, dict]:
    return name_and_kwargs("optimizer", spec, OPTIMIZER_NAMES)


# =========================================================================== schedules, optimizer


@keras.saving.register_keras_serializable(package="medseg_tf")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """nnU-Net's polynomial decay, constant within an epoch.

    ``lr(step) = initial_learning_rate * (1 - epoch / epochs) ** power`` with
    ``epoch = floor(step / steps_per_epoch)`` (0-based), so the last epoch
    still trains with ``initial * (1 / epochs) ** power > 0``.

    Parameters
    ----------
    initial_learning_rate : float
    epochs : int
    steps_per_epoch : int
    power : float
        0.9 in nnU-Net.
    """

    def __init__(self, initial_learning_rate: float, epochs: int, steps_per_epoch: int,
                 power: float = 0.9):
        self.initial_learning_rate = float(initial_learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.power = float(power)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        epoch = keras.ops.floor(step / float(self.steps_per_epoch))
        remaining = keras.ops.clip(1.0 - epoch / float(self.epochs), 0.0, 1.0)
        return self.initial_learning_rate * remaining ** self.power

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "power": self.power}


def make_schedule(name: str, learning_rate: float, *, epochs: int, steps_per_epoch: int):
    """The learning rate (a float or a ``LearningRateSchedule`` of the optimizer step).

    Parameters
    ----------
    name : {"constant", "cosine", "poly"}
        ``cosine``: :class:`keras.optimizers.schedules.CosineDecay` from
        ``learning_rate`` to 0 over ``epochs * steps_per_epoch`` steps;
        ``poly``: :class:`PolyDecay` (nnU-Net).
    learning_rate : float
    epochs, steps_per_epoch : int
    """
    if name == "constant":
        return float(learning_rate)
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(float(learning_rate),
                                                      decay_steps=int(epochs) * int(steps_per_epoch))
    if name == "poly":
        return PolyDecay(learning_rate, epochs, steps_per_epoch)
    raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


def make_optimizer(spec: str | Mapping, learning_rate) -> keras.optimizers.Optimizer:
    """Build an optimizer from a name or ``{"name": ..., **kwargs}`` (see :data:`OPTIMIZERS`).

    Create it inside ``strategy.scope()`` when a distribution strategy is used.
    """
    name, kwargs = _optimizer_name_kwargs(spec)
    cls, defaults = OPTIMIZERS[name]
    try:
        return cls(learning_rate=learning_rate, **{**defaults, **kwargs})
    except TypeError as err:
        raise ConfigError("optimizer", f"{name!r}: {err}") from None


# =========================================================================== runtime


@dataclass(frozen=True)
class Runtime:
    """Where and how training runs (see :func:`resolve_runtime`).

    Attributes
    ----------
    device : str
        ``"GPU"`` or ``"CPU"``.
    n_gpus : int
        GPUs visible to TensorFlow.
    mixed_precision : bool
        ``mixed_float16`` policy (float16 compute, float32 weights, loss scaling).
    jit_compile : bool
        XLA compilation of the train/validation steps.
    strategy : tf.distribute.Strategy
    strategy_name : str
        ``"default"``, ``"mirrored"`` or ``"multi_worker"``.
    """

    device: str
    n_gpus: int
    mixed_precision: bool
    jit_compile: bool
    strategy: object
    strategy_name: str

    @property
    def num_replicas(self) -> int:
        """Replicas that each take ``batch_size`` samples per step."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        """True in single-process runs and on the chief (or worker 0) of a multi-worker run."""
        if self.strategy_name != "multi_worker":
            return True
        task_type, task_id = _task()
        return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                                and not _has_chief())

    def describe(self) -> str:
        """One line: device, precision, compilation, strategy."""
        if self.device == "GPU":
            device = f"GPU x{self.n_gpus}"
        else:
            device = f"CPU ({os.cpu_count()} cores, no GPU)"
        precision = "mixed_float16" if self.mixed_precision else "float32"
        xla = "on" if self.jit_compile else "off"
        strategy = f"{self.strategy_name} ({self.num_replicas} replica{'s' * (self.num_replicas > 1)})"
        if self.strategy_name == "multi_worker":
            task_type, task_id = _task()
            strategy += f", task {task_type}:{task_id}"
        return f"device: {device} | precision: {precision} | XLA: {xla} | strategy: {strategy}"


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    return value if isinstance(value, dict) else {}


def _task() -> tuple[str | None, int]:
    task = _tf_config().get("task", {})
    return task.get("type"), int(task.get("index", 0))


def _has_chief() -> bool:
    return bool(_tf_config().get("cluster", {}).get("chief"))


@functools.lru_cache(maxsize=1)
def _multi_worker_strategy():
    # One per process: TensorFlow allows a single collective setup, created before other ops.
    return tf.distribute.MultiWorkerMirroredStrategy()


def _select_strategy(n_gpus: int) -> tuple[object, str]:
    cluster = _tf_config().get("cluster", {})
    if sum(len(v) for v in cluster.values() if isinstance(v, list)) > 1:
        return _multi_worker_strategy(), "multi_worker"
    if n_gpus > 1:
        return tf.distribute.MirroredStrategy(), "mirrored"
    return tf.distribute.get_strategy(), "default"


def resolve_runtime(config: TrainConfig | None = None) -> Runtime:
    """Decide device, precision, XLA and strategy for ``config`` (defaults: ``"auto"``).

    ``TF_CONFIG`` naming more than one task gives ``MultiWorkerMirroredStrategy``
    (create it before any other TensorFlow op: call this first in the worker
    script); several visible GPUs give ``MirroredStrategy``; otherwise the
    default (single-device) strategy. ``"auto"`` precision / XLA: on with a GPU,
    off on a CPU.
    """
    config = config or TrainConfig()
    n_gpus = len(tf.config.list_physical_devices("GPU"))
    strategy, strategy_name = _select_strategy(n_gpus)
    on_gpu = n_gpus > 0
    mixed = on_gpu if config.mixed_precision == "auto" else bool(config.mixed_precision)
    jit = on_gpu if config.jit_compile == "auto" else bool(config.jit_compile)
    return Runtime(device="GPU" if on_gpu else "CPU", n_gpus=n_gpus, mixed_precision=mixed,
                   jit_compile=jit, strategy=strategy, strategy_name=strategy_name)


def describe_runtime(config: TrainConfig | None = None) -> str:
    """One printable line: which device, precision, compilation and strategy are in use."""
    return resolve_runtime(config).describe()


@contextlib.contextmanager
def _dtype_policy(mixed: bool):
    """Build layers under ``mixed_float16`` (if ``mixed``), restoring the previous global policy."""
    previous = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# =========================================================================== data


def open_dataset(data: str):
    """The :class:`medseg_tf.datasets.MSDDataset` named by ``TrainConfig.data``.

    ``"phantom"`` and ``"hippocampus"`` go through
    :func:`medseg_tf.datasets.course_dataset` (the phantom is generated if
    missing); anything else is the path of an MSD folder.
    """
    from medseg_tf.datasets import MSDDataset, course_dataset

    if data in settings.DATASETS:
        return course_dataset(data)
    return MSDDataset(Path(data).expanduser())


def load_volumes(dataset, case_ids: Sequence[str], *, target_spacing: Sequence[float] | None = None,
                 normalization: str = "zscore") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load cases and normalise each image exactly as :mod:`medseg_tf.inference` does.

    Each image is normalised per volume with
    ``preprocessing.normalize(image, normalization)`` (``"zscore"``: intensities clipped to their
    0.5-99.5 % percentiles, then :func:`medseg_tf.preprocessing.zscore`), then,
    if ``target_spacing`` is given, resampled (image linear, label nearest).
    :func:`train` passes the run spec's ``target_spacing`` and ``normalization``.

    Parameters
    ----------
    dataset : MSDDataset
    case_ids : sequence of str
    target_spacing : 3 floats (mm) or None
    normalization : str
        A :data:`medseg_tf.runspec.NORMALIZATIONS` name.

    Returns
    -------
    images : list of float32 (X, Y, Z), about zero mean and unit variance per volume
    labels : list of uint8 (X, Y, Z)
    """
    from medseg_tf.preprocessing import normalize, resample_image, resample_label

    images, labels = [], []
    for case_id in case_ids:
        image, label, spacing = dataset.load_arrays(case_id)
        image = normalize(image, normalization)
        if target_spacing is not None:
            image = resample_image(image, spacing, target_spacing)
            label = resample_label(label, spacing, target_spacing)
        images.append(np.asarray(image, dtype=np.float32))
        labels.append(np.asarray(label, dtype=np.uint8))
    return images, labels


def _validation_patch(volumes: Sequence[np.ndarray], dims: int, slice_axis: int,
                      multiple: int) -> tuple[int, ...]:
    """Smallest patch holding every validation slice (2D) or volume (3D), rounded up."""
    biggest = np.max([v.shape for v in volumes], axis=0)
    if dims == 2:
        biggest = np.delete(biggest, slice_axis)
    return tuple(round_up(int(n), multiple) for n in biggest)


def make_datasets(config: TrainConfig, train_volumes, val_volumes, *, global_batch_size: int):
    """Training and validation ``tf.data`` pipelines for ``config``.

    Parameters
    ----------
    config : TrainConfig
    train_volumes, val_volumes : (images, labels)
        Lists from :func:`load_volumes`.
    global_batch_size : int
        Batch size over all replicas.

    Returns
    -------
    train_ds : tf.data.Dataset
        Endless; ``(x (B, *patch_size, 1) float32, y (B, *patch_size) int32)``.
    val_ds : tf.data.Dataset
        One pass over whole validation slices/volumes padded to ``val_patch``.
    val_patch : tuple of int
    """
    from medseg_tf.pipeline import patch_dataset, slice_dataset

    multiple = config.divisor
    val_patch = _validation_patch(val_volumes[0], config.dims, config.slice_axis, multiple)
    common = dict(seed=config.seed)
    if config.dims == 2:
        train_ds = slice_dataset(*train_volumes, axis=config.slice_axis, patch_size=config.patch_size,
                                 batch_size=global_batch_size, training=True,
                                 augment=config.augment, foreground_fraction=config.foreground_fraction,
                                 context=config.context_slices, **common)
        val_ds = slice_dataset(*val_volumes, axis=config.slice_axis, patch_size=val_patch,
                               batch_size=global_batch_size, training=False, augment=False,
                               context=config.context_slices, **common)
    else:
        train_ds = patch_dataset(*train_volumes, patch_size=config.patch_size,
                                 batch_size=global_batch_size, training=True, augment=config.augment,
                                 foreground_fraction=config.foreground_fraction, **common)
        val_ds = patch_dataset(*val_volumes, patch_size=val_patch, batch_size=global_batch_size,
                               training=False, augment=False, **common)
    # tell Keras how many validation batches there are (no "ran out of data" warning, real progress bars)
    n_val = (sum(v.shape[config.slice_axis] for v in val_volumes[0]) if config.dims == 2
             else len(val_volumes[0]))
    val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n_val / global_batch_size)))
    return train_ds, val_ds, val_patch


# =========================================================================== model


def build_model(config: TrainConfig, num_classes: int, class_names: Sequence[str],
                runtime: Runtime) -> keras.Model:
    """The compiled U-Net of ``config``, built in the runtime's strategy scope and precision.

    Input ``(None,)*dims + (channels,)`` (any size divisible by ``2**depth``;
    one channel, or ``2 * context_slices + 1`` for a 2.5D model), output
    float32 probabilities; compiled with the configured loss, optimizer and
    schedule, and the Dice metrics of :func:`medseg_tf.losses.dice_metrics`.
    """
    from medseg_tf.models import unet

    loss_name, loss_kwargs = _loss_name_kwargs(config.loss)
    lr = make_schedule(config.schedule, config.learning_rate, epochs=config.epochs,
                       steps_per_epoch=config.steps_per_epoch)
    with runtime.strategy.scope():
        with _dtype_policy(runtime.mixed_precision):
            model = unet((None,) * config.dims + (config.input_channels,), num_classes, **config.model)
        model.compile(optimizer=make_optimizer(config.optimizer, lr),
                      loss=get_loss(loss_name, **loss_kwargs),
                      metrics=dice_metrics(class_names),
                      jit_compile=runtime.jit_compile)
    return model


# =========================================================================== run folder


def resolve_run_dir(config: TrainConfig) -> Path:
    """The run folder of ``config`` (see :attr:`TrainConfig.out_dir`)."""
    if config.out_dir is None:
        data = config.data if config.data in settings.DATASETS else Path(config.data).name
        return settings.runs_dir() / f"{data}_{config.dims}d"
    path = Path(config.out_dir).expanduser()
    return path if path.is_absolute() else settings.runs_dir() / path


def _clean_run_dir(run_dir: Path) -> None:
    """Delete what a run writes (and nothing else)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _backup_dir(run_dir: Path, runtime: Runtime) -> Path:
    if runtime.strategy_name != "multi_worker":
        return run_dir / "backup"
    task_type, task_id = _task()
    return run_dir / "backup" / f"{task_type}_{task_id}"


def _restored_epoch(backup_dir: Path) -> int:
    """Epoch BackupAndRestore will resume from (0 if there is no usable backup)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        path = backup_dir / name
        if path.is_file() and (backup_dir / "latest.weights.h5").is_file():
            try:
                return int(json.loads(path.read_text())["epoch"])
            except (ValueError, KeyError, TypeError):
                continue
    return 0


def _prepare_run_dir(run_dir: Path, config: TrainConfig, *, overwrite: bool, resume: bool,
                     runtime: Runtime) -> int:
    """Check/clean the run folder; return the epoch training starts from."""
    backup = _backup_dir(run_dir, runtime)
    if not runtime.is_chief:  # the chief owns the folder; workers only read their backup
        return _restored_epoch(backup) if resume else 0
    if not run_dir.exists() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return 0
    if (run_dir / "summary.json").is_file():
        if not overwrite:
            raise OverwriteError(f"{run_dir}: holds a complete training run; pass overwrite=True "
                                 "(or choose another out_dir) to replace it")
        _clean_run_dir(run_dir)
        return 0
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        if not overwrite:
            raise OverwriteError(f"{run_dir}: folder is not empty and holds no run (no config.json); "
                                 "choose another out_dir or pass overwrite=True")
        _clean_run_dir(run_dir)
        return 0
    try:
        same = TrainConfig.from_json(saved_path).to_dict() == config.to_dict()
    except DataError:
        same = False
    if resume and same:
        epoch = _restored_epoch(backup)
        if epoch == 0:
            _clean_run_dir(run_dir)
        return epoch
    if not overwrite:
        why = "with a different config" if not same else "and resume=False"
        raise OverwriteError(f"{run_dir}: holds an interrupted run {why}; pass overwrite=True to "
                             "start over" + (" or resume=True to continue it" if same else ""))
    _clean_run_dir(run_dir)
    return 0


def read_history(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``history.csv`` as dicts of floats (``epoch`` as int)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            try:
                parsed[k] = int(v) if k == "epoch" else float(v)
            except (TypeError, ValueError):
                parsed[k] = v
        out.append(parsed)
    return out


def _truncate_history(path: Path, epochs_done: int) -> list[dict]:
    """Keep the rows of epochs ``< epochs_done`` (rows written after the last backup go)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = reader.fieldnames
        rows = [r for r in reader if int(float(r["epoch"])) < epochs_done]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return read_history(path)


# =========================================================================== callbacks


class _LearningRateLogger(keras.callbacks.Callback):
    """Adds ``learning_rate`` (the rate used during the epoch's first step) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self._lr


class EpochLogger(keras.callbacks.Callback):
    """Prints one line per epoch: time, training throughput and the logs.

    Example: ``epoch 3/20  12.4 s (train 10.9 s, 117 samples/s)  loss 0.4123
    val_loss 0.3711  val_dice_mean 0.8123``.

    Parameters
    ----------
    epochs : int
    samples_per_step : int
        Global batch size.
    steps_per_epoch : int
    stream : file-like
        Default ``sys.stdout``.
    """

    def __init__(self, epochs: int, samples_per_step: int, steps_per_epoch: int, stream=None):
        super().__init__()
        self.epochs, self.samples_per_step, self.steps_per_epoch = epochs, samples_per_step, steps_per_epoch
        self.stream = stream

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._test_start = None

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        train_s = (self._test_start or end) - self._start
        rate = self.samples_per_step * self.steps_per_epoch / max(train_s, 1e-9)
        shown = [(k, v) for k, v in (logs or {}).items()
                 if k == "loss" or k.startswith("val_") or k == "learning_rate"]
        values = "  ".join(f"{k} {float(v):.4g}" if k == "learning_rate" else f"{k} {float(v):.4f}"
                           for k, v in shown)
        print(f"epoch {epoch + 1}/{self.epochs}  {end - self._start:.1f} s (train {train_s:.1f} s, "
              f"{rate:.3g} samples/s)  {values}", file=self.stream or sys.stdout, flush=True)


class TensorBoardScalars(keras.callbacks.Callback):
    """Epoch logs as TensorBoard scalars (``<log_dir>/train`` and ``<log_dir>/validation``).

    Written with ``tf.summary.write`` and scalar metadata, so it needs only
    TensorFlow (Keras' ``TensorBoard`` callback needs the ``tensorboard``
    package to write scalars). Tags follow Keras: ``epoch_loss``,
    ``epoch_dice_mean`` ... ``val_*`` logs go to the ``validation`` writer.
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict = {}

    def _writer(self, kind: str):
        if kind not in self._writers:
            self._writers[kind] = tf.summary.create_file_writer(str(self.log_dir / kind))
        return self._writers[kind]

    def on_epoch_end(self, epoch, logs=None):
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR)
        for key, value in (logs or {}).items():
            kind, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            writer = self._writer(kind)
            with writer.as_default():
                tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32), step=epoch,
                                 metadata=metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class ThrottledProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, redrawn at most every ``interval`` seconds.

    In a notebook every redraw is kept in the saved output (nbclient does not
    collapse carriage returns), so Keras' default of one redraw per 0.05 s
    would add hundreds of kB per training run; every few seconds is plenty.
    """

    def __init__(self, interval: float = 5.0):
        super().__init__()
        self.interval = float(interval)

    def _maybe_init_progbar(self):
        if self.progbar is None:
            self.progbar = keras.utils.Progbar(target=self.target, verbose=self.verbose, unit_name="step",
                                               interval=self.interval)


def _resolve_verbose(verbose) -> int:
    """0 silent, 1 Keras progress bar, 2 one line per epoch; "auto": 1 in notebooks, else 2."""
    if verbose == "auto":
        return 1 if "ipykernel" in sys.modules else 2
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
    return int(verbose)


# =========================================================================== custom distributed loop


def fit_distributed(model: keras.Model, train_ds: tf.data.Dataset, *, strategy, epochs: int,
                    steps_per_epoch: int, global_batch_size: int,
                    validation_data: tf.data.Dataset | None = None, initial_epoch: int = 0,
                    callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 0) -> dict:
    """Train a compiled model with a custom step (for ``MultiWorkerMirroredStrategy``).

    Each replica computes the compiled loss on its share of the global batch;
    the loss is scaled by ``local batch / global batch``
    (``tf.nn.compute_average_loss``) so that the gradients, summed over all
    replicas by ``optimizer.apply_gradients``, are those of the global batch.
    Validation runs on every worker on the whole (non-distributed)
    ``validation_data`` with fresh copies of the compiled metrics (e.g. the
    :class:`~medseg_tf.losses.DiceScore` ones), so all workers log the same
    numbers. Non-trainable variables (BatchNorm moving statistics), which each
    replica updates from its own share of the batch, are averaged over the
    replicas at the end of every epoch.
    Callbacks get the usual ``on_train_begin``, ``on_epoch_begin/end``,
    ``on_train_batch_end``, ``on_test_begin/end`` and ``on_train_end`` calls.

    Parameters
    ----------
    model : keras.Model
        Built and compiled inside ``strategy.scope()``.
    train_ds : tf.data.Dataset
        Endless, batched by ``global_batch_size``.
    strategy : tf.distribute.Strategy
    epochs, steps_per_epoch, global_batch_size, initial_epoch : int
    validation_data : tf.data.Dataset, optional
    callbacks : sequence of keras.callbacks.Callback
    verbose : int
        Passed to the callback list (1 adds a Keras progress bar).

    Returns
    -------
    dict
        The logs of each epoch: ``{"loss": [...], "val_loss": [...], ...}``.
    """
    loss_fn = model.loss
    optimizer = model.optimizer
    callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=True,
                                                 add_progbar=verbose == 1, model=model,
                                                 verbose=verbose, epochs=epochs, steps=steps_per_epoch)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = loss_fn(y, y_pred)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
            # the losses are batch means; give each local sample that value, then average
            # over the *global* batch: the replicas' gradients sum to the global-batch gradient
            per_sample = loss * tf.ones([tf.shape(x)[0]], dtype=loss.dtype)
            scaled = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size)
            scaled_for_grad = optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled_for_grad, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return scaled

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # Non-trainable state (BatchNorm moving statistics) is updated by each replica from its own
    # share of the batch, so the copies drift apart; average them at the end of each epoch.
    # Moving averages are linear, so this equals averaging after every step.
    synced = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    @tf.function
    def sync_non_trainable():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in synced])
            for variable, mean in zip(synced, means):
                variable.assign(mean)

        strategy.run(replica_fn)

    # validation outside the strategy: plain variables, the same on every worker
    compiled = (model.get_compile_config() or {}).get("metrics") or []
    if not isinstance(compiled, list):
        raise ValueError("fit_distributed supports a flat list of compiled metrics only")
    val_metrics = [keras.metrics.deserialize(m) for m in compiled]

    @tf.function
    def val_step(x, y):
        y_pred = model(x, training=False)
        for metric in val_metrics:
            metric.update_state(y, y_pred)
        return loss_fn(y, y_pred), tf.shape(x)[0]

    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    model.stop_training = False
    with strategy.scope():  # BackupAndRestore may restore optimizer variables: create them in scope
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        callback_list.on_train_begin()
    epoch_logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            loss = float(train_step(iterator))
            total += loss
            callback_list.on_train_batch_end(step, {"loss": loss})
        if synced:
            sync_non_trainable()
        epoch_logs = {"loss": total / steps_per_epoch}
        if validation_data is not None:
            callback_list.on_test_begin()
            for metric in val_metrics:
                metric.reset_state()
            loss_sum, count = 0.0, 0
            for x, y in validation_data:
                loss, n = val_step(x, y)
                loss_sum += float(loss) * int(n)
                count += int(n)
            val_logs = {"loss": loss_sum / max(count, 1)}
            val_logs.update({m.name: float(m.result()) for m in val_metrics})
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(epoch_logs)
    return model.history.history if model.history is not None else {}


# =========================================================================== train


def train(config: TrainConfig | Mapping | str | os.PathLike, *, overwrite: bool = False,
          resume: bool = True, verbose: int | str = "auto",
          callbacks: Sequence[keras.callbacks.Callback] = ()) -> Path:
    """Train the U-Net described by ``config`` and return its run folder.

    Parameters
    ----------
    config : TrainConfig, dict or path of a JSON config
    overwrite : bool
        Replace a complete run (or a foreign/incompatible one) in the run
        folder; without it such a folder raises :class:`OverwriteError`.
    resume : bool
        Continue an interrupted run with the same config from its last completed
        epoch (default). ``False`` refuses (or, with ``overwrite``, restarts) it.
    verbose : "auto", 0, 1 or 2
        0 silent; 1 Keras progress bars (redrawn every 5 s in a notebook, see
        :class:`ThrottledProgbar`); 2 one line per epoch (time, samples/s,
        losses, Dice). ``"auto"``: 1 in a notebook, 2 in a script.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, called after the built-in ones.

    Returns
    -------
    Path
        The run folder (see the module docstring for its contents).
    """
    config = TrainConfig.coerce(config)
    runtime = resolve_runtime(config)  # first: a multi-worker strategy must precede other TF ops
    verbose = _resolve_verbose(verbose)
    run_dir = resolve_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise OverwriteError(f"{run_dir}: is a file, not a run folder; choose another out_dir (--out)")

    # read and check every input before the run folder is touched, so a failure leaves nothing behind
    from medseg_tf.datasets import split_cases

    dataset = open_dataset(config.data)
    case_ids = dataset.case_ids[: config.max_cases] if config.max_cases else dataset.case_ids
    train_ids, val_ids = split_cases(case_ids, config.val_fraction, config.seed)
    if not train_ids or not val_ids:
        raise ConfigError("val_fraction", f"{len(case_ids)} case(s) cannot be split into training and "
                                          f"validation with val_fraction={config.val_fraction}")
    train_volumes = load_volumes(dataset, train_ids, target_spacing=config.target_spacing,
                                 normalization=config.normalization)
    val_volumes = load_volumes(dataset, val_ids, target_spacing=config.target_spacing,
                               normalization=config.normalization)

    lock = _lock_run_dir(run_dir) if runtime.is_chief else contextlib.nullcontext()
    with lock:
        return _train_locked(config, runtime, run_dir, dataset, (train_ids, train_volumes),
                             (val_ids, val_volumes), overwrite=overwrite, resume=resume, verbose=verbose,
                             callbacks=callbacks)


@contextlib.contextmanager
def _lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on ``run_dir/.lock`` while training writes the folder.

    A second writer gets :class:`RunLockedError` at once. The lock is the operating system's
    (``fcntl.flock``), so a killed run releases it; the empty ``.lock`` file stays and is ignored.
    """
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{run_dir}: another training run is writing to this folder; wait for it "
                                 "to finish or choose another out_dir (--out)") from None
        yield
    finally:
        handle.close()


def _train_locked(config: TrainConfig, runtime: Runtime, run_dir: Path, dataset, train_part, val_part, *,
                  overwrite: bool, resume: bool, verbose: int, callbacks) -> Path:
    """The body of :func:`train` once inputs are read and the run folder is locked."""
    (train_ids, train_volumes), (val_ids, val_volumes) = train_part, val_part
    initial_epoch = _prepare_run_dir(run_dir, config, overwrite=overwrite, resume=resume,
                                     runtime=runtime)
    if verbose:
        print(runtime.describe(), flush=True)
        if initial_epoch:
            print(f"resuming {run_dir} from epoch {initial_epoch + 1}/{config.epochs}", flush=True)
    keras.utils.set_random_seed(config.seed)
    if runtime.is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.to_json(run_dir / "config.json")
        (run_dir / "split.json").write_text(json.dumps({"train": train_ids, "val": val_ids}, indent=1) + "\n")

    start = time.perf_counter()
    global_batch = config.batch_size * runtime.num_replicas
    train_ds, val_ds, _ = make_datasets(config, train_volumes, val_volumes, global_batch_size=global_batch)
    if initial_epoch:  # the data stream is deterministic: skip what the finished epochs used
        train_ds = train_ds.skip(initial_epoch * config.steps_per_epoch)
    model = build_model(config, dataset.num_classes, dataset.class_names, runtime)

    history_path = run_dir / "history.csv"
    previous = _truncate_history(history_path, initial_epoch) if runtime.is_chief else []
    best_so_far = max((r["val_dice_mean"] for r in previous
                       if isinstance(r.get("val_dice_mean"), float)), default=None)
    # order matters: the learning rate joins the logs first; the backup comes after the files
    # of the epoch are written, so a restored epoch always has its history row and checkpoint
    all_callbacks: list[keras.callbacks.Callback] = [_LearningRateLogger()]
    if runtime.is_chief:
        all_callbacks += [
            keras.callbacks.ModelCheckpoint(str(run_dir / "model.keras"), monitor="val_dice_mean", mode="max",
                                            save_best_only=True, initial_value_threshold=best_so_far),
            keras.callbacks.CSVLogger(str(history_path), append=True),
            TensorBoardScalars(run_dir / "logs"),
        ]
    all_callbacks.append(keras.callbacks.BackupAndRestore(str(_backup_dir(run_dir, runtime)),
                                                          double_checkpoint=True))
    if verbose == 1:
        all_callbacks.append(ThrottledProgbar(5.0 if "ipykernel" in sys.modules else 0.5))
    if verbose == 2:
        all_callbacks.append(EpochLogger(config.epochs, global_batch, config.steps_per_epoch))
    all_callbacks += list(callbacks)

    if runtime.strategy_name == "multi_worker":
        fit_distributed(model, train_ds, strategy=runtime.strategy, epochs=config.epochs,
                        steps_per_epoch=config.steps_per_epoch, global_batch_size=global_batch,
                        validation_data=val_ds, initial_epoch=initial_epoch, callbacks=all_callbacks,
                        verbose=1 if verbose == 1 else 0)
    else:
        model.fit(train_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                  validation_data=val_ds, callbacks=all_callbacks, verbose=1 if verbose == 1 else 0,
                  shuffle=False)
    seconds = time.perf_counter() - start
    with contextlib.suppress(OSError):  # multi-worker: each worker removed its own backup/<task>
        (run_dir / "backup").rmdir()

    if runtime.is_chief:
        _write_summary(run_dir, runtime, seconds, resumed_from=initial_epoch)
        if verbose:
            summary = json.loads((run_dir / "summary.json").read_text())
            print(f"best val_dice_mean {summary['best_val_dice_mean']:.4f} at epoch "
                  f"{summary['best_epoch']}; run folder {run_dir}", flush=True)
    return run_dir


def _write_summary(run_dir: Path, runtime: Runtime, seconds: float, *, resumed_from: int) -> None:
    rows = read_history(run_dir / "history.csv")
    scored = [r for r in rows if isinstance(r.get("val_dice_mean"), float)]
    best = max(scored, key=lambda r: r["val_dice_mean"]) if scored else {}
    summary = {
        "epochs": len(rows),
        "best_epoch": int(best.get("epoch", -1)) + 1,
        "best_val_dice_mean": best.get("val_dice_mean", float("nan")),
        "best_val_dice": {k[len("val_dice_"):]: v for k, v in best.items()
                          if k.startswith("val_dice_") and k != "val_dice_mean"},
        "final_val_dice_mean": scored[-1]["val_dice_mean"] if scored else float("nan"),
        "seconds_this_session": round(seconds, 1),
        "resumed_from_epoch": resumed_from,
        "runtime": runtime.describe(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
