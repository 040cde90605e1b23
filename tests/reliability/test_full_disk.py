"""A real full disk: every file minigpt writes, on a small tmpfs that this test mounts, ends in one
line naming the file and the free space it needs, and what was there before is still there.

Mounting needs root (CI runs as root); elsewhere these tests skip and say so.
"""

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import run_config, tiny_config

from minigpt import GPT
from minigpt.checkpoint import load_checkpoint, save_checkpoint
from minigpt.cli import run_cli
from minigpt.data import prepare_data
from minigpt.errors import DiskFullError
from minigpt.files import atomic_write
from minigpt.gpt2 import export_gpt2
from minigpt.inspection import SNAPSHOTS, probe_snapshot
from minigpt.resume import resume_config
from minigpt.run import Run
from minigpt.tokenizer import train_tokenizer
from minigpt.training import train

ROOT = Path(__file__).resolve().parents[2]
FULL = r"cannot write .*{}: its file system is full \(it needs [\d.,]+ k?B of free space and"


def mount(directory: Path, size: str) -> None:
    directory.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'}); "
                    f"CI runs these tests as root")


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) mounts a tmpfs of that size at tmp_path/disk and returns its path."""
    disk = tmp_path / "disk"

    def make(size: str) -> Path:
        mount(disk, size)
        return disk

    yield make
    if os.path.ismount(disk):  # lazily: a failed test may still hold a file there open
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Write a filler file until the file system has no room left."""
    with open(disk / f"filler-{uuid.uuid4().hex}", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_train_py_on_a_full_disk_is_one_line_at_the_first_save(small_disk, tmp_path, capsys):
    disk = small_disk("300k")
    sys.path.insert(0, str(ROOT))
    import train as train_script

    cfg = run_config(disk)
    args = [f"--{k}={v}" for section, values in cfg.to_dict().items()
            for k, v in ((f"{section}.{key}", value) for key, value in values.items())
            if k in ("model.context_length", "model.embed_dim", "model.num_heads",
                     "model.num_layers", "train.batch_size", "train.max_steps",
                     "train.eval_interval", "train.eval_batches", "train.sample_tokens",
                     "train.device", "train.out_dir", "train.run_name")]
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda: train_script.main(["--quiet", *args, "--train.checkpoint_interval=1",
                                           f"--data.cache_dir={tmp_path / 'cache'}"]))
    assert ended.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: cannot write ") and "file system is full" in err, err
    run_dir = disk / "runs" / "test"
    assert not list(run_dir.glob(".*.tmp"))  # no half file left to fill the disk further


@pytest.mark.slow  # trains, fills the disk, frees it and resumes: 15 s
def test_a_later_save_on_a_full_disk_keeps_the_earlier_checkpoints_and_resumes(small_disk):
    disk = small_disk("700k")  # room for config, events and two checkpoints, not a third copy
    cfg = run_config(disk, **{"train.checkpoint_interval": 2, "train.max_steps": 12,
                              "data.cache_dir": str(disk.parent / "cache")})
    run_dir = disk / "runs" / "test"
    with pytest.raises(DiskFullError, match=FULL.format(r"\.pt")) as full:
        train(cfg, progress=False)
    assert "is unchanged" in str(full.value)
    saved = {name: load_checkpoint(run_dir / name)["step"] for name in ("best.pt", "last.pt")
             if (run_dir / name).exists()}
    assert saved and all(step > 0 for step in saved.values())
    assert not list(run_dir.glob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # space freed
    resumed = train(resume_config(run_dir), resume=run_dir, progress=False)
    assert resumed.step == 12 and load_checkpoint(run_dir / "last.pt")["step"] == 12


def started_run(disk: Path) -> Run:
    cfg = run_config(disk, **{"data.cache_dir": str(disk.parent / "cache"), "train.probe": True})
    return Run.start(cfg)


def test_config_json_on_a_full_disk(small_disk):
    disk = small_disk("300k")
    run = started_run(disk)
    fill(disk)
    with pytest.raises(DiskFullError, match=FULL.format("config.json")):
        run.open_log(lambda line: None)
    assert not (run.dir / "config.json").exists()
    assert not (run.dir / "run.lock").exists()  # released on the way out


def test_snapshots_and_tensorboard_events_on_a_full_disk(small_disk):
    disk = small_disk("300k")
    run = started_run(disk)
    board = run.open_log(lambda line: None)
    run.keep_snapshot(probe_snapshot(run.trainer.model, run.probe))
    before = (run.dir / SNAPSHOTS).read_bytes()
    fill(disk)
    run.step = 1
    with pytest.raises(DiskFullError, match=FULL.format(SNAPSHOTS)):
        run.keep_snapshot(probe_snapshot(run.trainer.model, run.probe))
    assert (run.dir / SNAPSHOTS).read_bytes() == before
    with pytest.raises(DiskFullError, match=r"cannot write .*events\.out\.tfevents.*: its file "
                                            r"system is full \(it needs more room than the"):
        for step in range(1, 100_000):  # the writer's thread reports at a later call
            board.step(step, 1.0, 1e-3, 1.0, 100.0)
            board.writer.flush()
    run.close()


def test_a_checkpoint_save_on_a_full_disk_leaves_the_previous_one(small_disk):
    disk = small_disk("300k")
    path = disk / "last.pt"
    model = GPT(tiny_config())
    save_checkpoint(path, {"step": 1, "model": {}})
    fill(disk)
    with pytest.raises(DiskFullError, match=FULL.format("last.pt")):
        save_checkpoint(path, {"step": 2, "model": model.state_dict()})
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in disk.iterdir() if p.name.startswith(".")] == []


