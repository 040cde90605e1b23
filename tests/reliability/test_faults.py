"""Faults survived: kill -9 at random moments, SIGINT/SIGTERM, a full disk. Nothing is lost.

The kill batteries drive a real train.py process and take a minute or more under load, so they
are marked slow: `pytest -m slow` runs them (.ci/run does, after the default suite).
"""

import errno
import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt import checkpoint as checkpoint_module
from minigpt import run as run_module
from minigpt.checkpoint import load, load_checkpoint
from minigpt.errors import DiskFullError
from minigpt.resume import resume_config
from minigpt.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BEST_LINE = re.compile(r"step (\d+): train [\d.]+, val ([\d.]+) \(best\)")


def train_command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-u", str(ROOT / "train.py"), "--quiet",
            "--train.out_dir", str(tmp_path / "runs"), "--train.run_name", "victim",
            "--data.cache_dir", str(tmp_path / "cache"), "--model.context_length", "16",
            "--model.embed_dim", "32", "--model.num_heads", "2", "--model.num_layers", "2",
            "--train.batch_size", "8", "--train.max_steps", "300", "--train.eval_interval", "5",
            "--train.eval_batches", "2", "--train.checkpoint_interval", "1",
            "--train.sample_tokens", "0", *extra]


def start(tmp_path: Path, resume: bool) -> subprocess.Popen:
    run_dir = tmp_path / "runs" / "victim"
    command = ([sys.executable, "-u", str(ROOT / "train.py"), "--quiet", "--resume", str(run_dir)]
               if resume else train_command(tmp_path))
    log = open(tmp_path / "log.txt", "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def best_logged(tmp_path: Path) -> float:
    values = [float(v) for _, v in BEST_LINE.findall((tmp_path / "log.txt").read_text())]
    return min(values, default=float("inf"))


def kill_battery(tmp_path: Path, kills: int, seed: int = 0) -> int:
    """Kill train.py with SIGKILL `kills` times at random moments; check the run after each."""
    rng = random.Random(seed)
    run_dir = tmp_path / "runs" / "victim"
    survived = 0
    for _ in range(kills):
        process = start(tmp_path, resume=(run_dir / "last.pt").exists())
        deadline = time.time() + 60
        while not (run_dir / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)  # wait until training (and checkpointing) is under way
        time.sleep(rng.uniform(0.0, 1.5))
        process.kill()
        process.wait()
        last = load_checkpoint(run_dir / "last.pt")  # always loadable
        assert last["step"] > 0
        if (run_dir / "best.pt").exists():
            logged = best_logged(tmp_path)  # printed with 4 decimals
            assert load_checkpoint(run_dir / "best.pt")["best_val_loss"] <= logged + 5e-5
        load(run_dir)
        survived += 1
    finished = subprocess.run([sys.executable, str(ROOT / "train.py"), "--quiet", "--resume",
                               str(run_dir)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert load_checkpoint(run_dir / "last.pt")["step"] == 300
    return survived


@pytest.mark.slow
def test_kill_9_three_times_then_resume_finishes(tmp_path):
    assert kill_battery(tmp_path, kills=3) == 3


@pytest.mark.slow
def test_kill_9_twenty_times_then_resume_finishes(tmp_path):
    assert kill_battery(tmp_path, kills=20, seed=1) == 20


@pytest.mark.slow  # a real process, a few seconds; in-process stops: test_training, test_portability
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_exits_cleanly(tmp_path, sig, code):
    process = subprocess.Popen(train_command(tmp_path, "--train.checkpoint_interval", "1000"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "victim"
    deadline = time.time() + 60
    while not (run_dir / "snapshots.pt").exists() and time.time() < deadline:  # step 0's probe
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert f"--resume {run_dir}" in out + err
    step = load_checkpoint(run_dir / "last.pt")["step"]
    assert 0 < step < 300
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--quiet", "--resume",
                              str(run_dir), "--train.max_steps", str(step + 3)],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run_dir / "last.pt")["step"] == step + 3


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = run_config(tmp_path, **{"train.checkpoint_interval": 2, "train.eval_interval": 100})
    real_save = torch.save
    saves = []

    def fill_disk(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO) or "snapshots" in obj:  # the token cache, snapshots.pt
            return real_save(obj, f, *args, **kwargs)
        saves.append(1)
        if len(saves) == 3:  # the third save: write half, then the disk is full
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", fill_disk)
    with pytest.raises(DiskFullError, match="cannot write .*last.pt: its file system is full"):
        train(cfg, progress=False)
    run_dir = tmp_path / "runs" / "test"
    assert load_checkpoint(run_dir / "last.pt")["step"] == 4  # the save before the failed one
    assert not list(run_dir.glob("*.tmp"))


def test_unwritable_run_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs directory should be")
    done = subprocess.run(train_command(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr
    assert blocker.read_text() == "a file where the runs directory should be"


def test_a_start_stopped_before_its_first_checkpoint_is_no_dead_end(tmp_path):
    """What a kill between config.json and the first checkpoint leaves (config, events, a temp
    file of a save cut short) neither blocks a re-run of the same command nor --resume."""
    cfg = run_config(tmp_path)
    run = run_module.Run.start(cfg)
    run.open_log(lambda line: None).close(cfg.to_dict(), float("inf"), None)
    run.close()  # the lock goes with a killed process
    run_dir = tmp_path / "runs" / "test"
    (run_dir / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", ".last.pt.k1ll3d.tmp"}
    aborted = set(run_dir.glob("events.out.tfevents.*"))
    again = train(cfg, progress=False)  # the same command again
    assert again.step == 8 and not list(run_dir.glob("*.tmp"))
    assert aborted and not aborted & set(run_dir.glob("events.out.tfevents.*"))  # replaced
    fresh = run_config(tmp_path, **{"train.run_name": "second"})
    second = run_module.Run.start(fresh)
    second.open_log(lambda line: None).close(fresh.to_dict(), 0.0, None)
    second.close()
    resumed = train(resume_config(tmp_path / "runs" / "second"),
                    resume=tmp_path / "runs" / "second", progress=False)
    assert resumed.step == 8 and resumed.losses == again.losses  # from step 0, the same run


def test_a_signal_during_start_up_ends_in_a_resumable_checkpoint(tmp_path, monkeypatch):
    real_prepare = run_module.prepare_data

    def slow_prepare(*args, **kwargs):
        data = real_prepare(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives as the model is being built
        return data

    monkeypatch.setattr(run_module, "prepare_data", slow_prepare)
    lines = []
    result = train(run_config(tmp_path), progress=False, log=lines.append)
    run_dir = tmp_path / "runs" / "test"
    assert result.stopped_by == "SIGTERM" and result.step == 0
    assert load_checkpoint(run_dir / "last.pt")["step"] == 0
    assert any(f"--resume {run_dir}" in line for line in lines)
    monkeypatch.undo()
    assert train(resume_config(run_dir), resume=run_dir, progress=False).step == 8


def test_a_second_ctrl_c_during_the_final_save_does_not_cut_it_short(tmp_path, monkeypatch):
    real_save = run_module.save_checkpoint
    saves = []

    def interrupted_save(path, state):
        saves.append(path.name)
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, mid-save
        real_save(path, state)

    def first_ctrl_c(step, total):
        if step == 3:
            monkeypatch.setattr(run_module, "save_checkpoint", interrupted_save)
            os.kill(os.getpid(), signal.SIGINT)

    result = train(run_config(tmp_path, **{"train.checkpoint_interval": 100}), progress=False,
                   on_step=first_ctrl_c)
    assert result.stopped_by == "SIGINT" and saves == ["last.pt"]
    assert load_checkpoint(tmp_path / "runs" / "test" / "last.pt")["step"] == 3


def test_temporary_files_of_killed_saves_go_when_the_run_is_next_used(tmp_path):
    train(run_config(tmp_path), stop_at=4, progress=False)
    run_dir = tmp_path / "runs" / "test"
    for name in (".last.pt.a1b2c3.tmp", ".best.pt.d4e5f6.tmp"):
        (run_dir / name).write_bytes(b"\0" * 4096)
    train(resume_config(run_dir), resume=run_dir, progress=False)
    assert not list(run_dir.glob("*.tmp"))
    assert {"last.pt", "best.pt", "config.json"} <= {p.name for p in run_dir.iterdir()}
