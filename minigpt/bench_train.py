"""The training step's speed, per variant: `python -m minigpt.bench train`.

Each variant runs in a fresh subprocess (so its peak memory is its own). Every variant but
`floor` times `minigpt.step.Trainer.step`, the very step train() runs, on a fixed batch: `eager`
(torch's for-loop AdamW instead of the fused one: the baseline), `fused` (the optimizers train()
uses), `tuned` (what train.py runs: fused, plus `minigpt.runtime.tune_process`, which on CPU keeps
glibc from returning freed memory to the OS), `compiled` (tuned + torch.compile; its compile time
is reported apart) and `floor`: the step's matmuls alone (forward and both gradients, attention
scores included) run back to back on cache-warm operands, a bound that no implementation of the
same maths beats on the device. With --config, the step timed is that config's: its model at its
batch, with its own optimizer (and in `floor`, Muon's Newton-Schulz matmuls too); `eager` stays
the for-loop AdamW baseline. Shared machines are noisy, so the variants run in turn, `--rounds`
times, and each figure is the median over rounds; speed-ups are ratios to `eager` measured in the
same run. FLOPs per token are `GPT.flops_per_token`: 6 per matmul weight + 12 * L * T * C (the
tests check it against torch.utils.flop_counter on a real step), plus Muon's matmuls when the
config uses it.
"""

import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch

from minigpt.config import TrainConfig, load_config
from minigpt.data import prepare_data
from minigpt.model import GPT, ModelConfig
from minigpt.optim import make_optimizers
from minigpt.runtime import Runtime, minor_faults, peak_rss_mb, tune_process
from minigpt.speedrun import sync_device
from minigpt.step import Trainer

# name: (model, batch size). cpu_recipe is the well-known CPU Tiny Shakespeare recipe
# (configs/shakespeare_char_cpu_baseline.toml), gpu_recipe the well-known 6-layer GPU one
# (dropout 0 here: speed does not depend on it). Both without biases, as in those recipes.
MODELS = {
    "cpu_recipe": (ModelConfig(vocab_size=65, context_length=64, embed_dim=128, num_heads=4,
                               num_layers=4, bias=False), 12),
    "gpu_recipe": (ModelConfig(vocab_size=65, context_length=256, embed_dim=384, num_heads=6,
                               num_layers=6, bias=False), 64),
}
VARIANTS = ("eager", "fused", "tuned", "compiled", "floor")


def bench_setup(name: str) -> tuple[ModelConfig, int, TrainConfig]:
    """What `train` times under a name: one of MODELS with the default training settings, or
    "config:PATH", that config's model at its batch and sequence length (train.seq_len) with its
    own training settings (its optimizer too); the vocabulary is its data's (prepared, or read
    from the cache)."""
    if not name.startswith("config:"):
        cfg, batch_size = MODELS[name]
        return cfg, batch_size, TrainConfig()
    config = load_config(name.removeprefix("config:"))
    vocab_size = prepare_data(config.data, config.model.context_length).tokenizer.vocab_size
    model = replace(config.model, vocab_size=vocab_size, context_length=config.train_window)
    return model, config.train.batch_size, config.train


def step_matmuls(cfg: ModelConfig, batch_size: int) -> list[tuple[int, int, int, int]]:
    """(batch, m, k, n) of every matmul in one training step: their FLOPs, 2 * b * m * k * n
    each, add up to GPT.flops_per_token * tokens."""
    tokens, T, C = batch_size * cfg.context_length, cfg.context_length, cfg.embed_dim
    hidden = cfg.ffn_mult * C
    linears = [(C, 3 * C), (C, C), (C, hidden), (hidden, C)] * cfg.num_layers + [(C, cfg.vocab_size)]
    shapes = []
    for fan_in, fan_out in linears:  # forward, gradient of the input, gradient of the weight
        shapes += [(1, tokens, fan_in, fan_out), (1, tokens, fan_out, fan_in),
                   (1, fan_out, tokens, fan_in)]
    heads, head_dim = batch_size * cfg.num_heads, C // cfg.num_heads
    for _ in range(cfg.num_layers):  # Q K^T and P V; backward: dP, dV, dQ, dK
        shapes += [(heads, T, head_dim, T)] * 2 + [(heads, T, T, head_dim)] * 4
    return shapes


def muon_matmuls(cfg: ModelConfig, train_cfg: TrainConfig) -> list[tuple[int, int, int, int]]:
    """(batch, m, k, n) of the matmuls of Muon's Newton-Schulz iteration in one optimizer step
    (none for AdamW): per iteration and matrix, of m <= n, G = X X^T, G G, and (b G + c G^2) X."""
    if train_cfg.optimizer != "muon":
        return []
    with torch.device("meta"):  # shapes only: no memory for the weights
        muon = make_optimizers(GPT(cfg), train_cfg)[0]
    shapes = []
    for group in muon.param_groups:
        for p in group["params"]:
            m, n = sorted(p.shape)
            shapes += [(1, m, n, m), (1, m, m, m), (1, m, m, n)] * group["ns_steps"]
    return shapes


