"""Training speed and memory of the course U-Nets on this machine (Keras 3 / TensorFlow).

:func:`measure_training_speed` times the *same* training step that
:func:`medseg_tf.training.train` runs: the model, loss, Dice metrics,
optimizer, precision, XLA setting and distribution strategy all come from
:class:`~medseg_tf.training.TrainConfig` through
:func:`~medseg_tf.training.resolve_runtime` and
:func:`~medseg_tf.training.build_model`. Two data sources:

* ``data=None``: one fixed synthetic batch repeated (``Dataset.from_tensors``),
  which measures the device (forward, backward, optimizer update) alone;
* ``data="phantom"``, ``"hippocampus"`` or an MSD folder: the training input
  pipeline of :func:`medseg_tf.training.make_datasets` (NumPy crop sampling,
  augmentation, batching), i.e. what a real run gets. When this is slower than
  the synthetic figure, the input pipeline, not the device, is the bottleneck.

Timing: one ``model.fit`` call of ``warmup_steps + steps`` steps; a callback
records the time at the end of every step (reading the loss value, which waits
for the device), and the rate is taken over the last ``steps`` steps only, so
tracing, XLA compilation and pipeline start-up are excluded (they are reported
separately as ``warmup_s``).

Memory: ``peak_rss_mb`` is the peak *resident set size of the whole process*
during the measurement, from ``VmHWM`` in ``/proc/self/status`` after the
high-water mark was reset to the current size (``echo 5 >
/proc/self/clear_refs``, Linux >= 4.0). TensorFlow allocates outside Python's
allocator, so ``tracemalloc`` would not see it. Where ``/proc`` is missing the
fallback is ``resource.getrusage(...).ru_maxrss``, the peak since the process
started (``peak_rss_reset`` says which). On a GPU, ``peak_device_mb`` is
TensorFlow's peak allocation on the GPU (``tf.config.experimental.get_memory_info``).

Results are kept as rows of a CSV file (:func:`append_results`,
:func:`read_results`); ``benchmarks/train_speed.py`` is the command-line
front end that writes ``benchmarks/results.csv``.
"""

from __future__ import annotations

import csv
import datetime
import logging
import math
import os
import re
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from medseg_tf.errors import DataError

__all__ = [
    "RESULT_COLUMNS",
    "current_rss_mb",
    "peak_rss_mb",
    "reset_peak_rss",
    "device_description",
    "synthetic_batch",
    "measure_training_speed",
    "append_results",
    "read_results",
    "results_table",
]

#: Columns of a results CSV, in order (``date`` and ``command`` are added by :func:`append_results`).
RESULT_COLUMNS = (
    "device", "dims", "model", "batch_size", "global_batch_size", "patch_size", "steps", "precision", "jit",
    "strategy", "replicas", "data", "samples_per_s", "step_ms", "warmup_s", "peak_rss_mb",
    "rss_before_mb", "peak_rss_reset", "peak_device_mb", "load_avg", "tensorflow", "keras",
    "date", "command",
)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# =========================================================================== host memory


