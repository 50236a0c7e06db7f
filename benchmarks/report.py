"""Print the README's efficiency tables (Markdown) from the committed benchmark CSVs; measures nothing.

    python benchmarks/report.py

1. Prediction end to end (``bench --model ...``, as ``predict`` does it) of the reference models on their 40
   held-out cases: the newest such rows of ``bench.csv`` (``benchmarks/prediction_rows.sh``, run by
   ``benchmarks/idle_machine.sh``, step 4).
2. Every export format of the reference models on their held-out cases (``export_formats.py``, newest run,
   ``exports.csv``; ``benchmarks/idle_machine.sh``, step 5).
3. Training speed, Keras (this project) against PyTorch + MONAI: the newest row of each configuration (``side_by_side_keras.csv``: ``python -m medseg_tf bench`` rows, real input
pipeline and synthetic batch; ``side_by_side_torch.csv``: ``side_by_side_torch.py``, synthetic batch) as
``benchmarks/side_by_side.sh`` writes them, one after the other on the same machine.
4. Tables 1 and 2 again from ``avx2_bench.csv`` and ``avx2_exports.csv``: the same measurements
   (``benchmarks/prediction_rows.sh``, float32 only) on the AVX2-only CPU, after ``predict`` began padding 2D
   slices to at least the training patch; and table 3 from ``avx2_side_by_side_keras.csv`` and
   ``avx2_side_by_side_torch.csv`` (``benchmarks/side_by_side.sh`` with ``PRECISIONS=float32``) when present.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
NETS = {2: "2d_d4_f16_ctx2", 3: "3d_d4_f16_max64"}
TORCH_PRECISION = {"float32": "float32", "mixed_bfloat16": "bfloat16"}


def _newest(name: str, keep=None):
    """Rows of the newest run in ``benchmarks/<name>`` (``keep``: a row filter first), or None with a note."""
    path = HERE / name
    if not path.is_file():
        print(f"{name}: not measured yet; run benchmarks/prediction_rows.sh\n")
        return None
    rows = pd.read_csv(path)
    rows = rows[keep(rows)] if keep is not None else rows
    return rows[rows["date"] == rows["date"].max()]


def prediction(name: str = "bench.csv") -> None:
    rows = _newest(name, lambda r: (r["kind"] == "predict") & r["e2e_ms_per_volume"].notna())
    if rows is None:
        return
    print(f"Prediction end to end, {rows['date'].iloc[0]}, {rows['device'].iloc[0]} ({rows['cpu'].iloc[0]}):\n")
    print("| model | runtime | precision | ms per volume | mean Dice | labels equal to the float32 model's |")
    print("|---|---|---|---|---|---|")
    for r in rows.itertuples():
        agree = "" if pd.isna(r.agreement) else f"{100 * r.agreement:.3f} %"
        print(f"| {r.model} | {r.source} | {r.precision} | {r.e2e_ms_per_volume:.1f} | {r.dice_mean:.4f} | {agree} |")
    print()


def exports(name: str = "exports.csv") -> None:
    rows = _newest(name)
    if rows is None:
        return
    dice = [c for c in rows.columns if c.startswith("dice_")]
    print(f"Export formats, {rows['date'].iloc[0]}, {rows['device'].iloc[0]} ({rows['cpu'].iloc[0]}), "
          f"{int(rows['cases'].iloc[0])} held-out cases per model:\n")
    names = {}
    for model in rows["reference_model"].unique():  # class names from the model's own scored cases
        path = HERE.parent / "models" / str(model) / "metrics_val.csv"
        if path.is_file():
            for label, name in pd.read_csv(path)[["label", "class"]].drop_duplicates().itertuples(index=False):
                names.setdefault(f"dice_{label}", f"Dice {name} ({label})")
    print("| reference model | format | size (MB) | ms per volume | " + " | ".join(names.get(c, c) for c in dice)
          + " | labels equal to Keras |")
    print("|---|---|---|---|" + "---|" * len(dice) + "---|")
    for r in rows.to_dict("records"):
        agree = "" if r["model"] == "keras" else f"{100 * r['agreement']:.3f} %"
        print(f"| {r['reference_model']} | {r['model']} | {r['size_mb']:.1f} | {r['ms_per_volume']:.1f} | "
              + " | ".join(f"{r[c]:.4f}" for c in dice) + f" | {agree} |")
    print()


def training(keras_name: str = "side_by_side_keras.csv", torch_name: str = "side_by_side_torch.csv",
             defaults: tuple = ((3, "mixed_bfloat16"), (2, "float32"))) -> None:
    """Table 3 from a pair of side-by-side CSVs; ``defaults``: the course's precision per dims on that CPU."""
    keras = pd.read_csv(HERE / keras_name)
    torch = pd.read_csv(HERE / torch_name)
    if "date" not in torch or torch["date"].isna().all():
        raise SystemExit(f"{torch_name}: no dated rows; run benchmarks/side_by_side.sh")
    keras = keras[keras["kind"] == "train"].drop_duplicates(["dims", "precision", "data"], keep="last")
    torch = torch[torch["date"].notna()].drop_duplicates(["net", "precision"], keep="last")  # newest of each
    print(f"Keras rows {keras['date'].min()} to {keras['date'].max()}, PyTorch rows {torch['date'].min()} to "
          f"{torch['date'].max()} "
          f"({torch['framework'].iloc[0]}), {int(torch['cores'].iloc[0])} cores:\n")
    print("| model | precision | Keras pipeline | Keras synthetic | PyTorch + MONAI synthetic | "
          "ratio (pipeline) | ratio (synthetic) |")
    print("|---|---|---|---|---|---|---|")
    for dims, net in NETS.items():
        for precision, torch_precision in TORCH_PRECISION.items():
            k = keras[(keras["dims"] == dims) & (keras["precision"] == precision)]
            t = torch[(torch["net"] == net) & (torch["precision"] == torch_precision)]
            pipe, synth = k[k["data"] != "synthetic"], k[k["data"] == "synthetic"]
            if pipe.empty or synth.empty or t.empty:
                continue
            p, s, r = (float(x["samples_per_s"].iloc[0]) for x in (pipe, synth, t))
            print(f"| {dims}D | {precision} / {torch_precision} | {p:.2f} | {s:.2f} | {r:.2f} | {p / r:.2f}x | "
                  f"{s / r:.2f}x |")
    print("\nSamples (volumes or slices) per second, median of the repeats, after warm-up.")
    # what a student gets: the course's default precision (3D mixed_bfloat16 on a CPU with native bfloat16,
    # 2D float32; medseg_tf.runtime.resolve_runtime) through the pipeline, against PyTorch's default, float32
    parts = []
    for dims, precision in defaults:
        k = keras[(keras["dims"] == dims) & (keras["precision"] == precision) & (keras["data"] != "synthetic")]
        t = torch[(torch["net"] == NETS[dims]) & (torch["precision"] == "float32")]
        if not k.empty and not t.empty:
            rate, ref = float(k["samples_per_s"].iloc[0]), float(t["samples_per_s"].iloc[0])
            parts.append(f"{dims}D {rate / ref:.2f}x ({precision} {rate:.2f} vs {ref:.2f})")
    if parts:
        print("\nCourse defaults through the pipeline against PyTorch + MONAI in float32: " + ", ".join(parts) + ".")


