"""Training and inference speed, memory and FLOP efficiency of the course U-Nets on this machine.

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

``python -m medseg_tf bench`` (:func:`bench`) adds, on any Keras 3 backend
(TensorFlow is imported only for the input pipeline and the TensorFlow-only
export formats): training on a synthetic batch
(:func:`measure_training_synthetic`), the model call alone on whole volumes
and its throughput at several batch sizes (:func:`measure_model_call`),
end-to-end prediction of any model format with Dice and label agreement
(:func:`measure_end_to_end`), FLOPs per sample (:func:`forward_flops`) and
the achieved GFLOP/s as a share of a matrix-product peak measured on the spot
(:func:`matmul_peak_gflops`), for the dtype policies ``float32``,
``mixed_bfloat16``, ``mixed_float16`` and XLA on or off; medians of repeats,
with the machine and library versions (:func:`machine_info`), appended to a
CSV (:func:`append_bench`, :data:`BENCH_COLUMNS`).
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

import medseg_tf
from medseg_tf.errors import DataError
from medseg_tf.models import with_precision  # re-exported: bench applies it

__all__ = [
    "RESULT_COLUMNS",
    "BENCH_COLUMNS",
    "PRECISIONS",
    "bench",
    "bench_table",
    "append_bench",
    "read_bench",
    "machine_info",
    "cpu_name",
    "accelerator",
    "matmul_peak_gflops",
    "forward_flops",
    "build_unet",
    "with_precision",
    "measure_training_synthetic",
    "measure_model_call",
    "measure_end_to_end",
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
    import tensorflow as tf

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
    import tensorflow as tf

    peaks = []
    for i in range(n_gpus):
        try:
            peaks.append(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] / 2**20)
        except (ValueError, RuntimeError):
            pass
    return max(peaks) if peaks else float("nan")


def _reset_gpu_peaks(n_gpus: int) -> None:
    import tensorflow as tf

    for i in range(n_gpus):
        try:
            tf.config.experimental.reset_memory_stats(f"GPU:{i}")
        except (ValueError, RuntimeError):
            pass


# =========================================================================== measurement


def synthetic_batch(batch_size: int, patch_size: Sequence[int], num_classes: int = 3, *,
                    foreground: float = 0.05, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
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
    channels : int
        Input channels (``2 * context_slices + 1`` for a 2.5D model).

    Returns
    -------
    x : np.ndarray, float32, shape (batch_size, *patch_size, channels)
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
    x = rng.standard_normal(shape + (int(channels),), dtype=np.float32)
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
                           num_classes: int = 3, context_slices: int = 0,
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
    mixed_precision, jit_compile : "auto", bool (or a dtype policy name for ``mixed_precision``)
        As in :class:`~medseg_tf.training.TrainConfig`.
    target_spacing : 3 floats (mm) or None
        Resample the cases of ``data`` to this voxel spacing first (as ``TrainConfig.target_spacing``).
    augment : bool or dict
        Augmentation of the pipeline's batches, as ``TrainConfig.augment`` (ignored with synthetic data).
    num_classes : int
        Output classes with synthetic data (a data set brings its own).
    context_slices : int
        2D only: neighbouring slices on each side fed as channels (a 2.5D model reads
        ``2 * context_slices + 1`` channels, from the pipeline or the synthetic batch alike).
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
    import tensorflow as tf

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
                         mixed_precision=mixed_precision, jit_compile=jit_compile,
                         context_slices=int(context_slices))
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
        x, y = synthetic_batch(global_batch, config.patch_size, len(class_names), seed=seed,
                               channels=config.input_channels)
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
        "precision": runtime.precision,
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


# =========================================================================== `python -m medseg_tf bench`
# Everything below runs on any Keras 3 backend (TensorFlow, JAX): the synthetic-batch measurements need only
# Keras; the input-pipeline measurement (measure_training_speed above) and the exported formats other than ONNX
# import TensorFlow when asked for.

#: Columns of a ``bench`` CSV, in order.
BENCH_COLUMNS = (
    "date", "command", "kind", "device", "cpu", "cores", "backend", "keras", "tensorflow", "jax", "onnxruntime",
    "numpy", "model", "source", "dims", "input", "batch_size", "precision", "xla", "data", "repeats", "params",
    "gflop_per_sample", "samples_per_s", "ms_per_batch", "ms_per_volume", "e2e_ms_per_volume", "achieved_gflops",
    "matmul_peak_gflops", "peak_fraction", "peak_rss_mb", "peak_device_mb", "warmup_s", "agreement", "dice_mean",
    "load_avg", "error",
)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _version(package: str) -> str:
    """Installed version of a distribution, without importing it ("" if absent)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def cpu_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU model (``model name`` of ``/proc/cpuinfo``), or ``platform.processor()``."""
    import platform

    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerator() -> tuple[str, int]:
    """``(description, n)`` of the accelerators of the current Keras backend: ``("CPU (2 cores)", 0)`` without."""
    backend = keras.backend.backend()
    names: list[str] = []
    if backend == "jax":
        import jax

        names = [getattr(d, "device_kind", "GPU") for d in jax.devices() if d.platform != "cpu"]
    elif backend == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                names.append(tf.config.experimental.get_device_details(gpu).get("device_name") or "GPU")
            except (ValueError, RuntimeError):
                names.append("GPU")
    elif backend == "torch":
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if not names:
        return f"CPU ({os.cpu_count()} cores)", 0
    return (names[0] if len(names) == 1 else f"{len(names)}x {names[0]}"), len(names)


def tensorflow_onednn() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels (None: not the TensorFlow backend, or unknown).

    TensorFlow decides once, when imported: on by default only on CPUs with neural-network instructions
    (AVX-512 VNNI / BF16, AMX, ...), or where ``TF_ENABLE_ONEDNN_OPTS=1`` (which ``import medseg_tf`` sets
    unless the user did).
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow  # noqa: F401  (loaded already under this backend)

    return medseg_tf._tensorflow_onednn()


def machine_info() -> dict:
    """Device, CPU, cores, Keras backend and library versions (read without importing the libraries).

    On a CPU where TensorFlow runs without its oneDNN kernels the device reads ``CPU (n cores, oneDNN off)``.
    """
    device, n_accelerators = accelerator()
    if n_accelerators == 0 and tensorflow_onednn() is False:
        device = device[:-1] + ", oneDNN off)"
    return {"device": device, "cpu": cpu_name(), "cores": os.cpu_count(), "backend": keras.backend.backend(),
            "keras": keras.__version__, "tensorflow": _version("tensorflow"), "jax": _version("jax"),
            "onnxruntime": _version("onnxruntime"), "numpy": np.__version__,
            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")}


def _device_peak_mb() -> float:
    """Peak accelerator memory in MiB since the last reset, NaN on a CPU or where unknown."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        elif backend == "jax":
            import jax

            dev = [d for d in jax.devices() if d.platform != "cpu"]
            if dev:
                return dev[0].memory_stats().get("peak_bytes_in_use", float("nan")) / 2**20
    except (ValueError, RuntimeError, AttributeError):
        pass
    return float("nan")


