"""Every laptop: what differs between Linux, macOS and Windows has a portable path, and each is
tried here by simulating the other OS's behaviour."""

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_config, tiny_config

from minigpt import bench_train, files, runtime
from minigpt.checkpoint import load_checkpoint
from minigpt.config import load_config
from minigpt.data import read_text
from minigpt.errors import ConfigError, InputError
from minigpt.files import atomic_write
from minigpt.generation import check_batch_fits
from minigpt.model import GPT
from minigpt.resume import resume_config
from minigpt.run import check_fits
from minigpt.stopping import stop_signals
from minigpt.training import train

ROOT = Path(__file__).resolve().parent.parent


def test_memory_size_without_sysconf_is_unknown_and_checks_step_aside(monkeypatch):
    """Windows has no os.sysconf; without its kernel32 either, size checks are skipped instead of
    crashing (the allocator then has the last word). The same model and batches are refused while
    the probe reports too little memory, so stepping aside is the unknown size's doing."""
    tiny, big = tiny_config(), tiny_config(embed_dim=1024, num_layers=8)  # big: about 1.5 GiB
    tc = run_config(Path("/nonexistent")).train
    large_batch = replace(tc, batch_size=64)  # tiny's activations: about 5.5 MB
    monkeypatch.setattr(runtime, "physical_memory", lambda: 2**30)
    with pytest.raises(ConfigError, match="choose a smaller model"):
        check_fits(big, tc, torch.device("cpu"))
    monkeypatch.setattr(runtime, "physical_memory", lambda: 64 * 2**30)
    check_fits(big, tc, torch.device("cpu"))
    monkeypatch.setattr(runtime, "physical_memory", lambda: 2**20)
    check_fits(tiny, tc, torch.device("cpu"))
    with pytest.raises(ConfigError, match="use a smaller train.batch_size"):
        check_fits(tiny, large_batch, torch.device("cpu"))
    check_batch_fits(GPT(tiny), 16)  # 16 key/value caches of about 8 KB each
    with pytest.raises(InputError, match="ask for fewer samples"):
        check_batch_fits(GPT(tiny), 1024)
    monkeypatch.undo()

    monkeypatch.delattr(os, "sysconf")
    monkeypatch.setattr(ctypes, "windll", None, raising=False)
    assert runtime.physical_memory() is None
    check_fits(big, tc, torch.device("cpu"))
    check_fits(tiny, large_batch, torch.device("cpu"))
    check_batch_fits(GPT(tiny), 1024)


def test_memory_size_on_windows_comes_from_global_memory_status(monkeypatch):
    class Kernel32:
        @staticmethod
        def GlobalMemoryStatusEx(pointer):  # noqa: N802 (the Windows API's name)
            status = pointer._obj
            assert status.length == ctypes.sizeof(type(status))  # the API refuses other sizes
            status.total_physical = 16 * 2**30
            return 1

    monkeypatch.delattr(os, "sysconf")
    monkeypatch.setattr(ctypes, "windll", type("WinDLL", (), {"kernel32": Kernel32}),
                        raising=False)
    assert runtime.physical_memory() == 16 * 2**30
    assert runtime.device_memory(torch.device("cpu")) == 16 * 2**30


def test_memory_size_on_linux_and_macos_comes_from_sysconf():
    if not hasattr(os, "sysconf"):
        pytest.skip("no sysconf on this OS")
    assert runtime.physical_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_a_checkpoint_held_open_elsewhere_is_replaced_once_it_is_let_go(tmp_path, monkeypatch):
    """On Windows, renaming over a file another process has open fails with PermissionError
    until it is closed; atomic_write retries instead of losing the save."""
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    real_replace, failures = os.replace, [PermissionError(13, "in use")] * 3

    def busy_replace(source, destination):
        if failures:
            raise failures.pop()
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", busy_replace)
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and not failures