def _status_kib(field: str, status_path: str | os.PathLike = _STATUS) -> int | None:
    """Value of a ``kB`` field (``VmRSS``, ``VmHWM`` ...) of a ``/proc/<pid>/status`` file, or None."""
    try:
        text = Path(status_path).read_text()
    except OSError:
        return None
    match = re.search(rf"^{re.escape(field)}:\s+(\d+)\s+kB", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def current_rss_mb(status_path: str | os.PathLike = _STATUS) -> float | None:
    """Resident set size of this process now, in MiB (``VmRSS``); None without ``/proc``."""
    kib = _status_kib("VmRSS", status_path)
    return None if kib is None else kib / 1024


def peak_rss_mb(status_path: str | os.PathLike = _STATUS) -> float:
    """Peak resident set size of this process in MiB.

    ``VmHWM`` of ``/proc/self/status`` (the high-water mark, which
    :func:`reset_peak_rss` can lower to the current size); without ``/proc``,
    ``ru_maxrss`` of ``resource.getrusage`` (KiB on Linux, bytes on macOS),
    the peak since the process started.
    """
    kib = _status_kib("VmHWM", status_path)
    if kib is not None:
        return kib / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss(clear_refs_path: str | os.PathLike = _CLEAR_REFS) -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS; True if the kernel allowed it.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). Returns False
    (and changes nothing) where that file is missing or not writable.
    """
    try:
        with open(clear_refs_path, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# =========================================================================== device


def device_description(n_gpus: int | None = None) -> str:
    """The device training runs on, in words: ``"NVIDIA H100 80GB HBM3"``, ``"2x ..."`` or ``"CPU (2 cores)"``."""
    gpus = tf.config.list_physical_devices("GPU")
    if n_gpus is None:
        n_gpus = len(gpus)
    if n_gpus == 0 or not gpus:
        return f"CPU ({os.cpu_count()} cores)"
    try:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name") or "GPU"
    except (ValueError, RuntimeError):
        name = "GPU"
    return name if n_gpus == 1 else f"{n_gpus}x {name}"


def _gpu_peak_mb(n_gpus: int) -> float:
    peaks = []
    for i in range(n_gpus):
        try:
            peaks.append(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] / 2**20)
        except (ValueError, RuntimeError):
            pass
    return max(peaks) if peaks else float("nan")


def _reset_gpu_peaks(n_gpus: int) -> None:
    for i in range(n_gpus):
        try:
            tf.config.experimental.reset_memory_stats(f"GPU:{i}")
        except (ValueError, RuntimeError):
            pass


# =========================================================================== measurement


def synthetic_batch(batch_size: int, patch_size: Sequence[int], num_classes: int = 3, *,
                    foreground: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random batch shaped like the training batches.

    Parameters
    ----------
    batch_size : int
    patch_size : sequence of 2 or 3 int
        Spatial size in voxels.
    num_classes : int
        Labels ``0 .. num_classes-1``; label 0 (background) covers about
        ``1 - foreground`` of the voxels, the others share the rest equally.
    foreground : float
        Share of foreground voxels, in ``[0, 1]``.
    seed : int

    Returns
    -------
    x : np.ndarray, float32, shape (batch_size, *patch_size, 1)
        Standard normal intensities.
    y : np.ndarray, int32, shape (batch_size, *patch_size)
    """
    if int(batch_size) < 1 or not patch_size or min(int(s) for s in patch_size) < 1:
        raise ValueError(f"batch_size and patch_size must be positive, got {batch_size} and {patch_size}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= foreground <= 1.0:
        raise ValueError(f"foreground must be in [0, 1], got {foreground}")
    rng = np.random.default_rng(seed)
    shape = (int(batch_size), *(int(s) for s in patch_size))
    x = rng.standard_normal(shape + (1,), dtype=np.float32)
    p = [1.0 - foreground] + [foreground / (num_classes - 1)] * (num_classes - 1)
    y = rng.choice(num_classes, size=shape, p=p).astype(np.int32)
    return x, y


class _StepTimer(keras.callbacks.Callback):
    """Records ``time.perf_counter()`` at the start of training and at the end of every step."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        # Keras hands this callback Python floats (it converts the logs, which waits for the step)
        self.ends.append(time.perf_counter())


def _model_text(model_kwargs: Mapping) -> str:
    """Short description of the U-Net, e.g. ``"unet d4 f16"`` (+ non-default options)."""
    import inspect

    from medseg_tf.models import unet

    defaults = {k: p.default for k, p in inspect.signature(unet).parameters.items()}
    depth = model_kwargs.get("depth", defaults["depth"])
    filters = model_kwargs.get("base_filters", defaults["base_filters"])
    extra = [f"{k}={v}" for k, v in sorted(model_kwargs.items())
             if k not in ("depth", "base_filters") and v != defaults.get(k)]
    return " ".join([f"unet d{depth} f{filters}", *extra])


def measure_training_speed(dims: int = 2, batch_size: int = 16, patch_size: Sequence[int] | None = None,
                           steps: int = 30, *, warmup_steps: int = 3, data: str | None = None,
                           model: Mapping | None = None, loss: str | Mapping = "dice_ce",
                           mixed_precision: str | bool = "auto", jit_compile: str | bool = "auto",
                           target_spacing: Sequence[float] | None = None, augment: bool | Mapping = True,
                           num_classes: int = 3,
                           max_cases: int | None = 16, seed: int = 0) -> dict:
    """Time training steps of a U-Net and record the peak memory.

    Parameters
    ----------
    dims : {2, 3}
        2D U-Net on slices or 3D U-Net on patches.
    batch_size : int
        Samples per replica and step (the global batch is this times the
        number of replicas of the strategy, see :class:`~medseg_tf.training.Runtime`).
    patch_size : sequence of int, optional
        Training crop in voxels (2 or 3 ints, divisible by ``2**depth``);
        default as in :class:`~medseg_tf.training.TrainConfig`.
    steps : int
        Timed steps (after the warm-up).
    warmup_steps : int
        Untimed steps first (>= 1: the first step traces the graph and, with
        XLA, compiles it).
    data : str, optional
        None: a fixed synthetic batch (:func:`synthetic_batch`, device speed
        alone). ``"phantom"``, ``"hippocampus"`` or the path of an MSD folder:
        the training input pipeline on its first ``max_cases`` cases.
    model : dict, optional
        Keyword arguments of :func:`medseg_tf.models.unet` (default: its defaults).
    loss : str or dict
        As ``TrainConfig.loss``.
    mixed_precision, jit_compile : "auto" or bool
        As in :class:`~medseg_tf.training.TrainConfig` (``"auto"``: on with a GPU).
    target_spacing : 3 floats (mm) or None
        Resample the cases of ``data`` to this voxel spacing first (as ``TrainConfig.target_spacing``).
    augment : bool or dict
        Augmentation of the pipeline's batches, as ``TrainConfig.augment`` (ignored with synthetic data).
    num_classes : int
        Output classes with synthetic data (a data set brings its own).
    max_cases : int or None
        Cases loaded from ``data`` (None: all).
    seed : int
        Seeds the weights (``keras.utils.set_random_seed``), the synthetic
        batch and the pipeline.

    Returns
    -------
    dict
        ``device`` (str), ``dims``, ``model`` (e.g. ``"unet d4 f16"``: depth and
        base filters), ``batch_size``, ``global_batch_size``,
        ``patch_size`` (str like ``"48x64"``), ``steps``, ``precision``
        (``"float32"`` / ``"mixed_float16"``), ``jit`` (bool), ``strategy``,
        ``replicas``, ``data`` (``"synthetic"`` or the data name),
        ``samples_per_s`` (float, samples of the global batch per second over
        the timed steps), ``step_ms`` (ms per step), ``warmup_s`` (seconds of the
        warm-up steps, tracing/compilation included), ``peak_rss_mb`` (peak
        process RSS in MiB during warm-up and timed steps), ``rss_before_mb``
        (RSS before building the model), ``peak_rss_reset`` (False: the peak
        is since process start), ``peak_device_mb`` (GPU peak in MiB, NaN on a
        CPU), ``load_avg`` (1-minute load average at the start: above the core
        count the CPU was shared), ``tensorflow``, ``keras`` (versions).

    Raises
    ------
    ValueError
        For bad arguments, or under ``MultiWorkerMirroredStrategy`` (``TF_CONFIG``
        set): measure one worker at a time.
    """
    from medseg_tf.training import TrainConfig, build_model, load_volumes, make_datasets, open_dataset
    from medseg_tf.training import resolve_runtime

    steps, warmup_steps = int(steps), int(warmup_steps)
    if steps < 1 or warmup_steps < 1:
        raise ValueError(f"steps and warmup_steps must be >= 1, got {steps} and {warmup_steps}")
    total = steps + warmup_steps
    config = TrainConfig(data=str(data) if data is not None else "phantom", dims=dims,
                         patch_size=None if patch_size is None else tuple(patch_size),
                         model=dict(model or {}), loss=loss, schedule="constant", epochs=1,
                         steps_per_epoch=total, batch_size=batch_size, seed=seed, augment=augment,
                         target_spacing=None if target_spacing is None else tuple(target_spacing),
                         mixed_precision=mixed_precision, jit_compile=jit_compile)
    runtime = resolve_runtime(config)
    if runtime.strategy_name == "multi_worker":
        raise ValueError("measure_training_speed runs in one process; unset TF_CONFIG "
                         "(MultiWorkerMirroredStrategy) to measure one machine")
    global_batch = config.batch_size * runtime.num_replicas
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rss_before = current_rss_mb()
    was_reset = reset_peak_rss()
    if runtime.device == "GPU":
        _reset_gpu_peaks(runtime.n_gpus)
    keras.utils.set_random_seed(seed)

    if data is None:
        class_names = ["background"] + [f"class_{c}" for c in range(1, int(num_classes))]
        x, y = synthetic_batch(global_batch, config.patch_size, len(class_names), seed=seed)
        train_ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        data_name = "synthetic"
    else:
        dataset = open_dataset(config.data)
        ids = dataset.case_ids[:max_cases] if max_cases else dataset.case_ids
        if not ids:
            raise ValueError(f"data set {config.data!r} has no cases")
        images, labels = load_volumes(dataset, ids, target_spacing=config.target_spacing)
        train_ds, _, _ = make_datasets(config, (images, labels), (images[:1], labels[:1]),
                                       global_batch_size=global_batch)
        class_names = dataset.class_names
        data_name = config.data if config.data in ("phantom", "hippocampus") else Path(config.data).name

    net = build_model(config, len(class_names), class_names, runtime)
    timer = _StepTimer()
    # each measured model traces its own step once; TensorFlow counts that across models as "retracing"
    # and warns after a few measurements in one process, so its logger is quiet during the fit
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        net.fit(train_ds, epochs=1, steps_per_epoch=total, callbacks=[timer], verbose=0, shuffle=False)
    finally:
        tf_logger.setLevel(level)
    if len(timer.ends) != total:
        raise RuntimeError(f"expected {total} training steps, timed {len(timer.ends)}")
    seconds = timer.ends[-1] - timer.ends[warmup_steps - 1]
    result = {
        "device": device_description(runtime.n_gpus),
        "dims": config.dims,
        "model": _model_text(config.model),
        "batch_size": config.batch_size,
        "global_batch_size": global_batch,
        "patch_size": "x".join(str(s) for s in config.patch_size),
        "steps": steps,
        "precision": "mixed_float16" if runtime.mixed_precision else "float32",
        "jit": bool(runtime.jit_compile),
        "strategy": runtime.strategy_name,
        "replicas": runtime.num_replicas,
        "data": data_name,
        "samples_per_s": global_batch * steps / seconds,
        "step_ms": 1000.0 * seconds / steps,
        "warmup_s": timer.ends[warmup_steps - 1] - timer.start,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": float("nan") if rss_before is None else rss_before,
        "peak_rss_reset": was_reset,
        "peak_device_mb": _gpu_peak_mb(runtime.n_gpus) if runtime.device == "GPU" else float("nan"),
        "load_avg": load_avg,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    return result


# =========================================================================== results file


def append_results(rows: Mapping | Sequence[Mapping], path: str | os.PathLike, *,
                   command: str | None = None) -> Path:
    """Append measurement rows to a CSV file (written with a header if new).

    Parameters
    ----------
    rows : dict or sequence of dicts
        Results of :func:`measure_training_speed`.
    path : path-like
        The CSV file (its folder is created).
    command : str, optional
        The command that produced the rows (default: this process's
        ``sys.argv``); stored with the date (UTC) in every row.

    Returns
    -------
    Path

    Raises
    ------
    DataError
        If the existing file has other columns than :data:`RESULT_COLUMNS`.
    ValueError
        If a row has keys outside :data:`RESULT_COLUMNS`.
    """
    path = Path(path)
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    command = command if command is not None else " ".join(["python", *sys.argv])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for row in rows:
        unknown = sorted(set(row) - set(RESULT_COLUMNS))
        if unknown:
            raise ValueError(f"unknown result column(s) {unknown}; expected a subset of {RESULT_COLUMNS}")
    if path.is_file() and path.stat().st_size > 0:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != RESULT_COLUMNS:
            raise DataError(path, f"has columns {header}, expected {list(RESULT_COLUMNS)}; "
                                  "write to a new file")
        new = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = True
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            out = {k: _csv_value(v) for k, v in row.items()}
            out.setdefault("date", date)
            out.setdefault("command", command)
            writer.writerow(out)
    return path


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results CSV written by :func:`append_results`.

    Returns
    -------
    pandas.DataFrame
        One row per measurement, columns :data:`RESULT_COLUMNS` (empty cells as NaN).

    Raises
    ------
    DataError
        Missing file, unreadable CSV, or missing columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "results file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read as CSV: {err}") from None
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected {list(RESULT_COLUMNS)}")
    return df[list(RESULT_COLUMNS)]


def results_table(rows: pd.DataFrame | Sequence[Mapping] | Mapping, *,
                  columns: Sequence[str] = ("device", "data", "dims", "model", "patch_size", "global_batch_size",
                                            "precision", "jit", "samples_per_s", "step_ms", "peak_rss_mb",
                                            "peak_device_mb")) -> pd.DataFrame:
    """A compact, rounded table of results for display.

    Parameters
    ----------
    rows : DataFrame, dict or sequence of dicts
        Results of :func:`measure_training_speed` or :func:`read_results`.
    columns : sequence of str
        Columns to keep, in order (missing ones are skipped).

    Returns
    -------
    pandas.DataFrame
        Rates with 3 significant digits, times and memory rounded to whole ms / MiB.
    """
    if isinstance(rows, Mapping):
        rows = [rows]
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    df = df[[c for c in columns if c in df.columns]].copy()
    for name in ("samples_per_s",):
        if name in df:
            df[name] = df[name].astype(float).map(lambda v: float(f"{v:.3g}"))
    for name in ("step_ms", "peak_rss_mb", "rss_before_mb", "peak_device_mb", "warmup_s"):
        if name in df:
            df[name] = df[name].astype(float).round(0 if name != "warmup_s" else 1)
    return df.reset_index(drop=True)
