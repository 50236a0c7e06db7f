"""Every export format of the reference models, side by side: size, latency per volume, Dice, label parity.

For each of ``models/hippocampus_3d`` and ``models/hippocampus_2d``: export to ONNX, SavedModel and (2D only:
a 3D U-Net has no LiteRT MaxPool3D kernel) LiteRT float32 / float16 / int8 (int8 calibrated on training
cases of the model's split), then predict the held-out (validation) cases of the model's ``split.json`` with
each, end to end (normalise, predict, argmax), and compare with the Keras model. Exits non-zero when an
exported float32 model gives other labels than Keras on more than 0.1 % of voxels.

    python benchmarks/export_formats.py --cases 40 --out benchmarks/exports.csv

Data: ``$MEDSEG_HIPPOCAMPUS_DIR`` (the MSD Task04 folder; default ``data/Task04_Hippocampus``), else the 8
sample cases in ``data/hippocampus_sample``. Timings depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def held_out_cases(model_dir: Path, data_dir: Path, n: int) -> tuple[list[Path], list[Path]]:
    """Image and label files of up to ``n`` validation cases of a model that exist in ``data_dir``."""
    val = json.loads((model_dir / "split.json").read_text())["val"]
    images = [data_dir / "imagesTr" / f"{c}.nii.gz" for c in val]
    pairs = [(i, data_dir / "labelsTr" / i.name) for i in images if i.is_file()][:n]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["hippocampus_3d", "hippocampus_2d"])
    p.add_argument("--cases", type=int, default=40, help="held-out cases per model (default 40)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case; the median is kept (default 3)")
    p.add_argument("--out", type=Path, help="append the table to this CSV")
    args = p.parse_args(argv)

    import pandas as pd

    from medseg_tf import benchmark, settings
    from medseg_tf.export import compare_exports, export_model, litert_op_types

    data = settings.hippocampus_dir()
    if not (data / "dataset.json").is_file():
        data = settings.hippocampus_sample_dir()
    info = benchmark.machine_info()
    print(f"{info['device']}, {info['cpu']}; load average {info['load_avg']:.1f}; data {settings.display_path(data)}")
    tables, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_dir = settings.MODELS_DIR / name
            images, labels = held_out_cases(model_dir, data, args.cases)
            config = json.loads((model_dir / "config.json").read_text())
            out = Path(tmp) / name
            paths = {"keras": model_dir, "onnx": export_model(model_dir, "onnx", out / "model.onnx"),
                     "saved_model": export_model(model_dir, "saved_model", out / "saved_model")}
            if int(config["dims"]) == 2:
                paths["litert"] = export_model(model_dir, "litert", out / "f32.tflite")
                paths["litert float16"] = export_model(model_dir, "litert", out / "f16.tflite", quantize="float16")
                paths["litert int8"] = export_model(model_dir, "litert", out / "i8.tflite", quantize="int8",
                                                    calibration_data=str(data))
                print("int8 LiteRT op types:", litert_op_types(paths["litert int8"]))
            table = compare_exports(paths, images, labels, repeats=args.repeats)
            table.insert(0, "reference_model", name)
            table["cases"] = len(images)
            tables.append(table)
            for _, row in table.iterrows():
                if row["model"] in ("onnx", "saved_model", "litert") and row["agreement"] < 0.999:
                    failed = True
                    print(f"PARITY FAILED: {name} {row['model']}: {row['agreement']:.5f} of voxels agree")
    result = pd.concat(tables, ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(result.round(4).to_string(index=False))
    if args.out:
        result["device"], result["cpu"], result["load_avg"] = info["device"], info["cpu"], info["load_avg"]
        result["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        result["command"] = shlex.join(["python", "benchmarks/export_formats.py", *(argv or sys.argv[1:])])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(args.out, mode="a", header=not args.out.is_file(), index=False)
        print(f"appended {len(result)} rows to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
