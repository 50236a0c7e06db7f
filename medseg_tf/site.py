"""The course as a static web site: the executed notebooks rendered offline (Sphinx + MyST-NB).

``python -m medseg_tf site OUT`` copies the executed notebooks (``notebooks/`` by default, or the
output of ``python -m medseg_tf course``) into a temporary Sphinx project, renders them with
`MyST-NB <https://myst-nb.readthedocs.io>`_ without executing them (the figures are the notebooks'
own outputs) and writes the HTML into ``OUT``; open ``OUT/index.html`` in a browser, no server needed.

Math is typeset in the browser by MathJax 2 served from the site itself (copied, with its web
fonts, from the ``jupyter-server-mathjax`` package): building and reading the site download nothing. Nothing imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from medseg_tf import settings
from medseg_tf.errors import DataError, OverwriteError

TITLE = "medseg-tf: medical image segmentation with Keras 3"

#: MathJax 2 configuration, as the classic Jupyter notebook used it: the combined
#: ``TeX-AMS-MML_HTMLorMML-full`` configuration, HTML-CSS output with the STIX-Web fonts (both
#: shipped by jupyter-server-mathjax), and only the delimiters Sphinx writes.
MATHJAX_CONFIG_FILE = "TeX-AMS-MML_HTMLorMML-full"
MATHJAX2_CONFIG = {
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                "processEscapes": False, "processEnvironments": True},
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None},
    "showMathMenu": False,
    "messageStyle": "none",
}

CONF_PY = """\
project = "medseg-tf"
author = "medseg-tf"
html_show_copyright = False
extensions = ["myst_nb"]
nb_execution_mode = "off"
nb_output_stderr = "show"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_update_mathjax = False
myst_heading_anchors = 3
mathjax_path = "mathjax/MathJax.js?config={mathjax_config_file}"
mathjax2_config = {mathjax2_config!r}
mathjax3_config = None
html_theme = "alabaster"
html_theme_options = {{"page_width": "1180px", "sidebar_width": "250px", "show_powered_by": False}}
html_sidebars = {{"**": ["about.html", "navigation.html", "searchbox.html"]}}
html_static_path = ["_static"]
html_title = {title!r}
html_show_sourcelink = False
html_copy_source = False
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
"""


def mathjax_dir() -> Path:
    """The MathJax 2 files shipped by the ``jupyter-server-mathjax`` package."""
    try:
        import jupyter_server_mathjax
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise DataError("jupyter-server-mathjax", "not installed; pip install jupyter-server-mathjax") from exc
    path = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (path / "MathJax.js").is_file():
        raise DataError(path, "MathJax.js not found in the jupyter-server-mathjax package")
    return path


def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _index_page(books: list[tuple[str, str]]) -> str:
    rows = "\n".join(f"| [{title}]({stem}.ipynb) | `{stem}` |" for stem, title in books)
    toctree = "\n".join(stem for stem, _ in books)
    return f"""# {TITLE}

A notebook-first course on deep-learning segmentation of medical images (MRI of the hippocampus),
with Keras 3 and TensorFlow. Each page below is a notebook as the course runner executed it, top to
bottom, on a CPU: the figures and numbers are its outputs. To run them yourself, clone the repository
and follow its README (`python -m medseg_tf course`, or open `notebooks/` in Jupyter).

| notebook | file |
|---|---|
{rows}

```{{toctree}}
:maxdepth: 1
:hidden:

{toctree}
```
"""


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _drop_widgets(nb) -> None:
    """Remove Jupyter widget state and views (progress bars); their text fallback stays.

    Rendering widgets would make every page load require.js and the widget manager from a CDN.
    """
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and WIDGET_MIME in data:
                del data[WIDGET_MIME]


def build_site(out: Path, *, notebooks: Path | None = None, overwrite: bool = False,
               quiet: bool = True) -> Path:
    """Render the executed course notebooks into a static HTML site in ``out``.

    Parameters
    ----------
    out : Path
        Output folder; must be absent or empty, or (with ``overwrite``) an earlier site.
    notebooks : Path, optional
        Folder of executed ``NN_*.ipynb`` notebooks (default ``notebooks/``).
    overwrite : bool
        Replace a site built earlier in ``out``.
    quiet : bool
        Hide Sphinx's progress output (warnings and errors still show).

    Returns
    -------
    Path
        ``out/index.html``.

    Raises
    ------
    OverwriteError
        If ``out`` holds files and ``overwrite`` is false, or holds something other than a site.
    DataError
        If the folder has no numbered notebooks, or Sphinx fails.
    """
    from medseg_tf.course import NOTEBOOKS_DIR, list_notebooks

    folder = Path(notebooks) if notebooks is not None else NOTEBOOKS_DIR
    books = list_notebooks(folder)
    if not books:
        raise DataError(folder, "no numbered notebooks (NN_*.ipynb) to render")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OverwriteError(f"{settings.display_path(out)}: is a file, not a folder; choose another output folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OverwriteError(f"{settings.display_path(out)}: already exists; pass --overwrite to replace it")
        if not (out / ".buildinfo").is_file():
            raise OverwriteError(f"{settings.display_path(out)}: not a site built by this command; "
                                 "choose an empty or new folder")
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix="medseg_site_") as tmp:
        src = Path(tmp) / "src"
        (src / "_static").mkdir(parents=True)
        root = mathjax_dir()
        # the package ships the HTML-CSS output and its web fonts; English needs no localization
        shutil.copytree(root, src / "_static" / "mathjax", ignore=lambda d, names: [
            n for n in names if Path(d) == root and n == "localization"])
        titles = []
        for book in books:
            try:
                nb = nbformat.read(book, as_version=4)
            except (ValueError, OSError) as exc:  # nbformat's NotJSONError is a ValueError
                raise DataError(book, f"cannot read as a notebook ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:200]})") from exc
            _drop_widgets(nb)
            nbformat.write(nb, src / book.name)
            titles.append((book.stem, _title(nb, book.stem)))
        (src / "index.md").write_text(_index_page(titles), encoding="utf-8")
        (src / "conf.py").write_text(CONF_PY.format(title=TITLE, mathjax2_config=MATHJAX2_CONFIG,
                                                    mathjax_config_file=MATHJAX_CONFIG_FILE), encoding="utf-8")
        command = [sys.executable, "-m", "sphinx", "-b", "html", "-d", str(Path(tmp) / "doctrees"),
                   "-j", "auto", str(src), str(out)]
        if quiet:
            command.insert(3, "-q")
        result = subprocess.run(command, capture_output=quiet, text=True, encoding="utf-8", errors="replace",
                                env={**os.environ, "PYTHONUTF8": "1"})
        if result.returncode:
            detail = (result.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise DataError(folder, f"Sphinx failed ({' '.join(detail) or 'see its output above'})")
        if quiet and result.stderr.strip():
            print(result.stderr.strip(), file=sys.stderr)
    (out / "site.json").write_text(json.dumps({"notebooks": [b.name for b in books]}, indent=1) + "\n", encoding="utf-8")
    return out / "index.html"