def _sync(x) -> np.ndarray:
    """The value of a backend tensor as NumPy (waits for the device)."""
    if isinstance(x, (list, tuple)):
        x = x[0]
    return keras.ops.convert_to_numpy(x)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Practical arithmetic peak of this device: GFLOP/s of an ``n x n`` matrix product (median of repeats).

    ``2 n**3`` floating-point operations per product (a multiply and an add per
    term), through ``keras.ops.matmul`` on the current backend, after one
    untimed product.
    """
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((n, n)).astype(np.float32), dtype=dtype)
    b = keras.ops.convert_to_tensor(rng.standard_normal((n, n)).astype(np.float32), dtype=dtype)
    _sync(keras.ops.matmul(a, b))
    times = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        _sync(keras.ops.matmul(a, b))
        times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / float(np.median(times)) / 1e9


def forward_flops(model, spatial: Sequence[int]) -> float:
    """Floating-point operations of one forward pass of one sample of spatial size ``spatial``.

    Counts the convolutions, transposed convolutions and dense layers (a
    multiply-add is 2 operations): ``2 * out_voxels * k**d * c_in * c_out`` for a
    convolution, ``2 * in_voxels * k**d * c_in * c_out`` for a transposed one.
    Normalisation, activations, pooling and the softmax are left out (a few
    per cent in a U-Net). A training step costs about 3 times this (the backward
    pass computes gradients for both activations and weights).
    """
    spatial = tuple(int(s) for s in spatial)
    fixed = keras.Input(shape=(*spatial, model.input_shape[-1]))
    try:
        clone = keras.models.clone_model(model, input_tensors=fixed)
    except (ValueError, TypeError):
        clone = model
    total = 0.0
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    transposed = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    for layer in clone.layers:
        if isinstance(layer, transposed):
            in_shape = layer.input.shape
            k = int(np.prod(layer.kernel_size))
            total += 2.0 * np.prod(in_shape[1:-1]) * k * in_shape[-1] * layer.filters
        elif isinstance(layer, conv_types):
            out_shape = layer.output.shape
            k = int(np.prod(layer.kernel_size))
            total += 2.0 * np.prod(out_shape[1:-1]) * k * layer.input.shape[-1] * layer.filters
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * np.prod(layer.output.shape[1:-1] or (1,)) * layer.input.shape[-1] * layer.units
    return float(total)


class _Policy:
    """Context manager: build models under a Keras dtype policy (``"float32"``, ``"mixed_bfloat16"`` ...)."""

    def __init__(self, name: str):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
        self.name = name

    def __enter__(self):
        self.saved = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.saved)


def build_unet(dims: int, model_kwargs: Mapping | None = None, *, in_channels: int = 1, num_classes: int = 3,
               precision: str = "float32"):
    """A :func:`medseg_tf.models.unet` with free spatial sizes, built under the dtype policy ``precision``."""
    from medseg_tf.models import unet

    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    with _Policy(precision):
        return unet((None,) * dims + (in_channels,), num_classes, **dict(model_kwargs or {}))


def _effective_xla(xla: bool) -> bool:
    """XLA as it will run: asked for on TensorFlow; always on under JAX (without ``jit`` JAX runs op by op)."""
    return bool(xla) if keras.backend.backend() == "tensorflow" else keras.backend.backend() == "jax" or bool(xla)


def _median_rate(ends: Sequence[float], warmup: int, steps: int, repeats: int, samples: int) -> tuple[float, float]:
    """Median samples/s and ms/step over ``repeats`` windows of ``steps`` steps after ``warmup`` steps."""
    rates = []
    for r in range(repeats):
        first = warmup + r * steps - 1
        seconds = ends[first + steps] - ends[first]
        rates.append(samples * steps / seconds)
    rate = float(np.median(rates))
    return rate, 1000.0 * samples / rate


def measure_training_synthetic(dims: int, batch_size: int, patch_size: Sequence[int], *,
                               model: Mapping | None = None, in_channels: int = 1, num_classes: int = 3,
                               precision: str = "float32", xla: bool = False, steps: int = 10,
                               warmup_steps: int = 2, repeats: int = 3, seed: int = 0) -> dict:
    """Training samples/s of a U-Net on one fixed random batch (Keras only, any backend).

    The step is the course's: :class:`medseg_tf.losses.DiceCELoss`, Adam,
    ``model.fit``; the data are :func:`synthetic_batch` repeated, so the rate is
    the model's alone (no input pipeline). The rate is the median over
    ``repeats`` windows of ``steps`` steps after ``warmup_steps`` untimed ones.

    Returns
    -------
    dict
        ``kind="train"``, ``data="synthetic"`` and the timing, memory and FLOP
        columns of :data:`BENCH_COLUMNS` (machine columns not included).
    """
    from medseg_tf.losses import DiceCELoss
    from medseg_tf.schedules import make_optimizer

    steps, warmup_steps, repeats = int(steps), int(warmup_steps), int(repeats)
    if min(steps, warmup_steps, repeats) < 1:
        raise ValueError(f"steps, warmup_steps and repeats must be >= 1, got {steps}, {warmup_steps}, {repeats}")
    keras.utils.set_random_seed(seed)
    x, y = synthetic_batch(batch_size, patch_size, num_classes, seed=seed)
    if in_channels != 1:
        x = np.repeat(x, in_channels, axis=-1)
    total = warmup_steps + steps * repeats
    reset = reset_peak_rss()
    net = build_unet(dims, model, in_channels=in_channels, num_classes=num_classes, precision=precision)
    xla = _effective_xla(xla)
    net.compile(optimizer=make_optimizer("adam", 1e-3), loss=DiceCELoss(), jit_compile=xla)  # as the trainer's
    net.optimizer.build(net.trainable_variables)  # as training.build_model: the first step is traced once
    timer = _StepTimer()
    xs, ys = np.concatenate([x] * total), np.concatenate([y] * total)
    net.fit(xs, ys, batch_size=int(batch_size), epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    rate, step_ms = _median_rate(timer.ends, warmup_steps, steps, repeats, int(batch_size))
    flops = forward_flops(net, patch_size)
    return {"kind": "train", "model": _model_text(model or {}), "source": "keras", "dims": dims,
            "input": "x".join(str(int(s)) for s in patch_size) + (f"x{in_channels}ch" if in_channels != 1 else ""),
            "batch_size": int(batch_size), "precision": precision, "xla": bool(xla), "data": "synthetic",
            "repeats": repeats, "params": int(net.count_params()), "gflop_per_sample": flops / 1e9,
            "samples_per_s": rate, "ms_per_batch": step_ms, "achieved_gflops": 3 * flops * rate / 1e9,
            "peak_rss_mb": peak_rss_mb() if reset else float("nan"), "peak_device_mb": _device_peak_mb(),
            "warmup_s": timer.ends[warmup_steps - 1] - timer.start}


def measure_model_call(net, volume: Sequence[int], *, dims: int, in_channels: int = 1, batch_size: int = 1,
                       precision: str = "float32", xla: bool = False, repeats: int = 5, seed: int = 0,
                       slice_batch: int = 16) -> dict:
    """Latency and throughput of the model call alone on whole (padded) volumes, random intensities.

    3D: ``batch_size`` volumes of shape ``volume`` per call. 2D: the volume's
    slices (along the last axis) in calls of ``slice_batch`` slices, ``batch_size``
    volumes after one another. The latency is the median over ``repeats`` calls
    after one untimed call (tracing); ``ms_per_volume`` is that divided by the
    volumes per call.
    """
    volume = tuple(int(s) for s in volume)
    rng = np.random.default_rng(seed)
    if dims == 3:
        x = rng.standard_normal((int(batch_size), *volume, in_channels), dtype=np.float32)
        per_volume_flops = forward_flops(net, volume)
    else:
        x = rng.standard_normal((int(batch_size) * volume[2], *volume[:2], in_channels), dtype=np.float32)
        per_volume_flops = forward_flops(net, volume[:2]) * volume[2]
    xla = _effective_xla(xla)
    net.compile(jit_compile=xla)
    chunk = x.shape[0] if dims == 3 else int(slice_batch)

    def call():
        for s in range(0, x.shape[0], chunk):
            _sync(net.predict_on_batch(x[s:s + chunk]))

    reset = reset_peak_rss()
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"kind": "infer", "source": "keras", "dims": dims, "input": "x".join(str(s) for s in volume),
            "batch_size": int(batch_size), "precision": precision, "xla": bool(xla), "data": "random",
            "repeats": int(repeats), "params": int(net.count_params()), "gflop_per_sample": per_volume_flops / 1e9,
            "samples_per_s": batch_size / seconds, "ms_per_batch": 1000 * seconds,
            "ms_per_volume": 1000 * seconds / batch_size,
            "achieved_gflops": per_volume_flops * batch_size / seconds / 1e9,
            "peak_rss_mb": peak_rss_mb() if reset else float("nan"), "peak_device_mb": _device_peak_mb(),
            "warmup_s": warmup}


def measure_end_to_end(model_path: str | os.PathLike, images: Sequence[str | os.PathLike],
                       labels: Sequence[str | os.PathLike] | None = None, *, precision: str = "float32",
                       repeats: int = 1, batch_size: int = 16, reference: Sequence[np.ndarray] | None = None
                       ) -> tuple[dict, list[np.ndarray]]:
    """Per-volume time of what ``predict`` does (read, normalise, predict, argmax, write), any model format.

    Parameters
    ----------
    model_path : path
        Run folder, ``.keras``, ``.onnx``, ``.tflite`` or SavedModel folder
        (:func:`medseg_tf.export.load_predictor`).
    images, labels : sequences of NIfTI paths
        Cases to predict; with labels, ``dice_mean`` is the mean Dice over cases
        and foreground classes.
    precision : str
        Keras models only: compute under this dtype policy (same weights).
    reference : list of arrays, optional
        Label maps to compare with (``agreement``: share of equal voxels).

    Returns
    -------
    (dict, list of np.ndarray)
        The row (``kind="predict"``) and the predicted label maps.
    """
    import tempfile

    from medseg_tf import io
    from medseg_tf.export import _KerasPredictor, file_size_mb, load_predictor
    from medseg_tf.metrics import dice
    from medseg_tf.sliding import labels_from_probs, predict_image, prepare_image

    reset = reset_peak_rss()
    predictor, config, fmt = load_predictor(model_path)
    params = float("nan")
    if fmt == "keras":
        if precision != "float32":
            predictor = _KerasPredictor(with_precision(predictor.model, precision))
        params = int(predictor.model.count_params())
    elif precision != "float32":
        raise ValueError(f"precision {precision} applies to Keras models only; {model_path} is {fmt}")
    shape = getattr(predictor, "input_shape", None)
    fixed = None if shape is None or any(s is None for s in shape[1:-1]) else tuple(shape[1:-1])
    outs, times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, path in enumerate(images):
            for r in range(int(repeats) + (1 if k == 0 else 0)):   # one untimed run first (tracing)
                start = time.perf_counter()
                vol = io.load_nifti(path)
                image, _ = prepare_image(vol, config)
                lab = io.reorient_from_ras(labels_from_probs(
                    predict_image(predictor, image, config, batch_size=batch_size, fixed=fixed)), vol)
                io.save_nifti(lab, Path(tmp) / f"{k}.nii.gz", reference=vol, overwrite=True)
                if not (k == 0 and r == 0):
                    times.append(time.perf_counter() - start)
            outs.append(lab)
    row = {"kind": "predict", "source": fmt, "model": _artifact_name(model_path), "dims": int(config["dims"]),
           "input": "nifti", "batch_size": int(batch_size), "precision": precision, "xla": False,
           "data": Path(images[0]).parent.name if images else "", "repeats": int(repeats), "params": params,
           "e2e_ms_per_volume": 1000 * float(np.median(times)), "samples_per_s": 1 / float(np.mean(times)),
           "peak_rss_mb": peak_rss_mb() if reset else float("nan"), "peak_device_mb": _device_peak_mb()}
    artifact = Path(model_path) / "model.keras" if fmt == "keras" and Path(model_path).is_dir() else model_path
    row["model"] = f"{row['model']} ({file_size_mb(artifact):.1f} MB)"
    if labels:
        scores = []
        for out, lab_path in zip(outs, labels):
            ref = np.asarray(io.load_nifti(lab_path).data).astype(np.int64)
            scores += [dice(out == c, ref == c) for c in range(1, int(ref.max()) + 1)]
        row["dice_mean"] = float(np.nanmean(scores))
    if reference is not None:
        row["agreement"] = sum(int(np.sum(a == b)) for a, b in zip(outs, reference)) / sum(a.size for a in outs)
    return row, outs


def _artifact_name(path) -> str:
    path = Path(path)
    return path.name if path.is_dir() else f"{path.parent.name}/{path.name}"


def check_bench_file(path: str | os.PathLike) -> None:
    """DataError unless ``path`` is absent, empty, or a CSV file with the columns of :data:`BENCH_COLUMNS`.

    Call it before measuring, so that a wrong ``--out`` is refused before minutes of benchmarking.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; give a .csv file path")
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot be read as a CSV file ({exc})") from None
    if tuple(header) not in (BENCH_COLUMNS, BENCH_COLUMNS[:-1]):
        raise DataError(path, "has other columns than a bench file; write to a new file")


