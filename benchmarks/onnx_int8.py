"""int8 for a 3D model without LiteRT: ONNX Runtime's static quantisation of a reference model's ``model.onnx``.

LiteRT has no int8 Conv3D (and no MaxPool3D) kernel, so ``python -m medseg_tf export --int8`` covers 2D models
only. ONNX Runtime quantises any ONNX graph: this script calibrates ``models/NAME/model.onnx`` on 32 patches (or
slices) of 8 of the model's training cases (``split.json``; the same sampler as the LiteRT int8 export,
``export.calibration_samples``), writes int8 models in ONNX Runtime's two formats (QDQ: quantise/dequantise pairs
around float operators; QOperator: integer operators such as ``QLinearConv``), both per output channel, and
compares them with the float32 ONNX model on held-out cases of the model's split: milliseconds per volume end to
end (``onnx_predict.predict_case_onnx``: load, normalise, predict, argmax; the fastest of ``--repeats`` runs per
case, median over cases), mean Dice per class against the reference labels, and the share of voxels whose label
equals the float32 model's. Nothing here imports TensorFlow. A measurement, not a project feature: the int8 files
go to ``--out`` (default a temporary folder).

    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python benchmarks/onnx_int8.py --model hippocampus_3d
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from medseg_tf import export, io, metrics, settings
from medseg_tf.onnx_predict import load_onnx, predict_case_onnx
from medseg_tf.sliding import prepare_image

FORMATS = {"int8 QDQ": QuantFormat.QDQ, "int8 QOperator": QuantFormat.QOperator}


class _Samples(CalibrationDataReader):
    def __init__(self, name: str, samples: list[np.ndarray]):
        self.name, self.samples = name, iter(samples)

    def get_next(self):
        sample = next(self.samples, None)
        return None if sample is None else {self.name: sample}


def quantize(src: Path, out_dir: Path, samples: list[np.ndarray]) -> dict[str, Path]:
    """int8 copies of ``src`` in each of :data:`FORMATS`, with ``src``'s metadata (the training config)."""
    proto = onnx.load(str(src))
    pre = out_dir / "preprocessed.onnx"
    with export._silenced_output():  # the quantiser logs graphs and warnings
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    written = {}
    for name, fmt in FORMATS.items():
        out = out_dir / f"{src.parent.name}_{name.split()[1].lower()}.onnx"
        with export._silenced_output():
            quantize_static(str(pre), str(out), _Samples(proto.graph.input[0].name, samples), quant_format=fmt,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantized = onnx.load(str(out))
        for prop in proto.metadata_props:
            entry = quantized.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
        onnx.save(quantized, str(out))
        written[name] = out
    return written


def measure(path: Path, images: list[Path], refs: list[np.ndarray], repeats: int) -> tuple[list, dict]:
    model = load_onnx(path)
    preds, seconds = [], []
    for image in images:
        predict_case_onnx(model, image)  # untimed: first call of this shape
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            labels = predict_case_onnx(model, image)[0]
            best = min(best, time.perf_counter() - start)
        preds.append(np.asarray(labels))
        seconds.append(best)
    row = {"size_mb": path.stat().st_size / 1e6, "ms_per_volume": 1000 * float(np.median(seconds))}
    for k in (1, 2):
        row[f"dice_{k}"] = float(np.mean([metrics.dice(p == k, r == k) for p, r in zip(preds, refs)]))
    return preds, row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hippocampus_3d", help="a folder of models/ with model.onnx")
    parser.add_argument("--cases", type=int, default=20, help="held-out cases to measure (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the fastest counts)")
    parser.add_argument("--out", type=Path, help="keep the int8 models here (default: a temporary folder)")
    args = parser.parse_args(argv)
    model_dir = settings.MODELS_DIR / args.model
    src = model_dir / "model.onnx"
    config = json.loads((model_dir / "config.json").read_text())
    data = settings.hippocampus_dir()
    split = json.loads((model_dir / "split.json").read_text())
    train_images = [prepare_image(io.load_nifti(data / "imagesTr" / f"{case}.nii.gz"), config)[0]
                    for case in split["train"][:8]]
    calibration = export.calibration_samples(config, train_images, n=32)
    held_out = split["val"][:args.cases]
    images = [data / "imagesTr" / f"{case}.nii.gz" for case in held_out]
    refs = [np.asarray(io.load_nifti(data / "labelsTr" / f"{case}.nii.gz").data).astype(int) for case in held_out]
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        models = {"float32": src, **quantize(src, out_dir, calibration)}
        rows, reference = [], None
        for name, path in models.items():
            preds, row = measure(path, images, refs, args.repeats)
            if reference is None:
                reference = preds
            else:
                row["labels_equal_pct"] = 100 * float(np.mean(np.concatenate(
                    [(a == b).ravel() for a, b in zip(preds, reference)])))
            rows.append({"model": f"{args.model}/model.onnx", "onnx": name, **row})
    print(f"{args.model}: {len(held_out)} held-out cases, calibration {len(calibration)} samples of "
          f"{calibration[0].shape[1:-1]} from 8 training cases")
    print("| onnx | size (MB) | ms per volume | Dice Anterior (1) | Dice Posterior (2) | labels equal to float32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        equal = f"{r['labels_equal_pct']:.3f} %" if "labels_equal_pct" in r else ""
        print(f"| {r['onnx']} | {r['size_mb']:.1f} | {r['ms_per_volume']:.1f} | {r['dice_1']:.4f} | "
              f"{r['dice_2']:.4f} | {equal} |")


if __name__ == "__main__":
    main()
