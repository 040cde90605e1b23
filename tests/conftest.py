"""Shared fixtures: small seeded models of every variant, CPU only."""

import itertools
import subprocess
import tempfile
import time

import pytest
import torch
from torch import nn

from minigpt import GPT, ModelConfig
from minigpt.model import ShortConv

VARIANTS = list(itertools.product(("sinusoidal", "learned", "rope"), ("pre", "post")))


def tiny_config(**overrides) -> ModelConfig:
    options = dict(vocab_size=23, context_length=16, embed_dim=32, num_heads=4, num_layers=2)
    return ModelConfig(**{**options, **overrides})


def randomise_short_convs(model: GPT) -> GPT:
    """Short convolutions start at zero (the identity); tests of what they compute need weights."""
    for module in model.modules():
        if isinstance(module, ShortConv):
            nn.init.normal_(module.weight, std=0.5)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def variant_model(request) -> GPT:
    pos_encoding, norm_placement = request.param
    return GPT(tiny_config(pos_encoding=pos_encoding, norm_placement=norm_placement)).eval()


def run_config(tmp_path, **overrides):
    """A tiny training config (seconds on CPU) writing under tmp_path; overrides as "section.key"."""
    from minigpt.config import load_config

    options = {
        "model.context_length": "16", "model.embed_dim": "32", "model.num_heads": "2",
        "model.num_layers": "2", "train.batch_size": "4", "train.max_steps": "8",
        "train.warmup_steps": "2", "train.eval_interval": "4", "train.eval_batches": "2",
        "train.checkpoint_interval": "4", "train.sample_tokens": "5", "train.device": "cpu",
        "train.probe": "false",  # the tests that look at the probe pass "train.probe": True
        "train.out_dir": str(tmp_path / "runs"), "train.run_name": "test",
        "data.cache_dir": str(tmp_path / "cache"),
    }
    options.update({k: str(v) for k, v in overrides.items()})
    return load_config(None, options)


if "PYTEST_XDIST_WORKER" in __import__("os").environ:  # one thread per worker: no oversubscription
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The slow tests (kill -9 batteries, torchrun jobs, lock races, real servers) run one at a
    time, on one worker, even under -n auto: two at once would race for the cores they time."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("slow"))


def run_together(commands, env: dict, timeout: float = 150, tries: int = 2) -> list[tuple[int, str]]:
    """Start the processes `commands(attempt)` gives side by side (torchrun nodes or jobs), wait
    for all of them and return each one's (return code, stderr).

    A try that outlives `timeout` seconds is stopped and made again from `commands(attempt + 1)`,
    which picks a fresh port and output folder: on this VM a gloo group at times fails to
    connect for minutes (a CI run on 2026-11-30 waited 300 s; github.com/pytorch/pytorch/issues/
    167288). The runs take 15-25 s; a hang in minigpt's own code hangs every try and fails.
    SIGTERM first: torchrun's agent then stops its workers, which run in sessions of their own.
    stderr goes to files, so that no process blocks on a full pipe while another waits for it.
    """
    for attempt in range(tries):
        started = commands(attempt)
        logs = [tempfile.TemporaryFile("w+") for _ in started]
        processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                      text=True) for command, log in zip(started, logs)]
        deadline = time.monotonic() + timeout
        try:
            for process in processes:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _stop(processes)
            continue
        return [(process.returncode, _read(log)) for process, log in zip(processes, logs)]
    pytest.fail(f"{tries} tries of {timeout:.0f} s each hung: {started[0]}")


def _read(log) -> str:
    log.seek(0)
    return log.read()


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL for what is left after 30 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
