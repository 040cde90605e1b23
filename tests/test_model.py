"""The model: shapes, causality, attention paths, positional encodings, init, capacity to learn."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_short_convs, tiny_config
from torch.testing import assert_close

from minigpt import GPT, ModelConfig
from minigpt.errors import ConfigError
from minigpt.hooks import capture
from minigpt.inspection import logit_lens
from minigpt.model import ShortConv, explicit_attention
from minigpt.positions import PositionalEncoding, RotaryEmbedding, apply_rotary, sinusoidal_table


def test_forward_shape(variant_model):
    idx = torch.randint(0, 23, (3, 16))
    assert variant_model(idx).shape == (3, 16, 23)


def test_causality(variant_model):
    """Changing tokens after position t leaves the logits at positions <= t unchanged."""
    idx = torch.randint(0, 23, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % 23
    before, after = variant_model(idx), variant_model(changed)
    assert_close(before[:, :7], after[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_fused_attention_matches_explicit_path(variant_model):
    """Watching the attention pattern switches to the explicit softmax path; the logits agree."""
    idx = torch.randint(0, 23, (2, 16))
    with capture(variant_model, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]):
        explicit = variant_model(idx)
    assert_close(variant_model(idx), explicit, rtol=1e-5, atol=1e-5)


def test_hook_points_show_every_layer_and_head(variant_model):
    with capture(variant_model) as seen:
        variant_model(torch.randint(0, 23, (2, 10)))
    for layer in range(2):
        weights = seen[f"blocks.{layer}.attn.hook_pattern"]
        assert weights.shape == (2, 4, 10, 10)
        assert_close(weights.sum(-1), torch.ones(2, 4, 10), rtol=0, atol=1e-5)
        assert torch.all(weights.triu(diagonal=1) == 0)  # no weight on future tokens
        assert seen[f"blocks.{layer}.attn.hook_heads"].shape == (2, 10, 4, 8)
        for point in ("resid_in", "attn_out", "resid_mid", "resid_out"):
            assert seen[f"blocks.{layer}.hook_{point}"].shape == (2, 10, 32)
    assert seen["hook_final_norm"].shape == (2, 10, 32)


def test_explicit_attention_is_softmax_of_scaled_scores():
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    out, weights = explicit_attention(q, k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    scores = scores + torch.full((5, 5), float("-inf")).triu(1)
    assert_close(weights, torch.softmax(scores, -1))
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-6)


def test_sinusoidal_table_follows_the_deck_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    # every position gets a unique fingerprint
    assert torch.cdist(table, table).add(torch.eye(50)).min() > 0.1


def test_sinusoidal_encoding_is_a_buffer_not_a_parameter():
    model = GPT(tiny_config(pos_encoding="sinusoidal"))
    names = [n for n, _ in model.named_parameters()]
    assert not any("pos_emb" in n for n in names)
    assert "pos_emb.table" not in model.state_dict()


@pytest.mark.parametrize("kind", ["sinusoidal", "learned", "rope"])
def test_position_encodings_share_one_interface(kind):
    """embed() for absolute encodings, rotation() for relative ones, vectors() for pictures."""
    model = GPT(tiny_config(pos_encoding=kind))
    pos = model.pos_emb
    assert isinstance(pos, PositionalEncoding) and pos.relative == (kind == "rope")
    x = torch.randn(2, 5, 32)
    shifted = pos.embed(x, start=3)
    if kind == "rope":
        assert torch.equal(shifted, x) and pos.vectors() is None
        cos, sin = pos.rotation(3, 5)
        assert cos.shape == sin.shape == (5, 4)  # (T, head_dim / 2)
    else:
        table = pos.vectors()
        assert table.shape == (16, 32) and pos.rotation(3, 5) is None
        scale = math.sqrt(32) if kind == "sinusoidal" else 1.0  # the paper scales embeddings
        assert_close(shifted, x * scale + table[3:8])


def test_the_base_encoding_gives_no_position_information():
    """With PositionalEncoding itself, a one-layer model cannot tell positions apart: permuting
    earlier tokens does not change the last position's output (attention sees them as a set)."""
    model = GPT(tiny_config(num_layers=1)).eval()
    a, b = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[5, 3, 4, 6]])
    assert not torch.allclose(model(a)[0, -1], model(b)[0, -1])  # learned positions: it can
    model.pos_emb = PositionalEncoding()
    assert_close(model(a)[0, -1], model(b)[0, -1])


