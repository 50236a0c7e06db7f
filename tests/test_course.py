"""The course runner (output folder, progress, paths, times) and the student versions."""

import csv
import hashlib
import io
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from medseg_tf import course, settings

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}

# a notebook that does what the course notebooks do: print the settings, save a figure, write a run
FIGURE_CELL = """from pathlib import Path
from medseg_tf import settings
print(settings.describe())
(settings.figures_dir() / "00_fake_figure.png").write_bytes(b"png")
print("saved", settings.display_path(settings.figures_dir() / "00_fake_figure.png"))"""


def _notebook(path: Path, *cells) -> Path:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = KERNEL
    nbformat.write(nb, path)
    return path


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fake_notebooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fake_course") / "notebooks"
    folder.mkdir()
    _notebook(folder / "00_first.ipynb", new_markdown_cell("# First"), new_code_cell(FIGURE_CELL))
    _notebook(folder / "01_second.ipynb",
              new_code_cell("import time\nfor epoch in range(2):\n    print(f'epoch {epoch + 1}/2')\n"
                            "    time.sleep(0.2)"),
              new_code_cell("import os\nprint(os.environ['MEDSEG_QUICK'], os.environ['MEDSEG_DATA_DIR'])"))
    return folder


@pytest.mark.slow
def test_course_writes_only_to_its_output_folder(fake_notebooks, tmp_path, monkeypatch):
    before = _tree(fake_notebooks)
    repo_figure = settings.REPO_ROOT / "figures" / "00_fake_figure.png"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDSEG_DATA_DIR", "relative_data")  # typed relative to where the command runs
    log = io.StringIO()
    out = tmp_path / "out"
    code = course.run_course(quick=True, folder=fake_notebooks, out=out,
                             progress=course.Progress(log, live=False, min_cell_seconds=0, heartbeat_seconds=0))
    assert code == 0
    assert _tree(fake_notebooks) == before  # the source notebooks are untouched, nothing written beside them
    assert not repo_figure.exists()
    assert sorted(_tree(out)) == ["figures/00_fake_figure.png", "notebooks/00_first.ipynb",
                                  "notebooks/01_second.ipynb", "times.csv"]
    executed = nbformat.read(out / "notebooks" / "01_second.ipynb", as_version=4)
    quick, data_dir = executed.cells[1].outputs[0]["text"].split()
    assert quick == "1"
    assert Path(data_dir) == tmp_path / "relative_data"  # resolved from where the command was typed
    first = nbformat.read(out / "notebooks" / "00_first.ipynb", as_version=4)
    assert [c.execution_count for c in first.cells if c.cell_type == "code"] == [1]
    with open(out / "times.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["notebook"] for r in rows] == ["00_first", "01_second"]
    assert all(float(r["seconds"]) > 0 and r["mode"] == "quick" for r in rows)
    assert [r["code_cells"] for r in rows] == ["1", "2"] and int(rows[0]["teaching_minutes"]) >= 5
    text = log.getvalue()  # progress: each cell, the notebook's latest line, elapsed time
    assert "[1/2] 00_first (1 code cells)" in text
    assert "cell 1/1 took" in text and "epoch 2/2" in text
    assert "[2/2] 01_second  done" in text


@pytest.mark.slow
def test_course_update_writes_in_place_and_figures_per_dataset(fake_notebooks, tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "00_first.ipynb").write_bytes((fake_notebooks / "00_first.ipynb").read_bytes())
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(course, "DEFAULT_OUT", tmp_path / "build" / "course")
    monkeypatch.setenv("MEDSEG_DATASET", "hippocampus")
    code = course.run_course(quick=True, folder=folder, update=True,
                             progress=course.Progress(io.StringIO(), live=False))
    assert code == 0
    executed = nbformat.read(folder / "00_first.ipynb", as_version=4)
    assert executed.cells[1].execution_count == 1
    # real-data figures go to figures/hippocampus/, never over the phantom's figures/
    assert (tmp_path / "figures" / "hippocampus" / "00_fake_figure.png").is_file()
    assert not (tmp_path / "figures" / "00_fake_figure.png").exists()
    assert (tmp_path / "build" / "course" / "hippocampus" / "times.csv").is_file()


def test_figures_are_kept_per_dataset(monkeypatch):
    monkeypatch.delenv("MEDSEG_FIGURES_DIR", raising=False)
    monkeypatch.setenv("MEDSEG_DATASET", "phantom")
    assert settings._figures_path() == settings.REPO_ROOT / "figures"
    monkeypatch.setenv("MEDSEG_DATASET", "hippocampus")
    assert settings._figures_path() == settings.REPO_ROOT / "figures" / "hippocampus"
    assert "figures_dir=figures/hippocampus" in settings.describe()  # relative to the repository


def test_resolve_env_paths(tmp_path):
    env = {"MEDSEG_DATA_DIR": "data2", "MEDSEG_RUNS_DIR": "/abs/runs", "MEDSEG_QUICK": "1", "OTHER_DIR": "x",
           "MEDSEG_FIGURES_DIR": ""}
    resolved = course.resolve_env_paths(env, cwd=tmp_path)
    assert resolved == {**env, "MEDSEG_DATA_DIR": str(tmp_path / "data2")}


def test_progress_redraws_one_line_on_a_terminal():
    log = io.StringIO()
    progress = course.Progress(log, live=True)
    progress.prefix = "[1/1] "
    progress.start("00_x", 2)
    progress.cell_started(1)
    progress.output_line("epoch 1/3  loss 0.5")
    progress.cell_finished(1)
    progress.finish(1.5)
    text = log.getvalue()
    assert text.count("\n") == 1 and text.endswith("[1/1] 00_x  done  1.5 s\n")
    assert "cell 1/2" in text and "epoch 1/3  loss 0.5" in text


# --------------------------------------------------------------------------- student versions

EXERCISE = [
    new_code_cell("x = 2"),
    new_markdown_cell("**Exercise.** Square `x`."),
    new_code_cell("square = x ** 2\nprint(square)", metadata={"tags": ["solution"]}),
    new_code_cell("print(x + 1)"),
]


def test_notebook_stats_and_teaching_estimate():
    nb = new_notebook(cells=[c.copy() for c in EXERCISE])
    assert course.notebook_stats(nb) == {"code_cells": 3, "words": 3, "exercises": 1}
    assert course.teaching_minutes(words=1000, exercises=2, run_seconds=90) == 35  # 10 + 20 + 1.5, rounded up
    assert course.teaching_minutes(words=0, exercises=0, run_seconds=1) == 5


def test_student_version_drops_solutions_and_outputs():
    nb = new_notebook(cells=[c.copy() for c in EXERCISE])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    nb.cells[0].execution_count = 1
    student = course.student_version(nb)
    assert [c.source for c in student.cells] == ["x = 2", "**Exercise.** Square `x`.", "print(x + 1)"]
    assert student.cells[0].outputs == [] and student.cells[0].execution_count is None
    assert len(nb.cells) == 4  # the original is not modified


def test_solution_dependencies_finds_names_only_a_solution_sets():
    nb = new_notebook(cells=[c.copy() for c in EXERCISE] + [new_code_cell("print(square)")])
    assert course.solution_dependencies(nb) == ["cell 4 reads 'square', last set by solution cell 2"]
    # rebinding a name the later cells use is a dependency too; a later non-solution binding ends it
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("x = 5", metadata={"tags": ["solution"]}),
                             new_code_cell("%matplotlib inline\ny = x\nx = 3"), new_code_cell("print(x, y)"),
                             new_code_cell("def f(x):\n    return x")])
    assert course.solution_dependencies(nb) == ["cell 2 reads 'x', last set by solution cell 1"]


