"""Command line and the notebook runner."""

import os
import subprocess
import sys

import pytest

from medseg_tf.cli import main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("course", "data"):
        assert command in out


def test_data_phantom_and_check(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["data", "phantom", "--out", str(out), "--cases", "3", "--seed", "2"]) == 0
    assert main(["data", "check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 of 3 cases OK" in printed and "phantom_002" in printed
    # a second write refuses to overwrite; one clear line, exit code 1
    assert main(["data", "phantom", "--out", str(out), "--cases", "3"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_data_check_reports_bad_cases(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    out = tmp_path / "ph"
    main(["data", "phantom", "--out", str(out), "--cases", "2"])
    lab = out / "labelsTr" / "phantom_001.nii.gz"
    img = nib.load(str(lab))
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, img.affine), str(lab))
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 cases OK" in captured.out
    assert "phantom_001.nii.gz" in captured.err and "[9]" in captured.err


def test_data_check_missing_folder_one_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data set folder not found" in err[0]


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "medseg_tf", "data", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "phantom" in result.stdout


def test_importing_medseg_tf_turns_on_onednn_unless_the_user_chose():
    code = "import os, medseg_tf; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    for given, expected in ((None, "1"), ("0", "0"), ("1", "1")):
        if given is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = given
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert result.stdout.strip() == expected, (given, result.stderr)


def test_importing_medseg_tf_after_tensorflow_warns_when_onednn_is_off():
    code = ("import warnings, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port as port\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    import medseg_tf\n"
            "print(not port.IsMklEnabled(), any('oneDNN' in str(w.message) for w in seen))")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    off, warned = result.stdout.split()[-2:]
    assert off == warned, result.stdout + result.stderr   # warns exactly when TensorFlow left oneDNN off


def test_numpy_layers_do_not_import_tensorflow():
    code = ("import sys, medseg_tf.settings, medseg_tf.errors, medseg_tf.io, medseg_tf.datasets, "
            "medseg_tf.phantom, medseg_tf.preprocessing, medseg_tf.download, medseg_tf.metrics, "
            "medseg_tf.postprocessing, medseg_tf.convolution, medseg_tf.plots, medseg_tf.cli, medseg_tf.runspec, "
            "medseg_tf.sources, medseg_tf.sliding, medseg_tf.onnx_predict, medseg_tf.uncertainty, medseg_tf.regions, "
            "medseg_tf.images2d, medseg_tf.phantoms, medseg_tf.phantom_ct, medseg_tf.phantom_brain, "
            "medseg_tf.phantom_fundus, medseg_tf.itk, medseg_tf.diagrams; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