def step_flops(cfg: ModelConfig, tokens: int, train_cfg: TrainConfig) -> int:
    """FLOPs of one training step: the model's (GPT.flops_per_token) and Muon's iteration."""
    return (GPT.flops_per_token(cfg) * tokens
            + sum(2 * b * m * k * n for b, m, k, n in muon_matmuls(cfg, train_cfg)))


def training_step(cfg: ModelConfig, batch_size: int, variant: str, device: torch.device,
                  train_cfg: TrainConfig | None = None):
    """One call of `Trainer.step` on a fixed batch, set up as `variant` says, with train_cfg's
    optimizer settings (the defaults when None)."""
    if variant in ("tuned", "compiled"):
        tune_process()
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    train_cfg = replace(train_cfg or TrainConfig(), compile=variant == "compiled",
                        device=str(device))
    optimizers = None
    if variant == "eager":
        optimizers = [torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, foreach=False)]
        optimizers[0].param_groups[0]["initial_lr"] = train_cfg.lr
    trainer = Trainer(model, train_cfg, Runtime.from_config(train_cfg), optimizers)
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context_length + 1), device=device)
    batch = tokens[:, :-1], tokens[:, 1:]
    return lambda: trainer.step(lambda: batch)


def matmul_floor_step(cfg: ModelConfig, batch_size: int, device: torch.device,
                      train_cfg: TrainConfig | None = None):
    """The step's matmuls alone (Muon's too, when train_cfg uses it), one pair of operands per
    distinct shape (so cache-warm)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    train_cfg = train_cfg or TrainConfig()
    shapes = step_matmuls(cfg, batch_size * train_cfg.grad_accum) + muon_matmuls(cfg, train_cfg)
    operands = {(b, m, k, n): (torch.randn(b, m, k, device=device, dtype=dtype),
                               torch.randn(b, k, n, device=device, dtype=dtype))
                for b, m, k, n in set(shapes)}
    matmuls = [operands[shape] for shape in shapes]

    def step():
        for a, b in matmuls:
            torch.bmm(a, b)
    return step


def train_one(model_name: str, variant: str, steps: int, device: torch.device,
              max_seconds: float = 30.0) -> dict:
    """Median step time of one model (a name `bench_setup` knows) and variant; run in its own
    process by `bench_train`."""
    cfg, batch_size, train_cfg = bench_setup(model_name)
    step = (matmul_floor_step(cfg, batch_size, device, train_cfg) if variant == "floor"
            else training_step(cfg, batch_size, variant, device, train_cfg))
    start = time.perf_counter()
    for _ in range(3):  # warm-up, compilation included
        step()
    sync_device(device)
    warmup_s = time.perf_counter() - start
    faults = minor_faults()
    times = []
    while len(times) < steps and (len(times) < 3 or sum(times) < max_seconds):
        start = time.perf_counter()
        step()
        sync_device(device)
        times.append(time.perf_counter() - start)
    faults = minor_faults() - faults
    step_s = statistics.median(times)
    tokens_per_step = batch_size * train_cfg.grad_accum * cfg.context_length
    peak_mb = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
               else peak_rss_mb())
    ran = replace(train_cfg, optimizer="adamw") if variant == "eager" else train_cfg  # eager: no Muon
    return {"model": model_name.removeprefix("config:"), "variant": variant,
            "batch_size": batch_size,
            "ms_per_step": step_s * 1000, "tokens_per_sec": tokens_per_step / step_s,
            "gflops": step_flops(cfg, tokens_per_step, ran) / step_s / 1e9,
            "timed_steps": len(times), "warmup_s": warmup_s, "peak_memory_mb": peak_mb,
            "page_faults_per_step": faults / len(times),
            "memory_kind": "max allocated" if device.type == "cuda" else "peak RSS"}


def bench_train(models: list[str], variants: list[str], steps: int, device: torch.device,
                max_seconds: float, rounds: int = 1) -> list:
    """One row per model and variant: the median over `rounds` fresh processes, run in turn
    (eager, fused, ..., eager, fused, ...) so that a noisy spell hits every variant alike."""
    runs = {(m, v): [] for m in models for v in variants}
    errors = {}
    for _ in range(rounds):
        for model_name, variant in runs:
            if (model_name, variant) in errors:
                continue
            command = [sys.executable, "-m", "minigpt.bench_train", model_name, variant,
                       str(steps), str(max_seconds), str(device)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                errors[model_name, variant] = (done.stderr.strip().splitlines() or ["failed"])[-1]
                continue
            runs[model_name, variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for (model_name, variant), results in runs.items():
        if (model_name, variant) in errors:
            rows.append({"model": model_name.removeprefix("config:"), "variant": variant,
                         "error": errors[model_name, variant]})
            continue
        row = dict(results[0])
        for key in ("ms_per_step", "tokens_per_sec", "gflops", "warmup_s", "peak_memory_mb",
                    "page_faults_per_step"):
            row[key] = statistics.median(r[key] for r in results)
        row["rounds_ms_per_step"] = [r["ms_per_step"] for r in results]
        rows.append(row)
    return rows


if __name__ == "__main__":  # internal: one measurement in a fresh process (bench_train's)
    model_name, variant, steps, max_seconds, device = sys.argv[1:]
    print(json.dumps(train_one(model_name, variant, int(steps), torch.device(device),
                               float(max_seconds))))