def test_write_student_versions_refuses_to_overwrite(fake_notebooks, tmp_path):
    from medseg_tf.errors import OverwriteError

    written = course.write_student_versions(tmp_path / "student", folder=fake_notebooks)
    assert [p.name for p in written] == ["00_first.ipynb", "01_second.ipynb"]
    with pytest.raises(OverwriteError, match="already exists"):
        course.write_student_versions(tmp_path / "student", folder=fake_notebooks)
    course.write_student_versions(tmp_path / "student", folder=fake_notebooks, overwrite=True)


@pytest.mark.parametrize("book", course.list_notebooks(), ids=lambda p: p.stem)
def test_course_notebooks_student_versions(book):
    """No solution survives, and no later cell needs a name that only a solution cell defines."""
    nb = nbformat.read(book, as_version=4)
    solutions = [c.source.strip() for c in nb.cells if course.is_solution(c)]
    student = course.student_version(nb)
    assert not any(course.is_solution(c) for c in student.cells)
    assert not {c.source.strip() for c in student.cells} & set(solutions)
    assert course.solution_dependencies(nb) == []


# the cheapest notebooks in quick mode (see times.csv of `python -m medseg_tf course --quick`) run as students
# get them; for the others the static check above shows that no cell needs a solution cell's names
STUDENT_RUNS = ["00"]


