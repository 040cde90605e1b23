"""docs/deck.ipynb, run top to bottom as a learner would (nbclient and ipykernel from the dev
extra): no cell may raise, every view draws offline, and in Chromium every chart of the executed
notebook draws on one page with the network cut off. Slow: the notebook trains a model (about 20 s)."""

import json
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient, ipykernel)")
pytest.importorskip("vl_convert", reason="the offline charts need vl-convert-python: "
                    "pip install -e '.[dev]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "deck.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after a run in a fresh kernel, started in a scratch directory."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    scratch = tmp_path_factory.mktemp("notebook")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(scratch)}}).execute()
    return notebook


def html_outputs(notebook) -> list[str]:
    return [out["data"]["text/html"] for cell in notebook.cells if cell.cell_type == "code"
            for out in cell.outputs if "text/html" in out.get("data", {})]


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_notebook_runs_and_every_view_draws_offline(executed):
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors  # nbclient raises on the first; this says which, should that change
    views = [cell for cell in code  # a cell ending in a view shows its chart
             if cell.source.strip().splitlines()[-1].lstrip().startswith("show.")
             or cell.source.strip().startswith("show.")]
    assert len(views) >= 15
    for cell in views:  # each view cell shows its chart as HTML (no output: a view drew nothing)
        assert any("text/html" in out.get("data", {}) for out in cell.outputs), cell.source
    pages = html_outputs(executed)
    assert all("<script src" not in page and "cdn.jsdelivr" not in page for page in pages)
    charts = [page for page in pages if "vegaEmbed(" in page]
    assert len(charts) >= 14 and all("window.vegaEmbed" in page for page in charts)
    trained = next(out["text"] for out in code[0].outputs if out.output_type == "stream")
    assert "trained 500 steps: val loss" in trained


@pytest.mark.browser
def test_every_chart_of_the_notebook_draws_in_chromium_offline(executed, tmp_path):
    """The outputs on one page, as Jupyter and VS Code show a notebook, with no network: each
    chart's bundle is guarded, so one page of many charts draws them all without a script error."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]'")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    pages = html_outputs(executed)
    page = tmp_path / "notebook.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + "".join(f"<div class='output'>{p}</div>" for p in pages) + "</body></html>")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                 "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no network
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    try:
        browser.get(page.as_uri())
        expected = sum("vegaEmbed(" in p for p in pages)
        drawn = 0
        for _ in range(120):
            drawn = browser.execute_script(
                "return document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks')"
                ".length")
            if drawn >= expected:
                break
            time.sleep(0.5)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert drawn == expected, json.dumps(errors)[:2000]
        assert not errors
        heads = browser.execute_script("return document.querySelectorAll('span[title]').length")
        assert heads > 0  # the head view is HTML, drawn without a script
    finally:
        browser.quit()
