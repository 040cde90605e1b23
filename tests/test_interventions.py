"""Interventions and head scores, each checked against a computation made another way: weights
edited by hand, transformers' own GPT-2 forward with its own hooks, sums that must add up."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.testing import assert_close

from minigpt import GPT, BPETokenizer
from minigpt.errors import InputError
from minigpt.gpt2 import export_gpt2
from minigpt.head_scores import head_kinds, head_scores
from minigpt.hooks import edit
from minigpt.interventions import ablate, logit_attribution, patch

transformers = pytest.importorskip("transformers")


def loss_of(model: GPT, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(ids[None]).float()
    return float(F.cross_entropy(logits[0, :-1], ids[1:]))


def test_knocking_out_a_head_equals_zeroing_its_columns_of_w_out():
    model = GPT(tiny_config()).eval()
    ids = torch.randint(0, 23, (12,))
    by_hand = copy.deepcopy(model)
    D = model.config.head_dim
    with torch.no_grad():
        by_hand.blocks[1].attn.proj.weight[:, 3 * D:4 * D] = 0  # layer 2, head 3
    result = ablate(model, ids, heads=[(2, 3)])
    assert result.ablated_loss == pytest.approx(loss_of(by_hand, ids), abs=1e-5)
    assert result.loss == pytest.approx(loss_of(model, ids), abs=1e-5)
    assert result.next_token_change > 0


def test_mean_ablation_is_the_mean_head_output_folded_into_the_bias():
    model = GPT(tiny_config()).eval()
    ids, reference = torch.randint(0, 23, (12,)), torch.randint(0, 23, (3, 16))
    D = model.config.head_dim
    proj = model.blocks[0].attn.proj
    with torch.no_grad():
        heads = {}
        handle = model.blocks[0].attn.hook_heads.register_forward_hook(
            lambda m, a, out: heads.setdefault("z", out))
        model(reference)
        handle.remove()
        mean = heads["z"][:, :, 1].flatten(0, 1).mean(0)  # head 1's mean output, (D,)
        by_hand = copy.deepcopy(model)
        columns = proj.weight[:, D:2 * D]
        by_hand.blocks[0].attn.proj.bias += columns @ mean
        by_hand.blocks[0].attn.proj.weight[:, D:2 * D] = 0
    result = ablate(model, ids, heads=[(1, 1)], method="mean", reference=reference)
    assert result.ablated_loss == pytest.approx(loss_of(by_hand, ids), abs=1e-5)


def test_knocking_out_a_neuron_equals_zeroing_its_output_weights():
    model = GPT(tiny_config()).eval()
    ids = torch.randint(0, 23, (12,))
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        by_hand.blocks[0].ffn.proj.weight[:, [5, 40]] = 0
    result = ablate(model, ids, neurons=[(1, 5), (1, 40)])
    assert result.ablated_loss == pytest.approx(loss_of(by_hand, ids), abs=1e-5)


@pytest.mark.parametrize("parts,message", [
    ({"heads": [(0, 0)]}, "no head 0 in layer 0"), ({"heads": [(1, 4)]}, "heads 0..3"),
    ({"neurons": [(3, 0)]}, "no feed-forward neuron"), ({"method": "median"}, "'zero' or 'mean'"),
    ({"method": "mean"}, "needs reference"),
])
def test_ablating_what_is_not_there_is_one_clear_error(parts, message):
    with pytest.raises(InputError, match=message):
        ablate(GPT(tiny_config()), torch.tensor([1, 2, 3]), **parts)


def test_patching_recovers_all_at_the_last_stream_and_nothing_where_the_runs_agree():
    model = GPT(tiny_config()).eval()
    clean = torch.tensor([3, 5, 7, 9, 11, 13, 2, 4])
    corrupted = clean.clone()
    corrupted[4] = 17
    found = patch(model, clean, corrupted, answer=6, wrong=8)
    T = len(clean)
    assert found.residual.shape == (3, T) and found.heads.shape == (2, 4)
    assert found.ffn.shape == (2, T)
    assert found.residual[-1, -1] == pytest.approx(1.0, abs=1e-5)  # the whole stream the head reads
    assert found.residual[-1, :-1].abs().max() < 1e-5  # other positions do not reach the logit
    assert found.residual[0, 4] == pytest.approx(1.0, abs=1e-5)  # the changed token, at the input
    assert found.residual[:, :4].abs().max() < 1e-5  # before it the runs are the same
    with pytest.raises(InputError, match="same number of tokens"):
        patch(model, clean, corrupted[:5], 6, 8)


@pytest.mark.parametrize("bias", [True, False])
def test_direct_logit_attribution_parts_sum_to_the_logit(bias):
    model = GPT(tiny_config(bias=bias)).eval()
    ids = torch.randint(0, 23, (10,))
    parts = logit_attribution(model, ids, token=7, position=6)
    with torch.no_grad():
        logit = float(model(ids[None])[0, 6, 7])
    assert abs(sum(parts.values()) - logit) < 1e-4
    assert {"embeddings", "L1H0", "L2H3", "L1 FFN", "L2 FFN"} <= set(parts)
    assert ("final norm bias" in parts) == bias


def test_direct_logit_attribution_says_why_a_post_norm_model_has_none():
    with pytest.raises(InputError, match="post-norm model.*ablate\\(\\) or patch\\(\\)"):
        logit_attribution(GPT(tiny_config(norm_placement="post")), torch.tensor([1, 2]), 3)


# ----------------------------------------------------------------------------- against transformers

@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """A GPT-2 shaped minigpt model and the same weights loaded by transformers."""
    tokenizer = BPETokenizer.train("the cat sat on the mat. the dog ate the log. " * 40, 270)
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, activation="gelu_tanh",
                            context_length=32)).eval()
    out = tmp_path_factory.mktemp("gpt2") / "export"
    export_gpt2(model, tokenizer, out)
    return model, transformers.GPT2LMHeadModel.from_pretrained(out).eval()


def test_head_ablation_matches_transformers_with_its_head_zeroed(gpt2_pair):
    ours, theirs = gpt2_pair
    ids = torch.randint(0, ours.config.vocab_size, (14,))
    D = ours.config.head_dim

    def zero_head(module, args):  # c_proj's input: the heads side by side
        heads = args[0].clone()
        heads[..., 2 * D:3 * D] = 0
        return (heads,)

    handle = theirs.transformer.h[0].attn.c_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            logits = theirs(ids[None]).logits[0]
    finally:
        handle.remove()
    result = ablate(ours, ids, heads=[(1, 2)])
    assert result.ablated_loss == pytest.approx(float(F.cross_entropy(logits[:-1], ids[1:])),
                                                abs=1e-4)
    assert_close(result.ablated_next_token_probs, torch.softmax(logits[-1], -1), atol=1e-5,
                 rtol=1e-4)


def test_residual_patching_matches_transformers_hidden_states_patched_in(gpt2_pair):
    ours, theirs = gpt2_pair
    clean = torch.randint(0, ours.config.vocab_size, (10,))
    corrupted = clean.clone()
    corrupted[3] = (corrupted[3] + 1) % ours.config.vocab_size
    answer, wrong = 5, 9
    found = patch(ours, clean, corrupted, answer, wrong)
    with torch.no_grad():
        hidden = theirs(clean[None], output_hidden_states=True).hidden_states
        base = theirs(corrupted[None]).logits[0, -1]
        clean_diff = float(theirs(clean[None]).logits[0, -1, answer]
                           - theirs(clean[None]).logits[0, -1, wrong])
    corrupted_diff = float(base[answer] - base[wrong])
    for layer, position in [(0, 3), (1, 3), (1, 9), (1, 2)]:
        def write_clean(module, args, layer=layer, position=position):
            stream = args[0].clone()
            stream[:, position] = hidden[layer][:, position]
            return (stream, *args[1:])

        handle = theirs.transformer.h[layer].register_forward_pre_hook(write_clean)
        try:
            with torch.no_grad():
                logits = theirs(corrupted[None]).logits[0, -1]
        finally:
            handle.remove()
        expected = (float(logits[answer] - logits[wrong]) - corrupted_diff) / (
            clean_diff - corrupted_diff)
        assert found.residual[layer, position] == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_logit_attribution_adds_up_to_transformers_logit(gpt2_pair):
    ours, theirs = gpt2_pair
    ids = torch.randint(0, ours.config.vocab_size, (9,))
    with torch.no_grad():
        logit = float(theirs(ids[None]).logits[0, -1, 11])
    assert sum(logit_attribution(ours, ids, token=11).values()) == pytest.approx(logit, abs=1e-4)


# ----------------------------------------------------------------------------- head scores

def test_a_random_model_scores_near_chance():
    model = GPT(tiny_config(context_length=32))
    scores = head_scores(model, torch.randint(0, 23, (2000,)))
    assert scores.induction.shape == scores.previous_token.shape == (2, 4)
    assert scores.induction.max() < 0.15 and scores.previous_token.max() < 0.3
    assert scores.loss_by_position.shape == (32,) and head_kinds(scores) == {}


def attend_at(distance: int | None):
    """A pattern edit: every query attends only to the key `distance` tokens back (None: to the
    first token), or to itself where there is no such key."""
    def forced(pattern):  # (B, H, T, T)
        T = pattern.size(-1)
        queries = torch.arange(T)
        keys = torch.zeros(T, dtype=torch.long) if distance is None else queries - distance
        keys = torch.where(keys >= 0, keys, queries)
        return F.one_hot(keys, T).float().expand_as(pattern)
    return forced


def test_each_score_measures_the_pattern_it_names():
    """Heads forced to attend one token back, to the first token, half a context back (the
    earlier copy of a repeated token) and one less (the token after that copy) score 1 on their
    own kind and are named for it."""
    model = GPT(tiny_config(context_length=32, num_heads=1, num_layers=4))
    half = 16
    forced = {f"blocks.{i}.attn.hook_pattern": attend_at(d)
              for i, d in enumerate([1, None, half, half - 1])}
    with edit(model, forced):
        scores = head_scores(model, torch.randint(0, 23, (2000,)))
    assert scores.previous_token[0, 0] == pytest.approx(1.0)
    assert scores.first_token[1, 0] == pytest.approx(1.0)
    assert scores.duplicate_token[2, 0] == pytest.approx(1.0)
    assert scores.induction[3, 0] == pytest.approx(1.0)
    assert head_kinds(scores) == {(1, 0): "previous-token", (2, 0): "first-token",
                                  (3, 0): "duplicate-token", (4, 0): "induction"}


@pytest.mark.slow
def test_the_induction_config_grows_an_induction_head_and_one_layer_does_not(tmp_path):
    """configs/induction.toml as shipped (about 1.5 minutes here), and its one-layer control."""
    from minigpt.config import config_path, load_config
    from minigpt.inspection import load_snapshots
    from minigpt.training import train

    top, icl = {}, {}
    for layers in (2, 1):
        cfg = load_config(config_path("induction"), {
            "model.num_layers": str(layers), "train.out_dir": str(tmp_path),
            "train.run_name": str(layers), "train.eval_interval": "250"})
        kept = load_snapshots(train(cfg, progress=False).run_dir)
        top[layers] = [float(s["head_scores"]["induction"].max()) for s in kept["snapshots"]]
        icl[layers] = [float(s["head_scores"]["in_context_learning"]) for s in kept["snapshots"]]
    assert top[2][0] < 0.1 and max(top[2][-3:]) > 0.4  # from chance to an induction head
    assert max(top[1]) < 0.15  # no previous-token head to build on
    assert icl[2][-1] < -0.8 and icl[2][-1] < icl[1][-1] - 0.4  # it reads the earlier copy