@pytest.mark.slow
@pytest.mark.parametrize("prefix", STUDENT_RUNS)
def test_student_version_runs_top_to_bottom(prefix, tmp_path):
    (book,) = course.list_notebooks(only=[prefix])
    (student,) = course.write_student_versions(tmp_path, only=[prefix])
    seconds = course.execute_notebook(student, write=False, env={"MEDSEG_QUICK": "1"})
    assert seconds > 0


def test_each_xdist_worker_writes_runs_and_figures_to_its_own_folders():
    """The root conftest gives each pytest-xdist worker its own temporary run and figure folders."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        pytest.skip("the suite runs in one process (-n 0): no workers to keep apart")
    for name in ("MEDSEG_RUNS_DIR", "MEDSEG_FIGURES_DIR"):
        folder = Path(os.environ[name])  # a temporary folder of its own, or its subfolder of the caller's
        assert f"_{worker}_" in folder.name or folder.name == worker, (name, folder)
    assert settings.runs_dir() == Path(os.environ["MEDSEG_RUNS_DIR"]).resolve()


def test_conftest_tmp_probe():
    """Run only by the test below (in a pytest of its own): writes into the session's run folder."""
    probe = os.environ.get("_MEDSEG_CONFTEST_PROBE")
    if not probe:
        pytest.skip("a probe for test_a_test_session_removes_the_temporary_folders_it_made")
    runs = Path(os.environ["MEDSEG_RUNS_DIR"])
    (runs / "a_run").mkdir(parents=True, exist_ok=True)
    (runs / "a_run" / "model.keras").write_bytes(b"x")
    Path(probe).write_text(f"{runs}\n{os.environ['MEDSEG_FIGURES_DIR']}")


