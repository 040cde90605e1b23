"""Make the README's pictures: the demo app's views in headless Chromium, and a TensorBoard
attention image, from the default model.

    python docs/screenshots.py                  # trains configs/default.toml first (about a minute)
    python docs/screenshots.py --run runs/NAME  # or pictures of a run you have

Needs Debian's chromium and chromium-driver, and selenium (the dev extra). Writes docs/images/.
"""

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minigpt.checkpoint import load  # noqa: E402
from minigpt.config import default_config_path, load_config  # noqa: E402
from minigpt.files import atomic_write  # noqa: E402
from minigpt.heatmap import ATTENTION_NOTE, add_legend, attention_image  # noqa: E402
from minigpt.inspection import load_snapshots  # noqa: E402
from minigpt.training import train  # noqa: E402

IMAGES = ROOT / "docs" / "images"
PROMPT = "the cat sat on the mat . it was warm . the dog ran to the park ."
WIDTH = 960  # pixels of each picture in the README
SIDEBAR = 340  # pixels of the app's sidebar (and margin) at a 1400-pixel-wide window
# Each picture: the tab, the file name, the text at its top and the window's height in pixels.
SHOTS = [("Attention", "app_attention", "Layers are numbered from the input", 1000),
         ("Layer outputs", "app_layer_outputs", "Logit lens", 970),
         ("Layer outputs", "app_sublayers_and_norms", "What attention and the feed-forward", 1150),
         ("Positions", "app_positions", "position table", 1560),
         ("Watch it learn", "app_watch_it_learn", "The run's probe prompt", 1300),
         ("Test a hypothesis", "app_test_a_hypothesis", "Knock heads out", 1000),
         ("Test a hypothesis", "app_patching", "Activation patching", 1000)]
# Scrolls the app so that the first visible text block holding arguments[0] sits just under the
# app's header; returns false when there is none.
SCROLL_TO = """
const main = document.querySelector('[data-testid=stMain]');
const texts = '[data-testid=stMarkdownContainer], [data-testid=stCaptionContainer]';
const block = [...main.querySelectorAll(texts)].find(
    e => e.offsetParent !== null && e.textContent.includes(arguments[0]));
if (!block) return false;
const top = block.getBoundingClientRect().top - main.getBoundingClientRect().top;
main.scrollTo(0, main.scrollTop + top - 70);
return true;
"""


def shrink(image: Image.Image, path: Path, left: int = 0) -> None:
    """Save the picture at the README's width, first cutting `left` pixels (the app's sidebar)
    so that the view itself stays large enough to read; written whole or not at all."""
    image = image.convert("RGB").crop((left, 0, image.width, image.height))
    height = round(image.height * WIDTH / image.width)
    image = image.resize((WIDTH, height), Image.Resampling.LANCZOS)
    atomic_write(path, lambda f: image.save(f, format="PNG", optimize=True))


def serve(runs: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "MINIGPT_RUNS": str(runs)})
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the app did not start")


def wait_until_idle(browser, seconds: float = 120) -> None:
    """Until the app's script has finished (Streamlit's running indicator is gone), so that a
    picture never shows a spinner in place of a view."""
    deadline = time.time() + seconds
    while browser.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget]"):
        if time.time() > deadline:
            raise SystemExit("the app was still running after two minutes")
        time.sleep(0.5)
    time.sleep(1)  # the last charts' drawing


def app_pictures(runs: Path, scratch: Path) -> None:
    server, port = serve(runs)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--window-size=1400,1000",
                 f"--user-data-dir={scratch / 'chrome'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"),
                               options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        time.sleep(8)
        box = browser.find_element(By.CSS_SELECTOR, "input[aria-label=Prompt]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(PROMPT, Keys.ENTER)
        time.sleep(6)
        for tab, name, anchor, height in SHOTS:
            button = browser.find_element(By.XPATH, f"//*[@role='tab'][contains(., '{tab}')]")
            browser.execute_script("arguments[0].click()", button)
            browser.set_window_size(1400, height)
            time.sleep(3)
            wait_until_idle(browser)  # only the open tab is drawn: its views compute on a click
            if not browser.execute_script(SCROLL_TO, anchor):
                raise SystemExit(f"the {tab} tab shows no {anchor!r}: update SHOTS")
            time.sleep(1)
            screenshot = Image.open(io.BytesIO(browser.get_screenshot_as_png()))
            shrink(screenshot, IMAGES / f"{name}.png", left=SIDEBAR)
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)


def tensorboard_picture(run_dir: Path) -> None:
    """The image TensorBoard shows for the first layer at the run's last evaluation."""
    kept = load_snapshots(run_dir)
    weights = kept["snapshots"][-1]["attention"][0].float()
    image = attention_image(weights, kept["tokens"], cell=24, title="layer 1,")
    shrink(add_legend(image, 0.0, 1.0, ATTENTION_NOTE), IMAGES / "tensorboard_attention.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--run", help="a run directory (default: train configs/default.toml)")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.run:  # alone in a runs folder of its own: the app opens the newest run it finds
            run_dir = Path(shutil.copytree(Path(args.run).resolve(), scratch / "runs" / "run"))
        else:
            cfg = load_config(default_config_path(),
                              {"train.out_dir": str(scratch / "runs"), "train.run_name": "default",
                               "train.sample_prompt": "the cat sat on the mat . it was"})
            run_dir = train(cfg, progress=False).run_dir
        load(run_dir)  # fails early, with its message, on a run that cannot be shown
        app_pictures(run_dir.parent, scratch)
        tensorboard_picture(run_dir)
    print(f"wrote {sorted(p.name for p in IMAGES.glob('*.png'))} in {IMAGES}")


if __name__ == "__main__":
    main()
