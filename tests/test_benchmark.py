"""Tests of medseg_tf.benchmark and benchmarks/train_speed.py (tiny models, few steps)."""

import importlib.util
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from medseg_tf import benchmark
from medseg_tf.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
MEASURED = [c for c in benchmark.RESULT_COLUMNS if c not in ("date", "command")]


def _status_file(tmp_path, rss_kib, hwm_kib):
    path = tmp_path / "status"
    path.write_text(f"Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t  {hwm_kib} kB\nVmRSS:\t  {rss_kib} kB\n")
    return path


def test_memory_read_from_proc_status(tmp_path):
    path = _status_file(tmp_path, rss_kib=2048, hwm_kib=5120)
    assert benchmark.current_rss_mb(path) == 2.0
    assert benchmark.peak_rss_mb(path) == 5.0


def test_peak_rss_falls_back_to_getrusage(tmp_path):
    missing = tmp_path / "no_status"
    assert benchmark.current_rss_mb(missing) is None
    peak = benchmark.peak_rss_mb(missing)  # ru_maxrss: this process has imported TensorFlow
    assert 50 < peak < 1e6
    assert benchmark.reset_peak_rss(tmp_path / "no_dir" / "clear_refs") is False


def test_reset_peak_rss_lowers_the_high_water_mark():
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc")
    big = np.ones(40 * 2**20 // 8)  # 40 MiB, touched
    big += 1
    del big
    before = benchmark.peak_rss_mb()
    if not benchmark.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs not writable here")
    after = benchmark.peak_rss_mb()
    assert after <= before
    assert after == pytest.approx(benchmark.current_rss_mb(), abs=8)
    big = np.ones(40 * 2**20 // 8)
    big += 1
    assert benchmark.peak_rss_mb() >= after + 35  # the new allocation is seen


def test_synthetic_batch_shapes_and_foreground():
    x, y = benchmark.synthetic_batch(4, (32, 48), 3, foreground=0.1, seed=1)
    assert x.shape == (4, 32, 48, 1) and x.dtype == np.float32
    assert y.shape == (4, 32, 48) and y.dtype == np.int32
    assert set(np.unique(y)) == {0, 1, 2}
    assert np.mean(y > 0) == pytest.approx(0.1, abs=0.02)
    x2, _ = benchmark.synthetic_batch(4, (32, 48), 3, foreground=0.1, seed=1)
    np.testing.assert_array_equal(x, x2)
    assert benchmark.synthetic_batch(2, (8, 8, 8), 2)[1].shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="num_classes"):
        benchmark.synthetic_batch(2, (8, 8), 1)
    with pytest.raises(ValueError, match="foreground"):
        benchmark.synthetic_batch(2, (8, 8), 3, foreground=1.5)


def test_measure_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        benchmark.measure_training_speed(2, 4, (16, 16), steps=0)
    with pytest.raises(ValueError, match="dims"):
        benchmark.measure_training_speed(4, 4, (16, 16), steps=1)


def test_measure_on_the_input_pipeline(phantom_root):
    keras.utils.set_random_seed(0)
    row = benchmark.measure_training_speed(3, 2, (16, 16, 16), steps=2, warmup_steps=1, data=str(phantom_root),
                                           model={"depth": 2, "base_filters": 4}, max_cases=3,
                                           target_spacing=(1.5, 1.5, 1.5), augment={"flips": False})
    assert list(row) == MEASURED
    assert row["data"] == phantom_root.name and row["dims"] == 3 and row["patch_size"] == "16x16x16"
    assert row["model"] == "unet d2 f4"
    assert row["device"].startswith("CPU") or "GPU" in row["device"] or "NVIDIA" in row["device"]
    # the rate and the step time describe the same measurement
    assert row["samples_per_s"] > 0
    assert row["step_ms"] * row["samples_per_s"] / 1000 == pytest.approx(row["global_batch_size"])
    assert row["warmup_s"] > 0
    assert row["peak_rss_mb"] >= row["rss_before_mb"] - 1 > 0
    if row["device"].startswith("CPU"):
        from medseg_tf.runtime import cpu_has_bf16

        # "auto": a 3D model trains in bfloat16 on a CPU that computes it natively
        assert row["precision"] == ("mixed_bfloat16" if cpu_has_bf16() else "float32") and row["jit"] is False
        assert math.isnan(row["peak_device_mb"])


@pytest.mark.parametrize("data", ["pipeline", "synthetic"])
def test_measure_feeds_a_2_5d_model_its_context_slices(phantom_root, data, monkeypatch):
    # the 2D row of `bench` is a 2.5D model (5 slices in): pipeline and synthetic batches must both carry
    # 2 * context_slices + 1 channels, and the model must be built for them
    seen = []
    original = benchmark.keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.append(self.input_shape[-1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(benchmark.keras.Model, "fit", spy)
    row = benchmark.measure_training_speed(2, 2, (32, 32), steps=1, warmup_steps=1,
                                           data=str(phantom_root) if data == "pipeline" else None,
                                           model={"depth": 2, "base_filters": 4}, max_cases=2, context_slices=2)
    assert seen == [5] and row["samples_per_s"] > 0


def _rows():
    return [{"device": "CPU (2 cores)", "dims": 2, "model": "unet d4 f16", "batch_size": 16, "global_batch_size": 16,
             "patch_size": "48x64", "steps": 30, "precision": "float32", "jit": False, "strategy": "default",
             "replicas": 1, "data": "phantom", "samples_per_s": 81.234567, "step_ms": 196.9653,
             "warmup_s": 9.87, "peak_rss_mb": 1023.4, "rss_before_mb": 900.0, "peak_rss_reset": True,
             "peak_device_mb": float("nan"), "load_avg": 2.5, "tensorflow": "2.21.0", "keras": "3.15.1"}]


def test_results_round_trip(tmp_path):
    path = tmp_path / "sub" / "results.csv"
    benchmark.append_results(_rows(), path, command="python benchmarks/train_speed.py --dims 2")
    second = dict(_rows()[0], device="NVIDIA H100", dims=3, peak_device_mb=2048.0, jit=True)
    benchmark.append_results(second, path, command="python x.py")
    assert path.read_text().count("device,dims") == 1  # one header
    df = benchmark.read_results(path)
    assert list(df.columns) == list(benchmark.RESULT_COLUMNS)
    assert len(df) == 2
    assert df["command"].tolist() == ["python benchmarks/train_speed.py --dims 2", "python x.py"]
    assert df["samples_per_s"].iloc[0] == pytest.approx(81.2346)
    assert math.isnan(df["peak_device_mb"].iloc[0]) and df["peak_device_mb"].iloc[1] == 2048.0
    assert df["jit"].tolist() == [False, True]
    assert df["date"].str.endswith("UTC").all()

    table = benchmark.results_table(df)
    assert table["samples_per_s"].tolist() == [81.2, 81.2]
    assert table["step_ms"].tolist() == [197.0, 197.0]
    assert "command" not in table.columns
    assert list(benchmark.results_table(_rows()[0], columns=("device", "nope")).columns) == ["device"]


def test_results_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        benchmark.read_results(tmp_path / "missing.csv")
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        benchmark.read_results(other)
    with pytest.raises(DataError, match="columns"):
        benchmark.append_results(_rows(), other)
    with pytest.raises(ValueError, match="unknown result column"):
        benchmark.append_results([dict(_rows()[0], speed=1)], tmp_path / "new.csv")


def _load_script():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_measures_and_appends(tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "results.csv"
    argv = ["--dims", "2", "--batch-size", "4", "--patch-size", "16", "16", "--steps", "2", "--warmup-steps", "1",
            "--synthetic", "--depth", "2", "--base-filters", "4", "--out", str(out)]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "peak RSS" in printed and "appended 1 row" in printed
    df = benchmark.read_results(out)
    assert len(df) == 1
    assert df["data"].iloc[0] == "synthetic" and df["patch_size"].iloc[0] == "16x16"
    assert df["model"].iloc[0] == "unet d2 f4"
    assert df["command"].iloc[0].startswith("python benchmarks/train_speed.py --dims 2")
    assert df["samples_per_s"].iloc[0] > 0


def test_script_argument_handling():
    script = _load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        script.parse_args(["--dims", "4"])
    assert script._without(["--dims", "2", "3", "--steps", "5", "--out=x.csv", "--jit", "on"],
                           ("--dims", "--out", "--jit")) == ["--steps", "5"]


# =========================================================================== `bench`


def test_forward_flops_counts_convolutions_by_hand():
    inp = keras.Input((None, None, None, 2))
    h = keras.layers.Conv3D(4, 3, padding="same")(inp)               # 2 * 8*8*8 * 27 * 2 * 4
    h = keras.layers.MaxPooling3D(2)(h)
    h = keras.layers.Conv3DTranspose(3, 2, strides=2)(h)             # 2 * 4*4*4 * 8 * 4 * 3
    out = keras.layers.Conv3D(2, 1)(h)                                # 2 * 8*8*8 * 1 * 3 * 2
    model = keras.Model(inp, out)
    expected = 2 * 512 * 27 * 2 * 4 + 2 * 64 * 8 * 4 * 3 + 2 * 512 * 3 * 2
    assert benchmark.forward_flops(model, (8, 8, 8)) == expected
    # the reference 3D U-Net on a padded hippocampus volume: the 15.8 GFLOP quoted in the issue
    net = benchmark.build_unet(3, {"depth": 4, "base_filters": 16, "max_filters": 64})
    assert benchmark.forward_flops(net, (48, 64, 48)) / 1e9 == pytest.approx(15.76, abs=0.01)


def test_cpu_name_and_machine_info(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n")
    assert benchmark.cpu_name(info) == "AMD EPYC 9R14 96-Core Processor"
    assert benchmark.cpu_name(tmp_path / "missing")  # falls back to platform
    machine = benchmark.machine_info()
    assert machine["backend"] == keras.backend.backend() and machine["keras"] == keras.__version__
    assert machine["cores"] >= 1 and machine["numpy"] == np.__version__


@pytest.mark.skipif(keras.backend.backend() != "tensorflow" or platform.machine() not in ("x86_64", "AMD64"),
                    reason="TF_ENABLE_ONEDNN_OPTS decides oneDNN in TensorFlow's x86 builds")
def test_device_says_when_tensorflow_runs_without_onednn():
    code = ("from medseg_tf import benchmark; import tensorflow; "
            "print(benchmark.tensorflow_onednn(), '|', benchmark.machine_info()['device'])")
    seen = {}
    for flag in ("0", "1"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag, "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        seen[flag] = result.stdout.strip().splitlines()[-1]
    assert seen["0"].startswith("False |") and seen["0"].endswith("cores, oneDNN off)")
    assert seen["1"].startswith("True |") and "oneDNN" not in seen["1"]


def test_matmul_peak_and_precision_policies():
    assert benchmark.matmul_peak_gflops(128, 2) > 0
    net = benchmark.build_unet(2, {"depth": 1, "base_filters": 4}, precision="mixed_bfloat16")
    assert net.layers[1].compute_dtype == "bfloat16" and net.layers[1].variable_dtype == "float32"
    assert net.output.dtype == "float32"  # the head computes in float32
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    back = benchmark.with_precision(net, "float32")  # a bfloat16 model back to float32, same weights
    assert back is not net and back.layers[1].compute_dtype == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), net.get_weights()))
    f32 = benchmark.build_unet(2, {"depth": 1, "base_filters": 4})
    assert benchmark.with_precision(f32, "float32") is f32
    bf16 = benchmark.with_precision(f32, "mixed_bfloat16")
    assert bf16.layers[1].compute_dtype == "bfloat16"
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(bf16.predict_on_batch(x), f32.predict_on_batch(x), atol=0.05)
    with pytest.raises(ValueError, match="precision"):
        benchmark.build_unet(2, precision="float8")


def test_training_and_model_call_rows_are_consistent():
    row = benchmark.measure_training_synthetic(2, 2, (16, 16), model={"depth": 1, "base_filters": 4}, steps=2,
                                               warmup_steps=1, repeats=2)
    assert set(row) <= set(benchmark.BENCH_COLUMNS)
    assert row["kind"] == "train" and row["data"] == "synthetic" and row["model"] == "unet d1 f4"
    assert row["ms_per_batch"] * row["samples_per_s"] / 1000 == pytest.approx(2)
    assert row["achieved_gflops"] == pytest.approx(3 * row["gflop_per_sample"] * row["samples_per_s"])
    net = benchmark.build_unet(3, {"depth": 1, "base_filters": 4})
    call = benchmark.measure_model_call(net, (16, 16, 8), dims=3, batch_size=2, repeats=2)
    assert call["ms_per_volume"] * 2 == pytest.approx(call["ms_per_batch"])
    assert call["gflop_per_sample"] == pytest.approx(benchmark.forward_flops(net, (16, 16, 8)) / 1e9)
    assert call["params"] == net.count_params()


def test_bench_csv_round_trip(tmp_path):
    path = tmp_path / "bench.csv"
    row = {"kind": "infer", "device": "CPU (2 cores)", "samples_per_s": 12.3456789, "xla": False,
           "peak_device_mb": float("nan")}
    benchmark.append_bench([row, dict(row, kind="train")], path, command="python -m medseg_tf bench --quick")
    df = benchmark.read_bench(path)
    assert list(df.columns) == list(benchmark.BENCH_COLUMNS) and df["kind"].tolist() == ["infer", "train"]
    assert df["samples_per_s"].iloc[0] == pytest.approx(12.3457) and math.isnan(df["peak_device_mb"].iloc[0])
    with pytest.raises(ValueError, match="unknown bench column"):
        benchmark.append_bench({"speed": 1}, path)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="other columns"):
        benchmark.append_bench(row, other)
    with pytest.raises(DataError, match="not found"):
        benchmark.read_bench(tmp_path / "missing.csv")


@pytest.mark.slow
def test_bench_command_quick(tmp_path, capsys):
    from medseg_tf.cli import main

    out = tmp_path / "bench.csv"
    assert main(["bench", "--quick", "--dims", "3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "matmul peak" in printed and "appended 2 row(s)" in printed
    df = benchmark.read_bench(out)
    assert df["kind"].tolist() == ["train", "infer"] and (df["samples_per_s"] > 0).all()
    assert (df["peak_fraction"] > 0).all() and (df["matmul_peak_gflops"] > 0).all()
    assert df["command"].iloc[0].startswith("python -m medseg_tf")
    # end to end on the shipped ONNX model and two sample cases: Dice and agreement with the first model
    model = ROOT / "models" / "hippocampus_3d" / "model.onnx"
    assert main(["bench", "--quick", "--model", str(model), str(model), "--cases", "2", "--out", str(out),
                 "--no-progress"]) == 0
    df = benchmark.read_bench(out)
    assert len(df) == 4 and df["source"].iloc[2] == "onnx"
    assert df["dice_mean"].iloc[2] > 0.8 and df["agreement"].iloc[3] == 1.0


def test_bench_command_bad_input(tmp_path, capsys):
    from medseg_tf.cli import main

    assert main(["bench", "--model", str(tmp_path / "missing.onnx"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.onnx" in err and "not found" in err
    assert main(["bench", "--quick", "--out", str(tmp_path / "x.txt")]) == 1
    assert ".csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--precision", "float64"])


def test_a_precision_without_a_kernel_gives_an_error_row_and_old_files_gain_the_column(tmp_path):
    """float16 MaxPool3D has no CPU kernel: bench records that and goes on; older CSVs are upgraded in place."""
    import csv

    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU has the float16 kernel")
    rows = benchmark.bench(dims=[3], precisions=["mixed_float16"], quick=True, progress=False)
    assert rows and all("MaxPool3D" in row["error"] for row in rows)
    old = tmp_path / "old.csv"
    with old.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=benchmark.BENCH_COLUMNS[:-1])
        writer.writeheader()
        writer.writerow({"kind": "train", "dims": 3})
    benchmark.append_bench(rows, old)
    df = benchmark.read_bench(old)
    assert list(df.columns) == list(benchmark.BENCH_COLUMNS) and len(df) == 1 + len(rows)
    assert df["error"].isna().iloc[0] and df["error"].iloc[1:].str.contains("MaxPool3D").all()


def test_benchmark_report_prints_the_committed_rows(capsys):
    """benchmarks/report.py (the README's efficiency tables) reads the committed CSVs and computes its ratios."""
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.main() == 0
    out = capsys.readouterr().out
    rows = pd.read_csv(ROOT / "benchmarks" / "bench.csv")
    newest = rows[(rows["kind"] == "predict") & rows["e2e_ms_per_volume"].notna()]
    newest = newest[newest["date"] == newest["date"].max()]
    for r in newest.itertuples():
        assert f"| {r.model} | {r.source} | {r.precision} | {r.e2e_ms_per_volume:.1f} |" in out
    keras = pd.read_csv(ROOT / "benchmarks" / "side_by_side_keras.csv")
    torch = pd.read_csv(ROOT / "benchmarks" / "side_by_side_torch.csv").dropna(subset=["date"])
    k = keras[(keras["kind"] == "train") & (keras["dims"] == 3) & (keras["precision"] == "float32")
              & (keras["data"] == "synthetic")].tail(1)   # the newest measurement of each configuration
    t = torch[(torch["net"] == "3d_d4_f16_max64") & (torch["precision"] == "float32")].tail(1)
    ratio = float(k["samples_per_s"].iloc[0]) / float(t["samples_per_s"].iloc[0])
    assert f"| {ratio:.2f}x |" in out
    # the AVX2 side-by-side: every run, Keras run i against PyTorch run i
    keras = pd.read_csv(ROOT / "benchmarks" / "avx2_side_by_side_keras.csv")
    torch = pd.read_csv(ROOT / "benchmarks" / "avx2_side_by_side_torch.csv")
    runs = keras["date"].unique()
    assert len(runs) == (torch["net"] == "2d_d4_f16_ctx2").sum() >= 1
    k = keras[(keras["date"] == runs[-1]) & (keras["kind"] == "train") & (keras["dims"] == 2)
              & (keras["data"] != "synthetic")]
    t = torch[torch["net"] == "2d_d4_f16_ctx2"].iloc[-1]
    ratio = float(k["samples_per_s"].iloc[0]) / float(t["samples_per_s"])
    assert f"| {len(runs)} ({runs[-1]}) | 2D | {float(k['samples_per_s'].iloc[0]):.2f} |" in out
    assert f"| {ratio:.2f}x |" in out
