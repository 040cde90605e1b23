"""minigpt.optim: torch.optim.AdamW's maths and state layout, without importing torch._dynamo."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.testing import assert_close

from minigpt import GPT
from minigpt.optim import AdamW, fused_supported


def groups_of(model):
    params = list({id(p): p for p in model.parameters()}.values())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def train_steps(model, optimizer, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 23, (4, 13), generator=generator)
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch_adamw(fused):
    if fused and not fused_supported(torch.device("cpu")):
        pytest.skip("this torch has no fused CPU AdamW")
    ours, theirs = GPT(tiny_config()), GPT(tiny_config())
    theirs.load_state_dict(ours.state_dict())
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    train_steps(ours, AdamW(groups_of(ours), fused=fused, **kwargs), 5)
    train_steps(theirs, torch.optim.AdamW(groups_of(theirs), fused=fused, **kwargs), 5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours.head.weight, GPT(tiny_config()).head.weight)


def test_state_moves_between_adamw_and_torch_adamw():
    """Checkpoints written with torch.optim.AdamW resume with ours, and the other way round."""
    start = GPT(tiny_config())
    train_steps(start, AdamW(groups_of(start), lr=3e-3), 3)
    for first, second in ((AdamW, torch.optim.AdamW), (torch.optim.AdamW, AdamW)):
        model = copy.deepcopy(start)
        optimizer = first(groups_of(model), lr=3e-3)
        train_steps(model, optimizer, 3, seed=1)
        moved = copy.deepcopy(model)
        resumed = second(groups_of(moved), lr=1.0)  # the saved lr wins
        resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        train_steps(model, optimizer, 2, seed=2)
        train_steps(moved, resumed, 2, seed=2)
        for a, b in zip(model.parameters(), moved.parameters()):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert all(int(s["step"]) == 5 for s in resumed.state.values())


def test_load_state_dict_refuses_other_groups():
    model = GPT(tiny_config())
    saved = AdamW(groups_of(model)).state_dict()
    with pytest.raises(ValueError, match="other parameter groups"):
        AdamW(model.parameters()).load_state_dict(saved)


def test_training_does_not_import_dynamo(tmp_path):
    """torch.optim would import torch._dynamo (~70 MB resident); train() must not, on CPU."""
    script = f"""
import sys
from minigpt.config import load_config
from minigpt.training import train
cfg = load_config(None, {{"model.context_length": "16", "model.embed_dim": "32",
    "model.num_heads": "2", "model.num_layers": "2", "train.batch_size": "4",
    "train.max_steps": "4", "train.eval_interval": "2", "train.eval_batches": "1",
    "train.checkpoint_interval": "2", "train.sample_tokens": "5", "train.device": "cpu",
    "train.out_dir": {str(tmp_path / "runs")!r}, "data.cache_dir": {str(tmp_path / "cache")!r}}})
train(cfg, progress=False)
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo"))[:3])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
