"""Looking inside: attention maps, layer outputs, the logit lens, and the pictures of them."""

import pytest
import torch
from conftest import tiny_config
from PIL import Image
from torch.testing import assert_close

from minigpt import GPT, CharTokenizer
from minigpt.heatmap import (
    GAP,
    TITLE,
    attention_image,
    colour,
    colours,
    heatmap,
    layers_image,
    positional_encoding_image,
    to_tensor,
)
from minigpt.inspection import (
    SNAPSHOTS,
    inspect_prompt,
    load_snapshots,
    logit_lens,
    position_similarity,
    probe_snapshot,
    token_probabilities,
    top_activations,
)
from minigpt.positions import sinusoidal_table

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


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_attention_and_ffn_changes_are_measured_apart(placement):
    """Each sublayer's output size over the stream it is added to, computed by hand from the
    modules; in a pre-norm block the two add up to the block's whole change."""
    tokenizer = CharTokenizer.train(TEXT)
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, norm_placement=placement)).eval()
    seen = inspect_prompt(model, tokenizer, "the cat")
    x = seen.hidden_states[0][None]
    block = model.blocks[0]
    if placement == "pre":
        attn = block.attn(block.norm1(x))[0]
        mid = x + attn
        ffn = block.ffn(block.norm2(mid))
        assert_close(seen.hidden_states[1], (mid + ffn)[0])
    else:
        attn = block.attn(x)[0]
        mid = block.norm1(x + attn)
        ffn = block.ffn(mid)
    assert_close(seen.attention_change[0], (attn.norm(dim=-1) / x.norm(dim=-1))[0])
    assert_close(seen.ffn_change[0], (ffn.norm(dim=-1) / mid.norm(dim=-1))[0])
    assert seen.attention_change.shape == seen.ffn_change.shape == (2, 7)


def test_norm_scales_show_each_layernorm_resetting_the_stream(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        model.token_emb.weight.mul_(500)  # a large stream: the norms must shrink it
    seen = inspect_prompt(model, tokenizer, "the cat")
    assert [n.name for n in seen.norm_scales] == [
        "layer 1, norm 1", "layer 1, norm 2", "layer 2, norm 1", "layer 2, norm 2", "final norm"]
    first = seen.norm_scales[0]
    rms = seen.hidden_states[0].pow(2).mean(-1).sqrt()
    assert_close(first.before, rms)
    for norm in seen.norm_scales:  # fresh LayerNorms (gain 1, bias 0) give size 1 exactly
        assert_close(norm.after, torch.ones(7), rtol=1e-3, atol=1e-3)
        assert (norm.before > 5).all()


def test_ablated_models_are_inspected_without_the_parts_they_lack():
    tokenizer = CharTokenizer.train(TEXT)
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, ffn=False, layer_norm=False)).eval()
    seen = inspect_prompt(model, tokenizer, "the cat")
    assert seen.ffn_change is None and seen.norm_scales == []
    assert seen.attention_change.shape == (2, 7)


def test_every_sinusoidal_position_has_its_own_fingerprint():
    similarity = position_similarity(sinusoidal_table(64, 32))
    assert_close(similarity.diagonal(), torch.ones(64))
    off_diagonal = similarity - torch.eye(64) * 2
    assert off_diagonal.max(dim=1).values.max() < 0.999  # no other position looks the same
    assert (similarity[10, 11] > similarity[10, 30]) and (similarity[10, 9] > similarity[10, 50])


