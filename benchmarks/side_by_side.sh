#!/usr/bin/env bash
# Training speed, Keras (this project) vs PyTorch + MONAI, same networks, batches and patches, one after the
# other on an otherwise idle machine. Usage: bash benchmarks/side_by_side.sh [TORCH_PYTHON]
# TORCH_PYTHON: a Python with torch and monai (default /tmp/torchenv/bin/python; see side_by_side_torch.py).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PY=${1:-/tmp/torchenv/bin/python}
: "${MEDSEG_HIPPOCAMPUS_DIR:=../shared/data/msd_hippocampus}"
export MEDSEG_HIPPOCAMPUS_DIR
.venv/bin/python -m medseg_tf bench --dims 2 3 --data synthetic hippocampus --precision float32 mixed_bfloat16 \
    --steps 20 --repeats 3 --out benchmarks/side_by_side_keras.csv --no-progress
"$TORCH_PY" benchmarks/side_by_side_torch.py --precision float32 bfloat16 --steps 20 --repeats 3 \
    --out benchmarks/side_by_side_torch.csv
.venv/bin/python benchmarks/report.py