def test_a_file_held_open_for_good_fails_cleanly(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def always_busy(source, destination):
        raise PermissionError(13, "in use")

    monkeypatch.setattr(files.os, "replace", always_busy)
    monkeypatch.setattr(files.time, "sleep", lambda seconds: None)
    with pytest.raises(PermissionError):
        atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_ctrl_break_stops_training_on_windows(tmp_path, monkeypatch):
    """Windows sends Ctrl-Break as SIGBREAK, which other OSes lack: there SIGUSR1 stands in for
    it. Raised mid-run, it stops training after that step with a last.pt that resumes to the end."""
    ctrl_break = getattr(signal, "SIGBREAK", None) or signal.SIGUSR1
    monkeypatch.setattr(signal, "SIGBREAK", ctrl_break, raising=False)
    assert stop_signals() == [signal.SIGINT, signal.SIGTERM, ctrl_break]

    def ctrl_break_at_step_3(step, total):
        if step == 3:
            signal.raise_signal(ctrl_break)

    unheard = []  # the signals that reached the handler in place before train()

    def outside_train(signum, frame):
        unheard.append(signum)

    before = signal.signal(ctrl_break, outside_train)
    try:
        result = train(run_config(tmp_path), progress=False, on_step=ctrl_break_at_step_3)
        assert signal.getsignal(ctrl_break) is outside_train  # train() put it back
    finally:
        signal.signal(ctrl_break, before)
    assert not unheard, "train() did not handle Ctrl-Break"
    assert result.stopped_by == signal.Signals(ctrl_break).name and result.step == 3
    run_dir = tmp_path / "runs" / "test"
    assert load_checkpoint(run_dir / "last.pt")["step"] == 3
    assert train(resume_config(run_dir), resume=run_dir, progress=False).step == 8


@pytest.mark.parametrize("name", ["a:b", "CON", "nul.txt", "run?", "run.", "run ", "a\\b", "x|y"])
def test_run_names_that_some_os_cannot_create_are_refused(name):
    with pytest.raises(ConfigError, match="plain file name that every OS accepts"):
        load_config(None, {"train.run_name": name})


def test_ordinary_run_names_are_accepted():
    for name in ("default-20261127-101500", "run.v2", "ablation_no-ffn", "CONSOLE", "été"):
        assert load_config(None, {"train.run_name": name}).train.run_name == name


def test_windows_line_ends_train_like_unix_ones(tmp_path):
    unix, windows = tmp_path / "unix.txt", tmp_path / "windows.txt"
    unix.write_bytes(b"the cat sat.\nthe dog ran.\n")
    windows.write_bytes(b"the cat sat.\r\nthe dog ran.\r\n")
    assert read_text(windows) == read_text(unix)


def test_the_benchmark_runs_where_getrusage_does_not_exist(monkeypatch):
    monkeypatch.setattr(runtime, "resource", None)
    assert runtime.peak_rss_mb() != runtime.peak_rss_mb()  # nan: unknown, not a wrong number
    row = bench_train.train_one("cpu_recipe", "fused", steps=1, device=torch.device("cpu"))
    assert row["ms_per_step"] > 0


@pytest.mark.slow  # real processes (python train.py, generate.py) or a whole app run
def test_a_console_that_cannot_show_the_text_gets_question_marks(tmp_path):
    """Windows consoles and pipes may use a legacy code page: sampled text it cannot encode must
    not crash generate.py after the model has done its work."""
    text = tmp_path / "accents.txt"
    text.write_text("café naïve → déjà vu\n" * 200, encoding="utf-8")
    cfg = run_config(tmp_path, **{"data.path": str(text), "data.tokenizer": "char"})
    run_dir = train(cfg, progress=False).run_dir
    result = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), "--checkpoint", str(run_dir), "--prompt",
         "café →", "--max-new-tokens", "5", "--seed", "0"], capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert b"caf? ?" in result.stdout


# ------------------------------------------------------------------ Apple GPUs, by simulation

def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch):
    for cuda, mps, expected in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert runtime.resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="the device is mps but MPS is not available; use cpu"):
        runtime.resolve_device("mps")


def test_precision_on_mps_is_what_the_device_can_run(monkeypatch):
    mps = torch.device("mps")
    assert runtime.resolve_precision("auto", mps) == torch.float32
    monkeypatch.setattr(runtime, "autocast_works", lambda device, dtype: dtype == torch.float16)
    assert runtime.resolve_precision("fp16", mps) == torch.float16
    with pytest.raises(ConfigError, match="cannot run bf16 .*macOS 14"):
        runtime.resolve_precision("bf16", mps)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA or MPS device"):
        runtime.resolve_precision("fp16", torch.device("cpu"))


def test_autocast_works_asks_the_device_itself():
    assert runtime.autocast_works(torch.device("cpu"), torch.bfloat16)
    assert not runtime.autocast_works(torch.device("meta"), torch.bfloat16)  # no autocast there


def test_adamw_falls_back_to_the_plain_kernel_where_the_fused_one_is_missing(monkeypatch):
    from minigpt.config import TrainConfig
    from minigpt.optim import make_optimizers

    real = torch.optim.AdamW

    def without_fused(params, fused=None, **options):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point "
                               "Tensors of supported devices")
        return real(params, **options)

    assert make_optimizers(GPT(tiny_config()), TrainConfig())[0].defaults["fused"]
    monkeypatch.setattr(torch.optim, "AdamW", without_fused)
    (adamw,) = make_optimizers(GPT(tiny_config()), TrainConfig())
    assert isinstance(adamw, real) and not adamw.defaults["fused"]