def append_bench(rows: Mapping | Sequence[Mapping], path: str | os.PathLike, *, command: str | None = None) -> Path:
    """Append ``bench`` rows (:data:`BENCH_COLUMNS`) to a CSV file, with date (UTC) and command.

    Raises
    ------
    DataError
        The existing file has other columns.
    """
    path = Path(path)
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = command if command is not None else " ".join(["python", *sys.argv])
    for row in rows:
        unknown = sorted(set(row) - set(BENCH_COLUMNS))
        if unknown:
            raise ValueError(f"unknown bench column(s) {unknown}")
    check_bench_file(path)
    if path.is_file() and path.stat().st_size > 0:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) == BENCH_COLUMNS[:-1]:  # a file written before the "error" column: add it
            with path.open(newline="") as f:
                old_rows = list(csv.DictReader(f))
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=BENCH_COLUMNS)
                writer.writeheader()
                writer.writerows(old_rows)
            os.replace(tmp, path)
        elif tuple(header) != BENCH_COLUMNS:
            raise DataError(path, "has other columns than a bench file; write to a new file")
        new = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = True
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BENCH_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            out = {k: _csv_value(v) for k, v in row.items()}
            out.setdefault("date", date)
            out.setdefault("command", command)
            writer.writerow(out)
    return path


