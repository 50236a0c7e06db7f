"""Export a trained model for deployment: SavedModel, ONNX, LiteRT (float32, float16, int8).

============  =====================================  ======================================================
format        written by                              runs with
============  =====================================  ======================================================
saved_model   ``model.export(path, "tf_saved_model")``  TensorFlow (``tf.saved_model.load``), TF Serving
onnx          ``model.export(path, "onnx")`` (tf2onnx)  ONNX Runtime, no TensorFlow
                                                        (:mod:`medseg_tf.onnx_predict`)
litert        ``tf.lite.TFLiteConverter``               the LiteRT (TensorFlow Lite) interpreter
============  =====================================  ======================================================

LiteRT can also quantise after training: ``float16`` weights, or ``int8``
weights and activations calibrated on a *representative data set* (here:
normalised slices or patches of training cases). What LiteRT cannot do, with
TensorFlow 2.21:

* a 3D U-Net does not convert at all: ``MaxPool3D`` has no LiteRT builtin
  kernel, and the "Flex" delegate that would run the TensorFlow op is not
  linked into the Python interpreter (:func:`export_model` refuses with one
  line; use ONNX);
* ``CONV_3D`` has no int8 kernel: after int8 quantisation a 3D convolution keeps
  float32 weights and activations, with QUANTIZE/DEQUANTIZE around it
  (:func:`litert_op_types` shows the op types of a converted model).

The training configuration is stored with every export (ONNX: metadata
``medseg_config``; SavedModel: ``config.json`` inside the folder; LiteRT:
``<file>.json`` next to it), so the exported model predicts with the same
normalisation, padding and windows as the Keras model.
"""

from __future__ import annotations

import contextlib
import io as _pyio
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg_tf.errors import ConfigError, DataError, MedsegError, OverwriteError
from medseg_tf.runspec import RunSpec

__all__ = [
    "FORMATS",
    "ExportError",
    "load_keras",
    "export_model",
    "calibration_samples",
    "litert_op_types",
    "load_predictor",
    "file_size_mb",
    "compare_exports",
]

FORMATS = ("onnx", "litert", "saved_model")
_SUFFIX = {"onnx": ".onnx", "litert": ".tflite", "saved_model": ""}


class ExportError(MedsegError, ValueError):
    """A model cannot be exported in the requested format (names the model and the reason)."""


# =========================================================================== loading


