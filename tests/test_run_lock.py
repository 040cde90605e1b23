"""One run per directory (minigpt.lock): a second start is refused naming the first, and a holder
killed with kill -9 leaves nothing that blocks the next start."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_config

from minigpt.checkpoint import load_checkpoint
from minigpt.errors import RunInUseError
from minigpt.lock import LOCK_NAME, RunLock
from minigpt.training import train

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time\n"
        "from minigpt.lock import RunLock\n"
        "RunLock.take(sys.argv[1])\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


def test_a_second_lock_is_refused_naming_the_holder_and_release_frees_it(tmp_path):
    first = RunLock.take(tmp_path / "run")
    with pytest.raises(RunInUseError) as refused:
        RunLock.take(tmp_path / "run")
    message = str(refused.value)
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message
    assert "--train.run_name" in message and "\n" not in message
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    RunLock.take(tmp_path / "run").release()


def test_a_lock_whose_holder_was_killed_with_kill_9_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"process {holder.pid} on host"):
            RunLock.take(run_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_dir / LOCK_NAME).exists()  # the dead holder's file stays...
    lock = RunLock.take(run_dir)  # ...and is no obstacle
    assert f"pid={os.getpid()} " in (run_dir / LOCK_NAME).read_text()
    lock.release()


def test_training_refuses_a_run_directory_in_use_and_leaves_it_alone(tmp_path):
    cfg = run_config(tmp_path)
    run_dir = tmp_path / "runs" / "test"
    other = RunLock.take(run_dir)
    with pytest.raises(RunInUseError, match=f"{run_dir} is in use by process {os.getpid()}"):
        train(cfg, progress=False)
    assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]
    other.release()
    assert train(cfg, progress=False, stop_at=1).step == 1
    assert not (run_dir / LOCK_NAME).exists()  # released at the end of the run


def test_a_failed_start_releases_the_lock_and_removes_the_directory_it_made(tmp_path):
    cfg = run_config(tmp_path, **{"data.path": str(tmp_path / "missing.txt")})
    with pytest.raises(Exception, match="not found"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs" / "test").exists()


def command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--quiet",
            "--train.out_dir", str(tmp_path / "runs"), "--train.run_name", "shared",
            "--data.cache_dir", str(tmp_path / "cache"), "--model.context_length", "16",
            "--model.embed_dim", "32", "--model.num_heads", "2", "--model.num_layers", "2",
            "--train.batch_size", "4", "--train.eval_interval", "10", "--train.eval_batches", "2",
            "--train.sample_tokens", "0", "--train.device", "cpu", *extra]


@pytest.mark.slow  # two real train.py processes, 10 s
def test_two_starts_at_the_same_moment_train_one_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    starts = [subprocess.Popen(command(tmp_path, "--train.max_steps", "60"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in starts]
    ends = sorted((p.returncode, p.pid, err) for p, err in zip(starts, errs))
    assert [code for code, _, _ in ends] == [0, 1], ends
    (_, winner, _), (_, _, err) = ends
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert f"is in use by process {winner} on host {socket.gethostname()}" in err
    assert load_checkpoint(tmp_path / "runs" / "shared" / "last.pt")["step"] == 60


@pytest.mark.slow  # a real train.py killed with kill -9 and started again, 10 s
def test_a_run_killed_with_kill_9_is_no_dead_end_for_the_same_command(tmp_path):
    run_dir = tmp_path / "runs" / "shared"
    victim = subprocess.Popen(command(tmp_path, "--train.max_steps", "100000",
                                      "--train.checkpoint_interval", "5"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    victim.kill()
    victim.wait()
    assert (run_dir / LOCK_NAME).exists()
    again = subprocess.run(command(tmp_path, "--resume", "auto", "--train.max_steps", "40",
                                   "--train.checkpoint_interval", "5"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(run_dir / "last.pt")["step"] == 40
