"""Every user error on the command line: one line naming the option or file, a non-zero exit, nothing written.

Runs ``medseg_tf.cli.main`` in-process (TensorFlow is imported once for the whole module).
"""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_tf import settings
from medseg_tf.cli import main

MODEL_3D = settings.MODELS_DIR / "hippocampus_3d"
SAMPLE = settings.hippocampus_sample_dir()


def run(capsys, *argv) -> tuple[int, list[str]]:
    """Exit code and the stderr lines of ``python -m medseg_tf ARGV`` (argparse exits are caught)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "%|" not in ln]
    return code, err


def one_line(err: list[str], *needles: str) -> str:
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def _set_first_voxel(path: Path, value: int) -> None:
    """Rewrite a label map with ``value`` in its first voxel (a label no dataset.json declares)."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = value
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


# ----------------------------------------------------------------------------- option values
@pytest.mark.parametrize("argv, flag", [
    (["train", "--data", "phantom", "--epochs", "0"], "--epochs"),
    (["train", "--data", "phantom", "--epochs", "-1"], "--epochs"),
    (["train", "--data", "phantom", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "phantom", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--data", "phantom", "--lr", "nan"], "--lr"),
    (["data", "phantom", "--out", "x", "--cases", "0"], "--cases"),
    (["data", "phantom", "--out", "x", "--seed", "-1"], "--seed"),
    (["data", "phantom", "--out", "x", "--cases", "1000000000"], "--cases"),
    (["evaluate", "--pred", "a", "--labels", "b", "--out", "c.csv", "--tolerance", "-1"], "--tolerance"),
    (["predict", "--model", "m", "--images", "i", "--out", "o", "--batch-size", "0"], "--batch-size"),
])
def test_impossible_numbers_are_refused_in_one_line(capsys, tmp_path, argv, flag):
    code, err = run(capsys, *argv)
    assert code == 2
    one_line(err, flag)


def test_patch_not_divisible_by_the_unet_names_the_option_and_writes_nothing(capsys, tmp_path, phantom_root):
    out = tmp_path / "run"
    code, err = run(capsys, "train", "--data", phantom_root, "--dims", "3", "--patch-size", 7, 7, 7, "--out", out)
    assert code == 1
    one_line(err, "--patch-size", "divisible by 2**depth = 16")
    assert not out.exists()


def test_bad_model_value_in_a_config_file(capsys, tmp_path, phantom_root):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": str(phantom_root), "dims": 2, "model": {"depth": "x"}}))
    code, err = run(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert code == 1
    one_line(err, "c.json", "depth must be an integer")
    assert not (tmp_path / "run").exists()


def test_train_on_bad_data_leaves_no_folder(capsys, tmp_path, phantom_root):
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    victim = sorted((data / "imagesTr").iterdir())[0]
    victim.write_bytes(b"not a nifti")
    out = tmp_path / "run"
    code, err = run(capsys, "train", "--data", data, "--dims", "2", "--epochs", 1, "--steps-per-epoch", 1,
                    "--out", out)
    assert code == 1
    one_line(err, victim.name)
    assert not out.exists()  # the corrected rerun is not blocked by litter


def test_second_writer_of_a_run_folder_is_refused(capsys, tmp_path, phantom_root):
    from medseg_tf.runfolder import lock_run_dir as _lock_run_dir

    out = tmp_path / "run"
    with _lock_run_dir(out):  # another training run holds the folder
        code, err = run(capsys, "train", "--data", phantom_root, "--dims", "2", "--epochs", 1,
                        "--steps-per-epoch", 1, "--out", out)
    assert code == 1
    one_line(err, str(out), "another training run")
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_unknown_task_and_malformed_md5(capsys, tmp_path):
    code, err = run(capsys, "data", "download", "Task99_Nope", "--out", tmp_path)
    assert code == 1
    one_line(err, "task", "Task99_Nope", "Task04_Hippocampus")
    code, err = run(capsys, "data", "download", "Task04_Hippocampus", "--out", tmp_path, "--md5", "xyz")
    assert code == 1
    one_line(err, "--md5", "32 hex digits")
    assert list(tmp_path.iterdir()) == []


def test_phantom_overwrite_keeps_what_it_did_not_write(capsys, tmp_path):
    out = tmp_path / "ph"
    assert main(["data", "phantom", "--out", str(out), "--cases", "1"]) == 0
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    code, err = run(capsys, "data", "phantom", "--out", out, "--cases", "1", "--overwrite")
    assert code == 1
    one_line(err, "notes.txt", "did not write")
    assert mine.read_text() == "the user's own file"


# ----------------------------------------------------------------------------- predict
@pytest.fixture
def images(tmp_path) -> Path:
    """Two real sample images in a folder of their own."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((SAMPLE / "imagesTr").iterdir())[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def test_predict_tta_on_a_model_trained_without_flips(capsys, tmp_path, images):
    out = tmp_path / "pred"
    code, err = run(capsys, "predict", "--model", MODEL_3D, "--images", images, "--out", out, "--tta")
    assert code == 1
    line = one_line(err, "--tta", "without flip augmentation")
    assert "config.json" not in line  # no advice that would make training refuse the file
    assert not out.exists()


def test_predict_refuses_an_output_that_is_an_input(capsys, images):
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    code, err = run(capsys, "predict", "--model", MODEL_3D, "--images", images, "--out", images, "--overwrite")
    assert code == 1
    one_line(err, "--out", "--images")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_predict_refuses_nan_and_wrong_channel_counts(capsys, tmp_path, images):
    path = sorted(images.iterdir())[0]
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    code, err = run(capsys, "predict", "--model", MODEL_3D, "--images", images, "--out", tmp_path / "p1")
    assert code == 1
    one_line(err, path.name, "NaN")
    assert not (tmp_path / "p1").exists()  # a failed predict leaves no empty output folder

    four_d = np.stack([np.nan_to_num(data)] * 2, axis=-1)
    nib.save(nib.Nifti1Image(four_d, img.affine), str(path))
    code, err = run(capsys, "predict", "--model", MODEL_3D, "--images", images, "--out", tmp_path / "p2")
    assert code == 1
    one_line(err, path.name, "2 channels", "model takes 1")


def test_predict_with_a_corrupt_model(capsys, tmp_path, images):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(MODEL_3D / "config.json", model / "config.json")
    (model / "model.keras").write_bytes((MODEL_3D / "model.keras").read_bytes()[:5000])
    code, err = run(capsys, "predict", "--model", model, "--images", images, "--out", tmp_path / "p")
    assert code == 1
    one_line(err, "model.keras", "cannot be read as a Keras model")


def test_predict_and_evaluate_warn_on_training_cases(capsys, tmp_path, images):
    model = tmp_path / "model"
    shutil.copytree(MODEL_3D, model)
    ids = sorted(p.name[: -len(".nii.gz")] for p in images.iterdir())
    (model / "split.json").write_text(json.dumps({"train": ids[:1], "val": ids[1:]}))
    out = tmp_path / "pred"
    code, err = run(capsys, "predict", "--model", model, "--images", images, "--out", out)
    assert code == 0
    one_line(err, "warning: 1 of 2 images are in the model's training split", ids[0])

    code, err = run(capsys, "evaluate", "--pred", out, "--labels", SAMPLE, "--out", tmp_path / "m.csv",
                    "--model", model)
    assert code == 0
    one_line(err, "warning: 1 of 2 predicted cases")


def test_predict_with_several_models_writes_their_ensemble(capsys, tmp_path, images):
    """``--model A B``: the mean of the members' probabilities, as ``predict_ensemble`` computes it."""
    from medseg_tf import io
    from medseg_tf.inference import load_run, predict_ensemble

    model_2d = settings.MODELS_DIR / "hippocampus_2d"
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--model", str(model_2d), str(MODEL_3D), "--images", str(images), "--out", str(out),
                 "--no-progress"]) == 0
    assert "with an ensemble of 2 models" in capsys.readouterr().out
    members = [load_run(model_2d), load_run(MODEL_3D)]
    singles = [load_run(MODEL_3D)]
    for path in sorted(images.iterdir()):
        written = np.asarray(io.load_nifti(out / path.name).data)
        expected, _ = predict_ensemble(members, path)
        np.testing.assert_array_equal(written, expected)
        alone, _ = predict_ensemble(singles, path)
        assert (written != alone).any()  # the 2D member counts


@pytest.mark.parametrize("extra, flag, needle", [
    (["--model", str(MODEL_3D), str(MODEL_3D)], "--model", "the same model twice"),
    (["--model", str(MODEL_3D), str(MODEL_3D / "model.onnx")], "--model", "run folders (Keras models) only"),
    (["--model", str(MODEL_3D), str(settings.MODELS_DIR / "hippocampus_2d"), "--temperature", "1.5"],
     "--temperature", "not to an ensemble of 2"),
])
def test_predict_refuses_ensembles_it_cannot_make(capsys, tmp_path, images, extra, flag, needle):
    out = tmp_path / "pred"
    code, err = run(capsys, "predict", "--images", images, "--out", out, *extra)
    assert code == 1
    one_line(err, flag, needle)
    assert not out.exists()


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture
def predictions(tmp_path) -> Path:
    """The sample's reference labels of two cases, used as a perfect prediction."""
    folder = tmp_path / "pred"
    folder.mkdir()
    for path in sorted((SAMPLE / "labelsTr").iterdir())[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def test_evaluate_takes_an_msd_folder_and_prints_units(capsys, tmp_path, predictions):
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(predictions), "--labels", str(SAMPLE), "--out",
                 str(tmp_path / "m.csv"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    hd95 = [ln for ln in out.splitlines() if " hd95 " in ln]
    assert hd95 and all(" mm " in ln for ln in hd95)
    dice = [ln for ln in out.splitlines() if " dice " in ln]
    assert dice and all("1.0000" in ln for ln in dice)


def test_evaluate_refuses_undeclared_labels(capsys, tmp_path, predictions):
    path = sorted(predictions.iterdir())[0]
    _set_first_voxel(path, 7)
    code, err = run(capsys, "evaluate", "--pred", predictions, "--labels", SAMPLE, "--out", tmp_path / "m.csv")
    assert code == 1
    one_line(err, path.name, "7", "outside the declared labels")
    assert not (tmp_path / "m.csv").exists()


def test_evaluate_never_replaces_a_prediction_with_csv(capsys, predictions):
    victim = sorted(predictions.iterdir())[0]
    before = victim.read_bytes()
    code, err = run(capsys, "evaluate", "--pred", predictions, "--labels", SAMPLE, "--out", victim, "--overwrite")
    assert code == 1
    one_line(err, "--out", ".csv")
    assert victim.read_bytes() == before


def test_unexpected_errors_are_one_line_without_traceback(capsys, monkeypatch, tmp_path):
    import medseg_tf.datasets

    def boom(_root):
        raise RuntimeError("something unexpected\nover two lines")

    monkeypatch.setattr(medseg_tf.datasets, "check_dataset", boom)
    code, err = run(capsys, "data", "check", tmp_path)
    assert code == 1
    one_line(err, "RuntimeError: something unexpected over two lines", "MEDSEG_DEBUG=1")


def test_extraction_killed_midway_leaves_no_litter_after_the_next_run(tmp_path):
    import io as _io
    import subprocess
    import sys
    import tarfile

    from medseg_tf.download import _extract_to_temp

    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"x" * 10
        info = tarfile.TarInfo("Task/file.txt")
        info.size = len(data)
        tar.addfile(info, _io.BytesIO(data))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "out" / f".a.tar.extracting-{int(dead.stdout)}-abc"  # a killed run's folder
    stale.mkdir(parents=True)
    tmp = _extract_to_temp(archive, tmp_path / "out", prefix="a.tar")
    assert not stale.exists() and (tmp / "Task" / "file.txt").read_bytes() == data


def test_train_without_data_or_config(capsys):
    code, err = run(capsys, "train")
    assert code == 1
    one_line(err, "give --config FILE.json, or --data")


# ----------------------------------------------------------------------------- files where folders belong, and back
MODEL_2D = settings.MODELS_DIR / "hippocampus_2d"


@pytest.mark.parametrize("model", [MODEL_3D, MODEL_3D / "model.onnx"], ids=["keras", "onnx"])
def test_predict_names_the_file_of_a_2d_image_and_of_wrong_channels(capsys, tmp_path, images, model):
    path = sorted(images.iterdir())[0]
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(data[:, :, 10], img.affine), str(path))
    code, err = run(capsys, "predict", "--model", model, "--images", images, "--out", tmp_path / "p1")
    assert code == 1
    one_line(err, path.name, "expected a 3D image")
    assert not (tmp_path / "p1").exists()  # a failed predict leaves no empty output folder

    nib.save(nib.Nifti1Image(np.stack([data] * 2, axis=-1), img.affine), str(path))
    code, err = run(capsys, "predict", "--model", model, "--images", images, "--out", tmp_path / "p2")
    assert code == 1
    one_line(err, path.name, "2 channels", "takes 1")
    assert not (tmp_path / "p2").exists()


def test_predict_given_the_model_file_asks_for_its_run_folder(capsys, tmp_path, images):
    code, err = run(capsys, "predict", "--model", MODEL_3D / "model.keras", "--images", images,
                    "--out", tmp_path / "p")
    assert code == 1
    one_line(err, "--model", "model.keras", "run folder")


@pytest.mark.parametrize("argv_of", [
    lambda f, tmp: ["data", "check", f],
    lambda f, tmp: ["predict", "--model", MODEL_3D, "--images", f, "--out", tmp / "p"],
    lambda f, tmp: ["course", "--student", f],
    lambda f, tmp: ["site", f],
], ids=["data-check", "predict-images", "course-student", "site"])
def test_a_file_where_a_folder_belongs_is_named(capsys, tmp_path, argv_of):
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    code, err = run(capsys, *argv_of(victim, tmp_path))
    assert code == 1
    one_line(err, "notes.txt", "not a")
    assert victim.read_text() == "mine"


def test_evaluate_model_must_be_a_run_folder(capsys, tmp_path, predictions):
    for model in (tmp_path / "missing", MODEL_3D / "model.onnx"):
        code, err = run(capsys, "evaluate", "--pred", predictions, "--labels", SAMPLE, "--out",
                        tmp_path / "m.csv", "--model", model)
        assert code == 1
        one_line(err, "--model", "split.json")
    assert not (tmp_path / "m.csv").exists()


def test_evaluate_without_dataset_json_says_which_labels_it_scored(capsys, tmp_path, predictions):
    labels = tmp_path / "labels"
    shutil.copytree(predictions, labels)
    path = sorted(labels.iterdir())[0]
    _set_first_voxel(path, 7)
    code, err = run(capsys, "evaluate", "--pred", predictions, "--labels", labels, "--out", tmp_path / "m.csv",
                    "--no-progress")
    assert code == 0
    one_line(err, "no dataset.json", "label_1, label_2, label_7")


def test_declared_labels_are_listed_once(capsys, tmp_path, predictions):
    path = sorted(predictions.iterdir())[0]
    _set_first_voxel(path, 3)
    code, err = run(capsys, "evaluate", "--pred", predictions, "--labels", SAMPLE, "--out", tmp_path / "m.csv")
    assert code == 1
    one_line(err, path.name, "declared labels {0, 1, 2} of dataset.json")


def test_course_only_without_a_match_names_the_option(capsys, tmp_path):
    code, err = run(capsys, "course", "--only", "99", "--student", tmp_path / "student")
    assert code == 1
    one_line(err, "--only", "'99'")
    assert not (tmp_path / "student").exists()


def test_cv_refuses_a_folder_of_other_files(capsys, tmp_path, phantom_root):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    code, err = run(capsys, "cv", "--data", phantom_root, "--dims", "2", "--epochs", "1", "--out", folder)
    assert code == 1
    one_line(err, "thesis.tex", "--overwrite")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_refused_training_leaves_no_lock_file(capsys, tmp_path, phantom_root):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    code, err = run(capsys, "train", "--data", phantom_root, "--dims", "2", "--epochs", "1", "--out", folder)
    assert code == 1
    one_line(err, "holds no run")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_export_options_that_do_not_apply_and_the_litert_config_file(capsys, tmp_path):
    code, err = run(capsys, "export", "--model", MODEL_2D, "--format", "onnx", "--int8", "--out", tmp_path / "m.onnx")
    assert code == 1
    one_line(err, "--int8", "--format litert")
    code, err = run(capsys, "export", "--model", MODEL_2D, "--format", "litert", "--calibration-cases", "4",
                    "--out", tmp_path / "m.tflite")
    assert code == 1
    one_line(err, "--calibration-cases", "--int8")
    sidecar = tmp_path / "m.tflite.json"
    sidecar.write_text("mine")
    code, err = run(capsys, "export", "--model", MODEL_2D, "--format", "litert", "--out", tmp_path / "m.tflite")
    assert code == 1
    one_line(err, "m.tflite.json", "--overwrite")
    assert sidecar.read_text() == "mine" and not (tmp_path / "m.tflite").exists()


def test_download_url_must_be_a_url(capsys, tmp_path):
    code, err = run(capsys, "data", "download", "Task04_Hippocampus", "--out", tmp_path, "--url", "notaurl")
    assert code == 1
    one_line(err, "--url", "http://")


@pytest.mark.parametrize("argv, needles", [
    (["bench", "--cases", "3"], ["--cases", "--model"]),
    (["bench", "--images", "x"], ["--images", "--model"]),
    (["cv", "--data", "phantom", "--dims", "2", "--val-fraction", "0.5"], ["--val-fraction", "--folds"]),
    (["course", "--student", "s", "--update"], ["--student", "--update"]),
    (["train", "--data", "phantom", "--dims", "2", "--depth", "7"], ["patch_size", "smaller model depth"]),
])
def test_options_that_do_not_apply_or_do_not_fit(capsys, tmp_path, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *argv)
    assert code == 1
    one_line(err, *needles)
    assert not any(tmp_path.iterdir())


def test_bench_refuses_a_csv_of_other_columns_before_measuring(capsys, tmp_path, monkeypatch):
    import medseg_tf.benchmark

    def measured(**_):
        raise AssertionError("bench measured before checking --out")

    monkeypatch.setattr(medseg_tf.benchmark, "bench", measured)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    code, err = run(capsys, "bench", "--quick", "--out", other)
    assert code == 1
    one_line(err, "other.csv", "other columns")
    assert other.read_text() == "a,b\n1,2\n"


def test_a_killed_phantom_run_leaves_no_temporary_folder(tmp_path):
    """SIGTERM (``kill``) stops a command as Ctrl-C does: the half-written hidden folder is removed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "phantom"
    proc = subprocess.Popen([sys.executable, "-m", "medseg_tf", "data", "phantom", "--out", str(out),
                             "--cases", "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MEDSEG_DEBUG": ""})
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".phantom.") and any(p.rglob("*.nii.gz")) for p in tmp_path.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the phantom writer never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed assertion above: stop the writer
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_main_puts_the_sigterm_handler_back(capsys, tmp_path):
    """In-process callers (these tests, a notebook) keep their own SIGTERM handler after ``main``."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    code, _ = run(capsys, "data", "phantom", "--out", tmp_path / "p", "--cases", 1)  # returns normally
    assert code == 0 and signal.getsignal(signal.SIGTERM) is before
    code, _ = run(capsys, "data", "phantom", "--out", tmp_path / "p", "--cases", 1)  # refused: folder exists
    assert code == 1 and signal.getsignal(signal.SIGTERM) is before
