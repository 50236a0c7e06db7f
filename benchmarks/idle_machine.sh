#!/usr/bin/env bash
# The efficiency figures of issue 15, to run on an IDLE machine (nothing else running: check `uptime`).
# Every command appends rows (with date, machine, library versions and the command) to a CSV in benchmarks/.
# Takes about 15-25 minutes on the course's 2-core CPU.
#
#   bash benchmarks/idle_machine.sh
#
# MEDSEG_HIPPOCAMPUS_DIR must point at the 200 MSD Task04 cases (for the pipeline rows and the 40 held-out cases).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3
PY=${PY:-.venv/bin/python}
: "${MEDSEG_HIPPOCAMPUS_DIR:?set MEDSEG_HIPPOCAMPUS_DIR to the MSD Task04 folder}"

# 1. Training (synthetic batch vs the real input pipeline) and the model call, reference recipes, float32
$PY -m medseg_tf bench --dims 2 3 --data synthetic hippocampus --repeats 5 --out benchmarks/bench.csv

# 2. float32 vs mixed_bfloat16 (and mixed_float16), training and model call, 3D and 2D; run it twice to see
#    whether the 3D bfloat16 rate is bimodal from run to run
for run in 1 2; do
  $PY -m medseg_tf bench --dims 3 2 --precision float32 mixed_bfloat16 mixed_float16 --repeats 5 \
      --out benchmarks/bench.csv
done

# 3. Batch size vs throughput and memory (3D), XLA off and on
$PY -m medseg_tf bench --dims 3 --batch-size 1 2 4 8 --xla off on --repeats 3 --out benchmarks/bench.csv

# 4. End to end as `predict` does it, on the 40 held-out cases: Keras float32 and bfloat16, the shipped ONNX
#    models (bench.csv); 5. every export format of both reference models: size, ms/volume, Dice, parity
#    (exports.csv)
bash benchmarks/prediction_rows.sh benchmarks/bench.csv benchmarks/exports.csv

# 6. The CLI's own end-to-end figure (load, normalise, predict, write) for Keras and ONNX, 3D
rm -rf /tmp/medseg_pred_k /tmp/medseg_pred_o
$PY -m medseg_tf predict --model models/hippocampus_3d --images "$MEDSEG_HIPPOCAMPUS_DIR" --out /tmp/medseg_pred_k --no-progress
$PY -m medseg_tf predict --model models/hippocampus_3d/model.onnx --images "$MEDSEG_HIPPOCAMPUS_DIR" --out /tmp/medseg_pred_o --no-progress
