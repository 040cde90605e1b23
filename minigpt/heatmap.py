"""Pictures, drawn with Pillow: attention heatmaps labelled with their tokens, and position tables.

    image = attention_image(seen.attentions[0], seen.tokens)   # one layer, heads side by side
    image = layers_image(seen.attentions, seen.tokens)          # one row of heads per layer
    image.save("attention.png")
    writer.add_image("probe_attention/layer1", to_tensor(image))      # TensorBoard takes (3, H, W)

PALETTE is minigpt's one colour scale, low to high: these pictures and the app's charts use it.
"""

import math

import torch
from PIL import Image, ImageDraw, ImageFont

# Dark blue -> teal -> green -> yellow: brightness rises along it, so it reads in grey too.
PALETTE = ("#0d0840", "#2b4087", "#1a808f", "#40b873", "#b8d933", "#fce826")
GAP = 6  # pixels between heads and between layers
TITLE = 16  # pixels of the line above each row of heads


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def colour(value: float) -> tuple[int, int, int]:
    """The palette's colour at value in [0, 1] (clamped), interpolated between its stops."""
    x = min(max(value, 0.0), 1.0) * (len(PALETTE) - 1)
    low = min(int(x), len(PALETTE) - 2)
    a, b = _rgb(PALETTE[low]), _rgb(PALETTE[low + 1])
    return tuple(round(ca + (cb - ca) * (x - low)) for ca, cb in zip(a, b))


def colours(n: int) -> list[str]:
    """n colours spread evenly along the palette, low to high, as "#rrggbb" (for chart series)."""
    return ["#{:02x}{:02x}{:02x}".format(*colour(i / max(n - 1, 1))) for i in range(n)]


_LUT = [channel for level in range(256) for channel in colour(level / 255)]


def _font(size: int = 11) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def heatmap(matrix: torch.Tensor, cell: int = 8, vmin: float | None = None,
            vmax: float | None = None) -> Image.Image:
    """(R, C) matrix -> an RGB image of R x C square cells of `cell` pixels, values scaled from
    [vmin, vmax] (default: the matrix's own range) onto the palette."""
    matrix = matrix.detach().float().cpu()
    vmin = matrix.min().item() if vmin is None else vmin
    vmax = matrix.max().item() if vmax is None else vmax
    levels = ((matrix - vmin) / max(vmax - vmin, 1e-12)).nan_to_num(0.0).clamp(0, 1) * 255
    rows, cols = matrix.shape
    image = Image.frombytes("P", (cols, rows), bytes(levels.round().to(torch.uint8).flatten().tolist()))
    image.putpalette(_LUT)
    return image.convert("RGB").resize((cols * cell, rows * cell), Image.Resampling.NEAREST)


MASK_GREY = "#c8c8c8"  # cells the causal mask hides: not seen at all, unlike a zero weight


def is_masked(weights: torch.Tensor) -> bool:
    """Whether these (..., T, T) weights are a causal head's: nothing above the diagonal."""
    return bool((weights.float().triu(1) == 0).all()) and weights.size(-1) > 1


def _label(token: str) -> str:
    return repr(token)[1:-1][:10]  # newlines and spaces visible, long tokens cut


