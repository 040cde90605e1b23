"""Pictures with torch alone: a colour map, attention heatmaps, and a PNG writer.

    image = attention_image(seen.attentions[0])    # (3, H, W) uint8, heads side by side
    image = label_tokens(image, seen.tokens, cell=8, num_heads=4)   # tokens on both axes
    write_png("attention.png", image)

Images are (3, height, width) uint8 tensors, the layout TensorBoard's add_image takes. Only the
token labels need a font: they are drawn with Pillow (installed with TensorBoard) when present,
and left out otherwise.
"""

import struct
import zlib
from pathlib import Path

import torch

# A dark-blue -> teal -> green -> yellow ramp (perceptually ordered, readable in grey).
_RAMP = torch.tensor([
    [0.05, 0.03, 0.25],
    [0.17, 0.25, 0.53],
    [0.10, 0.50, 0.56],
    [0.25, 0.72, 0.45],
    [0.72, 0.85, 0.20],
    [0.99, 0.91, 0.15],
])


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1] (any shape S) to RGB floats (S..., 3) by linear interpolation."""
    x = values.float().clamp(0, 1) * (len(_RAMP) - 1)
    low = x.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (x - low).unsqueeze(-1)
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def heatmap(matrix: torch.Tensor, cell: int = 8, vmin: float | None = None,
            vmax: float | None = None) -> torch.Tensor:
    """(R, C) matrix -> (3, R * cell, C * cell) uint8 image, scaled to [vmin, vmax]."""
    matrix = matrix.detach().float().cpu()
    vmin = matrix.min().item() if vmin is None else vmin
    vmax = matrix.max().item() if vmax is None else vmax
    scaled = (matrix - vmin) / max(vmax - vmin, 1e-12)
    rgb = colormap(scaled).permute(2, 0, 1)  # (3, R, C)
    rgb = rgb.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    return (rgb * 255).round().to(torch.uint8)


def attention_image(weights: torch.Tensor, cell: int = 8, gap: int = 4) -> torch.Tensor:
    """One layer's attention weights (H, T, T) -> heads tiled left to right, white gaps between.

    Rows are queries (tokens top to bottom), columns keys (left to right); weights in [0, 1].
    """
    heads = [heatmap(w, cell, vmin=0.0, vmax=1.0) for w in weights]
    spacer = torch.full((3, heads[0].size(1), gap), 255, dtype=torch.uint8)
    parts = [p for head in heads for p in (head, spacer)][:-1]
    return torch.cat(parts, dim=2)


def label_tokens(image: torch.Tensor, tokens: list[str], cell: int, num_heads: int,
                 gap: int = 4) -> torch.Tensor:
    """Add the tokens along both axes of an attention_image: queries down the left, keys along the
    top of every head. Returns the image unchanged when Pillow is not installed."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return image
    font = ImageFont.load_default()
    labels = [repr(t)[1:-1][:10] for t in tokens]
    margin = 6 + max(int(font.getlength(label)) for label in labels)
    _, height, width = image.shape
    canvas = Image.new("RGB", (width + margin, height + margin), "white")
    canvas.paste(Image.frombytes("RGB", (width, height),
                                 bytes(image.permute(1, 2, 0).flatten().tolist())), (margin, margin))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        y = margin + i * cell + cell // 2
        draw.text((margin - 3, y), label, fill="black", font=font, anchor="rm")
        column = Image.new("RGB", (margin, cell), "white")
        ImageDraw.Draw(column).text((3, cell // 2), label, fill="black", font=font, anchor="lm")
        column = column.rotate(90, expand=True)
        for head in range(num_heads):
            x = margin + head * (len(tokens) * cell + gap) + i * cell
            canvas.paste(column, (x, 0))
    pixels = torch.tensor(list(canvas.tobytes()), dtype=torch.uint8)
    return pixels.view(height + margin, width + margin, 3).permute(2, 0, 1).contiguous()


def layers_image(attentions: list[torch.Tensor], cell: int = 8, gap: int = 4,
                 tokens: list[str] | None = None) -> torch.Tensor:
    """Every layer's attention (a list of (H, T, T)): one row of heads per layer, top to bottom,
    with the tokens along both axes of each row when given."""
    rows = [attention_image(w, cell, gap) for w in attentions]
    if tokens is not None:
        rows = [label_tokens(row, tokens, cell, w.size(0), gap) for row, w in zip(rows, attentions)]
    spacer = torch.full((3, gap, rows[0].size(2)), 255, dtype=torch.uint8)
    return torch.cat([p for row in rows for p in (row, spacer)][:-1], dim=1)


def positional_encoding_image(table: torch.Tensor, cell: int = 2) -> torch.Tensor:
    """The sinusoidal table (positions, C) in [-1, 1]: one row per position."""
    return heatmap(table, cell, vmin=-1.0, vmax=1.0)


def png_bytes(image: torch.Tensor) -> bytes:
    """Encode a (3, H, W) uint8 image as PNG (8-bit RGB, no filtering)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.size(0) != 3:
        raise ValueError(f"expected a (3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    _, height, width = image.shape
    pixels = bytes(image.permute(1, 2, 0).flatten().tolist())  # row-major RGB triples
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def write_png(path: str | Path, image: torch.Tensor) -> None:
    Path(path).write_bytes(png_bytes(image))