def test_the_token_cache_on_a_full_disk_is_a_warning_and_the_data_is_still_ready(small_disk):
    disk = small_disk("300k")
    fill(disk)
    cfg = run_config(disk, **{"data.cache_dir": str(disk / "cache")})
    with pytest.warns(UserWarning, match=r"cannot write .*/tokens\.bin: its file system is full.*"
                                         r"the tokens are kept in memory this time"):
        data = prepare_data(cfg.data, 16)
    assert len(data.train) > 0  # no half-written shard is left to be used by a later run
    assert [p.name for p in (disk / "cache" / "shards").iterdir()] == [
        next((disk / "cache" / "shards").glob("*.lock")).name]


def test_an_export_on_a_full_disk_writes_nothing(small_disk):
    disk = small_disk("300k")
    tokenizer = train_tokenizer("bpe", "the cat sat on the mat. " * 50, 260)
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, bias=True, tie_weights=True,
                            pos_encoding="learned", activation="gelu_tanh"))
    fill(disk)
    with pytest.raises(DiskFullError, match=r"cannot write .*: its file system is full"):
        export_gpt2(model, tokenizer, disk / "gpt2")
    assert not (disk / "gpt2").exists()
    assert [p.name for p in disk.iterdir() if not p.name.startswith("filler")] == []


def test_atomic_write_names_the_space_needed(small_disk):
    disk = small_disk("64k")
    fill(disk)
    with pytest.raises(DiskFullError, match=r"it needs 100\.0 kB of free space and 0 B are free"):
        atomic_write(disk / "blob", lambda f: f.write(b"\1" * 100_000))
    assert list(disk.iterdir())[0].name.startswith("filler")


def test_an_attention_png_and_a_bench_report_on_a_full_disk(tmp_path, small_disk, capsys):
    """generate.py --save-attention and the bench's --json: one line naming the file, and the
    file that was there before is still whole."""
    import importlib.util

    from minigpt.inspection import inspect_prompt
    from minigpt.tokenizer import CharTokenizer

    disk = small_disk("64k")
    png, report = disk / "attention.png", disk / "bench.json"
    png.write_bytes(b"old")
    report.write_bytes(b"{}")
    fill(disk)
    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "generate.py")
    generate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_script)
    tokenizer = CharTokenizer.train("the cat sat on the mat")
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, context_length=32))
    seen = inspect_prompt(model, tokenizer, "the cat sat on the mat")
    with pytest.raises(DiskFullError, match=FULL.format("attention.png")):
        generate_script.save_attention(str(png), seen)
    from minigpt import bench

    with pytest.raises(SystemExit):
        run_cli(lambda: bench.main(["peak", "--device", "cpu", "--json", str(report)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(FULL.format("bench.json"), err[0]), err
    assert png.read_bytes() == b"old" and report.read_bytes() == b"{}"
