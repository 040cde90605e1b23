"""Runs that restart themselves: a damaged checkpoint falls back to the other one, and
`train.py --resume auto` continues the run of its name, so torchrun --max-restarts recovers a job
whose rank was killed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_config

from minigpt.checkpoint import load_checkpoint
from minigpt.cli import run_cli
from minigpt.errors import CheckpointError
from minigpt.resume import resume_config
from minigpt.training import train

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as train_script  # noqa: E402


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("stopped")
    train(run_config(directory), stop_at=4, progress=False)
    return directory / "runs" / "test"


@pytest.fixture
def stopped_run(trained_once, tmp_path) -> Path:
    """A copy of a run stopped at step 4, with best.pt and last.pt of step 4."""
    return Path(shutil.copytree(trained_once, tmp_path / "test"))


def test_a_damaged_last_pt_falls_back_to_best_pt_and_is_kept(stopped_run):
    damaged = (stopped_run / "last.pt").read_bytes()[:5000]
    (stopped_run / "last.pt").write_bytes(damaged)
    with pytest.warns(UserWarning, match=r"last\.pt cannot be resumed \(.*truncated.*\); resuming "
                                         r"from .*best\.pt \(step 4\) instead, and .*last\.pt is "
                                         r"kept as last\.pt\.damaged-\d{8}-\d{6}"):
        result = train(resume_config(stopped_run), resume=stopped_run, progress=False)
    assert result.step == 8 and load_checkpoint(stopped_run / "last.pt")["step"] == 8
    (kept,) = stopped_run.glob("last.pt.damaged-*")
    assert kept.read_bytes() == damaged


def test_a_last_pt_without_a_usable_config_falls_back_too(stopped_run):
    state = torch.load(stopped_run / "last.pt", weights_only=True)
    torch.save({**state, "config": {"model": "not a table"}}, stopped_run / "last.pt")
    with pytest.warns(UserWarning, match="holds no usable run config"):
        assert train(resume_config(stopped_run), resume=stopped_run, progress=False).step == 8


def test_both_checkpoints_damaged_is_one_error_naming_both_and_moves_nothing(stopped_run):
    for name in ("last.pt", "best.pt"):
        (stopped_run / name).write_bytes(b"not a checkpoint")
    files = sorted(stopped_run.iterdir())
    with pytest.raises(CheckpointError, match=r"no checkpoint of .* can be resumed: .*last\.pt "
                                              r"is damaged.*; .*best\.pt is damaged"):
        train(resume_config(stopped_run), resume=stopped_run, progress=False)
    assert sorted(stopped_run.iterdir()) == files
    assert (stopped_run / "last.pt").read_bytes() == b"not a checkpoint"


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda: train_script.main(argv))
    out, err = capsys.readouterr()
    return ended.value.code, out, err


def flags(tmp_path: Path, **extra) -> list[str]:
    options = {key: value for section in run_config(tmp_path).to_dict().values()
               for key, value in section.items()}
    keys = {"context_length": "model", "embed_dim": "model", "num_heads": "model",
            "num_layers": "model", "batch_size": "train", "eval_interval": "train",
            "eval_batches": "train", "checkpoint_interval": "train", "sample_tokens": "train",
            "device": "train", "out_dir": "train", "run_name": "train", "cache_dir": "data"}
    values = {f"{section}.{key}": options[key] for key, section in keys.items()}
    values.update(extra)
    return ["--quiet", *(f"--{key}={value}" for key, value in values.items())]


def test_resume_auto_starts_the_run_then_continues_it(tmp_path, capsys):
    code, out, _ = cli(["--resume", "auto", *flags(tmp_path, **{"train.max_steps": 4})], capsys)
    assert code == 0 and "resuming" not in out
    code, out, err = cli(["--resume", "auto", *flags(tmp_path, **{"train.max_steps": 8})], capsys)
    assert code == 0, err
    assert "(resuming at step 4)" in out
    assert load_checkpoint(tmp_path / "runs" / "test" / "last.pt")["step"] == 8


def test_resume_auto_needs_a_run_name(tmp_path, capsys):
    code, _, err = cli(["--resume", "auto", "--train.out_dir", str(tmp_path)], capsys)
    assert code == 1 and err.strip() == ("error: --resume auto needs --train.run_name: the run "
                                         "to continue if it exists and to start otherwise")


def torchrun(tmp_path: Path, name: str, kill: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("KILL_RANK_1", None)
    if kill:
        env["KILL_RANK_1"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               # one restart for the kill, and spares: a restarted gloo group sometimes fails to
               # connect on this machine (github.com/pytorch/pytorch/issues/167288); each try
               # resumes from the last checkpoint all the same, as in a real job
               "--max-restarts=4", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
               str(ROOT / "tests" / "auto_resume_worker.py"), "--resume", "auto",
               *flags(tmp_path, **{"train.max_steps": 12, "train.run_name": name})]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two real 2-rank torchrun jobs, one of them restarted: 30 s
@pytest.mark.skipif(not os.environ.get("MINIGPT_TORCHRUN_RESTARTS"), reason=(
    "a restarted gloo group fails to connect on this machine in about 1 run of 3, at times for "
    "minutes (github.com/pytorch/pytorch/issues/167288); MINIGPT_TORCHRUN_RESTARTS=1 runs it"))
def test_torchrun_restarts_a_job_whose_rank_was_killed_from_the_last_checkpoint(tmp_path):
    killed = torchrun(tmp_path, "killed", kill=True)
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "(resuming at step 4)" in killed.stdout + killed.stderr  # lost steps 5 and 6 only
    clean = torchrun(tmp_path, "clean", kill=False)
    assert clean.returncode == 0, clean.stderr[-3000:]
    runs = tmp_path / "runs"
    restarted, uninterrupted = (load_checkpoint(runs / name / "last.pt")
                                for name in ("killed", "clean"))
    assert restarted["step"] == uninterrupted["step"] == 12
    for name, tensor in uninterrupted["model"].items():  # the same batches, in the same order
        torch.testing.assert_close(restarted["model"][name], tensor, rtol=1e-5, atol=1e-6)
