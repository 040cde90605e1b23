"""train.py from the command line: bad input gives one clear line, and nothing is written."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minigpt.cli import run_cli
from minigpt.config import LIMITS
from minigpt.training import TrainResult, train

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)


def run_train(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_script.main(list(args)))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def small(tmp_path):
    return ["--train.out_dir", str(tmp_path / "runs"), "--data.cache_dir", str(tmp_path / "c"),
            "--train.max_steps", "2", "--model.context_length", "8", "--model.embed_dim", "16",
            "--model.num_heads", "2", "--model.num_layers", "1", "--quiet"]


def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)))
    (tmp_path / "tiny.txt").write_text("just a few words here")
    (tmp_path / "bad.toml").write_text("[train]\nlr = 'x'\n")
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep-run").mkdir()
    (tmp_path / "deep-run" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return [
        (["--train.lrr", "1"], "unknown key 'train.lrr' (did you mean 'lr'?)"),
        (["--trian.lr", "1"], "unknown section 'trian'"),
        (["--train.lr", "fast"], "train.lr must be float"),
        (["--train.batch_size", "-1"], "train.batch_size must be > 0"),
        (["--model.embed_dim", "30", "--model.num_heads", "4"], "divisible by model.num_heads"),
        (["--model.pos_encoding", "alibi"], "model.pos_encoding must be one of"),
        (["--config", str(tmp_path / "nope.toml")], "not found"),
        (["--config", str(tmp_path / "bad.toml")], "train.lr must be float, got str"),
        (["--data.path", str(tmp_path / "missing.txt")], "not found"),
        (["--data.path", str(tmp_path / "deep-run")], "is a directory with no text files"),
        (["--data.path", str(tmp_path / "*.nothing")], "no file matches data path"),
        (["--data.path", str(tmp_path / "empty.txt")], "is empty"),
        (["--data.path", str(tmp_path / "binary.bin")], "holds NUL bytes, so it is not text"),
        (["--data.path", str(tmp_path / "tiny.txt"), "--data.tokenizer", "char"],
         "validation split has 2 tokens"),
        (["--resume", str(tmp_path / "no-run")], "not a run directory"),
        (["--config", str(tmp_path / "deep.toml")], "deep.toml is not valid TOML"),
        (["--config", str(tmp_path)], "is not a regular file; pass a TOML file"),
        *([(["--data.path", "/dev/zero"], "is not a regular file")] if os.name == "posix" else []),
        (["--resume", str(tmp_path / "deep-run")], "config.json is damaged"),
        (["--resume", "r" * 300], "cannot be a checkpoint path: it is longer than file systems"),
        (["--eval-only", "--resume", "r/" * 3000], "cannot be a checkpoint path: it is longer"),
        (["--train.out_dir", "o" * 300], "train.out_dir cannot be a file name: it is longer"),
        (["--train.init_from", "w" * 300], "train.init_from cannot be a file name: it is longer"),
        (["--train.device", "tpu"], "train.device must be"),
        (["--bogus"], "unrecognized argument --bogus"),
        # non-finite numbers, for every float key
        *[([f"--{key}={value}"], f"{key} must be a finite number") for key in FLOAT_KEYS
          for value in ("nan", "inf", "-inf")],
        # sizes far too large for any machine
        (["--train.batch_size", str(10**9)], "needs about"),
        (["--model.context_length", str(10**9)], "needs more than model.context_length"),
        (["--model.embed_dim", str(2**20), "--model.num_heads", "1"], "parameters and needs"),
        (["--train.threads", str(10**6)], "train.threads must be at most"),
        *[([f"--train.{key}", str(10**20)], f"train.{key} must be at most {limit:,}")
          for key, limit in LIMITS.items()],
        (["--model.embed_dim", str(10**20), "--model.num_heads", "3"], "try num_heads in [1, 2, 4"),
        (["--data.bpe_vocab_size", str(10**9), "--data.tokenizer", "bpe"],
         "data.bpe_vocab_size must be in"),
        (["--train.seed", "-1"], "train.seed must be in"),
        (["--train.seed", str(2**64)], "train.seed must be in"),
    ]


FLOAT_KEYS = ["train.lr", "train.min_lr", "train.muon_lr", "train.muon_weight_decay",
              "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip",
              "train.target_val_loss", "data.val_fraction"]


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys):
    for args, message in bad_inputs(tmp_path):
        code, out, err = run_train(capsys, *small(tmp_path), *args)
        lines = err.strip().splitlines()
        assert code not in (0, None), args
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert message in lines[0], (args, lines[0])
        assert not (tmp_path / "runs").exists(), args


@pytest.mark.parametrize("env", [{"RANK": "abc"}, {"RANK": "3"}, {"RANK": "0", "WORLD_SIZE": "x"},
                                 {"RANK": "2", "WORLD_SIZE": "2"},
                                 {"RANK": "0", "WORLD_SIZE": "2"}])  # no MASTER_ADDR: no torchrun
def test_a_broken_torchrun_environment_is_one_line(tmp_path, capsys, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_train(capsys, *small(tmp_path))
    assert code == 1 and not (tmp_path / "runs").exists()
    assert err.startswith("error: the torchrun environment is incomplete or inconsistent (RANK=")
    assert "unset RANK and WORLD_SIZE" in err and len(err.strip().splitlines()) == 1


def test_existing_runs_are_untouched_by_a_failed_start(tmp_path, capsys):
    result = train(run_config(tmp_path), progress=False)
    before = {p.name: p.read_bytes() for p in result.run_dir.iterdir() if p.is_file()}
    code, _, err = run_train(capsys, "--train.out_dir", str(tmp_path / "runs"),
                             "--train.run_name", "test", "--quiet")
    assert code == 1 and "already holds a run" in err
    after = {p.name: p.read_bytes() for p in result.run_dir.iterdir() if p.is_file()}
    assert before == after


def test_help_lists_every_key_with_default():
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    # the defaults of configs/default.toml, which is what runs without --config
    assert "--train.lr VALUE peak learning rate, reached after warmup (default: 0.002)" in text
    assert "--train.max_steps VALUE optimizer steps to train for (default: 600)" in text
    assert "--model.pos_encoding" in text and "--data.tokenizer" in text


@pytest.mark.slow  # real processes (python train.py, generate.py) or a whole app run
def test_real_process_trains_and_prints_the_next_commands(tmp_path):
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as in a pipe
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *small(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=buffered)
    assert done.returncode == 0, done.stderr
    for needle in ("parameters", "device: cpu", "tokens per step", "run directory:",
                   "python generate.py --checkpoint", "tensorboard --logdir"):
        assert needle in done.stdout + done.stderr, needle
    [run_dir] = [p.parent for p in (tmp_path / "runs").glob("*/last.pt")]
    # The process ends without the interpreter's teardown (run_cli's whole_process): the output
    # is flushed to its last line, and TensorBoard's log was closed with everything in it.
    assert done.stdout.splitlines()[-1] == f"inspect:  tensorboard --logdir {run_dir.parent}"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    assert [e.step for e in events.Scalars("loss/val")][-1] == 2
    assert "result/best_val_loss" in events.Tags()["scalars"]  # the HParams summary, at the close
    assert events.SummaryMetadata("_hparams_/session_start_info").plugin_data.plugin_name == "hparams"
    bad = subprocess.run([sys.executable, str(ROOT / "train.py"), *small(tmp_path),
                          "--train.max_steps", "-1"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=buffered)  # a user error leaves the same way
    assert bad.returncode == 1 and bad.stderr.startswith("error: train.max_steps")
    assert len(bad.stderr.splitlines()) == 1


def test_the_closing_line_names_the_step_of_the_best_loss(tmp_path):
    """Stopped at step 123, the best loss was measured at step 100: say so, not "after 123"."""
    result = TrainResult(tmp_path, 123, 1.6016, val_losses={50: 1.9, 100: 1.6016})
    assert train_script.closing_line(result) == "best val loss 1.6016 at step 100; 123 steps trained"
    resumed = TrainResult(tmp_path, 140, 1.5, val_losses={})  # its best came before the resume
    assert train_script.closing_line(resumed) == "best val loss 1.5000; 140 steps trained"


def test_generate_says_which_checkpoint_and_device_it_samples_from(tmp_path, capsys):
    trained = train(run_config(tmp_path), progress=False).run_dir
    spec = importlib.util.spec_from_file_location("generate_script", ROOT / "generate.py")
    generate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_script)
    with pytest.raises(SystemExit):
        run_cli(lambda: generate_script.main(["--checkpoint", str(trained), "--max-new-tokens",
                                              "3", "--seed", "1", "--device", "cpu"]))
    err = capsys.readouterr().err
    assert f"sampling from {trained / 'best.pt'} (step 8) on cpu" in err
