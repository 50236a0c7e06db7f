"""Prediction without TensorFlow: an exported ``.onnx`` model run by ONNX Runtime.

Needs only NumPy, SciPy, nibabel and ``onnxruntime``: nothing on this module's
import path imports TensorFlow or Keras (a test runs it with both made
unimportable). The maths is :mod:`medseg_tf.sliding`, the same code the Keras
path of :mod:`medseg_tf.inference` uses, so an ONNX export of a model gives
the same labels as the model (to float rounding).

The training configuration travels inside the ``.onnx`` file (metadata key
``medseg_config``, written by :func:`medseg_tf.export.export_model`); a
``config.json`` next to the file is used when the key is missing (the shipped
``models/*/model.onnx`` carry both).

Example
-------
``python -m medseg_tf predict --model models/hippocampus_3d/model.onnx --images DIR --out PRED``
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg_tf import io
from medseg_tf.errors import ConfigError, DataError
from medseg_tf.postprocessing import keep_largest_component
from medseg_tf.datasets import prediction_plan
from medseg_tf.runspec import RunSpec
from medseg_tf.sliding import labels_from_probs, predict_ras_probabilities, prepare_image, probabilities_from_logits

__all__ = ["CONFIG_KEY", "OnnxModel", "load_onnx", "predict_case_onnx", "predict_folder_onnx"]

#: Metadata key of the training configuration (JSON) inside an exported ``.onnx`` file.
CONFIG_KEY = "medseg_config"


class OnnxModel:
    """An ONNX Runtime session with the shapes and configuration the prediction needs.

    Parameters
    ----------
    path : path
        The ``.onnx`` file.
    config : mapping, optional
        Training configuration; default: the file's ``medseg_config`` metadata,
        else ``config.json`` in the same folder.
    threads : int, optional
        ONNX Runtime intra-op threads (default: its own choice, all cores).

    Attributes
    ----------
    input_shape : tuple
        ``(batch, *spatial, channels)``, None where the size is free.
    config : RunSpec
        The training configuration the file carries (or the one given).
    path : pathlib.Path
    fixed_spatial : tuple of int or None
        The input's spatial size when the model fixes it (used as the sliding window), else None.
    """

    def __init__(self, path: str | os.PathLike, config: Mapping | None = None, *, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise DataError(self.path, f"not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DataError(self.path, f"expected a model with one input, it has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        if len(self.input_shape) not in (4, 5):
            raise DataError(self.path, f"input has shape {inputs[0].shape}; expected (batch, *spatial, channels) "
                                       "with 2 or 3 spatial axes")
        if config is not None:
            self.config = RunSpec.coerce(config)
        else:
            raw = self._read_config()
            if "dims" not in raw:
                raise DataError(self.path, "its configuration has no 'dims' entry (2 or 3)")
            try:
                self.config = RunSpec.coerce(raw)
            except ConfigError as exc:
                raise DataError(self.path, f"its configuration: {exc}") from None
        if self.config.dims == 3 and len(self.input_shape) != 5:
            raise DataError(self.path, f"config says dims=3 but the model's input {self.input_shape} is 2D")
        if self.config.dims == 2 and len(self.input_shape) != 4:
            raise DataError(self.path, f"config says dims=2 but the model's input {self.input_shape} is not 2D")

    def _read_config(self) -> dict:
        """The run spec's JSON: the file's metadata, else the ``config.json`` next to it."""
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY in meta:
            try:
                return json.loads(meta[CONFIG_KEY])
            except ValueError:
                raise DataError(self.path, f"metadata {CONFIG_KEY!r} is not valid JSON") from None
        sidecar = self.path.parent / "config.json"
        if not sidecar.is_file():
            raise DataError(self.path, f"carries no {CONFIG_KEY!r} metadata and no config.json lies next to it; "
                                       "export it with `python -m medseg_tf export`")
        try:
            return json.loads(sidecar.read_text())
        except ValueError as exc:
            raise DataError(sidecar, f"not valid JSON ({exc})") from None

    @property
    def fixed_spatial(self) -> tuple[int, ...] | None:
        """The model's spatial input size when every size is fixed, else None."""
        spatial = self.input_shape[1:-1]
        return None if any(s is None for s in spatial) else tuple(spatial)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, *spatial, C)`` of a float32 batch ``(N, *spatial, Cin)``.

        Raises
        ------
        DataError
            When the batch does not fit the model's fixed input sizes or channels.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        want = self.input_shape
        if x.ndim != len(want) or any(w is not None and w != g for w, g in zip(want[1:], x.shape[1:])):
            raise DataError(self.path, f"input shape {tuple(want)} does not fit a batch of shape {x.shape} "
                                       "(spatial sizes or channels differ); export the model with free spatial "
                                       "sizes, or predict volumes that fit")
        batch = want[0]
        if batch is None or batch == x.shape[0]:
            y = self.session.run(None, {self.input_name: x})[0]
        elif x.shape[0] % batch == 0:  # a model exported with a fixed batch size: run in chunks of it
            y = np.concatenate([self.session.run(None, {self.input_name: x[s:s + batch]})[0]
                                for s in range(0, x.shape[0], batch)])
        else:
            raise DataError(self.path, f"input shape {tuple(want)} has a fixed batch of {batch}, which does not "
                                       f"divide a batch of {x.shape[0]}; predict with --batch-size {batch}")
        if self.config.from_logits:
            y = probabilities_from_logits(y)
        return np.asarray(y, dtype=np.float32)

    __call__ = predict_batch