def load_keras(model_path: str | os.PathLike):
    """A Keras model and its training config from a run folder (``model.keras`` + ``config.json``) or a ``.keras`` file.

    Raises
    ------
    DataError
        Missing or unreadable model.
    """
    import keras

    from medseg_tf.inference import load_run

    path = Path(model_path)
    if path.is_dir():
        try:
            return load_run(path)
        except DataError:
            raise
        except Exception as exc:  # corrupt zip, unknown layer ...
            raise DataError(path / "model.keras", f"cannot be loaded by Keras ({_first_line(exc)})") from None
    if not path.exists():
        raise DataError(path, "model not found (give a run folder or a .keras file)")
    if path.suffix != ".keras":
        raise DataError(path, "not a Keras model; give a run folder or a .keras file")
    config_path = path.parent / "config.json"
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise DataError(path, f"cannot be loaded by Keras ({_first_line(exc)})") from None
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except ValueError as exc:
        raise DataError(config_path, f"malformed JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DataError(config_path, f"expected a JSON object, got {type(config).__name__}")
    from medseg_tf.models import main_output, with_precision

    return with_precision(main_output(model), "float32"), config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _spatial_dims(model) -> int:
    return len(model.input_shape) - 2


def _check_out(out: Path, fmt: str, overwrite: bool) -> None:
    if fmt == "saved_model":
        if out.exists() and not out.is_dir():
            raise OverwriteError(f"{out}: is a file; a SavedModel is a folder")
    elif out.is_dir():
        raise OverwriteError(f"{out}: is a folder; give a file path ending in {_SUFFIX[fmt]}")
    elif out.suffix != _SUFFIX[fmt]:
        raise ConfigError("out", f"{out} must end in {_SUFFIX[fmt]} for format {fmt}")
    if out.exists() and not overwrite:
        raise OverwriteError(f"{out}: already exists; pass --overwrite to replace it")
    sidecar = out.with_name(out.name + ".json")  # LiteRT writes the config next to the model
    if fmt == "litert" and sidecar.exists() and not overwrite:
        raise OverwriteError(f"{sidecar}: already exists (the config file written next to {out.name}); pass "
                             "--overwrite to replace it")


# =========================================================================== calibration


def calibration_samples(config: Mapping, images: Iterable[np.ndarray], *, n: int = 32, seed: int = 0,
                        input_shape: Sequence[int | None] | None = None) -> list[np.ndarray]:
    """Normalised model inputs from training images, for int8 calibration.

    Parameters
    ----------
    config : mapping
        Training configuration (``dims``, ``slice_axis``, ``context_slices``,
        ``patch_size``, normalisation).
    images : iterable of np.ndarray
        RAS image volumes ``(X, Y, Z)``, already normalised as in training
        (:func:`medseg_tf.sliding.prepare_image`).
    n : int
        Samples to return (slices for a 2D model, padded volumes or patches for a 3D one), spread
        evenly over the images.
    input_shape : sequence, optional
        The model's input shape; samples are padded to multiples of the
        model's divisor and to its fixed sizes.

    Returns
    -------
    list of np.ndarray
        float32 arrays of shape ``(1, *spatial, Cin)``.
    """
    from medseg_tf import preprocessing
    from medseg_tf.sliding import padded_target

    spec = RunSpec.coerce(config)
    rng = np.random.default_rng(seed)
    dims, divisor = spec.dims, spec.divisor
    images = list(images)
    per_image = max(1, -(-int(n) // max(1, len(images))))   # ceil(n / cases): spread over the cases
    pool: list[np.ndarray] = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        fill = float(image.min())
        if dims == 2:
            axis, context = spec.slice_axis, spec.context_slices
            x = preprocessing.stack_neighbour_slices(image[..., None], axis, context) if context else image[..., None]
            slices = np.moveaxis(x, axis, 0)
            target = padded_target(slices.shape[1:3], divisor, spec.patch_size)  # the prediction canvas
            if input_shape is not None and all(s is not None for s in input_shape[1:3]):
                target = [int(s) for s in input_shape[1:3]]
            for k in rng.permutation(slices.shape[0])[:per_image]:
                pool.append(preprocessing.pad_to_shape(slices[k], [*target, slices.shape[-1]], value=fill)[0][None])
        else:
            target = padded_target(image.shape, divisor, spec.patch_size)
            padded = preprocessing.pad_to_shape(image[..., None], [*target, 1], value=fill)[0]
            patch = spec.patch_size
            for _ in range(per_image):
                corner = [int(rng.integers(0, t - p + 1)) for t, p in zip(target, patch)]
                pool.append(padded[tuple(slice(c, c + p) for c, p in zip(corner, patch))][None])
    if not pool:
        raise ValueError("no calibration images given")
    return [np.ascontiguousarray(s, dtype=np.float32) for s in pool[:n]]


def _training_images(model_dir: Path, config: Mapping, data: str | os.PathLike | None, max_cases: int) -> list:
    """Normalised RAS images of up to ``max_cases`` training cases of a run (``split.json``)."""
    from medseg_tf import io
    from medseg_tf.sliding import prepare_image
    from medseg_tf.sources import open_dataset  # no TensorFlow: the ONNX path needs none

    data = data if data is not None else config.get("data")
    if data is None:
        raise ConfigError("calibration", "needs a data set: the run's config names none; pass --calibration DIR")
    dataset = open_dataset(str(data))
    split_path = model_dir / "split.json"
    ids = list(dataset.case_ids)
    if split_path.is_file():
        train_ids = set(json.loads(split_path.read_text()).get("train", []))
        ids = [c for c in ids if c in train_ids] or ids
    images = []
    for case in ids[:max_cases]:
        images.append(prepare_image(io.load_nifti(dataset.case(case).image_path), config)[0])
    if not images:
        raise DataError(data, "no training cases found for calibration")
    return images


# =========================================================================== export


def export_model(model_path: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
                 quantize: str | None = None, calibration: Sequence[np.ndarray] | None = None,
                 calibration_data: str | os.PathLike | None = None, calibration_cases: int = 8,
                 overwrite: bool = False, opset: int | None = None) -> Path:
    """Write a trained model in a deployment format.

    Parameters
    ----------
    model_path : path
        Run folder (``model.keras`` + ``config.json``) or ``.keras`` file.
    fmt : {"onnx", "litert", "saved_model"}
    out : path
        ``.onnx`` / ``.tflite`` file, or a folder for ``saved_model``.
    quantize : {None, "float16", "int8"}
        LiteRT post-training quantisation (other formats: None only).
    calibration : sequence of arrays, optional
        int8 calibration inputs ``(1, *spatial, Cin)``; default: drawn from
        ``calibration_cases`` training cases of the run (``split.json``) of
        ``calibration_data`` (default: the run's ``data``).
    overwrite : bool
        Replace an existing output.
    opset : int, optional
        ONNX opset (default: the converter's).

    Returns
    -------
    Path
        The written file or folder.

    Raises
    ------
    ExportError
        The model cannot be exported that way (e.g. a 3D U-Net to LiteRT).
    DataError, ConfigError, OverwriteError
        Bad model, option or output path.
    """
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize not in (None, "float16", "int8"):
        raise ConfigError("quantize", f"must be float16 or int8, got {quantize!r}")
    if quantize and fmt != "litert":
        raise ConfigError("quantize", f"{quantize} quantisation is only available with --format litert")
    out = Path(out)
    _check_out(out, fmt, overwrite)
    model, config = load_keras(model_path)
    if not config:  # a .keras file with no config.json beside it
        raise DataError(Path(model_path).parent / "config.json", "not found; an export carries the training "
                        "config (dims, normalisation, patch) that prediction needs, so keep it next to the .keras file")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        _export_onnx(model, config, out, opset)
    elif fmt == "saved_model":
        _export_saved_model(model, config, out)
    else:
        if quantize == "int8" and calibration is None:
            images = _training_images(Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent,
                                      config, calibration_data, calibration_cases)
            calibration = calibration_samples(config, images, input_shape=model.input_shape)
        _export_litert(model, config, out, quantize, calibration, model_path)
    return out


def _call_once(model) -> None:
    """Keras exports need a model that has been called; call it on a small zero batch."""
    shape = [1] + [s if s is not None else 16 for s in model.input_shape[1:]]
    model(np.zeros(shape, dtype=np.float32), training=False)


def _replace(tmp: Path, out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    os.replace(tmp, out)


def _export_onnx(model, config: Mapping, out: Path, opset: int | None) -> None:
    try:
        import onnx
        import tf2onnx  # noqa: F401  (Keras' ONNX export of a TensorFlow-backend model needs it)
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the packages onnx and tf2onnx ({exc}); pip install tf2onnx") from None
    _call_once(model)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_file = Path(tmp) / out.name
        kwargs = {"opset_version": opset} if opset else {}
        with warnings.catch_warnings():  # tf2onnx's NumPy 2 patch in Keras warns about np.object
            warnings.simplefilter("ignore", FutureWarning)
            _quiet(lambda: model.export(str(tmp_file), format="onnx", verbose=False, **kwargs))
        proto = onnx.load(str(tmp_file))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "medseg_config", json.dumps(dict(config))
        onnx.save(proto, str(tmp_file))
        _replace(tmp_file, out)


def _export_saved_model(model, config: Mapping, out: Path) -> None:
    _call_once(model)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_dir = Path(tmp) / out.name
        _quiet(lambda: model.export(str(tmp_dir), format="tf_saved_model", verbose=False))
        (tmp_dir / "config.json").write_text(json.dumps(dict(config), indent=2))
        _replace(tmp_dir, out)


def _export_litert(model, config: Mapping, out: Path, quantize: str | None,
                   calibration: Sequence[np.ndarray] | None, model_path) -> None:
    import tensorflow as tf

    if _spatial_dims(model) == 3:
        raise ExportError(f"{model_path}: a 3D model cannot be exported to LiteRT with TensorFlow "
                          f"{tf.__version__}: MaxPool3D has no LiteRT builtin kernel and the Python interpreter "
                          "has no Flex delegate; export it to onnx")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        samples = list(calibration or [])
        if not samples:
            raise ConfigError("calibration", "int8 quantisation needs calibration samples")
        converter.representative_dataset = lambda: ([s] for s in samples)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blob = _quiet(converter.convert)
    except Exception as exc:
        raise ExportError(f"{model_path}: LiteRT conversion failed ({_first_line(exc)})") from None
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(blob)
    os.replace(tmp, out)
    out.with_name(out.name + ".json").write_text(json.dumps(dict(config, litert_quantize=quantize), indent=2))


@contextlib.contextmanager
def _silenced_output():
    """Send this process's stdout and stderr file descriptors to /dev/null for a while.

    The converters and the LiteRT interpreter print from C++ (``fully_quantize: 0 ...``, ``INFO: Created
    TensorFlow Lite XNNPACK delegate``), below Python's ``sys.stdout``; Python exceptions still propagate.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stdout(_pyio.StringIO()):
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _quiet(fn: Callable):
    """Run ``fn`` with its output silenced (the converters print their graphs and captures)."""
    with _silenced_output():
        return fn()


def litert_op_types(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Op names and input dtypes of a LiteRT model, e.g. ``[("CONV_2D", "int8"), ...]`` (one entry per kind).

    Shows what a quantised model really computes in: an int8 model whose
    ``CONV_3D`` still reads float32 fell back to the float kernel. Ops handed
    to a delegate (XNNPACK) appear as ``DELEGATE``.
    """
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    kinds = set()
    for op in interpreter._get_ops_details():  # noqa: SLF001 (the only API listing ops)
        inputs = [i for i in op["inputs"] if i >= 0 and i in details]
        dtype = np.dtype(details[inputs[0]]["dtype"]).name if inputs else "-"
        kinds.add((op["op_name"], dtype))
    return sorted(kinds)


# =========================================================================== running exports


class _LiteRTPredictor:
    def __init__(self, path: Path, threads: int | None):
        import tensorflow as tf

        try:
            with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": still the one TF 2.21 ships
                warnings.simplefilter("ignore")
                with _silenced_output():
                    self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        except Exception as exc:
            raise DataError(path, f"not a readable LiteRT model ({_first_line(exc)})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(None if s < 0 else int(s) for s in self.input["shape_signature"])
        self._shape = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._shape != x.shape:
            with _silenced_output():
                self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
                self.interpreter.allocate_tensors()
            self._shape = x.shape
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output["index"]), dtype=np.float32)


class _SavedModelPredictor:
    def __init__(self, path: Path):
        import tensorflow as tf

        try:
            self.module = tf.saved_model.load(str(path))
        except Exception as exc:
            raise DataError(path, f"not a readable SavedModel ({_first_line(exc)})") from None
        spec = self.module.serve.input_signature[0]
        self.input_shape = tuple(spec.shape.as_list())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.module.serve(np.asarray(x, dtype=np.float32)), dtype=np.float32)


class _KerasPredictor:
    def __init__(self, model):
        self.model = model
        self.input_shape = tuple(model.input_shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import keras

        y = self.model.predict_on_batch(np.asarray(x, dtype=np.float32))
        if isinstance(y, (list, tuple)):
            y = y[0]
        return np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)


def load_predictor(path: str | os.PathLike, *, threads: int | None = None):
    """A ``predict_batch`` callable and the training config for any model this package writes.

    ``path``: a run folder or ``.keras`` file (Keras), a ``.onnx`` file (ONNX
    Runtime), a ``.tflite`` file (LiteRT; config from ``<file>.json``) or a
    SavedModel folder (``saved_model.pb`` inside; config from its ``config.json``).

    Returns
    -------
    (callable, RunSpec or dict, str)
        The predictor (``x (N, *spatial, Cin) -> probabilities``, with an
        ``input_shape`` attribute), the config (a :class:`RunSpec`; a plain
        dict, possibly empty, for a ``.keras`` file without ``config.json``), and the format name
        (``"keras"``, ``"onnx"``, ``"litert"``, ``"saved_model"``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "model not found")
    if path.suffix == ".onnx":
        from medseg_tf.onnx_predict import OnnxModel

        model = OnnxModel(path, threads=threads)
        return model, model.config, "onnx"
    if path.suffix == ".tflite":
        if not path.is_file():
            raise DataError(path, "LiteRT model not found")
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise DataError(sidecar, "not found; it holds the training config of the LiteRT model")
        try:
            raw = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise DataError(sidecar, f"malformed JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise DataError(sidecar, f"expected a JSON object, got {type(raw).__name__}")
        raw.pop("litert_quantize", None)  # how the file was quantised, not a run setting
        try:
            config = RunSpec.coerce(raw)
        except ConfigError as exc:
            raise DataError(sidecar, str(exc)) from None
        return _LiteRTPredictor(path, threads), config, "litert"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return _SavedModelPredictor(path), RunSpec.load(path), "saved_model"
    model, config = load_keras(path)
    return _KerasPredictor(model), config, "keras"


def file_size_mb(path: str | os.PathLike) -> float:
    """Size of a file, or of all files in a folder, in MB (10**6 bytes)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def compare_exports(models: Mapping[str, str | os.PathLike], images: Sequence[str | os.PathLike],
                    labels: Sequence[str | os.PathLike] | None = None, *, reference: str | None = None,
                    batch_size: int = 16, repeats: int = 1, progress: bool = True):
    """Size, latency per volume, Dice and label agreement of several models on the same NIfTI cases.

    Parameters
    ----------
    models : mapping name -> path
        Anything :func:`load_predictor` reads.
    images, labels : sequences of paths
        Image files and (optional) matching label files.
    reference : str, optional
        Name of the model whose labels the others are compared with (default: the first).
    repeats : int
        Each case is predicted this many times; the latency is the median.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``model``, ``format``, ``size_mb``, ``ms_per_volume``
        (median over cases of the end-to-end time: normalise, predict, argmax),
        ``agreement`` (share of voxels whose label equals the reference's),
        and ``dice_<class>`` (mean over cases) when labels are given.
    """
    import pandas as pd
    from medseg_tf.settings import progress_bar as tqdm

    from medseg_tf import io
    from medseg_tf.metrics import dice
    from medseg_tf.sliding import labels_from_probs, predict_image, predict_ras_probabilities, prepare_image

    names = list(models)
    reference = reference or names[0]
    vols = [io.load_nifti(p) for p in images]
    refs = [np.asarray(io.load_nifti(p).data).astype(np.int64) for p in labels] if labels else None
    outputs: dict[str, list[np.ndarray]] = {}
    rows = []
    for name in tqdm(names, desc="models", disable=not progress):
        predictor, config, fmt = load_predictor(models[name])
        fixed = getattr(predictor, "input_shape", None)
        fixed = None if fixed is None or any(s is None for s in fixed[1:-1]) else tuple(fixed[1:-1])
        times, outs = [], []
        warm, _ = prepare_image(vols[0], config)
        predict_image(predictor, warm, config, batch_size=batch_size, fixed=fixed)  # untimed: tracing, allocation
        for vol in vols:
            best = []
            for _ in range(max(1, int(repeats))):
                start = time.perf_counter()  # normalise, predict, resample back if the spec resamples, argmax
                lab = labels_from_probs(predict_ras_probabilities(predictor, vol, config, batch_size=batch_size,
                                                                  fixed=fixed))
                best.append(time.perf_counter() - start)
            times.append(float(np.median(best)))
            outs.append(io.reorient_from_ras(lab, vol))
        outputs[name] = outs
        row = {"model": name, "format": fmt, "size_mb": file_size_mb(_artifact(models[name], fmt)),
               "ms_per_volume": 1000 * float(np.median(times))}
        if refs is not None:
            n_classes = int(max(r.max() for r in refs))
            for c in range(1, n_classes + 1):
                row[f"dice_{c}"] = float(np.mean([dice(o == c, r == c) for o, r in zip(outs, refs)]))
        rows.append(row)
    ref_out = outputs[reference]
    for row in rows:
        same = sum(int(np.sum(a == b)) for a, b in zip(outputs[row["model"]], ref_out))
        row["agreement"] = same / sum(a.size for a in ref_out)
    return pd.DataFrame(rows)


def _artifact(path, fmt: str) -> Path:
    path = Path(path)
    return path / "model.keras" if fmt == "keras" and path.is_dir() else path
