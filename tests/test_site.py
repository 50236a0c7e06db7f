"""The course site: built from the committed notebooks, every page opened in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without them the
browser test is skipped, unless ``CI`` is set, where it fails.
"""

import os
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest

from medseg_tf import site
from medseg_tf.course import list_notebooks
from medseg_tf.errors import DataError, OverwriteError

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]

# Waits for MathJax (when the page loads it) to finish typesetting, then reports what the page shows.
PAGE_REPORT_JS = """
const done = arguments[arguments.length - 1];
function hasError(node) {
  if (!node) return false;
  if (node.type === 'merror') return true;
  return (node.data || []).some(hasError);
}
function report() {
  const images = Array.from(document.images);
  const hub = window.MathJax && MathJax.Hub;
  done({
    ready: document.readyState,
    title: document.title,
    tex: document.querySelectorAll('.math.notranslate').length,  // Sphinx's math nodes
    typeset: document.querySelectorAll('.MathJax, .MathJax_Display').length,
    jax: hub ? MathJax.Hub.getAllJax().length : 0,
    texErrors: hub ? MathJax.Hub.getAllJax().filter(j => hasError(j.root)).length : 0,
    processingErrors: document.querySelectorAll('.MathJax_Error').length,
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    remote: performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('file:')),
    links: Array.from(document.querySelectorAll('a[href$=".html"]')).map(a => a.getAttribute('href')),
  });
}
function typeset() {
  if (!document.querySelector('script[src*="MathJax.js"]')) {
    report();
  } else {
    (function wait() {
      if (window.MathJax && MathJax.Hub && MathJax.isReady) MathJax.Hub.Queue(report);
      else setTimeout(wait, 50);
    })();
  }
}
// a long page on a busy machine can still be parsing when the driver hands it over: wait for the load event
// (a page that never loads runs into the script timeout)
if (document.readyState === 'complete') typeset();
else window.addEventListener('load', typeset);
"""


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        reason = "chromium and chromium-driver not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    index = site.build_site(out)
    assert index == out / "index.html" and index.is_file()
    return out


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="medseg_chromium_")
    options.add_argument(f"--user-data-dir={profile}")
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.set_script_timeout(45)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_every_page_loads_with_images_and_math(built_site, browser, tmp_path_factory, capsys):
    books = [p.stem for p in list_notebooks()]
    pages = sorted(built_site.glob("*.html"))
    assert {f"{b}.html" for b in books} <= {p.name for p in pages}
    math_pages = 0
    for page in pages:
        browser.get(page.as_uri())
        report = browser.execute_async_script(PAGE_REPORT_JS)
        where = page.name
        assert report["ready"] == "complete", where
        assert report["broken"] == [], f"{where}: images that do not load: {report['broken']}"
        assert report["remote"] == [], f"{where}: fetched from outside the site: {report['remote']}"
        if report["tex"]:
            math_pages += 1
            assert report["jax"] == report["tex"], f"{where}: {report['tex']} formulas, {report['jax']} typeset"
            assert report["typeset"] >= report["tex"], where
            assert report["texErrors"] == 0 and report["processingErrors"] == 0, f"{where}: math errors {report}"
        if page.name == "index.html":
            assert all(f"{b}.html" in report["links"] for b in books), report["links"]
        elif page.stem in books:
            assert report["images"] > 0 or page.stem.startswith("00"), f"{where}: no figures"
    assert math_pages >= 1  # the convolution notebook is mostly math
    browser.get((built_site / "index.html").as_uri())
    shot = tmp_path_factory.mktemp("artefacts") / "site_landing_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nsite landing page screenshot: {shot}")


def test_site_refuses_to_replace_what_it_did_not_build(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OverwriteError, match="already exists"):
        site.build_site(out)
    with pytest.raises(OverwriteError, match="not a site built by this command"):
        site.build_site(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_site_needs_notebooks(tmp_path):
    with pytest.raises(DataError, match="no numbered notebooks"):
        site.build_site(tmp_path / "out", notebooks=tmp_path)


def test_titles_come_from_the_first_heading():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("intro\n# 03 · The U-Net\ntext")])
    assert site._title(nb, "x") == "03 · The U-Net"
    assert site._title(nbformat.v4.new_notebook(), "fallback") == "fallback"
