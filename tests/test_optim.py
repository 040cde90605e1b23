"""minigpt.optim: torch.optim.AdamW (fused) and torch.optim.Muon (orthogonalising in float32 on
CPU) over the right parameters."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.testing import assert_close

from minigpt import GPT
from minigpt.config import TrainConfig
from minigpt.optim import Muon, make_optimizers, normalise_neurons, orthogonalise


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
    model = GPT(tiny_config(tie_weights=False, short_conv=3))
    muon, adamw = make_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.05, lr=3e-3))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    [group] = muon.param_groups
    matrices = names_of(model, group["params"])
    assert group["lr"] == group["initial_lr"] == 0.05 and group["weight_decay"] == 0.0
    assert matrices == {f"blocks.{i}.{name}.weight" for i in range(2)
                        for name in ("attn.qkv", "attn.proj", "ffn.fc", "ffn.proj")}
    rest = [names_of(model, g["params"]) for g in adamw.param_groups]
    assert rest[0] == {"head.weight"}
    assert {"token_emb.weight", "pos_emb.weight", "blocks.0.norm1.weight",
            "blocks.1.conv1.weight", "blocks.1.conv2.weight"} <= rest[1]  # no decay
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


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_orthogonalise_flattens_the_singular_values(shape):
    torch.manual_seed(0)
    matrix = torch.randn(*shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))  # ill-conditioned
    out = orthogonalise(matrix, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert out.shape == matrix.shape and out.dtype == matrix.dtype
    singular = torch.linalg.svdvals(out)
    assert torch.linalg.cond(matrix) > 10
    assert singular.min() > 0.2 and singular.max() < 1.25 and torch.linalg.cond(out) < 6
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)  # and the directions are U V^T's
    assert F.cosine_similarity(out.flatten(), (u @ vh).flatten(), dim=0) > 0.95


def test_minigpts_muon_steps_as_torchs_does_in_float32_and_shares_its_state():
    torch.manual_seed(0)
    weights = [torch.randn(64, 192), torch.randn(256, 64)]
    ours_params = [torch.nn.Parameter(w.clone()) for w in weights]
    theirs_params = [torch.nn.Parameter(w.clone()) for w in weights]
    options = dict(lr=0.05, momentum=0.9, weight_decay=0.1, adjust_lr_fn="original")
    ours, theirs = Muon(ours_params, **options), torch.optim.Muon(theirs_params, **options)
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for params, optimizer in ((ours_params, ours), (theirs_params, theirs)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for mine, torchs, start in zip(ours_params, theirs_params, weights):
        moved = (torchs - start).norm()
        assert (mine - torchs).norm() < 0.02 * moved  # torch's bfloat16 differs by a little
        assert moved > 0.01 * start.norm()
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()
    theirs.load_state_dict(ours.state_dict())  # a checkpoint of one resumes in the other
    assert_close(theirs.state[theirs_params[0]]["momentum_buffer"],
                 ours.state[ours_params[0]]["momentum_buffer"])


def test_normuon_evens_out_each_neurons_step_and_keeps_the_steps_norm():
    torch.manual_seed(0)
    update = torch.randn(6, 16) * torch.arange(1.0, 7.0)[:, None]  # rows of growing size
    variance = torch.zeros(6, 1)
    out = normalise_neurons(update, variance, beta=0.9)
    assert_close(variance, 0.1 * update.square().mean(dim=1, keepdim=True))
    rms = out.square().mean(dim=1).sqrt()
    assert_close(rms, rms.mean().expand(6)) and out.norm() == pytest.approx(update.norm())
    # a neuron that was large for a while is held back when it turns small, and the others not
    later = normalise_neurons(torch.ones(6, 16), variance, beta=0.9)
    assert later[0].norm() > later[5].norm()


def test_muon_with_neuron_norm_moves_each_matrix_as_far_by_another_route():
    torch.manual_seed(0)
    weight, grad = torch.randn(32, 64), torch.randn(32, 64) * torch.linspace(0.1, 3, 32)[:, None]
    params = {on: torch.nn.Parameter(weight.clone()) for on in (False, True)}
    for on, p in params.items():
        p.grad = grad.clone()
        optimizer = Muon([p], lr=0.05, momentum=0.9, weight_decay=0.0, adjust_lr_fn="original",
                         neuron_norm=0.95 if on else 0.0)
        optimizer.step()
        assert ("neuron_variance" in optimizer.state[p]) == on
    plain, normed = (params[on].detach() - weight for on in (False, True))
    assert normed.norm() == pytest.approx(plain.norm(), rel=1e-4)
    assert F.cosine_similarity(plain.flatten(), normed.flatten(), dim=0) < 0.999
    row_rms = normed.square().mean(dim=1).sqrt()
    assert row_rms.max() / row_rms.min() < 1.01  # each neuron the same step
    assert TrainConfig().muon_neuron_norm is False
    cfg = TrainConfig(optimizer="muon", muon_neuron_norm=True)
    assert make_optimizers(GPT(tiny_config()), cfg)[0].neuron_norm == 0.95