def training_runs(keras_name: str, torch_name: str) -> None:
    """Every run of a side-by-side pair of CSVs, in order (run i of the Keras file with run i of PyTorch's)."""
    keras = pd.read_csv(HERE / keras_name)
    keras = keras[(keras["kind"] == "train") & (keras["precision"] == "float32")]
    torch = pd.read_csv(HERE / torch_name)
    torch = torch[torch["precision"] == "float32"]
    print("\n| run | model | Keras pipeline | Keras synthetic | PyTorch + MONAI | ratio (pipeline) | ratio (synthetic) "
          "| pipeline vs synthetic |")
    print("|---|---|---|---|---|---|---|---|")
    for run, date in enumerate(keras["date"].unique(), 1):
        for dims, net in NETS.items():
            k = keras[(keras["date"] == date) & (keras["dims"] == dims)]
            t = torch[torch["net"] == net]["samples_per_s"]
            if len(t) < run or k.empty:
                continue
            p = float(k.loc[k["data"] != "synthetic", "samples_per_s"].iloc[0])
            s = float(k.loc[k["data"] == "synthetic", "samples_per_s"].iloc[0])
            r = float(t.iloc[run - 1])
            print(f"| {run} ({date}) | {dims}D | {p:.2f} | {s:.2f} | {r:.2f} | {p / r:.2f}x | {s / r:.2f}x | "
                  f"{100 * (p / s - 1):+.1f} % |")


def main() -> int:
    prediction()
    exports()
    training()
    print("\nOn the AVX2-only CPU, after the 2D prediction canvas fix (`PRECISIONS=float32 bash "
          "benchmarks/prediction_rows.sh benchmarks/avx2_bench.csv benchmarks/avx2_exports.csv`):\n")
    prediction("avx2_bench.csv")
    exports("avx2_exports.csv")
    if (HERE / "avx2_side_by_side_keras.csv").is_file() and (HERE / "avx2_side_by_side_torch.csv").is_file():
        print("\nTraining speed on the AVX2-only CPU (no native bfloat16, so float32 is the course's default in 2D "
              "and 3D; `PRECISIONS=float32 KERAS_CSV=benchmarks/avx2_side_by_side_keras.csv "
              "TORCH_CSV=benchmarks/avx2_side_by_side_torch.csv bash benchmarks/side_by_side.sh`):\n")
        training("avx2_side_by_side_keras.csv", "avx2_side_by_side_torch.csv", defaults=((3, "float32"), (2, "float32")))
        print("\nEvery run, float32:")
        training_runs("avx2_side_by_side_keras.csv", "avx2_side_by_side_torch.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
