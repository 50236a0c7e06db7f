"""Tests of medseg_tf.export, medseg_tf.onnx_predict and the export / ONNX predict commands (tiny models)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from medseg_tf import export, io, settings  # noqa: E402
from medseg_tf.cli import main  # noqa: E402
from medseg_tf.errors import DataError, MedsegError  # noqa: E402
from medseg_tf.onnx_predict import OnnxModel, predict_folder_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# A sitecustomize-free blocker: the child process cannot import TensorFlow, Keras or JAX.
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def _run_folder(path: Path, dims: int, *, fixed=None, context: int = 0) -> Path:
    """A run folder with a tiny, seeded, untrained U-Net and its config."""
    import keras

    from medseg_tf.models import unet

    keras.utils.set_random_seed(0)
    channels = 2 * context + 1
    shape = tuple(fixed) if fixed else (None,) * dims
    model = unet((*shape, channels), 3, depth=2, base_filters=4)
    path.mkdir(parents=True)
    model.save(path / "model.keras")
    config = {"dims": dims, "data": "phantom", "model": {"depth": 2, "base_filters": 4}, "slice_axis": 2,
              "context_slices": context, "patch_size": None, "augment": {"flips": False}}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory):
    """A tiny 3D run folder and its ONNX export, written by `python -m medseg_tf export`."""
    run = _run_folder(tmp_path_factory.mktemp("tiny3d") / "run", 3)
    onnx_path = run.parent / "model.onnx"
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(onnx_path)]) == 0
    return run, onnx_path


def _fixed_shape_onnx(path: Path, shape=(1, 8, 8, 8, 1)) -> Path:
    """An ONNX model with a fixed input shape (identity to 1 channel + zeros to 3 classes), with a 3D config."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [*shape[:-1], 3])
    pads = helper.make_node("Concat", ["image", "image", "image"], ["probs"], axis=-1)
    model = helper.make_model(helper.make_graph([pads], "fixed", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    entry = model.metadata_props.add()
    entry.key, entry.value = "medseg_config", json.dumps({"dims": 3, "model": {"depth": 2}})
    onnx.save(model, str(path))
    return path


def _images(root: Path, n: int):
    files = sorted((root / "imagesTr").glob("*.nii.gz"))[:n]
    return files, [root / "labelsTr" / f.name for f in files]


def _agreement(a_dir: Path, b_dir: Path) -> float:
    same = total = 0
    for f in sorted(a_dir.glob("*.nii.gz")):
        a, b = io.load_nifti(f).data, io.load_nifti(b_dir / f.name).data
        same += int(np.sum(a == b))
        total += a.size
    return same / total


def test_onnx_export_carries_config_and_matches_keras(tiny3d, phantom_root, tmp_path):
    from medseg_tf.inference import predict_folder

    run, onnx_path = tiny3d
    model = OnnxModel(onnx_path)
    assert model.config["dims"] == 3 and model.input_shape[-1] == 1 and model.fixed_spatial is None
    images = tmp_path / "images"
    images.mkdir()
    for f in _images(phantom_root, 2)[0]:
        (images / f.name).symlink_to(f)
    predict_folder(run, images, tmp_path / "keras", progress=False)
    table = predict_folder_onnx(onnx_path, images, tmp_path / "onnx", progress=False)
    assert len(table) == 2 and (table["seconds"] > 0).all()
    assert _agreement(tmp_path / "keras", tmp_path / "onnx") >= 0.999
    # the same probabilities, not only the same labels
    x = np.random.default_rng(0).standard_normal((1, 16, 24, 8, 1)).astype(np.float32)
    import keras

    ref = keras.saving.load_model(run / "model.keras").predict_on_batch(x)
    np.testing.assert_allclose(model.predict_batch(x), ref, atol=1e-4)


@pytest.mark.slow
def test_saved_model_and_compare_exports(tiny3d, phantom_root, tmp_path):
    run, onnx_path = tiny3d
    saved = export.export_model(run, "saved_model", tmp_path / "sm")
    assert (saved / "saved_model.pb").is_file() and json.loads((saved / "config.json").read_text())["dims"] == 3
    images, labels = _images(phantom_root, 1)
    table = export.compare_exports({"keras": run, "saved_model": saved}, images, labels, progress=False)
    assert list(table["format"]) == ["keras", "saved_model"]
    assert (table["agreement"] >= 0.999).all()
    assert (table["size_mb"] > 0).all() and (table["ms_per_volume"] > 0).all()
    assert {"dice_1", "dice_2"} <= set(table.columns)
    # the same labels give the same Dice
    np.testing.assert_allclose(table["dice_1"], table["dice_1"].iloc[0], atol=2e-3)


@pytest.mark.slow
def test_litert_2d_float32_and_int8(phantom_root, tmp_path):
    run = _run_folder(tmp_path / "run2d", 2, context=1)
    images, _ = _images(phantom_root, 2)
    from medseg_tf.sliding import prepare_image

    config = json.loads((run / "config.json").read_text())
    calib = export.calibration_samples(config, [prepare_image(io.load_nifti(f), config)[0] for f in images], n=6)
    assert len(calib) == 6 and calib[0].shape[0] == 1 and calib[0].shape[-1] == 3
    assert all(s % 4 == 0 for s in calib[0].shape[1:3])
    paths = {"keras": run}
    for quantize in (None, "int8"):  # float16 takes the same converter path
        out = tmp_path / f"m_{quantize}.tflite"
        export.export_model(run, "litert", out, quantize=quantize, calibration=calib if quantize else None)
        assert out.is_file() and out.with_name(out.name + ".json").is_file()
        paths[str(quantize)] = out
    ops = dict(export.litert_op_types(paths["int8"]))
    assert ops.get("CONV_2D") == "int8"
    assert dict(export.litert_op_types(paths["None"])).get("CONV_2D") == "float32"
    table = export.compare_exports(paths, images[:1], progress=False).set_index("model")
    assert table.loc["None", "agreement"] >= 0.999
    assert table.loc["int8", "agreement"] > 0.5  # runs and mostly agrees; its accuracy is measured, not assumed
    assert table.loc["int8", "size_mb"] < table.loc["None", "size_mb"]


def test_export_refusals(tiny3d, tmp_path):
    run, _ = tiny3d
    with pytest.raises(export.ExportError, match="3D model cannot be exported to LiteRT"):
        export.export_model(run, "litert", tmp_path / "m.tflite")
    with pytest.raises(MedsegError, match="format"):
        export.export_model(run, "tflite", tmp_path / "m.tflite")
    with pytest.raises(MedsegError, match="only available with --format litert"):
        export.export_model(run, "onnx", tmp_path / "m.onnx", quantize="int8")
    with pytest.raises(MedsegError, match=r"\.onnx"):
        export.export_model(run, "onnx", tmp_path / "m.bin")
    with pytest.raises(DataError, match="not found"):
        export.export_model(tmp_path / "missing", "onnx", tmp_path / "m.onnx")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.keras").write_bytes(b"not a zip")
    (bad / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"model\.keras: .*Keras"):
        export.export_model(bad, "onnx", tmp_path / "m.onnx")


def test_exports_need_their_config_and_read_it_with_file_names(tiny3d, tmp_path):
    import shutil

    run, _ = tiny3d
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "model.keras", bare / "model.keras")   # a .keras file without config.json beside it
    with pytest.raises(DataError, match=r"config.json: not found; an export carries the training config"):
        export.export_model(bare / "model.keras", "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"")
    for text, problem in (("{oops", "malformed JSON"), ("[1, 2]", "expected a JSON object"),
                          ('{"dims": 7}', "dims")):
        (tmp_path / "m.tflite.json").write_text(text)
        with pytest.raises(DataError, match=rf"m.tflite.json: .*{problem}"):
            export.load_predictor(tflite)


@pytest.mark.slow
def test_compare_exports_resamples_back_like_predict(tiny3d, phantom_root, tmp_path):
    """A run that trains on another spacing predicts on it and is scored on the label's own grid."""
    import shutil

    from medseg_tf.inference import predict_folder

    run, _ = tiny3d
    resampled = tmp_path / "run"
    shutil.copytree(run, resampled)
    config = json.loads((resampled / "config.json").read_text())
    (resampled / "config.json").write_text(json.dumps({**config, "target_spacing": [1.5, 1.5, 1.5]}))
    images, labels = _images(phantom_root, 1)
    table = export.compare_exports({"keras": resampled}, images, labels, progress=False)
    assert {"dice_1", "dice_2"} <= set(table.columns)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / images[0].name).symlink_to(images[0])
    predict_folder(resampled, folder, tmp_path / "pred", progress=False)
    ref = io.load_nifti(labels[0]).data
    pred = io.load_nifti(tmp_path / "pred" / images[0].name).data
    from medseg_tf.metrics import dice

    assert table["dice_1"].iloc[0] == pytest.approx(dice(pred == 1, ref == 1), abs=1e-6)


def test_cli_export_one_line_errors_and_no_overwrite(tiny3d, tmp_path, capsys):
    run, _ = tiny3d
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the user's file")
    before = out.stat().st_mtime_ns
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert out.stat().st_mtime_ns == before and out.read_bytes() == b"the user's file"
    assert main(["export", "--model", str(run), "--format", "litert", "--out", str(tmp_path / "x.tflite")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run) in err and "LiteRT" in err
    assert main(["export", "--model", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "y.onnx")]) == 1
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(run), "--format", "pt", "--out", str(tmp_path / "z.pt")])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_onnx_bad_inputs(tmp_path, phantom_root, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="not a readable ONNX model"):
        OnnxModel(corrupt)
    with pytest.raises(DataError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")
    # a model exported with a fixed input shape that does not fit the volume
    fixed = _fixed_shape_onnx(tmp_path / "fixed.onnx")
    model = OnnxModel(fixed)
    assert model.fixed_spatial == (8, 8, 8)
    with pytest.raises(DataError, match="does not fit"):
        model.predict_batch(np.zeros((1, 16, 16, 16, 1), np.float32))
    images = tmp_path / "images"
    images.mkdir()
    (images / "case.nii.gz").symlink_to(_images(phantom_root, 1)[0][0])
    # a fixed spatial size becomes the sliding window: the 8^3 model labels the whole phantom volume
    rc = main(["predict", "--model", str(fixed), "--images", str(images), "--out", str(tmp_path / "p"),
               "--no-progress"])
    assert rc == 0 and (tmp_path / "p" / "case.nii.gz").is_file()
    # two input channels cannot take a one-channel image
    two = _fixed_shape_onnx(tmp_path / "two_channels.onnx", shape=(1, 8, 8, 8, 2))
    rc = main(["predict", "--model", str(two), "--images", str(images), "--out", str(tmp_path / "q"),
               "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two_channels.onnx" in err and "does not fit" in err
    assert not (tmp_path / "q" / "case.nii.gz").exists()
    with pytest.raises(MedsegError, match="tta"):
        predict_folder_onnx(fixed, images, tmp_path / "r", tta=True)


def test_onnx_predict_runs_without_tensorflow(tiny3d, phantom_root, tmp_path):
    """`predict --model X.onnx` in a process where importing TensorFlow, Keras or JAX fails."""
    _, onnx_path = tiny3d
    images = tmp_path / "images"
    images.mkdir()
    (images / "case.nii.gz").symlink_to(_images(phantom_root, 1)[0][0])
    out = tmp_path / "pred"
    code = BLOCKER + f"""
from medseg_tf.cli import main
rc = main(["predict", "--model", {str(onnx_path)!r}, "--images", {str(images)!r}, "--out", {str(out)!r},
           "--no-progress"])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax"))
print("RC", rc, "LEAKED", leaked)
try:
    import tensorflow
    print("TF IMPORTABLE")
except ImportError:
    print("TF BLOCKED")
"""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RC 0 LEAKED []" in done.stdout and "TF BLOCKED" in done.stdout, done.stdout + done.stderr[-2000:]
    assert (out / "case.nii.gz").is_file()


@pytest.mark.parametrize("name", ["hippocampus_3d", "hippocampus_2d"])
def test_shipped_onnx_models_reproduce_keras_labels(name, tmp_path):
    """The committed models/*/model.onnx give the Keras model's labels on 2 real sample cases."""
    from medseg_tf.inference import predict_folder

    model_dir = settings.MODELS_DIR / name
    onnx_path = model_dir / "model.onnx"
    assert onnx_path.is_file(), f"{onnx_path} missing: python -m medseg_tf export --model {model_dir} --format onnx"
    assert onnx_path.stat().st_size < 10e6
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((settings.hippocampus_sample_dir() / "imagesTr").glob("*.nii.gz"))[:2]:
        (images / f.name).symlink_to(f)
    predict_folder(model_dir, images, tmp_path / "keras", progress=False)
    predict_folder_onnx(onnx_path, images, tmp_path / "onnx", progress=False)
    assert _agreement(tmp_path / "keras", tmp_path / "onnx") >= 0.999


def test_a_bfloat16_run_predicts_and_exports_in_float32(tmp_path):
    """A run trained under mixed_bfloat16 (the CPU default where bfloat16 is native) keeps float32 weights:
    load_run and the exports give the float32 network with those weights."""
    import keras

    from medseg_tf.inference import load_run
    from medseg_tf.models import unet

    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        bf16 = unet((None, None, None, 1), 3, depth=2, base_filters=4)
    finally:
        keras.config.set_dtype_policy(previous)
    assert bf16.layers[1].compute_dtype == "bfloat16"
    run = tmp_path / "run"
    run.mkdir()
    bf16.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dims": 3, "data": "phantom", "model": {"depth": 2,
                                                  "base_filters": 4}, "patch_size": None}))
    model, _ = load_run(run)
    assert {layer.compute_dtype for layer in model.layers if layer.weights} == {"float32"}
    f32 = unet((None, None, None, 1), 3, depth=2, base_filters=4)
    f32.set_weights(bf16.get_weights())
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict_on_batch(x), f32.predict_on_batch(x), atol=1e-5)
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    np.testing.assert_allclose(OnnxModel(tmp_path / "m.onnx").predict_batch(x), f32.predict_on_batch(x), atol=1e-4)
