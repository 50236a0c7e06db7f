"""Measure U-Net training speed and peak memory on this machine.

Prints one line per measurement (samples/s, ms per step, peak host and GPU
memory) and, with ``--out``, appends the rows, with the date and this command,
to a CSV file that notebook 04 shows (``benchmarks/results.csv``)::

    python benchmarks/train_speed.py --dims 2 --batch-size 16 --steps 30 --out benchmarks/results.csv
    python benchmarks/train_speed.py --dims 3 --batch-size 2 --steps 30 --out benchmarks/results.csv
    python benchmarks/train_speed.py --dims 2 3 --synthetic --mixed-precision off on --jit off on

Several values for ``--dims``, ``--mixed-precision`` or ``--jit`` measure every
combination, each in a fresh process (the peak memory of one measurement must
not include the previous ones, and a mixed-precision policy or an XLA cache
must not carry over). Defaults follow ``configs/phantom_2d.json`` /
``configs/phantom_3d.json`` where those exist, else :class:`TrainConfig`'s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

SWITCH = {"auto": "auto", "on": True, "off": False}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[2], help="2D and/or 3D U-Net")
    p.add_argument("--batch-size", type=int, help="samples per replica and step (default: from the config)")
    p.add_argument("--patch-size", type=int, nargs="+", help="training crop in voxels (default: from the config)")
    p.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up (default 30)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--data", default="phantom",
                   help="'phantom', 'hippocampus' or an MSD folder: time the real input pipeline (default phantom)")
    p.add_argument("--synthetic", action="store_true",
                   help="a fixed random batch instead of --data: the device speed alone")
    p.add_argument("--depth", type=int, help="U-Net depth (default: from the config)")
    p.add_argument("--base-filters", type=int, help="filters of the first level (default: from the config)")
    p.add_argument("--max-filters", type=int, help="cap on the filters of any level (default: from the config)")
    p.add_argument("--mixed-precision", nargs="+", choices=tuple(SWITCH), default=["auto"],
                   help="mixed_float16: auto (on with a GPU), on, off")
    p.add_argument("--jit", nargs="+", choices=tuple(SWITCH), default=["auto"],
                   help="XLA compilation: auto (on with a GPU), on, off")
    p.add_argument("--out", type=Path, help="append the results to this CSV file")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode: print one JSON row
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1:
        p.error("--steps and --warmup-steps must be >= 1")
    return args


def _config_defaults(dims: int, data: str) -> dict:
    """Sizes, model, spacing and augmentation of configs/<data>_<dims>d.json (phantom's for a folder)."""
    name = data if data in ("phantom", "hippocampus") else "phantom"
    path = REPO / "configs" / f"{name}_{dims}d.json"
    if not path.is_file():
        return {}
    values = json.loads(path.read_text())
    return {k: values[k] for k in ("batch_size", "patch_size", "model", "target_spacing", "augment") if k in values}


def measure_one(args, dims: int, mixed: str, jit: str) -> dict:
    from medseg_tf.benchmark import measure_training_speed

    defaults = _config_defaults(dims, args.data)
    model = dict(defaults.get("model", {}))
    if args.depth is not None:
        model["depth"] = args.depth
    if args.base_filters is not None:
        model["base_filters"] = args.base_filters
    if args.max_filters is not None:
        model["max_filters"] = args.max_filters
    patch = args.patch_size if args.patch_size and len(args.patch_size) == dims else defaults.get("patch_size")
    return measure_training_speed(
        dims, args.batch_size or defaults.get("batch_size", 16 if dims == 2 else 2), patch, args.steps,
        warmup_steps=args.warmup_steps, data=None if args.synthetic else args.data, model=model,
        target_spacing=defaults.get("target_spacing"), augment=defaults.get("augment", True),
        mixed_precision=SWITCH[mixed], jit_compile=SWITCH[jit])


def describe(row: dict) -> str:
    gpu = "" if row["peak_device_mb"] != row["peak_device_mb"] else f", peak GPU {row['peak_device_mb']:.0f} MiB"
    load = f" (load average {row['load_avg']:.1f} on {os.cpu_count()} cores)" if row["device"].startswith("CPU") else ""
    return (f"{row['device']} | {row['dims']}D {row['model']}, {row['patch_size']} x {row['global_batch_size']} | "
            f"{row['data']} | {row['precision']}, XLA {'on' if row['jit'] else 'off'}: "
            f"{row['samples_per_s']:.3g} samples/s, {row['step_ms']:.0f} ms/step, warm-up {row['warmup_s']:.1f} s, "
            f"peak RSS {row['peak_rss_mb']:.0f} MiB{gpu}{load}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    combos = list(itertools.product(args.dims, args.mixed_precision, args.jit))
    if args.json or len(combos) == 1:
        dims, mixed, jit = combos[0]
        row = measure_one(args, dims, mixed, jit)
        if args.json:
            print("RESULT " + json.dumps(row), flush=True)
            return 0
        rows = [row]
    else:
        rows = []
        for dims, mixed, jit in combos:  # one fresh process per measurement
            child = [a for a in _without(argv, ("--dims", "--mixed-precision", "--jit", "--out"))]
            cmd = [sys.executable, __file__, *child, "--dims", str(dims), "--mixed-precision", mixed,
                   "--jit", jit, "--json"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"measurement failed: {shlex.join(cmd)}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            print(describe(rows[-1]), flush=True)
    if len(rows) == 1:
        print(describe(rows[0]), flush=True)
    if args.out:
        from medseg_tf.benchmark import append_results

        command = shlex.join(["python", "benchmarks/train_speed.py", *argv])
        print(f"appended {len(rows)} row(s) to {append_results(rows, args.out, command=command)}")
    return 0


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` minus the given options and their values."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a.split("=", 1)[0] in options
        if not skip:
            out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
