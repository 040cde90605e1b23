"""Muon: orthogonalised momentum for the block matrices, AdamW for the rest."""

import pytest
import torch
import torch.nn.functional as F
from conftest import run_config, tiny_config

from minigpt import GPT
from minigpt.config import TrainConfig
from minigpt.muon import Muon, orthogonalise
from minigpt.training import make_optimizer, resume_config, train


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonalise_sets_singular_values_near_one(shape):
    g = torch.randn(shape) @ torch.diag(torch.logspace(-1, 0.5, shape[1]))
    out = orthogonalise(g)
    assert out.shape == shape
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.5 and singular.max() < 1.3
    # the same directions as g: U V^T has a positive inner product with g
    assert (out * g).sum() > 0


def test_muon_groups_cover_every_parameter_once():
    model = GPT(tiny_config(tie_weights=False))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon"))
    assert isinstance(optimizer, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adam_matrices, others = (
        {names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert "blocks.0.attn.qkv.weight" in muon and "blocks.1.ffn.proj.weight" in muon
    assert adam_matrices == {"head.weight"}
    assert {"token_emb.weight", "pos_emb.weight", "blocks.0.norm1.weight"} <= others
    assert len(muon) + len(adam_matrices) + len(others) == len(list(model.parameters()))


def test_muon_fits_a_batch():
    model = GPT(tiny_config())
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02))
    idx = torch.randint(0, 23, (4, 17))
    for _ in range(150):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3


def test_muon_training_resumes_exactly(tmp_path):
    options = {"train.optimizer": "muon", "train.max_steps": 10}
    straight = train(run_config(tmp_path, **options, **{"train.run_name": "a"}), progress=False)
    first = train(run_config(tmp_path, **options, **{"train.run_name": "b"}), stop_at=5,
                  progress=False)
    run_dir = tmp_path / "runs" / "b"
    second = train(resume_config(run_dir), resume=run_dir, progress=False)
    assert first.losses + second.losses == straight.losses