def test_rope_preserves_norms_and_depends_on_relative_position_only():
    rope = RotaryEmbedding(head_dim=16)
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)

    def rotated(x, pos):
        return apply_rotary(x, *rope.rotation(pos, 1))

    assert_close(rotated(q, 37).norm(), q.norm())
    score = (rotated(q, 10) * rotated(k, 4)).sum()
    assert_close((rotated(q, 106) * rotated(k, 100)).sum(), score, rtol=1e-4, atol=1e-4)
    assert not torch.allclose((rotated(q, 10) * rotated(k, 5)).sum(), score)


def test_initial_loss_is_close_to_uniform():
    cfg = tiny_config(vocab_size=500, embed_dim=64)
    model = GPT(cfg)
    idx, targets = torch.randint(0, 500, (2, 8, 16))
    loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert loss.item() == pytest.approx(math.log(500), rel=0.02)


@pytest.mark.parametrize("pos_encoding,norm_placement", [("learned", "pre"), ("sinusoidal", "post")])
def test_overfits_a_single_batch(pos_encoding, norm_placement):
    model = GPT(tiny_config(pos_encoding=pos_encoding, norm_placement=norm_placement))
    idx = torch.randint(0, 23, (4, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_deck_demo_config_parameter_count():
    """The deck counts ~100K parameters for embed_dim 64, 4 heads, 2 layers (outside embeddings)."""
    model = GPT(ModelConfig(vocab_size=30, embed_dim=64, num_heads=4, num_layers=2,
                            pos_encoding="sinusoidal", norm_placement="post"))
    assert model.num_params(non_embedding=True) == 99_968
    assert model.num_params() == 99_968 + 30 * 64  # tied head adds nothing


def test_param_count_counts_untied_head_and_learned_positions():
    tied = GPT(tiny_config(tie_weights=True))
    untied = GPT(tiny_config(tie_weights=False))
    assert untied.num_params() - tied.num_params() == 23 * 32
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)
    assert tied.num_params() - tied.num_params(non_embedding=True) == 23 * 32 + 16 * 32


@pytest.mark.parametrize("options", [
    {}, {"bias": False}, {"tie_weights": False}, {"pos_encoding": "rope"},
    {"pos_encoding": "sinusoidal", "norm_placement": "post", "ffn_mult": 2},
    {"bias": False, "tie_weights": False, "pos_encoding": "learned", "num_layers": 3},
    {"qk_norm": True, "activation": "relu2", "logit_softcap": 30.0, "zero_init_proj": True},
    {"short_conv": 3}, {"short_conv": 2, "ffn": False, "norm_placement": "post"},
])
def test_count_params_matches_the_built_model(options):
    cfg = tiny_config(**options)
    assert GPT.count_params(cfg) == GPT(cfg).num_params()


def test_weight_tying_shares_one_tensor():
    model = GPT(tiny_config(tie_weights=True))
    assert model.head.weight is model.token_emb.weight


def test_residual_projections_use_scaled_init():
    model = GPT(tiny_config(num_layers=8, embed_dim=128, ffn_mult=4))
    std = model.blocks[0].ffn.proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert model.blocks[0].ffn.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_bias_option_removes_biases():
    model = GPT(tiny_config(bias=False))
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_ffn_mult_sets_hidden_width():
    model = GPT(tiny_config(ffn_mult=2))
    assert model.blocks[0].ffn.fc.out_features == 64


def test_absolute_positions_refuse_sequences_longer_than_context():
    model = GPT(tiny_config(pos_encoding="learned"))
    with pytest.raises(ValueError, match="context_length is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("options,message", [
    (dict(embed_dim=30, num_heads=4), r"divisible by model.num_heads.*try num_heads in \[1, 2, 3, 5"),
    (dict(embed_dim=10**20, num_heads=3), r"try num_heads in \[1, 2, 4, 5, 8, .*, 50, 64\]"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(vocab_size=-3), "vocab_size must be a positive integer"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(pos_encoding="alibi"), "pos_encoding must be one of"),
    (dict(norm_placement="middle"), "norm_placement must be one of"),
    (dict(embed_dim=12, num_heads=4, pos_encoding="rope"), "even head_dim"),
    (dict(context_length=2.5), "context_length must be a positive integer"),
    (dict(activation="relu3"), "activation must be one of"),
    (dict(logit_softcap=-1.0), "logit_softcap must be a number >= 0"),
    (dict(logit_softcap=math.inf), "logit_softcap must be a number >= 0"),
])
def test_config_validation(options, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**options)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['embd_dim'\]"):
        ModelConfig.from_dict({"vocab_size": 10, "embd_dim": 32})


