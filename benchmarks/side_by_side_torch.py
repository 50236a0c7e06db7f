"""PyTorch + MONAI side of the training-speed comparison (not a project dependency; run it in a scratch venv).

The same networks as the reference models, as MONAI's ``BasicUNet`` (two 3x3 convolutions per level, four
poolings, the same widths), the same batch, patch and loss (Dice + cross-entropy), Adam, on a fixed random
batch (model-bound: no input pipeline), channels-last memory format, float32. Prints one CSV row per
network: samples per second, median of ``--repeats`` timed runs of ``--steps`` steps after ``--warmup``.

Set up and run (this machine; torch 2.13.0 lies on disk for Python 3.11)::

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 monai
    /tmp/torchenv/bin/python benchmarks/side_by_side_torch.py --out benchmarks/side_by_side.csv

The Keras side of the same comparison is the project's own ``python -m medseg_tf bench`` (training through
the real pipeline and on a synthetic batch); ``benchmarks/side_by_side.sh`` runs both, one after the other.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet

#: name: (spatial dims, in channels, features of BasicUNet, batch, patch) of the reference models
NETS = {
    "3d_d4_f16_max64": (3, 1, (16, 32, 64, 64, 64, 16), 2, (48, 64, 48)),
    "2d_d4_f16_ctx2": (2, 5, (16, 32, 64, 128, 256, 16), 16, (48, 64)),
}


def samples_per_second(name: str, steps: int, warmup: int, repeats: int, threads: int | None,
                       precision: str = "float32") -> dict:
    dims, cin, features, batch, patch = NETS[name]
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=dims, in_channels=cin, out_channels=3, features=features)
    fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
    net = net.to(memory_format=fmt)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(batch, cin, *patch).to(memory_format=fmt)
    y = torch.randint(0, 3, (batch, 1, *patch))

    def step():
        opt.zero_grad(set_to_none=True)
        # bfloat16: PyTorch's mixed precision on a CPU (autocast; float32 weights, no loss scaling)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch / (time.perf_counter() - start))
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "framework": f"torch {torch.__version__} + monai", "net": name, "precision": precision, "batch": batch,
            "patch": "x".join(map(str, patch)), "params": sum(p.numel() for p in net.parameters()),
            "samples_per_s": round(statistics.median(rates), 2), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=sorted(NETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", nargs="+", choices=("float32", "bfloat16"), default=["float32"])
    parser.add_argument("--out", help="CSV file to append the rows to")
    args = parser.parse_args()
    rows = []
    for n in args.nets:
        for precision in args.precision:
            rows.append(samples_per_second(n, args.steps, args.warmup, args.repeats, args.threads, precision))
            print(",".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    if args.out:
        old = []
        if os.path.exists(args.out):  # older files lack some columns (date, precision): rewrite with all
            with open(args.out, newline="") as f:
                old = [{"precision": "float32", **r} for r in csv.DictReader(f)]
        fields = list(rows[0]) + [k for r in old for k in r if k not in rows[0]]
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(fields)), restval="")
            writer.writeheader()
            writer.writerows(old + rows)


if __name__ == "__main__":
    main()
