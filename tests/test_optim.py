"""minigpt.optim: torch.optim.AdamW (fused) and torch.optim.Muon over the right parameters."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.testing import assert_close

from minigpt import GPT
from minigpt.config import TrainConfig
from minigpt.optim import make_optimizers


def names_of(model, params):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in params}


def test_adamw_decays_weight_matrices_only():
    model = GPT(tiny_config(num_layers=1, tie_weights=False))
    [adamw] = make_optimizers(model, TrainConfig())
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["fused"]
    decay, no_decay = adamw.param_groups
    decayed = names_of(model, decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"blocks.0.attn.qkv.weight", "blocks.0.ffn.fc.weight", "head.weight"} <= decayed
    assert not decayed & {"token_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.bias",
                          "blocks.0.norm1.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    [adamw] = make_optimizers(model, TrainConfig(decay_embeddings=True))
    decayed = names_of(model, adamw.param_groups[0]["params"])
    assert {"token_emb.weight", "pos_emb.weight", "head.weight"} <= decayed
    assert "blocks.0.norm1.weight" not in decayed


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(tiny_config(tie_weights=False))
    muon, adamw = make_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.05, lr=3e-3))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    [group] = muon.param_groups
    matrices = names_of(model, group["params"])
    assert group["lr"] == group["initial_lr"] == 0.05 and group["weight_decay"] == 0.0
    assert matrices == {f"blocks.{i}.{name}.weight" for i in range(2)
                        for name in ("attn.qkv", "attn.proj", "ffn.fc", "ffn.proj")}
    rest = [names_of(model, g["params"]) for g in adamw.param_groups]
    assert rest[0] == {"head.weight"}
    assert {"token_emb.weight", "pos_emb.weight", "blocks.0.norm1.weight"} <= rest[1]
    assert sum(map(len, [matrices, *rest])) == len(list(model.parameters()))
    assert not matrices & (rest[0] | rest[1])


def test_muon_weight_decay_shrinks_the_block_matrices_by_lr_times_decay():
    model = GPT(tiny_config())
    cfg = TrainConfig(optimizer="muon", muon_lr=0.05, muon_weight_decay=0.2)
    muon, _ = make_optimizers(model, cfg)
    [group] = muon.param_groups
    assert group["weight_decay"] == 0.2
    before = [p.detach().clone() for p in group["params"]]
    for p in group["params"]:
        p.grad = torch.zeros_like(p)  # no gradient: the decay alone moves the weights
    muon.step()
    for p, old in zip(group["params"], before):
        assert_close(p.detach(), old * (1 - 0.05 * 0.2))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_each_optimizer_fits_a_batch(optimizer):
    model = GPT(tiny_config())
    optimizers = make_optimizers(model, TrainConfig(optimizer=optimizer, lr=3e-3, muon_lr=0.02))
    idx = torch.randint(0, 23, (4, 17))
    for _ in range(150):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        for o in optimizers:
            o.step()
            o.zero_grad()
    assert loss.item() < 0.3
