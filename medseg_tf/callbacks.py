"""Callbacks of the trainer: learning-rate logging, one line per epoch, TensorBoard scalars, a throttled
progress bar (Keras; TensorFlow only for the TensorBoard writer)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

__all__ = ["DeepSupervisionLogs", "EpochLogger", "TensorBoardScalars", "ThrottledProgbar"]


class _LearningRateLogger(keras.callbacks.Callback):
    """Adds ``learning_rate`` (the rate used during the epoch's first step) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self._lr


class DeepSupervisionLogs(keras.callbacks.Callback):
    """Gives a deep-supervision model's logs the names of a single-output model.

    Keras prefixes the metrics of a multi-output model with the output's name
    (``val_output_dice_mean``); the run folder, checkpoint and history read ``val_dice_mean``. This
    renames ``[val_]output_<metric>`` to ``[val_]<metric>`` in place (``loss`` stays the weighted
    total; ``output_ds<k>_loss`` stay as they are). Put it first in the callback list.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for key in [k for k in logs if "output_" in k and "_ds" not in k and not k.endswith("output_loss")]:
            logs[key.replace("output_", "", 1)] = logs.pop(key)


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
