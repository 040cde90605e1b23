"""The ablation switches: each takes one part of the transformer away, and what that does."""

import json
import math
import os
import signal

import pytest
import torch
from conftest import run_config, tiny_config
from torch import nn
from torch.testing import assert_close

from minigpt import GPT, ablation
from minigpt.checkpoint import load, load_checkpoint
from minigpt.data import prepare_data
from minigpt.evaluation import split_loss
from minigpt.generation import generate
from minigpt.hooks import capture
from minigpt.model import Block, FeedForward
from minigpt.runtime import Runtime
from minigpt.training import train

SWITCHES = [{"pos_encoding": "none"}, {"residual": False}, {"layer_norm": False},
            {"num_heads": 1}, {"ffn": False}, {"causal": False},
            {"residual": False, "layer_norm": False, "ffn": False, "norm_placement": "post"}]


@pytest.mark.parametrize("options", SWITCHES, ids=lambda o: ",".join(map(str, o.items())))
def test_every_switch_builds_trains_and_counts_its_parameters(options):
    """30 AdamW steps on one batch of a 5-token cycle (0 4 8 12 16 0 ...): the loss falls well
    below its start near ln(23) for every ablated model (the weakest, without residuals, still
    learns the cycle's unigram frequencies, ln 5 = 1.6), and every parameter takes part."""
    cfg = tiny_config(**options)
    model = GPT(cfg)
    assert GPT.count_params(cfg) == model.num_params()
    tokens = (torch.arange(17) + torch.arange(4)[:, None]) % 5 * 4  # (B=4, T+1=17)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(inputs)
        assert logits.shape == (4, 16, 23)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(23)) < 0.2
    assert losses[-1] < 0.6 * losses[0], losses
    frozen = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not frozen, f"parameters that training never changed: {frozen}"


def test_no_positions_sees_a_bag_of_tokens():
    """pos_encoding = none: a one-layer model's last output cannot tell the order of the tokens
    before it, while the default (learned positions) can."""
    a, b = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[5, 3, 4, 6]])
    none = GPT(tiny_config(num_layers=1, pos_encoding="none")).eval()
    assert list(none.pos_emb.parameters()) == [] and none.pos_emb.vectors() is None
    assert_close(none(a)[0, -1], none(b)[0, -1])
    learned = GPT(tiny_config(num_layers=1)).eval()
    assert not torch.allclose(learned(a)[0, -1], learned(b)[0, -1])


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_residual_switch_drops_the_x_plus(placement):
    torch.manual_seed(0)
    cfg = tiny_config(norm_placement=placement)
    with_residual = Block(cfg).eval()
    without = Block(tiny_config(norm_placement=placement, residual=False)).eval()
    without.load_state_dict(with_residual.state_dict())
    x = torch.randn(1, 5, 32)
    b = with_residual
    if placement == "pre":
        a = b.attn(b.norm1(x))
        expected_with = x + a + b.ffn(b.norm2(x + a))
        a0 = b.attn(b.norm1(x))
        expected_without = b.ffn(b.norm2(a0))
    else:
        h = b.norm1(x + b.attn(x))
        expected_with = b.norm2(h + b.ffn(h))
        h0 = b.norm1(b.attn(x))
        expected_without = b.norm2(b.ffn(h0))
    assert_close(with_residual(x), expected_with)
    assert_close(without(x), expected_without)


def test_layer_norm_and_ffn_switches_remove_their_modules():
    no_norm = GPT(tiny_config(layer_norm=False))
    assert not any(isinstance(m, nn.LayerNorm) for m in no_norm.modules())
    no_ffn = GPT(tiny_config(ffn=False))
    assert not any(isinstance(m, FeedForward) for m in no_ffn.modules())
    assert no_ffn.blocks[0].norm2 is None
    assert GPT.flops_per_token(no_ffn.config) < GPT.flops_per_token(tiny_config())


@pytest.mark.parametrize("causal", [True, False])
def test_without_the_mask_earlier_outputs_see_later_tokens(causal):
    model = GPT(tiny_config(causal=causal)).eval()
    a = torch.tensor([[1, 2, 3, 4, 5]])
    b = torch.tensor([[1, 2, 3, 4, 9]])  # only the last token differs
    changed = not torch.allclose(model(a)[0, :4], model(b)[0, :4])
    assert changed == (not causal)
    with capture(model, ["blocks.0.attn.hook_pattern"]) as seen:
        explicit = model(a)
    assert_close(model(a), explicit)  # the fused and explicit paths agree
    weights = seen["blocks.0.attn.hook_pattern"][0]
    assert (weights[..., 0, 1:] > 0).all() == (not causal)  # token 0 attends to later ones