def test_last_layer_of_the_logit_lens_is_the_model_output(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    seen = inspect_prompt(model, tokenizer, "the mat", top_k=1)
    ids = torch.tensor([tokenizer.encode("the mat")])
    top = model(ids)[0].argmax(-1).tolist()
    assert [row[0] for row in seen.logit_lens[-1].tokens] == [tokenizer.decode([i]) for i in top]
    assert_close(logit_lens(model, seen.hidden_states[-1]), model(ids)[0], rtol=1e-5, atol=1e-5)


def test_token_probabilities_cover_every_token_in_the_context_it_was_chosen_in(
        model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = tokenizer.encode("the cat sat on the mat.\nthe mat sat on the cat.")  # 47 > 16 tokens
    probs = token_probabilities(model, ids, start=5)
    assert len(probs) == len(ids) - 5
    for position in (5, 16, len(ids) - 1):  # inside the first window, at its edge, far past it
        context = torch.tensor([ids[max(0, position - 16):position]])
        expected = torch.softmax(model(context)[0, -1], -1)[ids[position]].item()
        assert probs[position - 5] == pytest.approx(expected, rel=1e-5)


def luminance(rgb) -> float:
    r, g, b = rgb
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_top_activations_are_the_neurons_strongest_places_recomputed_by_hand():
    model = GPT(tiny_config(context_length=8)).eval()
    tokens = torch.randint(0, 23, (203,), generator=torch.Generator().manual_seed(1))
    layer, neuron = 2, 5
    found = top_activations(model, tokens, layer, neuron, count=4, before=3, after=1)
    ffn = model.blocks[layer - 1].ffn
    by_hand = []  # the neuron at every position: fc's output through GELU, one window at a time
    handle = ffn.fc.register_forward_hook(
        lambda module, args, out: by_hand.append(torch.nn.functional.gelu(out)[0, :, neuron]))
    with torch.no_grad():
        for start in range(0, 200, 8):  # 25 whole windows; the last 3 tokens fill none
            model(tokens[start:start + 8][None])
    handle.remove()
    acts = torch.stack(by_hand)  # (25, 8)
    peaks = [c.activations[c.peak].item() for c in found]
    assert len(found) == 4 and peaks == sorted(peaks, reverse=True)
    assert_close(torch.tensor(peaks[0]), acts.max())
    for context in found:  # each shown token's activation is the one computed in its window
        (w, t), *_ = (acts == context.activations[context.peak]).nonzero().tolist()
        shown = tokens[w * 8:(w + 1) * 8][max(0, t - 3):t + 2].tolist()
        assert context.ids == shown and context.ids[context.peak] == tokens[w * 8 + t]
        assert_close(context.activations, acts[w, max(0, t - 3):t + 2])
    with pytest.raises(ValueError, match="no feed-forward blocks"):
        top_activations(GPT(tiny_config(ffn=False)), tokens, 1, 0)
    with pytest.raises(ValueError, match="no neuron 999 in layer 1"):
        top_activations(model, tokens, 1, 999)


def test_palette_runs_dark_to_bright_and_clamps():
    assert colour(0.0) == (0x0D, 0x08, 0x40) and colour(1.0) == (0xFC, 0xE8, 0x26)
    assert colour(-3.0) == colour(0.0) and colour(9.0) == colour(1.0)
    ramp = [colour(i / 20) for i in range(21)]
    assert all(luminance(a) < luminance(b) for a, b in zip(ramp, ramp[1:]))
    assert colours(3) == ["#0d0840", "#{:02x}{:02x}{:02x}".format(*colour(0.5)), "#fce826"]


def pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    data = image.convert("RGB").tobytes()
    return [tuple(data[i:i + 3]) for i in range(0, len(data), 3)]


def close_to(pixel, expected, tolerance=3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def test_heatmap_cells_take_the_palette_colour_of_their_value():
    matrix = torch.tensor([[0.0, 1.0, 0.5], [0.25, 0.75, 0.1]])
    image = heatmap(matrix, cell=4, vmin=0.0, vmax=1.0)
    assert image.size == (12, 8) and image.mode == "RGB"
    for r in range(2):
        for c in range(3):
            corners = {image.getpixel((4 * c + dx, 4 * r + dy)) for dx in (0, 3) for dy in (0, 3)}
            assert len(corners) == 1  # one cell, one colour
            assert close_to(corners.pop(), colour(matrix[r, c].item()))


def test_attention_image_draws_each_head_where_its_title_says():
    weights = torch.softmax(torch.randn(3, 5, 5) * 3, -1)
    image = attention_image(weights, cell=10)
    side = 5 * 10
    assert image.size == (3 * side + 2 * GAP, TITLE + side)
    for head in range(3):
        x0 = head * (side + GAP)
        for q, k in [(0, 0), (4, 2), (2, 1)]:
            pixel = image.getpixel((x0 + k * 10 + 5, TITLE + q * 10 + 5))
            assert close_to(pixel, colour(weights[head, q, k].item()))
        title = image.crop((x0, 0, x0 + side, TITLE))
        assert min(luminance(p) for p in pixels(title)) < 100  # dark text: "head N"
    gap = image.crop((side, TITLE, side + GAP, TITLE + side))
    assert set(pixels(gap)) == {(255, 255, 255)}


def test_token_labels_add_one_margin_and_leave_the_heatmaps_as_they_were():
    weights = torch.softmax(torch.randn(2, 3, 3), -1)
    plain = attention_image(weights, cell=12)
    labelled = attention_image(weights, ["the", "cat", "sat"], cell=12)
    margin = labelled.width - plain.width
    assert margin > 5 and labelled.height - plain.height == margin
    heatmaps = labelled.crop((margin, TITLE + margin, labelled.width, labelled.height))
    assert pixels(heatmaps) == pixels(plain.crop((0, TITLE, plain.width, plain.height)))
    left = labelled.crop((0, TITLE + margin, margin, labelled.height))
    above = labelled.crop((margin, TITLE, labelled.width, TITLE + margin))
    assert min(map(luminance, pixels(left))) < 100 and min(map(luminance, pixels(above))) < 100


def test_long_prompts_label_every_nth_token():
    tokens = [f"t{i}" for i in range(60)]
    image = attention_image(torch.softmax(torch.randn(1, 60, 60), -1), tokens)
    plain = attention_image(torch.softmax(torch.randn(1, 60, 60), -1))
    margin = image.width - plain.width
    cell = plain.width // 60
    rows = [image.crop((0, TITLE + margin + i * cell, margin, TITLE + margin + (i + 1) * cell))
            for i in range(60)]
    inked = [min(map(luminance, pixels(row))) < 100 for row in rows]
    assert inked[0] and 10 < sum(inked) < 60  # some rows labelled, not every one (they'd overlap)


def test_layers_image_stacks_a_titled_row_per_layer(tmp_path):
    attentions = [torch.softmax(torch.randn(2, 4, 4), -1) for _ in range(3)]
    image = layers_image(attentions, ["a", "b", "c", "d"], cell=8, legend=False)
    row = attention_image(attentions[0], ["a", "b", "c", "d"], cell=8, title="layer 1,")
    assert image.size == (row.width, 3 * row.height + 2 * GAP)
    assert pixels(image.crop((0, 0, row.width, row.height))) == pixels(row)
    image.save(tmp_path / "layers.png")
    with Image.open(tmp_path / "layers.png") as decoded:
        assert decoded.format == "PNG" and decoded.size == image.size
        assert pixels(decoded) == pixels(image)


def test_one_legend_gives_the_scale_and_says_what_rows_and_columns_are():
    attentions = [torch.softmax(torch.randn(2, 4, 4), -1) for _ in range(2)]
    bare = layers_image(attentions, ["a", "b", "c", "d"], cell=8, legend=False)
    image = layers_image(attentions, ["a", "b", "c", "d"], cell=8)
    assert image.width > bare.width and image.height > bare.height  # bar right, note below
    assert pixels(image.crop((0, 0, bare.width, bare.height))) == pixels(bare)
    length = max(48, min(bare.height - TITLE, 240))
    bar = image.crop((bare.width + GAP, TITLE, bare.width + GAP + 12, TITLE + length))
    top, bottom = bar.getpixel((6, 0)), bar.getpixel((6, length - 1))
    assert close_to(top, colour(1.0)) and close_to(bottom, colour(0.0))
    note = image.crop((0, bare.height, image.width, image.height))
    assert min(map(luminance, pixels(note))) < 100  # the line of text under the heads


def test_position_table_is_labelled_and_keeps_its_rows():
    table = sinusoidal_table(16, 32)
    bare = positional_encoding_image(table, cell=2, labelled=False)
    labelled = positional_encoding_image(table, cell=2)
    assert labelled.width > bare.width and labelled.height > bare.height
    left, top = 60, 36  # the tick margins
    assert pixels(labelled.crop((left, top, left + bare.width, top + bare.height))) == pixels(bare)
    assert min(map(luminance, pixels(labelled.crop((0, 0, left, top))))) < 100  # "position"


def test_positional_encoding_image_rows_differ():
    image = positional_encoding_image(sinusoidal_table(16, 32), cell=1, labelled=False)
    assert image.size == (32, 16)
    rows = {tuple(pixels(image.crop((0, r, 32, r + 1)))) for r in range(16)}
    assert len(rows) == 16  # every position's fingerprint is unique


def test_to_tensor_is_the_layout_tensorboard_takes():
    image = heatmap(torch.rand(3, 5), cell=2)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 6, 10) and tensor.dtype == torch.uint8
    assert tuple(tensor[:, 4, 7].tolist()) == image.getpixel((7, 4))


@pytest.mark.parametrize("content", [
    [1, 2], {"steps": [1]}, {"tokens": ["a"], "steps": [1, 2], "snapshots": []},
    {"tokens": ["a", "b"], "steps": ["x"], "snapshots": [{"attention": torch.zeros(1, 1, 2, 2)}]},
    {"tokens": ["a", "b"], "steps": [4], "snapshots": [{"attention": torch.zeros(1, 1, 3, 3)}]},
    {"tokens": ["a", "b"], "steps": [4], "snapshots": [{"lens": 1}]},
    {"tokens": 5, "steps": [4], "snapshots": [{"attention": torch.zeros(2, 2)}]},
])
def test_snapshots_of_another_layout_are_ignored_not_shown(tmp_path, content):
    """The app's "Watch it learn" and a resumed run read snapshots.pt; a file of another layout
    (hand-made, foreign, damaged but loadable) counts as none, as an unreadable one does."""
    torch.save(content, tmp_path / SNAPSHOTS)
    assert load_snapshots(tmp_path) is None
    model = GPT(tiny_config())
    good = {"tokens": ["a", "b", "c"], "steps": [4], "snapshots": [probe_snapshot(model, [1, 2, 3])]}
    torch.save(good, tmp_path / SNAPSHOTS)
    assert load_snapshots(tmp_path)["steps"] == [4]


def test_attention_images_draw_the_causal_mask_grey():
    """What the mask hides is drawn grey, not as the dark colour of a weight of 0."""
    from minigpt.heatmap import MASK_GREY, attention_image

    grey = tuple(int(MASK_GREY[i:i + 2], 16) for i in (1, 3, 5))
    causal = torch.softmax(torch.randn(2, 4, 4).masked_fill(torch.ones(4, 4).triu(1).bool(),
                                                            float("-inf")), dim=-1)
    image = attention_image(causal, ["a", "b", "c", "d"], cell=10)
    top, left = image.height - 40, image.width - 40  # head 1's cells: row 0, key 3 is masked
    assert image.getpixel((left + 35, top + 5)) == grey
    assert image.getpixel((left + 5, top + 35)) != grey  # row 3, key 0 is a weight
    open_heads = attention_image(torch.full((2, 4, 4), 0.25), ["a", "b", "c", "d"], cell=10)
    assert open_heads.getpixel((left + 35, top + 5)) != grey
