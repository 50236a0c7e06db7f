"""Notebooks on the real data (nbval runs every notebook on the phantom in quick mode)."""

import os
import re

import nbformat
import pytest

from medseg_tf.course import NOTEBOOKS_DIR, execute_notebook, list_notebooks


def test_notebooks_are_numbered_in_order():
    names = [p.name for p in list_notebooks()]
    assert names[:2] == ["00_setup.ipynb", "01_medical_images_and_preprocessing.ipynb"]
    assert len({n[:2] for n in names}) == len(names)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_medical_images_and_preprocessing.ipynb"])
def test_notebook_runs_on_real_hippocampus(name, hippocampus_root):
    seconds = execute_notebook(NOTEBOOKS_DIR / name, write=False,
                               env={"MEDSEG_DATASET": "hippocampus", "MEDSEG_QUICK": "1",
                                    "MEDSEG_HIPPOCAMPUS_DIR": str(hippocampus_root)})
    assert seconds > 0


def test_runner_reports_failing_cell(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('boom here')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_fail.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    with pytest.raises(RuntimeError, match="boom here") as info:
        execute_notebook(path)
    assert "raise ValueError" in str(info.value)  # the failing cell's source is shown
    assert path.read_text() == before  # a failed run does not overwrite the notebook


MACHINE_PATH = re.compile(r"(?:^|[\s'\"(=:])(/(?:home|root|tmp|work|Users|mnt|var|private|opt)/[^\s'\")]*)")
TF_LOG_LINE = re.compile(r"^(?:[IWEF]0000 |WARNING: All log messages before absl)", re.M)


@pytest.mark.parametrize("book", list_notebooks(), ids=lambda p: p.stem)
def test_committed_outputs_show_no_machine_paths_or_tf_logs(book):
    """Outputs are read on the web: no absolute machine paths (print settings.display_path), no C++ logs."""
    nb = nbformat.read(book, as_version=4)
    problems = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = out.get("text", "") + "".join(
                v if isinstance(v, str) else "".join(v)
                for k, v in out.get("data", {}).items() if k.startswith("text/"))
            problems += [f"cell {index}: path {m}" for m in MACHINE_PATH.findall(text)]
            problems += [f"cell {index}: TensorFlow log line" for _ in TF_LOG_LINE.finditer(text)]
            # a progress widget is saved empty (0 % on the web): the runner draws bars as text lines
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                problems.append(f"cell {index}: progress widget")
            if out.get("output_type") == "stream" and "\r" in out.get("text", ""):
                problems.append(f"cell {index}: carriage-return redraws")
    assert not problems, f"{book.name}: " + "; ".join(problems[:5])


@pytest.mark.parametrize("book", list_notebooks(), ids=lambda p: p.name)
def test_notebooks_import_medseg_tf_before_tensorflow(book):
    """TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when imported: medseg_tf must set it first."""
    code = "\n".join(c.source for c in nbformat.read(book, as_version=4).cells if c.cell_type == "code")
    tf_import = re.search(r"^\s*(import (keras|tensorflow)|from (keras|tensorflow)[. ])", code, re.M)
    ours = re.search(r"^\s*(import medseg_tf|from medseg_tf[. ])", code, re.M)
    if tf_import is not None:
        assert ours is not None and ours.start() < tf_import.start(), book.name
