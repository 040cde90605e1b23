"""Hook points: every activation named, read with capture, replaced with edit, checked against
computations made by hand from the weights."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.testing import assert_close

from minigpt import GPT
from minigpt.hooks import capture, edit, hook_points

BLOCK_POINTS = ["hook_resid_in", "attn.hook_pattern", "attn.hook_heads", "hook_attn_out",
                "hook_resid_mid", "ffn.hook_neurons", "hook_ffn_out", "hook_resid_out"]


def test_every_hook_point_is_named_in_forward_order():
    model = GPT(tiny_config())
    expected = [f"blocks.{i}.{point}" for i in range(2) for point in BLOCK_POINTS]
    assert sorted(hook_points(model)) == sorted(expected + ["hook_final_norm"])
    with capture(model) as seen:
        model(torch.randint(0, 23, (1, 5)))
    assert list(seen) == [*expected, "hook_final_norm"]  # the order the stream meets them


def test_the_stream_adds_up(variant_model):
    """resid_mid = resid_in + attn_out and resid_out = resid_mid + ffn_out in pre-norm blocks;
    the head reads hook_final_norm."""
    model = variant_model.eval()
    idx = torch.randint(0, 23, (2, 9))
    with capture(model) as seen:
        logits = model(idx)
    assert_close(model.head(seen["hook_final_norm"]), logits)
    if model.config.norm_placement != "pre":
        return
    for i in range(2):
        assert_close(seen[f"blocks.{i}.hook_resid_mid"],
                     seen[f"blocks.{i}.hook_resid_in"] + seen[f"blocks.{i}.hook_attn_out"])
        assert_close(seen[f"blocks.{i}.hook_resid_out"],
                     seen[f"blocks.{i}.hook_resid_mid"] + seen[f"blocks.{i}.hook_ffn_out"])


def test_hooks_are_gone_after_the_block_and_the_fused_path_returns():
    model = GPT(tiny_config()).eval()
    with capture(model, ["blocks.1.attn.hook_pattern"]):
        assert model.blocks[1].attn.hook_pattern.active
    assert not any(point.active for point in hook_points(model).values())


def test_an_identity_edit_changes_nothing_and_a_zero_edit_does():
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 23, (2, 8))
    with edit(model, {name: (lambda x: x) for name in hook_points(model)}):
        assert_close(model(idx), model(idx))
    with edit(model, {"blocks.0.hook_attn_out": torch.zeros_like}):
        knocked_out = model(idx)
    assert not torch.allclose(knocked_out, model(idx))


def test_unknown_hook_point_names_the_real_ones():
    with pytest.raises(KeyError, match="no hook point 'blocks.9.hook_resid_in'.*blocks.0"):
        with capture(GPT(tiny_config()), ["blocks.9.hook_resid_in"]):
            pass


def test_knocking_out_a_head_equals_zeroing_its_slice_of_the_output_projection():
    """An independent computation: the attention output with head h's columns of W_out zeroed."""
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 23, (1, 10))
    head, D = 2, model.config.head_dim
    attn = model.blocks[1].attn

    def zero_head(z):  # z (B, T, H, D)
        z = z.clone()
        z[:, :, head] = 0
        return z

    with capture(model, ["blocks.1.hook_attn_out"]) as seen, \
            edit(model, {"blocks.1.attn.hook_heads": zero_head}):
        model(idx)
    with capture(model, ["blocks.1.hook_resid_in", "blocks.1.attn.hook_heads"]) as clean:
        model(idx)
    heads = clean["blocks.1.attn.hook_heads"].flatten(2)  # (B, T, C), heads side by side
    weight = attn.proj.weight.clone()
    weight[:, head * D:(head + 1) * D] = 0
    assert_close(seen["blocks.1.hook_attn_out"], F.linear(heads, weight, attn.proj.bias))


def test_the_pattern_edit_reaches_the_output():
    """Forcing every query of layer 0 to attend only to the first token gives each position the
    first token's value vector, which an explicit computation confirms."""
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 23, (1, 6))

    def first_token_only(pattern):
        forced = torch.zeros_like(pattern)
        forced[..., 0] = 1
        return forced

    with edit(model, {"blocks.0.attn.hook_pattern": first_token_only}), \
            capture(model, ["blocks.0.attn.hook_heads"]) as seen:
        model(idx)
    heads = seen["blocks.0.attn.hook_heads"]  # (B, T, H, D)
    assert_close(heads, heads[:, :1].expand_as(heads))
