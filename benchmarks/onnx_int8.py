"""int8 for a 3D model without LiteRT: ONNX Runtime's static quantisation of a reference model's ``model.onnx``.

LiteRT has no int8 Conv3D (and no MaxPool3D) kernel, so ``python -m medseg_tf export --int8`` covers 2D models
only. ONNX Runtime quantises any ONNX graph: this script calibrates ``models/NAME/model.onnx`` on 32 patches (or
slices) of 8 of the model's training cases (``split.json``; the same sampler as the LiteRT int8 export,
``export.calibration_samples``), writes int8 models in ONNX Runtime's two formats (QDQ: quantise/dequantise pairs
around float operators; QOperator: integer operators such as ``QLinearConv``), both per output channel, and
compares them with the float32 ONNX model on held-out cases of the model's split with ``export.compare_exports``
(as for the other formats): milliseconds per volume end to end (normalise, predict, argmax; the median of
``--repeats`` runs per case, then over cases), mean Dice per class against the reference labels, and the share of
voxels whose label equals the float32 model's. Nothing here imports TensorFlow. A measurement, not a project feature: the int8 files
go to ``--out`` (default a temporary folder).

    MEDSEG_HIPPOCAMPUS_DIR=../shared/data/msd_hippocampus python benchmarks/onnx_int8.py --model hippocampus_3d
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from medseg_tf import export, settings

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hippocampus_3d", help="a folder of models/ with model.onnx")
    parser.add_argument("--cases", type=int, default=20, help="held-out cases to measure (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (their median counts)")
    parser.add_argument("--out", type=Path, help="keep the int8 models here (default: a temporary folder)")
    args = parser.parse_args(argv)
    model_dir = settings.MODELS_DIR / args.model
    src = model_dir / "model.onnx"
    config = json.loads((model_dir / "config.json").read_text())
    data = settings.hippocampus_dir()
    calibration = export.calibration_samples(config, export._training_images(model_dir, config, data, 8), n=32)
    held_out = json.loads((model_dir / "split.json").read_text())["val"][:args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        models = {"float32": src, **quantize(src, out_dir, calibration)}
        table = export.compare_exports(models, [data / "imagesTr" / f"{c}.nii.gz" for c in held_out],
                                       [data / "labelsTr" / f"{c}.nii.gz" for c in held_out],
                                       repeats=args.repeats, progress=False)
    print(f"{args.model}: {len(held_out)} held-out cases, calibration {len(calibration)} samples of "
          f"{calibration[0].shape[1:-1]} from 8 training cases")
    print("| onnx | size (MB) | ms per volume | Dice Anterior (1) | Dice Posterior (2) | labels equal to float32 |")
    print("|---|---|---|---|---|---|")
    for r in table.itertuples():
        equal = f"{100 * r.agreement:.3f} %" if r.model != "float32" else ""
        print(f"| {r.model} | {r.size_mb:.1f} | {r.ms_per_volume:.1f} | {r.dice_1:.4f} | {r.dice_2:.4f} | {equal} |")


if __name__ == "__main__":
    main()
