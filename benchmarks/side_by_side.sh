#!/usr/bin/env bash
# Training speed, Keras (this project) vs PyTorch + MONAI, same networks, batches and patches, one after the
# other on an otherwise idle machine. Usage: bash benchmarks/side_by_side.sh [TORCH_PYTHON]
# TORCH_PYTHON: a Python with torch and monai (default /tmp/torchenv/bin/python; see side_by_side_torch.py).
# Environment: PRECISIONS (Keras names, default "float32 mixed_bfloat16"; PyTorch runs the matching float32 /
# bfloat16), KERAS_CSV and TORCH_CSV (default benchmarks/side_by_side_keras.csv and side_by_side_torch.csv).
# On the AVX2-only CPU (no native bfloat16): PRECISIONS=float32 KERAS_CSV=benchmarks/avx2_side_by_side_keras.csv
# TORCH_CSV=benchmarks/avx2_side_by_side_torch.csv bash benchmarks/side_by_side.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PY=${1:-/tmp/torchenv/bin/python}
: "${MEDSEG_HIPPOCAMPUS_DIR:=../shared/data/msd_hippocampus}"
export MEDSEG_HIPPOCAMPUS_DIR
PRECISIONS=${PRECISIONS:-float32 mixed_bfloat16}
KERAS_CSV=${KERAS_CSV:-benchmarks/side_by_side_keras.csv}
TORCH_CSV=${TORCH_CSV:-benchmarks/side_by_side_torch.csv}
TORCH_PRECISIONS=$(echo "$PRECISIONS" | sed 's/mixed_bfloat16/bfloat16/')
# shellcheck disable=SC2086  # the precision lists are meant to split into words
.venv/bin/python -m medseg_tf bench --dims 2 3 --data synthetic hippocampus --precision $PRECISIONS \
    --steps 20 --repeats 3 --out "$KERAS_CSV" --no-progress
# shellcheck disable=SC2086
"$TORCH_PY" benchmarks/side_by_side_torch.py --precision $TORCH_PRECISIONS --steps 20 --repeats 3 \
    --out "$TORCH_CSV"
.venv/bin/python benchmarks/report.py
