"""Time to quality: train a config until its val loss reaches a target, and say how long that took
and how much of the device's peak it used (MFU). `python -m minigpt.bench speedrun` runs it.

    python -m minigpt.bench speedrun --config shakespeare_char_speedrun --target 1.90
"""

import json
import os
import statistics
import time
from dataclasses import replace

import torch

from minigpt.config import load_config
from minigpt.model import GPT, ModelConfig
from minigpt.runtime import resolve_device, tune_process
from minigpt.training import train

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s; the larger published figures
# assume 2:4 sparsity). The first name found in torch.cuda.get_device_name() wins.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> dict:
    """Measured GFLOP/s of a square matmul: fp32 on CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync_device(device)
        start = time.perf_counter()
        a @ b
        sync_device(device)
        times.append(time.perf_counter() - start)
    return {"dtype": str(dtype).removeprefix("torch."), "size": size,
            "gflops": 2 * size ** 3 / statistics.median(times) / 1e9}


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; elsewhere since minigpt.speedrun was
    imported, which misses the interpreter's start and the imports before it)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - IMPORTED


IMPORTED = time.perf_counter()


def datasheet_peak_tflops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, if it is one we know; None on CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS.items() if key in name), None)


def speedrun(config: str | None, target: float, overrides: dict[str, str]) -> tuple[dict, dict]:
    """Train `config` until val loss <= target (or max_steps); time it and its MFU.
    Returns the device's matmul peak and the speedrun's figures."""
    cfg = load_config(config, {**overrides, "train.target_val_loss": str(target)})
    device = resolve_device(cfg.train.device)
    tune_process()  # as train.py does
    measuring = time.perf_counter()
    peak = matmul_peak(device)
    start = time.perf_counter()
    # what a train.py process spends before train() begins: the interpreter, imports, config
    # (this process's matmul peak measurement is not part of a run)
    before = process_age() - (start - measuring)
    result = train(cfg, progress=False, log=print)
    wall_s = time.perf_counter() - start
    # the vocabulary size comes from the data; a step's FLOPs are those of its sequences
    with open(result.run_dir / "config.json", encoding="utf-8") as f:
        model_cfg = replace(ModelConfig(**json.load(f)["model"]), context_length=cfg.train_window)
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.train_window
    tokens_per_sec = tokens_per_step / statistics.median(result.step_seconds)
    flops = GPT.flops_per_token(model_cfg) * tokens_per_sec
    datasheet = datasheet_peak_tflops(device)
    reached = result.target_step
    return peak, {
        "config": cfg.name, "run_dir": str(result.run_dir), "compile": cfg.train.compile,
        "target": target, "reached_at_step": reached,
        "time_to_target_s": result.val_seconds[reached] if reached is not None else None,
        "time_to_target_from_process_start_s": (before + result.val_seconds[reached]
                                                if reached is not None else None),
        "time_to_target_from_first_step_s": (result.val_seconds[reached] - result.first_step_s
                                             if reached is not None else None),
        "start_up_s": before + (result.first_step_s or 0.0),
        "steps": result.step, "wall_s": wall_s, "best_val_loss": result.best_val_loss,
        "val_losses": result.val_losses, "tokens_per_sec": tokens_per_sec,
        "tflops": flops / 1e12, "mfu_datasheet": flops / (datasheet * 1e12) if datasheet else None,
        "mfu_measured_peak": flops / (peak["gflops"] * 1e9)}