def test_checkpoints_record_the_switches_and_sample(tmp_path):
    cfg = run_config(tmp_path, **{"model.residual": "false", "model.ffn": "false",
                                  "model.pos_encoding": "none", "model.layer_norm": "false"})
    result = train(cfg, progress=False)
    saved = json.loads((result.run_dir / "config.json").read_text())["model"]
    assert (saved["residual"], saved["ffn"], saved["pos_encoding"], saved["layer_norm"]) == (
        False, False, "none", False)
    model, tokenizer = load(result.run_dir / "last.pt")
    assert (model.config.residual, model.config.ffn, model.config.layer_norm) == (False, False, False)
    assert_close(model.state_dict(), result.model.state_dict())
    out = generate(model, torch.tensor([[1]]), 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 6)


@pytest.mark.slow  # trains two models until the cheat shows
def test_training_without_the_mask_cheats(tmp_path):
    """Near-zero training loss by copying the next token, and a model that is useless when it
    must generate, where no later token is there: its causal val loss is far worse than that of a
    causally trained model with the same budget."""
    options = {"train.max_steps": "300", "train.lr": "6e-3", "train.eval_interval": "300",
               "train.batch_size": "8", "train.sample_tokens": "0", "model.pos_encoding": "rope",
               "model.embed_dim": "64", "model.num_layers": "1"}
    cheat_cfg = run_config(tmp_path, **options, **{"model.causal": "false",
                                                   "train.run_name": "cheat"})
    with pytest.warns(UserWarning, match="model.causal = false"):
        cheat = train(cheat_cfg, progress=False)
    honest = train(run_config(tmp_path, **options, **{"train.run_name": "honest"}), progress=False)
    assert sum(cheat.losses[-10:]) / 10 < 0.3 and sum(honest.losses[-10:]) / 10 > 1.0
    runtime = Runtime(torch.device("cpu"))
    val = prepare_data(run_config(tmp_path).data, 16).val
    assert split_loss(cheat.model, val, 8, runtime) < 0.5  # it reads val's answers too
    generating = ablation.generating_loss(cheat.model, cheat_cfg)
    assert generating > split_loss(honest.model, val, 8, runtime) + 1.0


def test_the_ablation_command_trains_each_run_under_one_parent(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    cache = (tmp_path / "cache").as_posix()
    config.write_text(f'[model]\ncontext_length = 16\nembed_dim = 32\nnum_heads = 2\n'
                      f'num_layers = 2\n[data]\ncache_dir = "{cache}"\n[train]\nbatch_size = 4\n'
                      f'eval_interval = 3\nsample_tokens = 0\nwarmup_steps = 1\ndevice = "cpu"\n')
    assert ablation.main(["--config", str(config), "--only", "baseline", "no-residual",
                          "--max-steps", "3", "--out-dir", str(tmp_path / "runs"), "--quiet"]) == 0
    (parent,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in parent.iterdir()) == ["baseline", "no-residual", "results.md"]
    for run in ("baseline", "no-residual"):
        assert (parent / run / "last.pt").is_file()
        assert list((parent / run).glob("events.out.tfevents.*"))
    table = (parent / "results.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| baseline |")
    assert table[3].startswith("| no-residual | the residual connections |")
    assert f"tensorboard --logdir {parent}" in capsys.readouterr().out


def test_the_ablation_command_refuses_a_bad_budget(tmp_path):
    with pytest.raises(ValueError, match="--max-steps must be > 0"):
        ablation.main(["--max-steps", "0", "--out-dir", str(tmp_path)])


def test_ctrl_c_stops_the_ablation_with_the_table_of_the_runs_that_finished(tmp_path, monkeypatch,
                                                                            capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(f'[model]\ncontext_length = 16\nembed_dim = 32\nnum_heads = 2\n'
                      f'num_layers = 1\n[data]\ncache_dir = "{(tmp_path / "cache").as_posix()}"\n'
                      f'[train]\nbatch_size = 4\neval_interval = 3\nsample_tokens = 0\n'
                      f'warmup_steps = 1\ndevice = "cpu"\n')

    def ctrl_c_in_the_second_run(cfg, **kwargs):
        def on_step(step, total):
            if cfg.train.run_name == "no-ffn" and step == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return train(cfg, on_step=on_step, **kwargs)

    monkeypatch.setattr(ablation, "train", ctrl_c_in_the_second_run)
    code = ablation.main(["--config", str(config), "--only", "baseline", "no-ffn", "single-head",
                          "--max-steps", "6", "--out-dir", str(tmp_path / "runs"), "--quiet"])
    assert code == 130
    (parent,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in parent.iterdir()) == ["baseline", "no-ffn", "results.md"]
    assert load_checkpoint(parent / "no-ffn" / "last.pt")["step"] == 2
    table = (parent / "results.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| baseline |")
