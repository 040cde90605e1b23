"""Run by test_training's DDP test under torchrun: train briefly, save this rank's weights."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_config  # noqa: E402

from minigpt.model import GPT  # noqa: E402
from minigpt.training import train  # noqa: E402

out = Path(sys.argv[1])
captured = {}
original_init = GPT.__init__


def remember(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    captured["model"] = self


GPT.__init__ = remember
if sys.argv[2:] == ["nan-on-rank-1"] and os.environ["RANK"] == "1":
    import minigpt.step as step

    real_loss, calls = step.lm_loss, []

    def poisoned(logits, targets):  # this rank alone goes NaN from its third step
        calls.append(1)
        return real_loss(logits, targets) * (float("nan") if len(calls) >= 3 else 1.0)

    step.lm_loss = poisoned
on_step = None
if sys.argv[2:] == ["sigterm-to-rank-1"] and os.environ["RANK"] == "1":
    import signal

    def on_step(step, total):  # as if only this rank's process got the signal
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
result = train(run_config(out), progress=False, on_step=on_step)
print(f"rank {os.environ['RANK']} stopped by {result.stopped_by} at step {result.step}")
torch.save(captured["model"].state_dict(), out / f"rank{os.environ['RANK']}.pt")