def test_model_needs_a_vocab_size():
    with pytest.raises(ValueError, match="vocab_size must be set"):
        GPT(ModelConfig())


def test_token_embedding_is_a_row_lookup_of_the_embedding_table():
    """The deck's step 1: "cat" -> embedding[cat_id]. The same id gives the same vector wherever
    it stands; the position is added on top (here: none, so the rows are the model's input)."""
    model = GPT(tiny_config(pos_encoding="none")).eval()
    ids = torch.tensor([[7, 3, 7]])
    with capture(model, ["blocks.0.hook_resid_in"]) as seen:
        model(ids)
    assert_close(seen["blocks.0.hook_resid_in"][0], model.token_emb.weight[[7, 3, 7]])
    assert model.token_emb.weight.shape == (23, 32)  # (vocab_size, embed_dim)


@pytest.mark.parametrize("activation,approximate", [("gelu", "none"), ("gelu_tanh", "tanh")])
def test_feed_forward_is_expand_gelu_project(activation, approximate):
    """The deck's step 4: Linear(C, 4C) -> GELU -> Linear(4C, C), the same MLP at every position;
    GELU is x * Phi(x), or GPT-2's tanh approximation of it."""
    ffn = GPT(tiny_config(activation=activation)).blocks[0].ffn
    assert (ffn.fc.in_features, ffn.fc.out_features) == (32, 128)
    x = torch.randn(2, 5, 32)
    hidden = ffn.fc(x)
    phi = 0.5 * (1 + torch.erf(hidden / math.sqrt(2)))  # the standard normal's CDF
    exact = ffn.proj(hidden * phi)
    assert_close(ffn(x), ffn.proj(torch.nn.functional.gelu(hidden, approximate=approximate)))
    if activation == "gelu":
        assert_close(ffn(x), exact)
    else:
        assert not torch.allclose(ffn(x), exact, atol=1e-7)
        assert_close(ffn(x), exact, atol=1e-3, rtol=1e-3)
    assert_close(ffn(x[:, 2:3]), ffn(x)[:, 2:3])  # each position on its own


def test_relu2_feed_forward_squares_the_positive_part():
    ffn = GPT(tiny_config(activation="relu2")).blocks[0].ffn
    x = torch.randn(2, 5, 32)
    hidden = ffn.fc(x)
    assert_close(ffn(x), ffn.proj(torch.where(hidden > 0, hidden * hidden, 0.0)))
    with capture(ffn, ["hook_neurons"]) as seen:
        ffn(x)
    assert (seen["hook_neurons"] >= 0).all() and (seen["hook_neurons"] == 0).any()


