"""One training entry point driven by one config: :func:`train` (Keras 3 / TensorFlow).

A run is described by a :class:`TrainConfig` (saved as JSON next to the
results) and produces a *run folder*::

    runs/phantom_2d/
        config.json     # the TrainConfig used
        split.json      # {"train": [case ids], "val": [case ids]} (split by case, seeded)
        model.keras     # the model of the epoch with the best val_dice_mean (checkpoint "best", the
                        #   default) or of the last epoch (checkpoint "last")
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
2. **Data**: the cases of an MSD folder (:func:`medseg_tf.sources.open_dataset`) are split by case,
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

The trainer's parts live in modules of their own: :mod:`medseg_tf.runspec` (the run spec, NumPy only),
:mod:`medseg_tf.schedules` (learning-rate schedules, optimizers), :mod:`medseg_tf.runtime` (device,
precision, strategy), :mod:`medseg_tf.runfolder` (the run folder, its lock, history and summary),
:mod:`medseg_tf.callbacks` and :mod:`medseg_tf.distributed` (the multi-worker loop). This module holds
the data, the model and :func:`train`; it re-exports the names above, so ``training.X`` keeps working.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medseg_tf import settings
from medseg_tf.callbacks import (DeepSupervisionLogs, EpochLogger, TensorBoardScalars, ThrottledProgbar,
                                 _LearningRateLogger, _resolve_verbose)
from medseg_tf.distributed import fit_distributed
from medseg_tf.errors import ConfigError, OverwriteError
from medseg_tf.losses import dice_metrics, get_loss
from medseg_tf.runfolder import (LOCK_FILE, RUN_DIRS, RUN_FILES, _backup_dir,  # noqa: F401 (re-exported)
                                 _prepare_run_dir, _truncate_history, _write_summary, lock_run_dir, read_history,
                                 resolve_run_dir)
from medseg_tf.runspec import LOSS_NAMES, RunSpec, name_and_kwargs, round_up
from medseg_tf.runtime import Runtime, _dtype_policy, describe_runtime, resolve_runtime
from medseg_tf.schedules import OPTIMIZERS, SCHEDULES, PolyDecay, make_optimizer, make_schedule
from medseg_tf.sources import open_dataset

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


#: The spec of a training run: :class:`medseg_tf.runspec.RunSpec` (one schema for training and prediction).
TrainConfig = RunSpec


def _loss_name_kwargs(spec) -> tuple[str, dict]:
    return name_and_kwargs("loss", spec, LOSS_NAMES)


# =========================================================================== data


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
                                 context_slices=config.context_slices, **common)
        val_ds = slice_dataset(*val_volumes, axis=config.slice_axis, patch_size=val_patch,
                               batch_size=global_batch_size, training=False, augment=False,
                               context_slices=config.context_slices, **common)
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
    if len(config.deep_supervision_weights) > 1:
        train_ds, val_ds = (ds.map(_deep_supervision_targets(config), num_parallel_calls=tf.data.AUTOTUNE)
                            for ds in (train_ds, val_ds))
    return train_ds, val_ds, val_patch


def _deep_supervision_targets(config: TrainConfig):
    """Map ``(x, y) -> (x, (y, y at 1/2, y at 1/4, ...))``: labels for each deep-supervision output.

    Each coarser label keeps every second voxel along each spatial axis (nearest neighbour, like
    nnU-Net's order-0 downsampling of the segmentation).
    """
    levels = len(config.deep_supervision_weights)
    dims = config.dims

    def targets(x, y):
        out = [y]
        for level in range(1, levels):
            step = 2 ** level
            out.append(y[(slice(None),) + (slice(None, None, step),) * dims])
        return x, tuple(out)

    return targets


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
    weights = config.deep_supervision_weights
    with runtime.strategy.scope():
        with _dtype_policy(runtime.precision):
            model = unet((None,) * config.dims + (config.input_channels,), num_classes, **config.model)
        if len(weights) == 1:
            loss, metrics, loss_weights = get_loss(loss_name, **loss_kwargs), dice_metrics(class_names), None
        else:  # deep supervision: one loss per output, Dice of the full-resolution output only
            loss = [get_loss(loss_name, **loss_kwargs) for _ in weights]
            metrics = [dice_metrics(class_names)] + [None] * (len(weights) - 1)
            loss_weights = list(weights)
        model.compile(optimizer=make_optimizer(config.optimizer, lr), loss=loss, loss_weights=loss_weights,
                      metrics=metrics, jit_compile=runtime.jit_compile)
        # the optimizer's variables now: left to the first training step, they are created while tf.function
        # traces it, and TensorFlow traces the step a second time (about 4 s on a 2-core CPU, every run)
        model.optimizer.build(model.trainable_variables)
    return model


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
    from medseg_tf.datasets import kfold_split, split_cases, subsample_cases

    dataset = open_dataset(config.data)
    case_ids = dataset.case_ids[: config.max_cases] if config.max_cases else dataset.case_ids
    if config.folds:
        if config.folds > len(case_ids):
            raise ConfigError("folds", f"{config.folds} folds need at least as many cases, the data has "
                                       f"{len(case_ids)}")
        train_ids, val_ids = kfold_split(case_ids, config.folds, config.fold, config.effective_split_seed)
    else:
        train_ids, val_ids = split_cases(case_ids, config.val_fraction, config.effective_split_seed)
    train_ids = subsample_cases(train_ids, config.max_train_cases, config.seed)
    if not train_ids or not val_ids:
        raise ConfigError("val_fraction", f"{len(case_ids)} case(s) cannot be split into training and "
                                          f"validation with val_fraction={config.val_fraction}")
    train_volumes = load_volumes(dataset, train_ids, target_spacing=config.target_spacing,
                                 normalization=config.normalization)
    val_volumes = load_volumes(dataset, val_ids, target_spacing=config.target_spacing,
                               normalization=config.normalization)

    lock = lock_run_dir(run_dir) if runtime.is_chief else contextlib.nullcontext()
    with lock:
        return _train_locked(config, runtime, run_dir, dataset, (train_ids, train_volumes),
                             (val_ids, val_volumes), overwrite=overwrite, resume=resume, verbose=verbose,
                             callbacks=callbacks)


def _train_locked(config: TrainConfig, runtime: Runtime, run_dir: Path, dataset, train_part, val_part, *,
                  overwrite: bool, resume: bool, verbose: int, callbacks) -> Path:
    """The body of :func:`train` once inputs are read and the run folder is locked."""
    (train_ids, train_volumes), (val_ids, val_volumes) = train_part, val_part
    initial_epoch = _prepare_run_dir(run_dir, config, overwrite=overwrite, resume=resume,
                                     runtime=runtime)
    if verbose:
        print(runtime.describe(), flush=True)
        if initial_epoch:
            print(f"resuming {settings.display_path(run_dir)} from epoch {initial_epoch + 1}/{config.epochs}",
                  flush=True)
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
    if len(config.deep_supervision_weights) > 1:  # first: the others see the plain metric names
        all_callbacks.insert(0, DeepSupervisionLogs())
    if runtime.is_chief:
        all_callbacks += [
            keras.callbacks.ModelCheckpoint(str(run_dir / "model.keras"), monitor="val_dice_mean", mode="max",
                                            save_best_only=config.checkpoint == "best",
                                            initial_value_threshold=best_so_far if config.checkpoint == "best"
                                            else None),
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
        _write_summary(run_dir, runtime, seconds, resumed_from=initial_epoch, checkpoint=config.checkpoint)
        if verbose:
            summary = json.loads((run_dir / "summary.json").read_text())
            print(f"best val_dice_mean {summary['best_val_dice_mean']:.4f} at epoch "
                  f"{summary['best_epoch']}; run folder {settings.display_path(run_dir)}", flush=True)
    return run_dir
