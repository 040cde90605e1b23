"""Looking inside: attention maps, layer outputs, the logit lens, and pictures without extra packages."""

import struct
import zlib

import pytest
import torch
from conftest import tiny_config
from torch.testing import assert_close

from minigpt import GPT, CharTokenizer
from minigpt.heatmap import (
    attention_image,
    colormap,
    heatmap,
    label_tokens,
    layers_image,
    png_bytes,
    positional_encoding_image,
    write_png,
)
from minigpt.inspection import inspect_prompt, logit_lens
from minigpt.model import sinusoidal_table

TEXT = "the cat sat on the mat.\n"


@pytest.fixture
def model_and_tokenizer():
    tokenizer = CharTokenizer.train(TEXT)
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, norm_placement="pre")).eval()
    return model, tokenizer


def test_inspect_prompt_shapes_and_token_labels(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    seen = inspect_prompt(model, tokenizer, "the cat", top_k=3)
    assert seen.tokens == list("the cat")
    assert len(seen.attentions) == 2 and seen.attentions[0].shape == (4, 7, 7)
    assert len(seen.hidden_states) == 3 and seen.hidden_states[0].shape == (7, 32)
    assert seen.layer_change.shape == (2, 7) and (seen.layer_change > 0).all()
    assert len(seen.logit_lens) == 3
    assert all(len(row) == 3 for row in seen.logit_lens[1].tokens)
    assert seen.next_token_probs.shape == (tokenizer.vocab_size,)
    assert_close(seen.next_token_probs.sum(), torch.tensor(1.0))


def test_last_layer_of_the_logit_lens_is_the_model_output(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    seen = inspect_prompt(model, tokenizer, "the mat", top_k=1)
    ids = torch.tensor([tokenizer.encode("the mat")])
    top = model(ids)[0].argmax(-1).tolist()
    assert [row[0] for row in seen.logit_lens[-1].tokens] == [tokenizer.decode([i]) for i in top]
    assert_close(logit_lens(model, seen.hidden_states[-1]), model(ids)[0], rtol=1e-5, atol=1e-5)


def test_colormap_endpoints_and_monotone_brightness():
    rgb = colormap(torch.linspace(0, 1, 11))
    assert rgb.shape == (11, 3)
    brightness = rgb.sum(-1)
    assert (brightness[1:] > brightness[:-1]).all()
    assert_close(colormap(torch.tensor([-5.0, 7.0])), colormap(torch.tensor([0.0, 1.0])))


def test_heatmap_scales_cells():
    image = heatmap(torch.tensor([[0.0, 1.0], [0.5, 0.25]]), cell=3)
    assert image.shape == (3, 6, 6) and image.dtype == torch.uint8
    assert torch.equal(image[:, 0, 0], image[:, 2, 2])  # one cell, one colour
    assert image[:, 0, 3].sum() > image[:, 0, 0].sum()  # 1.0 is brighter than 0.0


def test_attention_image_tiles_heads_with_gaps():
    weights = torch.softmax(torch.randn(4, 5, 5), -1)
    image = attention_image(weights, cell=2, gap=3)
    assert image.shape == (3, 10, 4 * 10 + 3 * 3)
    assert (image[:, :, 10:13] == 255).all()


def test_positional_encoding_image_rows_differ():
    image = positional_encoding_image(sinusoidal_table(16, 32), cell=1)
    assert image.shape == (3, 16, 32)
    rows = {tuple(image[:, r].flatten().tolist()) for r in range(16)}
    assert len(rows) == 16  # every position's fingerprint is unique


def test_png_is_valid_and_decodes_to_the_pixels(tmp_path):
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    data = png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (7, 5, 8, 2)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + idat_len])
    rows = [raw[y * 22 + 1:(y + 1) * 22] for y in range(5)]
    assert bytes(b"".join(rows)) == bytes(image.permute(1, 2, 0).flatten().tolist())
    write_png(tmp_path / "x.png", image)
    assert (tmp_path / "x.png").read_bytes() == data


def test_png_rejects_non_images():
    with pytest.raises(ValueError, match=r"expected a \(3, H, W\) uint8 image"):
        png_bytes(torch.zeros(5, 5))


def test_token_labels_add_margins_and_leave_the_heatmap_intact():
    weights = torch.softmax(torch.randn(2, 3, 3), -1)
    grid = attention_image(weights, cell=10, gap=4)
    labelled = label_tokens(grid, ["the", "cat", "sat"], cell=10, num_heads=2, gap=4)
    margin = labelled.size(1) - grid.size(1)
    assert margin > 5 and labelled.size(2) - grid.size(2) == margin
    assert torch.equal(labelled[:, margin:, margin:], grid)
    assert (labelled[:, :margin, margin:] < 128).any()  # some dark text above the heads


def test_token_labels_are_skipped_without_pillow(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)
    grid = attention_image(torch.softmax(torch.randn(1, 2, 2), -1))
    assert torch.equal(label_tokens(grid, ["a", "b"], cell=8, num_heads=1), grid)


def test_layers_image_stacks_labelled_layers():
    attentions = [torch.softmax(torch.randn(2, 4, 4), -1) for _ in range(3)]
    plain = layers_image(attentions, cell=8)
    labelled = layers_image(attentions, cell=8, tokens=["a", "b", "c", "d"])
    assert plain.shape == (3, 3 * 32 + 2 * 4, 2 * 32 + 4)
    assert labelled.size(1) > plain.size(1) and labelled.size(2) > plain.size(2)