def scale_queries_and_keys(model: GPT, factor: float) -> None:
    """Multiply every layer's W_q and W_k (and their biases) by factor, leaving W_v alone."""
    with torch.no_grad():
        for block in model.blocks:
            C = block.attn.proj.in_features
            block.attn.qkv.weight[:2 * C] *= factor
            block.attn.qkv.bias[:2 * C] *= factor


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(pos_encoding):
    ids = torch.randint(0, 23, (2, 12))
    for qk_norm in (False, True):
        model = GPT(tiny_config(qk_norm=qk_norm, pos_encoding=pos_encoding)).eval()
        before = model(ids)
        scale_queries_and_keys(model, 7.0)
        after = model(ids)
        assert torch.allclose(before, after, atol=1e-5) == qk_norm
    with capture(model, ["blocks.0.attn.hook_pattern"]) as seen:  # the pattern hook's path too
        assert_close(model(ids), after, atol=1e-5, rtol=1e-5)
    assert_close(seen["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, 4, 12))


def test_logit_softcap_squashes_the_logits_and_the_lens_reads_them_the_same_way():
    torch.manual_seed(0)
    capped = GPT(tiny_config(logit_softcap=2.0)).eval()
    plain = GPT(tiny_config()).eval()
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        capped.head.weight.mul_(200)  # tied: large logits, so the cap bites
    ids = torch.randint(0, 23, (1, 10))
    logits = capped(ids)
    assert 1.9 < logits.abs().max() <= 2.0
    with torch.no_grad():
        plain.head.weight.mul_(200)
        assert_close(logits, 2.0 * torch.tanh(plain(ids) / 2.0))
    with capture(capped, ["blocks.1.hook_resid_out"]) as seen:
        capped(ids)
    assert_close(logit_lens(capped, seen["blocks.1.hook_resid_out"]), logits)


def test_zero_init_projections_make_every_block_start_as_the_identity():
    model = GPT(tiny_config(zero_init_proj=True)).eval()
    names = [f"blocks.{i}.hook_resid_{where}" for i in range(2) for where in ("in", "out")]
    with capture(model, names) as seen:
        model(torch.randint(0, 23, (2, 9)))
    for i in range(2):
        assert torch.equal(seen[f"blocks.{i}.hook_resid_out"], seen[f"blocks.{i}.hook_resid_in"])
    assert model.blocks[0].attn.qkv.weight.abs().sum() > 0  # only the writing projections


def test_short_conv_starts_as_the_identity():
    torch.manual_seed(0)
    plain = GPT(tiny_config())
    torch.manual_seed(0)
    convolved = GPT(tiny_config(short_conv=4))
    idx = torch.randint(0, 23, (2, 16))
    assert_close(convolved(idx), plain(idx))
    assert len([m for m in convolved.modules() if isinstance(m, ShortConv)]) == 2 * 2


def test_short_conv_is_a_causal_depthwise_convolution():
    conv = randomise_short_convs(GPT(tiny_config(short_conv=3))).blocks[0].conv1
    x = torch.randn(2, 10, 32)
    reference = F.conv1d(F.pad(x.transpose(1, 2), (2, 0)), conv.weight, groups=32).transpose(1, 2)
    assert_close(conv(x), x + reference)
    later = x.clone()
    later[:, 6] += 1.0
    changed = (conv(later) - conv(x)).abs().amax(dim=(0, 2))
    assert changed[:6].eq(0).all() and changed[6:9].gt(0).all() and changed[9] == 0  # K = 3


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_short_conv_keeps_the_model_causal(norm_placement):
    model = randomise_short_convs(GPT(tiny_config(short_conv=4, norm_placement=norm_placement)))
    idx = torch.randint(0, 23, (1, 12))
    edited = idx.clone()
    edited[0, 7] = (edited[0, 7] + 1) % 23
    before, after = model(idx), model(edited)
    assert_close(after[:, :7], before[:, :7])
    assert not torch.allclose(after[:, 7:], before[:, 7:])


@pytest.mark.parametrize("value", [-1, True, 2.0])
def test_short_conv_refuses_a_kernel_it_cannot_use(value):
    with pytest.raises(ConfigError, match=r"model.short_conv must be an integer >= 0 \(0: off\)"):
        tiny_config(short_conv=value)
