"""The demo app in a real browser: served on 127.0.0.1 as the README says, driven in headless
Chromium (Debian's chromium and chromium-driver, selenium from the dev extra). Marked `browser`:
.ci/run installs Chromium and runs them; without it they skip, saying so."""

import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import run_config

from minigpt.corpus import load_corpus
from minigpt.tokenizer import WordTokenizer
from minigpt.training import train

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]  # one browser, one app
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: "
                                "pip install -e '.[dev]'")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
from screenshots import serve  # noqa: E402  (the README's pictures start the app the same way)

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
HEADS, WORDS = 2, 40
if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver); .ci/run "
                "installs it", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A browser on the app, serving one small trained word model."""
    tmp_path = tmp_path_factory.mktemp("browser")
    train(run_config(tmp_path, **{"model.context_length": 64, "model.num_heads": HEADS,
                                  "train.max_steps": 8, "train.eval_interval": 4,
                                  "train.probe": True}), progress=False)
    server, port = serve(tmp_path / "runs")
    browser = None
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path / 'chrome'}"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
        browser.get(f"http://127.0.0.1:{port}")
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "input[aria-label=Prompt]"))
        yield browser
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)


def wait_for(browser, found, seconds: float = 30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            result = found()
        except StaleElementReferenceException:  # the page re-rendered under us: look again
            result = None
        if result:
            return result
        time.sleep(0.25)
    pytest.fail("the page never showed what the test waited for")


def charts_titled(browser, title: str) -> list:
    """The charts (rendered as SVG) with an axis of this title."""
    return [chart for chart in browser.find_elements(By.CSS_SELECTOR,
                                                     "[data-testid=stVegaLiteChart]")
            if title in [t.text for t in chart.find_elements(By.CSS_SELECTOR,
                                                             ".role-axis-title text")]]


def axis_labels(chart, axis: str = "") -> list[str]:
    """The tick labels of the chart's axes, or of its "X" or "Y" axis alone."""
    groups = [g for g in chart.find_elements(By.CSS_SELECTOR, "g.role-axis")
              if (g.get_attribute("aria-label") or "").startswith(f"{axis}-axis" if axis else "")]
    return [t.get_attribute("textContent") for g in groups
            for t in g.find_elements(By.CSS_SELECTOR, ".role-axis-label text")]


def tab_charts(browser) -> list:
    """The charts of the open tab: shown, and not in the generated text's expander above it."""
    return [c for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stVegaLiteChart]")
            if c.is_displayed()
            and not browser.execute_script(
                "return arguments[0].closest('[data-testid=stExpander]') !== null", c)]


def open_tab(browser, name: str) -> None:
    tab = browser.find_element(By.XPATH, f"//*[@role='tab'][contains(., '{name}')]")
    # Scrolled to the top of the window first: charts below the window may be drawn only there.
    browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click()", tab)
    time.sleep(1)


def test_a_40_token_prompt_gets_a_labelled_heatmap_per_head(page):
    words = " ".join([w for w in WordTokenizer.split(load_corpus()) if w != "\n"][:WORDS])
    box = page.find_element(By.CSS_SELECTOR, "input[aria-label=Prompt]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(words, Keys.ENTER)
    heatmaps = wait_for(page, lambda: [c for c in charts_titled(page, "attends to (key)")
                                       if len(axis_labels(c)) >= WORDS], seconds=90)
    assert len(heatmaps) == HEADS
    for chart in heatmaps:
        labels = axis_labels(chart)
        assert len(labels) == WORDS  # every other token on both axes: 12-pixel cells
        assert labels[0].startswith("0:") and any(label.startswith("38:") for label in labels)
        assert chart.size["height"] < 700  # a head, not a page of scrolling
    assert not page.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")


def test_the_probability_chart_covers_every_generated_token(page):
    page.find_element(By.XPATH, "//button[contains(., 'Generate')]").click()
    wait_for(page, lambda: page.find_elements(By.XPATH, "//*[contains(., 'Generated text')]"))
    page.find_element(By.XPATH, "//summary[contains(., 'Token-by-token')]").click()
    chart = wait_for(page, lambda: charts_titled(page, "generated token (position in the text)"))
    positions = axis_labels(chart[0], "X")
    assert len(positions) == 40  # the max new tokens slider's default: every generated token
    assert positions[0].startswith(f"{WORDS}:") and positions[-1].startswith(f"{WORDS + 39}:")
    assert not page.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")


# What a chart draws: its canvas's pixels, or its SVG.
PICTURE = """const canvas = arguments[0].querySelector('canvas');
return canvas ? canvas.toDataURL() : arguments[0].querySelector('svg').outerHTML;"""


def test_the_step_slider_changes_the_picture(page):
    open_tab(page, "Watch it learn")

    def picture():  # the probe's attention: the tab's first chart (the other tabs' are hidden).
        # Only the first is asked for: charts far below the window (the generated text above
        # pushes them down) may not be drawn until scrolled to.
        shown = tab_charts(page)
        return page.execute_script(PICTURE, shown[0]) if shown else None

    before = wait_for(page, picture)
    slider = next(s for s in page.find_elements(By.CSS_SELECTOR, "[data-testid=stSlider]")
                  if "training step" in s.text)
    thumb = slider.find_element(By.CSS_SELECTOR, "[tabindex='0']")
    page.execute_script("arguments[0].focus()", thumb)
    ActionChains(page).send_keys(Keys.ARROW_LEFT).perform()  # from step 8 to step 4
    wait_for(page, lambda: page.find_elements(By.XPATH, "//*[text()='attention at step 4']"))
    wait_for(page, lambda: picture() not in (None, before))
    assert not page.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")


def test_the_sublayer_norm_and_position_views_are_drawn(page):
    """Large charts may be drawn on a canvas, so this counts the charts shown on each tab: the
    logit lens, the sublayer grid, the norm bars and the neuron view; the position table, its
    similarity and the token embedding's nearest tokens."""
    def shown():  # scrolled through the page first: a chart below the window may not be drawn
        page.execute_script("const m = document.querySelector('[data-testid=stMain]');"
                            "m.scrollTo(0, m.scrollHeight)")
        return [c for c in tab_charts(page) if c.size["height"] > 100]

    for tab, count in (("Layer outputs", 4), ("Positions", 3)):
        open_tab(page, tab)
        wait_for(page, lambda count=count: len(shown()) == count, seconds=60)
    assert not page.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")


def test_the_hypothesis_tab_knocks_out_a_head_and_draws_its_charts(page):
    open_tab(page, "Test a hypothesis")
    for title in ("next token", "residual stream", "layer", "part of the model"):
        wait_for(page, lambda title=title: [c for c in charts_titled(page, title)
                                            if c.is_displayed()], seconds=60)
    metric = wait_for(page, lambda: [m for m in page.find_elements(
        By.CSS_SELECTOR, "[data-testid=stMetric]") if m.is_displayed()])
    before = metric[0].text
    box = next(b for b in page.find_elements(By.CSS_SELECTOR, "[data-testid=stMultiSelect]")
               if "heads to knock out" in b.text)
    box.find_element(By.CSS_SELECTOR, "input").click()
    option = wait_for(page, lambda: [o for o in page.find_elements(By.CSS_SELECTOR, "[role=option]")
                                     if o.text == "layer 1, head 0"])
    option[0].click()
    wait_for(page, lambda: [m for m in page.find_elements(By.CSS_SELECTOR, "[data-testid=stMetric]")
                            if m.is_displayed() and m.text != before and "from" in m.text],
             seconds=60)
    assert not page.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")