@pytest.mark.parametrize("caller_chose", [False, True])
def test_a_test_session_removes_the_temporary_folders_it_made(tmp_path, caller_chose):
    """The root conftest removes the run and figure folders it made when the session ends, never a caller's.

    (Each pytest run used to leave about half a gigabyte of quick trainings in the system's temporary folder.)
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSEG_RUNS_DIR", "MEDSEG_FIGURES_DIR",
                                                             "_MEDSEG_CONFTEST_TMP", "PYTEST_XDIST_WORKER",
                                                             "PYTEST_XDIST_TESTRUNUID")}
    env["_MEDSEG_CONFTEST_PROBE"] = str(tmp_path / "probe.txt")
    if caller_chose:
        env["MEDSEG_RUNS_DIR"] = str(tmp_path / "my_runs")
        env["MEDSEG_FIGURES_DIR"] = str(tmp_path / "my_figures")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           "tests/test_course.py::test_conftest_tmp_probe"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs, figures = (Path(p) for p in (tmp_path / "probe.txt").read_text().splitlines())
    if caller_chose:
        assert runs == tmp_path / "my_runs" and (runs / "a_run" / "model.keras").is_file()
        assert figures == tmp_path / "my_figures"
    else:
        assert runs.name.startswith("medseg_runs_") and figures.name.startswith("medseg_figures_")
        assert not runs.exists() and not figures.exists()


@pytest.mark.parametrize("env_value, flag, expected", [("1", False, True), ("0", False, False), ("0", True, True)])
def test_course_command_reads_medseg_quick(monkeypatch, env_value, flag, expected):
    # `MEDSEG_QUICK=1 python -m medseg_tf course` is quick mode, like `course --quick`
    from medseg_tf.cli import main

    seen = {}
    monkeypatch.setattr(course, "run_course", lambda **kw: seen.update(kw) or 0)
    monkeypatch.setenv("MEDSEG_QUICK", env_value)
    assert main(["course", "--no-write"] + (["--quick"] if flag else [])) == 0
    assert seen["quick"] is expected


@pytest.mark.slow
def test_course_runs_notebooks_side_by_side_with_05_after_04(tmp_path, monkeypatch):
    # 04 waits for a file that 06 writes: it can only finish when the two run at the same time;
    # 05 reads what 04 wrote, so it must run after 04 (its slot), even with a free slot beside it
    folder = tmp_path / "notebooks"
    folder.mkdir()
    wait_for_06 = ("import time\nfrom medseg_tf import settings\nmarker = settings.runs_dir() / '06_started'\n"
                   "deadline = time.time() + 120\nwhile not marker.exists() and time.time() < deadline:\n"
                   "    time.sleep(0.1)\nassert marker.exists(), 'notebook 06 did not run beside 04'\n"
                   "(settings.runs_dir() / 'from_04.txt').write_text('trained by 04')")
    _notebook(folder / "04_train.ipynb", new_code_cell(wait_for_06))
    _notebook(folder / "05_evaluate.ipynb",
              new_code_cell("from medseg_tf import settings\nprint((settings.runs_dir() / 'from_04.txt').read_text())"))
    _notebook(folder / "06_other.ipynb", new_code_cell(
        "from medseg_tf import settings\nsettings.runs_dir().mkdir(parents=True, exist_ok=True)\n"
        "(settings.runs_dir() / '06_started').write_text('')"))
    monkeypatch.setenv("MEDSEG_RUNS_DIR", str(tmp_path / "runs"))
    env_before = dict(os.environ)
    log = io.StringIO()
    code = course.run_course(quick=True, folder=folder, out=tmp_path / "out", jobs=2,
                             progress=course.Progress(log, live=False, min_cell_seconds=0, heartbeat_seconds=0))
    assert code == 0, log.getvalue()
    assert dict(os.environ) == env_before  # the kernels got their settings; this process's stayed as they were
    executed = nbformat.read(tmp_path / "out" / "notebooks" / "05_evaluate.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == "trained by 04"
    with open(tmp_path / "out" / "times.csv") as f:
        assert [r["notebook"] for r in csv.DictReader(f)] == ["04_train", "05_evaluate", "06_other"]
    assert "04  0:0" in log.getvalue()  # lines of notebooks side by side say whose they are
    assert [course.default_jobs(True), course.default_jobs(False)] == [min(2, os.cpu_count())] * 2


@pytest.mark.slow
def test_full_mode_runs_the_notebooks_that_time_the_machine_alone(tmp_path, monkeypatch):
    # 01 waits for a file 02 writes (so the two overlap); 04, 05 and 06 each check that nothing else runs
    # beside them: every notebook leaves a "running" file while it runs
    folder = tmp_path / "notebooks"
    folder.mkdir()
    common = ("import time\nfrom medseg_tf import settings\nruns = settings.runs_dir()\n"
              "runs.mkdir(parents=True, exist_ok=True)\nme = runs / f'running_{NAME}'\nme.write_text('')\n")
    end = "time.sleep(0.5)\nme.unlink()\n(runs / f'done_{NAME}').write_text('')"
    wait_for_02 = ("deadline = time.time() + 120\nwhile not (runs / 'running_02').exists() and "
                   "not (runs / 'done_02').exists() and time.time() < deadline:\n    time.sleep(0.05)\n"
                   "assert time.time() < deadline, '02 did not run beside 01'\n")
    alone = ("others = sorted(p.name for p in runs.glob('running_*') if p != me)\n"
             "assert not others, f'{NAME} shared the machine with {others}'\n"
             "assert all((runs / f'done_{n}').exists() for n in ('01', '02', '03')), 'ran before the others'\n")
    for name, body in (("01", wait_for_02), ("02", ""), ("03", ""), ("04", alone), ("05", alone), ("06", alone)):
        _notebook(folder / f"{name}_nb.ipynb", new_code_cell((common + body + end).replace("{NAME}", name)))
    monkeypatch.setenv("MEDSEG_RUNS_DIR", str(tmp_path / "runs"))
    log = io.StringIO()
    code = course.run_course(quick=False, folder=folder, out=tmp_path / "out", jobs=2,
                             progress=course.Progress(log, live=False, min_cell_seconds=0, heartbeat_seconds=0))
    assert code == 0, log.getvalue()
    assert sorted(p.name for p in (tmp_path / "runs").glob("done_*")) == [f"done_0{i}" for i in range(1, 7)]
    shared, alone = course.split_units(course.work_units(sorted(folder.glob("*.ipynb"))), quick=False)
    assert [[b.name[:2] for b in u] for u in alone] == [["04", "05"], ["06"]]


@pytest.mark.slow
def test_course_side_by_side_stops_at_a_failing_notebook(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "00_fails.ipynb", new_code_cell("raise ValueError('broken on purpose')"))
    _notebook(folder / "01_runs.ipynb", new_code_cell("print('fine')"))
    _notebook(folder / "02_later.ipynb", new_code_cell("print('fine')"))
    code = course.run_course(quick=True, folder=folder, out=tmp_path / "out", jobs=2,
                             progress=course.Progress(io.StringIO(), live=False))
    assert code == 1
    err = capsys.readouterr().err
    assert "00_fails.ipynb failed in cell 0" in err and "broken on purpose" in err
    assert not (tmp_path / "out" / "notebooks" / "00_fails.ipynb").exists()


def test_count_exercises_reads_the_numbered_items_under_the_exercises_heading():
    listed = new_notebook(cells=[
        new_markdown_cell("## 3. Something\n\n1. not an exercise"),
        new_markdown_cell("## Exercises\n\n1. **By hand.** One.\n2. Two, whose side is a multiple of\n   16) "
                          "and wraps.\n3. Three."),
        new_code_cell("# answer 1\nprint(1)", metadata={"tags": ["solution"]}),
        new_markdown_cell("**1.** The answer.", metadata={"tags": ["solution"]}),
        new_markdown_cell("## Summary\n\n1. not an exercise either")])
    assert course.count_exercises(listed) == 3
    cells = new_notebook(cells=[
        new_markdown_cell("## Exercises\n\n**Exercise 1 (CT windows).** One."),
        new_code_cell("x = 1", metadata={"tags": ["solution"]}),
        new_markdown_cell("**Exercise 2.** Two."),
        new_markdown_cell("**3.** Three.")])
    assert course.count_exercises(cells) == 3
    assert course.count_exercises(new_notebook(cells=[c.copy() for c in EXERCISE])) == 1  # no heading: blocks