def _rotated_text(text: str, width: int, height: int, font) -> Image.Image:
    """text written left to right in a width x height box, turned to read bottom to top."""
    box = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(box).text((3, height // 2), text, fill="black", font=font, anchor="lm")
    return box.rotate(90, expand=True)


def attention_image(weights: torch.Tensor, tokens: list[str] | None = None,
                    cell: int | None = None, title: str = "") -> Image.Image:
    """One layer's attention weights (H, T, T) in [0, 1]: the heads side by side, each titled,
    queries top to bottom and keys left to right, with the tokens along both axes when given.
    Where cells are narrower than the text, every n-th token is labelled. The cells a causal mask
    hides (above the diagonal) are grey, not the colour of a zero weight."""
    num_heads, T, _ = weights.shape
    cell = cell or max(4, min(24, 240 // T))
    font = _font()
    labels = [_label(t) for t in tokens] if tokens is not None else []
    margin = 6 + max((int(font.getlength(label)) for label in labels), default=-6)
    every = math.ceil(12 / cell)  # the font is about 12 pixels high
    side = T * cell
    top = TITLE + margin
    canvas = Image.new("RGB", (margin + num_heads * (side + GAP) - GAP, top + side), "white")
    draw = ImageDraw.Draw(canvas)
    masked = is_masked(weights)
    for head in range(num_heads):
        x = margin + head * (side + GAP)
        canvas.paste(heatmap(weights[head], cell, vmin=0.0, vmax=1.0), (x, top))
        for query in range(T - 1) if masked else ():
            draw.rectangle([x + (query + 1) * cell, top + query * cell, x + side - 1,
                            top + (query + 1) * cell - 1], fill=MASK_GREY)
        draw.text((x + side // 2, 2), f"{title} head {head}".strip(), fill="black", font=font,
                  anchor="ma")
        for i in range(0, len(labels), every):
            canvas.paste(_rotated_text(labels[i], margin, cell, font), (x + i * cell, TITLE))
    for i in range(0, len(labels), every):
        draw.text((margin - 3, top + i * cell + cell // 2), labels[i], fill="black", font=font,
                  anchor="rm")
    return canvas


ATTENTION_NOTE = ("rows: each token (query); columns: the tokens it attends to (keys); grey: "
                  "hidden by the causal mask")


def add_legend(image: Image.Image, vmin: float, vmax: float, note: str = "") -> Image.Image:
    """image with the colour bar of its scale on the right (vmin at the bottom, vmax at the top)
    and, when given, a line of explanation below it."""
    font = _font()
    ends = [f"{vmax:.3g}", f"{vmin:.3g}"]
    bar_width, bar_height = 12, max(48, min(image.height - TITLE, 240))
    x = image.width + GAP
    width = max(x + bar_width + 6 + max(int(font.getlength(t)) for t in ends),
                int(font.getlength(note)) + 8)
    canvas = Image.new("RGB", (width, image.height + (TITLE + 2 if note else 0)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for y in range(bar_height):
        draw.line([(x, TITLE + y), (x + bar_width - 1, TITLE + y)],
                  fill=colour(1 - y / (bar_height - 1)))
    draw.text((x + bar_width + 4, TITLE), ends[0], fill="black", font=font, anchor="lt")
    draw.text((x + bar_width + 4, TITLE + bar_height), ends[1], fill="black", font=font,
              anchor="lb")
    if note:
        draw.text((4, image.height + 2), note, fill="black", font=font, anchor="la")
    return canvas


def layers_image(attentions: list[torch.Tensor], tokens: list[str] | None = None,
                 cell: int | None = None, legend: bool = True) -> Image.Image:
    """Every layer's attention (a list of (H, T, T)): a row of heads per layer, layer 1 on top,
    with one colour bar and a line saying what rows and columns are."""
    rows = [attention_image(w, tokens, cell, title=f"layer {i + 1},")
            for i, w in enumerate(attentions)]
    canvas = Image.new("RGB", (max(r.width for r in rows),
                               sum(r.height for r in rows) + GAP * (len(rows) - 1)), "white")
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height + GAP
    return add_legend(canvas, 0.0, 1.0, ATTENTION_NOTE) if legend else canvas


def positional_encoding_image(table: torch.Tensor, cell: int = 2,
                              labelled: bool = True) -> Image.Image:
    """A (positions, C) position table, one row per position, scaled symmetrically about 0;
    labelled: position down the left and dimension along the top, with tick marks, and a colour
    bar."""
    limit = table.detach().abs().max().item()
    image = heatmap(table, cell, vmin=-limit, vmax=limit)
    if not labelled:
        return image
    font, left, top = _font(), 60, 36
    positions, dims = table.shape
    canvas = Image.new("RGB", (image.width + left, image.height + top), "white")
    canvas.paste(image, (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 2), "dimension ->", fill="black", font=font, anchor="la")
    draw.text((2, top - 2), "position", fill="black", font=font, anchor="lb")
    for d in range(0, dims, _tick_step(dims)):
        draw.text((left + d * cell, top - 4), str(d), fill="black", font=font, anchor="lb")
    for pos in range(0, positions, _tick_step(positions)):
        draw.text((left - 4, top + pos * cell), str(pos), fill="black", font=font, anchor="rt")
    return add_legend(canvas, -limit, limit)


def _tick_step(n: int) -> int:
    """A round step giving about four to eight ticks along n."""
    step = 1
    while n / step > 8:
        step *= 2
    return step


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as the (3, H, W) uint8 tensor TensorBoard's add_image takes."""
    pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1)


HEAD_SCORES_NOTE = "each cell: one head's mean attention of that kind (0 to 1); layer 1 on top"


def head_scores_image(scores: dict[str, torch.Tensor], cell: int = 30) -> Image.Image:
    """Head scores side by side, one panel per kind ({"induction": (L, H), ...}): a row per
    layer, a column per head, each cell coloured and written with its score, on one 0-1 scale."""
    font = _font()
    layers, heads = next(iter(scores.values())).shape
    margin = 6 + int(font.getlength(f"layer {layers}"))
    width = max(heads * cell, max(int(font.getlength(kind)) for kind in scores) + 4)
    top = 2 * TITLE
    canvas = Image.new("RGB", (margin + len(scores) * (width + 3 * GAP), top + layers * cell),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for layer in range(layers):
        draw.text((margin - 4, top + layer * cell + cell // 2), f"layer {layer + 1}",
                  fill="black", font=font, anchor="rm")
    for panel, (kind, values) in enumerate(scores.items()):
        x = margin + panel * (width + 3 * GAP)
        canvas.paste(heatmap(values, cell, vmin=0.0, vmax=1.0), (x, top))
        draw.text((x + heads * cell // 2, 2), kind, fill="black", font=font, anchor="ma")
        for head in range(heads):
            draw.text((x + head * cell + cell // 2, TITLE + 2), f"h{head}", fill="black",
                      font=font, anchor="ma")
            for layer in range(layers):
                value = float(values[layer, head])
                draw.text((x + head * cell + cell // 2, top + layer * cell + cell // 2),
                          f"{value:.2f}"[1:] if value < 1 else "1", font=font, anchor="mm",
                          fill="black" if value > 0.5 else "white")
    return add_legend(canvas, 0.0, 1.0, HEAD_SCORES_NOTE)