def load_onnx(path: str | os.PathLike, config: Mapping | None = None, *, threads: int | None = None) -> OnnxModel:
    """Open an exported ``.onnx`` model (see :class:`OnnxModel`)."""
    return OnnxModel(path, config, threads=threads)


def _predict_loaded(model: OnnxModel, vol: io.Volume, *, lcc: bool, batch_size: int) -> np.ndarray:
    probs = predict_ras_probabilities(model.predict_batch, vol, model.config, batch_size=batch_size,
                                      fixed=model.fixed_spatial, model=model, model_path=model.path)
    labels = labels_from_probs(probs)
    if lcc:
        labels = keep_largest_component(labels)
    return io.reorient_from_ras(labels, vol)


def predict_case_onnx(model: OnnxModel, image_path: str | os.PathLike, *, lcc: bool = False,
                      batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8, the image file's shape and voxel order) and affine of one NIfTI image.

    Same steps as :func:`medseg_tf.inference.predict_case` (RAS, normalisation,
    optional resampling, whole-volume prediction, argmax, optional largest
    component, back to the file's voxel order); no test-time flips.
    """
    vol = io.load_nifti(image_path)
    return _predict_loaded(model, vol, lcc=lcc, batch_size=batch_size), vol.affine


def predict_folder_onnx(model: OnnxModel | str | os.PathLike, images_dir: str | os.PathLike,
                        out_dir: str | os.PathLike, *, tta: bool = False, lcc: bool = False,
                        overwrite: bool = False, progress: bool = True, batch_size: int = 16):
    """Predict every image of a folder with an ONNX model; write ``out_dir/<case>.nii.gz``.

    Parameters
    ----------
    model : OnnxModel or path
        An :class:`OnnxModel` or the path of an ``.onnx`` file exported by :mod:`medseg_tf.export`.
    images_dir : path
        Folder of ``.nii.gz`` / ``.nii`` images, or an MSD folder (its ``imagesTr/``).
    out_dir : path
        Output folder of the label maps (uint8, each on its image's grid and affine).
    tta : bool
        Refused (:class:`~medseg_tf.errors.ConfigError`): the ONNX path has no test-time flips.
    lcc : bool
        Keep the largest connected component of each class.
    overwrite : bool
        Replace existing label maps (default: refuse with :class:`~medseg_tf.errors.OverwriteError`).
    progress : bool
        Show a progress bar.
    batch_size : int
        Slices (2D) or windows (3D) per model call.

    Returns
    -------
    pandas.DataFrame
        Columns ``case`` and ``seconds`` (reading, predicting and writing).
    """
    import pandas as pd
    from medseg_tf.settings import progress_bar as tqdm

    if tta:
        raise ConfigError("tta", "is not available with an ONNX model (no test-time flips on this path); "
                                 "predict without --tta, or with the Keras run folder")
    if not isinstance(model, OnnxModel):
        model = OnnxModel(model)
    plan = prediction_plan(images_dir, out_dir, overwrite=overwrite)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for path, out in tqdm(plan, desc="predict (onnx)", unit="case", disable=not progress):
            start = time.perf_counter()
            vol = io.load_nifti(path)
            labels = _predict_loaded(model, vol, lcc=lcc, batch_size=batch_size)
            io.save_nifti(labels, out, reference=vol, overwrite=overwrite)
            rows.append({"case": io.case_id(path), "seconds": time.perf_counter() - start})
    except BaseException:
        if created and not any(out_dir.iterdir()):  # a failed run leaves no empty folder behind
            out_dir.rmdir()
        raise
    return pd.DataFrame(rows, columns=["case", "seconds"])

