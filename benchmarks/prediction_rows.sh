#!/usr/bin/env bash
# Prediction of the two reference models on their 40 held-out cases: end to end as `predict` does it (step 4 of
# benchmarks/idle_machine.sh) and every export format (step 5). Run it on an IDLE machine (check `uptime`).
#
#   bash benchmarks/prediction_rows.sh [BENCH_CSV] [EXPORTS_CSV]
#
# Appends to BENCH_CSV (default benchmarks/bench.csv) and EXPORTS_CSV (default benchmarks/exports.csv).
# PRECISIONS (default "float32 mixed_bfloat16"): the 3D Keras model's precisions (bfloat16 pays only on a CPU
# with native bfloat16, AVX-512 BF16 or AMX). MEDSEG_HIPPOCAMPUS_DIR must point at the 200 MSD Task04 cases.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
PY=${PY:-.venv/bin/python}
BENCH_CSV=${1:-benchmarks/bench.csv}
EXPORTS_CSV=${2:-benchmarks/exports.csv}
read -r -a PRECISIONS <<< "${PRECISIONS:-float32 mixed_bfloat16}"
: "${MEDSEG_HIPPOCAMPUS_DIR:?set MEDSEG_HIPPOCAMPUS_DIR to the MSD Task04 folder}"

# End to end as `predict` does it, on the 40 held-out cases of the 3D model (the 2D model has the same split):
# Keras in each precision (same float32 weights; agreement with the float32 labels and Dice) and the shipped
# ONNX models (links to the cases in build/, ignored by git: a relative path, so the recorded command names no
# machine path)
HELD_OUT=build/held_out_3d
rm -rf "$HELD_OUT"
$PY - "$HELD_OUT" <<'PYEOF'
import json, os, sys
from pathlib import Path
root, out = Path(os.environ["MEDSEG_HIPPOCAMPUS_DIR"]).resolve(), Path(sys.argv[1])
(out / "imagesTr").mkdir(parents=True); (out / "labelsTr").mkdir()
for case in json.loads(Path("models/hippocampus_3d/split.json").read_text())["val"]:
    for sub in ("imagesTr", "labelsTr"):
        (out / sub / f"{case}.nii.gz").symlink_to(root / sub / f"{case}.nii.gz")
PYEOF
$PY -m medseg_tf bench --model models/hippocampus_3d models/hippocampus_3d/model.onnx --images "$HELD_OUT" \
    --cases 40 --precision "${PRECISIONS[@]}" --repeats 3 --out "$BENCH_CSV"
$PY -m medseg_tf bench --model models/hippocampus_2d models/hippocampus_2d/model.onnx --images "$HELD_OUT" \
    --cases 40 --repeats 3 --out "$BENCH_CSV"
rm -rf "$HELD_OUT"

# Every export format of both reference models on their 40 held-out cases: size, ms/volume, Dice, parity
$PY benchmarks/export_formats.py --cases 40 --repeats 3 --out "$EXPORTS_CSV"
