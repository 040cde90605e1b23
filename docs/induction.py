"""Train configs/induction.toml with 2 layers and, as the control, with 1; print when the
induction head formed and draw docs/images/induction.png: the val loss and the top induction score
of both runs on one step axis.

    python docs/induction.py             # both runs, about 2.5 minutes on 2 cores
    python docs/induction.py --out runs  # keep the runs there (default: a scratch folder)
"""

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minigpt.config import config_path, load_config  # noqa: E402
from minigpt.files import atomic_write  # noqa: E402
from minigpt.heatmap import PALETTE  # noqa: E402
from minigpt.inspection import load_snapshots  # noqa: E402
from minigpt.training import train  # noqa: E402

IMAGE = ROOT / "docs" / "images" / "induction.png"
FORMED = 0.3  # the top induction score that counts as "an induction head has formed"
RUNS = {"2 layers": PALETTE[1], "1 layer (the control)": "#a0a0a0"}
WIDTH, PANEL, LEFT, RIGHT, TOP = 960, 190, 70, 20, 40


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def run(layers: int, out: Path) -> dict:
    """Train one run; its eval steps, seconds from the start, val losses and top scores."""
    cfg = load_config(config_path("induction"), {
        "model.num_layers": str(layers), "train.out_dir": str(out),
        "train.run_name": f"induction-{layers}-layer"})
    result = train(cfg, progress=False)
    kept = load_snapshots(result.run_dir)  # from step 0, before training; the losses from 100
    steps = sorted(result.val_losses)
    return {"steps": steps, "seconds": [result.val_seconds[s] for s in steps],
            "val": [result.val_losses[s] for s in steps], "score steps": kept["steps"],
            "induction": [float(k["head_scores"]["induction"].max()) for k in kept["snapshots"]]}


def panel(draw: ImageDraw.ImageDraw, top: int, runs: dict, key: str, low: float, high: float,
          title: str, last_step: int, marked: int | None) -> None:
    """One chart: runs[name][key] against step, y from low to high, gridlines and labels."""
    font = _font(12)
    bottom, right = top + PANEL, WIDTH - RIGHT

    def x(step):
        return LEFT + (right - LEFT) * step / last_step

    def y(value):
        return bottom - PANEL * (min(max(value, low), high) - low) / (high - low)

    draw.text((LEFT, top - 18), title, fill="black", font=_font(13))
    for i in range(5):
        value = low + (high - low) * i / 4
        draw.line([(LEFT, y(value)), (right, y(value))], fill="#e4e4e4")
        draw.text((LEFT - 8, y(value)), f"{value:.2f}", fill="black", font=font, anchor="rm")
    draw.rectangle([LEFT, top, right, bottom], outline="#808080")
    if marked is not None:
        draw.line([(x(marked), top), (x(marked), bottom)], fill=PALETTE[3], width=2)
    for name, colour in RUNS.items():
        steps = runs[name]["score steps" if key == "induction" else "steps"]
        points = [(x(s), y(v)) for s, v in zip(steps, runs[name][key])]
        draw.line(points, fill=colour, width=3, joint="curve")


def picture(runs: dict, formed: int | None, seconds: float | None) -> Image.Image:
    last_step = max(runs["2 layers"]["steps"])
    height = TOP + 2 * PANEL + 150
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    lows = min(min(r["val"]) for r in runs.values())
    highs = max(max(r["val"]) for r in runs.values())
    panel(draw, TOP, runs, "val", lows - 0.1, highs + 0.1, "val loss (lower is better)",
          last_step, formed)
    second = TOP + PANEL + 50
    panel(draw, second, runs, "induction", 0.0, 1.0, "top induction score of any head (mean "
          "attention from each repeated token to the token after its earlier copy)",
          last_step, formed)
    font, axis_y = _font(12), second + PANEL + 8
    for i in range(6):
        step = round(last_step * i / 5)
        draw.text((LEFT + (WIDTH - RIGHT - LEFT) * i / 5, axis_y), f"{step:,}", fill="black",
                  font=font, anchor="mt")
    draw.text((WIDTH // 2, axis_y + 20), "training step", fill="black", font=_font(13), anchor="mt")
    legend_y, legend_x = axis_y + 48, LEFT
    for name, colour in RUNS.items():
        draw.line([(legend_x, legend_y + 7), (legend_x + 30, legend_y + 7)], fill=colour, width=3)
        draw.text((legend_x + 38, legend_y), name, fill="black", font=font)
        legend_x += 240
    if formed is not None:
        draw.line([(legend_x, legend_y + 7), (legend_x + 30, legend_y + 7)], fill=PALETTE[3],
                  width=2)
        draw.text((legend_x + 38, legend_y), f"induction head formed: step {formed:,}, "
                  f"{seconds:.0f} s into the run", fill="black", font=font)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", help="where to keep the two runs (default: a scratch folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        runs = {name: run(layers, out) for name, layers in zip(RUNS, (2, 1))}
    two = runs["2 layers"]
    scores = dict(zip(two["score steps"], two["induction"]))
    formed = next((s for s in two["steps"] if scores[s] >= FORMED), None)
    seconds = two["seconds"][two["steps"].index(formed)] if formed is not None else None
    for name, r in runs.items():
        print(f"{name}: top induction score {r['induction'][0]:.2f} at step 0, "
              f"{max(r['induction']):.2f} at most; val loss {r['val'][0]:.3f} at step "
              f"{r['steps'][0]:,}, {r['val'][-1]:.3f} at step {r['steps'][-1]:,} "
              f"({r['seconds'][-1]:.0f} s)")
    if formed is None:
        print(f"no induction head formed (top score never reached {FORMED})")
    else:
        before = two["score steps"][two["score steps"].index(formed) - 1]
        print(f"induction head formed at step {formed:,} ({seconds:.0f} s): top score "
              f"{scores[before]:.2f} at step {before:,}, {scores[formed]:.2f} at step {formed:,}")
    print("every evaluation (step: val loss, top induction score):", ", ".join(
        f"{s}: {v:.2f}, {scores[s]:.2f}" for s, v in zip(two["steps"], two["val"])))
    image = picture(runs, formed, seconds)
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(IMAGE, lambda f: image.save(f, format="PNG"))
    print(f"wrote {IMAGE}")


if __name__ == "__main__":
    main()