def read_bench(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV written by :func:`append_bench` (one row per measurement)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "bench results file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read as CSV: {err}") from None
    if "error" not in df.columns:  # written before the "error" column
        df["error"] = None
    missing = [c for c in BENCH_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}")
    return df[list(BENCH_COLUMNS)]


def _reference_config(dims: int) -> dict:
    """Model, patch and batch of configs/hippocampus_<dims>d.json (the reference models' recipes)."""
    import json

    from medseg_tf import settings

    path = settings.REPO_ROOT / "configs" / f"hippocampus_{dims}d.json"
    values = json.loads(path.read_text()) if path.is_file() else {}
    return {"model": values.get("model", {"depth": 4, "base_filters": 16}),
            "patch_size": values.get("patch_size", [48, 64, 48] if dims == 3 else [48, 64]),
            "batch_size": values.get("batch_size", 2 if dims == 3 else 16),
            "in_channels": 2 * int(values.get("context_slices", 0) or 0) + 1}


def bench(*, dims: Sequence[int] = (3,), models: Sequence[str | os.PathLike] = (),
          precisions: Sequence[str] = ("float32",), xla: Sequence[bool] = (False,),
          batch_sizes: Sequence[int] | None = None, data: Sequence[str] = ("synthetic",),
          images: Sequence[str | os.PathLike] = (), labels: Sequence[str | os.PathLike] | None = None,
          steps: int = 10, repeats: int = 3, quick: bool = False, model_kwargs: Mapping | None = None,
          patch_size: Sequence[int] | None = None, progress: bool = True) -> list[dict]:
    """Measure training and inference speed, memory and FLOP efficiency; one row per measurement.

    Without ``models``: for each of ``dims``, the reference U-Net recipe
    (``configs/hippocampus_<d>d.json``: widths, patch, batch; or ``model_kwargs``
    and ``patch_size``) is timed

    * training on a fixed synthetic batch (:func:`measure_training_synthetic`;
      Keras only, any backend) for every precision, XLA setting and batch size;
    * training through the input pipeline of every ``data`` other than
      ``"synthetic"`` (:func:`measure_training_speed`; TensorFlow) for every precision;
    * the model call alone on a whole hippocampus-sized volume
      (:func:`measure_model_call`) for every precision, XLA setting and batch size.

    With ``models`` (run folders or exports): each is run end to end on
    ``images`` as ``predict`` does (:func:`measure_end_to_end`); Keras models
    for every precision, labels compared with the first model's float32 labels.

    Every row also gets :func:`machine_info` and, for rows with FLOPs, the
    achieved GFLOP/s as a fraction of :func:`matmul_peak_gflops` measured at the start.
    ``quick`` shrinks everything (tiny nets, 2 steps) to check the code path, not the speed.
    """
    from medseg_tf.settings import progress_bar as tqdm

    info = machine_info()
    peak = matmul_peak_gflops(512 if quick else 2048, 2 if quick else 5)
    if quick:
        steps, repeats = 2, 1
    plan: list[tuple] = []
    if models:
        for m in models:
            keras_model = Path(m).suffix not in (".onnx", ".tflite") and not (Path(m) / "saved_model.pb").is_file()
            for prec in (precisions if keras_model else ["float32"]):  # precision policies are Keras'
                plan.append(("predict", m, prec))
    else:
        for d in dims:
            ref = _reference_config(d)
            kwargs = dict(model_kwargs) if model_kwargs else ref["model"]
            patch = tuple(patch_size) if patch_size and len(patch_size) == d else tuple(ref["patch_size"])
            if quick:
                kwargs, patch = {"depth": 1, "base_filters": 4}, (16,) * d
            sizes = list(batch_sizes) if batch_sizes else [1 if quick else ref["batch_size"]]
            for prec in precisions:
                for jit in xla:
                    for b in sizes:
                        plan.append(("train", d, kwargs, patch, b, prec, jit, ref["in_channels"]))
            for name in data:
                if name != "synthetic":
                    for prec in precisions:
                        plan.append(("pipeline", d, kwargs, patch, sizes[0], name, ref["in_channels"], prec))
            volume = (16, 16, 16) if quick else (48, 64, 48)
            for prec in precisions:
                for jit in xla:
                    for b in (sizes if d == 3 else [1]):
                        plan.append(("infer", d, kwargs, volume, b, prec, jit, ref["in_channels"]))
    rows: list[dict] = []
    reference_labels = None
    # each measured model traces its own functions once; TensorFlow calls that "retracing" and warns
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:  # an op without a kernel for this precision on this device (MaxPool3D in float16 on a CPU)
        from tensorflow.errors import OpError as kernel_errors
    except ImportError:  # another Keras backend
        kernel_errors = ()
    for item in tqdm(plan, desc="bench", unit="measurement", disable=not progress):
        kind = item[0]
        try:
            row, outs = _measure_item(item, kind, steps=steps, quick=quick, repeats=repeats, images=images,
                                      labels=labels, reference_labels=reference_labels)
        except kernel_errors as exc:  # a row that says what failed, and the other measurements go on
            outs = None
            row = {"kind": kind, "precision": item[-1] if kind in ("predict", "pipeline") else item[5],
                   "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            if kind in ("train", "infer"):
                row.update(dims=item[1], model=_model_text(item[2]), batch_size=item[4], xla=item[6])
        if reference_labels is None and outs is not None:
            reference_labels = outs
        row = {**info, **row, "matmul_peak_gflops": peak}
        if row.get("achieved_gflops") == row.get("achieved_gflops") and row.get("achieved_gflops") is not None:
            row["peak_fraction"] = row["achieved_gflops"] / peak
        rows.append(row)
    return rows


def _measure_item(item, kind, *, steps, quick, repeats, images, labels, reference_labels) -> tuple[dict, list | None]:
    """One measurement of :func:`bench`'s plan: its row (without the machine columns) and, for a ``predict``
    item, the predicted labels (the first model's are the reference the others are compared with)."""
    if kind == "train":
        _, d, kwargs, patch, b, prec, jit, ch = item
        row = measure_training_synthetic(d, b, patch, model=kwargs, in_channels=ch, precision=prec, xla=jit,
                                         steps=steps, warmup_steps=1 if quick else 2, repeats=repeats)
    elif kind == "pipeline":
        _, d, kwargs, patch, b, name, ch, prec = item
        # the same input channels as the synthetic row: a 2.5D model reads 2 * context_slices + 1 slices
        old = measure_training_speed(d, b, patch, steps * repeats, warmup_steps=1 if quick else 3, data=name,
                                     model=kwargs, max_cases=4 if quick else 16,
                                     augment=False if quick else True, mixed_precision=prec,
                                     jit_compile=False, context_slices=(ch - 1) // 2 if d == 2 else 0)
        net = build_unet(d, kwargs, in_channels=ch)
        flops = forward_flops(net, patch)
        row = {"kind": "train", "model": old["model"], "source": "keras", "dims": d,
               "input": old["patch_size"] + (f"x{ch}ch" if ch != 1 else ""),
               "batch_size": b, "precision": old["precision"], "xla": False, "data": old["data"],
               "repeats": 1, "params": int(net.count_params()), "gflop_per_sample": flops / 1e9,
               "samples_per_s": old["samples_per_s"], "ms_per_batch": old["step_ms"],
               "achieved_gflops": 3 * flops * old["samples_per_s"] / 1e9, "peak_rss_mb": old["peak_rss_mb"],
               "peak_device_mb": old["peak_device_mb"], "warmup_s": old["warmup_s"]}
    elif kind == "infer":
        _, d, kwargs, volume, b, prec, jit, ch = item
        net = build_unet(d, kwargs, in_channels=ch, precision=prec)
        row = measure_model_call(net, volume, dims=d, in_channels=ch, batch_size=b, precision=prec, xla=jit,
                                 repeats=2 if quick else 5)
        row["model"] = _model_text(kwargs)
    else:
        _, m, prec = item
        row, outs = measure_end_to_end(m, list(images), list(labels) if labels else None, precision=prec,
                                       repeats=1 if quick else repeats, reference=reference_labels)
        return row, outs
    return row, None


def bench_table(rows: pd.DataFrame | Sequence[Mapping]) -> pd.DataFrame:
    """The measured columns of ``bench`` rows, rounded for display (machine columns dropped)."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    keep = ["kind", "model", "source", "dims", "input", "batch_size", "precision", "xla", "data", "params",
            "gflop_per_sample", "samples_per_s", "ms_per_volume", "e2e_ms_per_volume", "peak_fraction",
            "peak_rss_mb", "agreement", "dice_mean", "error"]
    df = df[[c for c in keep if c in df.columns]].copy()
    df = df.dropna(axis=1, how="all")
    for name, digits in (("gflop_per_sample", 3), ("samples_per_s", 3), ("ms_per_volume", 1),
                         ("e2e_ms_per_volume", 1), ("peak_fraction", 2), ("peak_rss_mb", 0), ("agreement", 5),
                         ("dice_mean", 4)):
        if name in df:
            df[name] = df[name].astype(float).round(digits)
    return df.reset_index(drop=True)
