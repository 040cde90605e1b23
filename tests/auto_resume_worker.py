"""Run by test_restarts under torchrun --max-restarts: train.py --resume auto, whose rank 1 kills
itself with SIGKILL at step 6 of the job's first attempt (when KILL_RANK_1 is set)."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train as train_script  # noqa: E402
from minigpt.cli import run_cli  # noqa: E402

real_train = train_script.train


def train(cfg, **kwargs):
    if (os.environ.get("KILL_RANK_1") and os.environ["RANK"] == "1"
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        def on_step(step, total):
            if step == 6:
                os.kill(os.getpid(), signal.SIGKILL)
        kwargs["on_step"] = on_step
    return real_train(cfg, **kwargs)


train_script.train = train
run_cli(lambda: train_script.main(sys.argv[1:]))
