"""The training loop: `train(cfg)` trains a GPT as the config says and returns what happened.

    from minigpt.config import load_config
    from minigpt.training import train
    result = train(load_config("configs/default.toml"))

Each step: batch -> forward -> loss -> backward (x grad_accum) -> clip -> optimizer step ->
schedule -> log; every eval_interval steps: evaluate, keep best.pt, log a sample; every
checkpoint_interval steps: last.pt. Under torchrun it trains with DistributedDataParallel.
"""

import contextlib
import ctypes
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from minigpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigpt.config import DERIVED_KEYS, Config, ConfigError, TrainConfig, build_config, parse_value
from minigpt.data import Dataset, get_batch, prepare_data
from minigpt.heatmap import attention_image, label_tokens, positional_encoding_image
from minigpt.model import GPT, LearnedPositionalEncoding, ModelConfig, SinusoidalPositionalEncoding
from minigpt.muon import Muon
from minigpt.optim import AdamW, Optimizer


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable run directory)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    best_val_loss: float
    losses: list[float] = field(default_factory=list)  # train loss of each step of this process
    val_losses: dict[int, float] = field(default_factory=dict)  # step -> val loss
    val_seconds: dict[int, float] = field(default_factory=dict)  # step -> s since train() began
    step_seconds: list[float] = field(default_factory=list)  # each step's time, evals excluded
    stopped_by: str | None = None  # the signal name when interrupted
    target_step: int | None = None  # the step whose val loss reached train.target_val_loss


# ----------------------------------------------------------------------------- setup helpers

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is available; use --train.device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is mps but MPS is not available; use --train.device cpu")
    return device


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A training step frees and re-allocates the same activation buffers (1-2 MB each for the CPU
    recipe). By default glibc serves such blocks with fresh mmap calls (or trims them off the
    heap) and returns them at free, so every step page-faults its activations in again: about
    1,000 faults per step of the CPU recipe, 8 with this (`python -m minigpt.bench train`,
    variants fused vs tuned; worth up to 20% of a step on a quiet 2-core machine). Peak memory
    is unchanged: the same buffers are reused. Returns False where the C library is not glibc
    (macOS, musl), which keeps its own behaviour.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return (mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1  # the largest threshold glibc allows
            and mallopt(M_TRIM_THRESHOLD, 256 * 2**20) == 1)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16/fp16 on CUDA, fp32 elsewhere (CPU bf16 is far slower here)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use fp32 or bf16")
    return dtype


def check_fits(cfg: ModelConfig, device: torch.device) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients and AdamW moments
    (4 fp32 copies) exceed the device's memory."""
    params = GPT.count_params(cfg)
    need = 16 * params
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total:
        raise ConfigError(f"the model has {params:,} parameters and needs about "
                          f"{need / 2**30:,.1f} GiB for weights, gradients and optimizer state, more "
                          f"than the {total / 2**30:,.1f} GiB of {device}; choose a smaller model")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(progress, 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: GPT, cfg: TrainConfig) -> Optimizer:
    """AdamW with weight decay on weight matrices only: not on biases and LayerNorm gains (which
    set scales, not features) and not on the token/position embeddings (rows of rare tokens would
    shrink towards zero between their updates), unless decay_embeddings. With optimizer =
    "muon", the matrices inside the blocks get Muon instead. Each group keeps its peak rate as
    "initial_lr" for the schedule. Both are minigpt.optim optimizers: torch.optim's would import
    torch._dynamo (+70 MB)."""
    no_decay = set()
    if not cfg.decay_embeddings:
        no_decay.add(id(model.token_emb.weight))
        if isinstance(model.pos_emb, LearnedPositionalEncoding):
            no_decay.add(id(model.pos_emb.weight))
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    matrices = [p for p in params if p.dim() >= 2 and id(p) not in no_decay]
    others = [p for p in params if p.dim() < 2 or id(p) in no_decay]
    if cfg.optimizer == "muon":
        inner = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
        groups = [
            {"params": [p for p in matrices if id(p) in inner], "lr": cfg.muon_lr,
             "weight_decay": 0.0, "muon": True},
            {"params": [p for p in matrices if id(p) not in inner], "lr": cfg.lr,
             "weight_decay": cfg.weight_decay, "muon": False},
            {"params": others, "lr": cfg.lr, "weight_decay": 0.0, "muon": False},
        ]
        optimizer = Muon(groups, betas=(cfg.beta1, cfg.beta2))
    else:
        groups = [{"params": matrices, "weight_decay": cfg.weight_decay},
                  {"params": others, "weight_decay": 0.0}]
        optimizer = AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def estimate_loss(model, data: Dataset, cfg: Config, device, autocast) -> dict[str, float]:
    """Mean loss over eval_batches batches of each split. The batches are the same at every
    eval (a fixed generator), so successive estimates compare like with like."""
    model.eval()
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    losses = {}
    for split, tokens in (("train", data.train), ("val", data.val)):
        total = torch.zeros((), device=device)
        for _ in range(cfg.train.eval_batches):
            x, y = get_batch(tokens, cfg.train.batch_size, cfg.model.context_length, generator)
            with autocast:
                total += lm_loss(model(x.to(device)), y.to(device))
        losses[split] = total.item() / cfg.train.eval_batches
    model.train()
    return losses


def probe_ids(data: Dataset, cfg: Config) -> list[int]:
    """The prompt of the logged samples and attention images (at most 32 tokens)."""
    limit = min(32, cfg.model.context_length)
    if not cfg.train.sample_prompt:
        return data.val[:limit].tolist()
    try:
        ids = data.tokenizer.encode(cfg.train.sample_prompt)
    except ValueError as err:
        raise ConfigError(f"train.sample_prompt cannot be encoded: {err}") from None
    if not ids:
        raise ConfigError("train.sample_prompt holds no tokens; set some text or leave it empty")
    return ids[-limit:]


def log_samples_and_attention(writer, model: GPT, data: Dataset, probe: list[int],
                              cfg: TrainConfig, step: int) -> None:
    """A text sample continuing the probe, and each layer's attention over it as an image, so
    attention patterns can be watched forming over training."""
    ids = torch.tensor([probe], device=model.token_emb.weight.device)
    if cfg.sample_tokens:
        generator = torch.Generator(device=ids.device).manual_seed(cfg.seed)
        out = model.generate(ids, cfg.sample_tokens, temperature=0.8, top_k=50,
                             generator=generator)
        writer.add_text("sample", data.tokenizer.decode(out[0].tolist()), step)
    model.eval()
    seen = model.inspect(ids)
    model.train()
    tokens = [data.tokenizer.decode([i]) for i in probe]
    for layer, weights in enumerate(seen.attentions):
        image = label_tokens(attention_image(weights[0], cell=12), tokens, 12, weights.size(1))
        writer.add_image(f"attention/layer{layer}", image, step)
    if isinstance(model.pos_emb, LearnedPositionalEncoding):
        writer.add_image("positions/learned", positional_encoding_image(
            model.pos_emb.weight / model.pos_emb.weight.abs().max()), step)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks once per step, so a checkpoint is saved
    before exiting instead of dying mid-step."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _settable(values: dict) -> dict:
    """A saved config without its derived keys, ready for build_config."""
    return {section: {k: v for k, v in table.items() if (section, k) not in DERIVED_KEYS}
            for section, table in values.items()}


def resume_config(run_dir: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """The config of the run in run_dir (its config.json), with train.* keys overridden."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json); pass the "
                              f"directory that train.py printed")
    try:
        values = _settable(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"{path} is damaged: {err}") from None
    for key, text in (overrides or {}).items():
        if not key.startswith("train."):
            raise ConfigError(f"{key} cannot change when resuming; only train.* keys can")
        values.setdefault("train", {})[key.split(".", 1)[1]] = parse_value(key, text)
    return build_config(values)


def new_run_dir(cfg: Config) -> Path:
    name = cfg.train.run_name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.train.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TrainingError(f"run directory {run_dir} already holds a run; continue it with "
                            f"--resume {run_dir} or choose another --train.run_name")
    return run_dir


# ----------------------------------------------------------------------------- the loop

def train(cfg: Config, resume: str | Path | None = None, stop_at: int | None = None,
          progress: bool = True, log: Callable[[str], None] = lambda line: None,
          on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train as cfg says; see the module docstring.

    resume: a run directory to continue from its last.pt (cfg from `resume_config`).
    stop_at: pause after this many steps, saving last.pt as an interruption would.
    progress: show a tqdm bar. log: receives the run's header lines (train.py prints them).
    on_step: called with (step, max_steps) after each optimizer step, e.g. for a progress display.
    """
    started = time.perf_counter()
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world_size = 0, 1
    if distributed:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    master = rank == 0
    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = load_checkpoint(run_dir / "last.pt")
        saved = build_config(_settable(state["config"]))
        if (saved.model, saved.data) != (cfg.model, cfg.data):
            raise ConfigError(f"the model/data config differs from the run in {run_dir}; only "
                              f"train.* keys can change when resuming")
    tc = cfg.train
    device = resolve_device(tc.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if device.type == "cpu":
        keep_freed_memory()
    dtype = resolve_precision(tc.precision, device)
    data = prepare_data(cfg.data, cfg.model.context_length)  # bad data fails before any write
    model_cfg = replace(cfg.model, vocab_size=data.tokenizer.vocab_size)
    cfg = replace(cfg, model=model_cfg)
    check_fits(model_cfg, device)
    probe = probe_ids(data, cfg)
    if resume is None:
        run_dir = new_run_dir(cfg)

    torch.manual_seed(tc.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, tc)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    batch_gen = torch.Generator().manual_seed(tc.seed)
    step, best_val = 0, float("inf")
    if state is not None:
        model.load_state_dict(state["model"])
        peaks = [group["initial_lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        for group, peak in zip(optimizer.param_groups, peaks):  # train.lr may change on resume
            group["initial_lr"] = peak
        scaler.load_state_dict(state["scaler"])
        step, best_val = state["step"], state["best_val_loss"]
        batch_gen.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    train_model = model
    if tc.compile:
        train_model = torch.compile(model)
    if distributed:
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tokens_per_step = tc.batch_size * tc.grad_accum * world_size * model_cfg.context_length
    writer = None
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        # Imported here: TensorBoard costs ~15 MB and a second of start-up, needed only to train.
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir))
        writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```", step)
        writer.add_text("probe", " | ".join(data.tokenizer.decode([i]) for i in probe), step)
        if isinstance(model.pos_emb, SinusoidalPositionalEncoding):
            writer.add_image("positions/sinusoidal", positional_encoding_image(model.pos_emb.table))
        log(f"config: {json.dumps(cfg.to_dict())}")
        log(f"data: {data.source}, {len(data.train):,} train / {len(data.val):,} val tokens, "
            f"{data.tokenizer.kind} tokenizer with {data.tokenizer.vocab_size} tokens")
        log(f"model: {model.num_params():,} parameters "
            f"({model.num_params(non_embedding=True):,} outside embeddings and head)")
        log(f"device: {device} ({str(dtype).removeprefix('torch.')}), world size {world_size}, "
            f"{tokens_per_step:,} tokens per step")
        log(f"run directory: {run_dir}" + (f" (resuming at step {step})" if state else ""))

    def checkpoint(name: str) -> None:
        rng = {"torch": torch.get_rng_state(), "batches": batch_gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(run_dir / name, {
            "model": model.state_dict(), "model_config": asdict(model_cfg),
            "tokenizer": data.tokenizer.to_dict(), "config": cfg.to_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
            "best_val_loss": best_val, "rng": rng})

    result = TrainResult(run_dir, step, best_val)
    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and master),
               dynamic_ncols=True, unit="step")
    say = bar.write if progress and master else log
    t_last = time.perf_counter()
    model.train()
    try:
        with StopRequest() as stop:
            while step < min(tc.max_steps, stop_at or tc.max_steps) and stop.signal_name is None:
                lr = lr_at(step, tc)
                for group in optimizer.param_groups:  # every group follows the one schedule
                    group["lr"] = group["initial_lr"] * lr / tc.lr
                loss_sum = torch.zeros((), device=device)
                for micro in range(tc.grad_accum):
                    # One draw for all ranks, each taking its own slice: every rank's stream is
                    # different, and the generator state saved by rank 0 resumes all of them.
                    x, y = get_batch(data.train, tc.batch_size * world_size,
                                     model_cfg.context_length, batch_gen)
                    x, y = (t[rank * tc.batch_size:(rank + 1) * tc.batch_size].to(device)
                            for t in (x, y))
                    sync = not distributed or micro == tc.grad_accum - 1
                    with contextlib.nullcontext() if sync else train_model.no_sync():
                        with autocast:
                            loss = lm_loss(train_model(x), y) / tc.grad_accum
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach()
                loss_value = loss_sum.item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at step {step + 1}; stopped without updating "
                        f"the weights (checkpoints in {run_dir} are the last good ones); "
                        f"try a lower train.lr")
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.losses.append(loss_value)
                if on_step is not None:
                    on_step(step, tc.max_steps)

                now = time.perf_counter()
                result.step_seconds.append(now - t_last)
                tokens_per_sec = tokens_per_step / result.step_seconds[-1]
                t_last = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                                tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                if writer is not None:
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/grad_norm", grad_norm.item(), step)
                    writer.add_scalar("perf/tokens_per_sec", tokens_per_sec, step)

                if step % tc.eval_interval == 0 or step == tc.max_steps:
                    losses = estimate_loss(model, data, cfg, device, autocast)
                    result.val_losses[step] = losses["val"]
                    result.val_seconds[step] = time.perf_counter() - started
                    if tc.target_val_loss > 0 and losses["val"] <= tc.target_val_loss:
                        result.target_step = step  # every rank sees the same val loss
                    improved = losses["val"] < best_val
                    best_val = min(best_val, losses["val"])
                    if master:
                        if improved:  # saved before it is reported, so no report outruns it
                            checkpoint("best.pt")
                        writer.add_scalar("val/loss", losses["val"], step)
                        writer.add_scalar("eval/train_loss", losses["train"], step)
                        say(f"step {step}: train {losses['train']:.4f}, "
                            f"val {losses['val']:.4f}" + (" (best)" if improved else ""))
                        log_samples_and_attention(writer, model, data, probe, tc, step)
                    t_last = time.perf_counter()  # evaluation time is not training speed
                if result.target_step == step:
                    if master:
                        say(f"val {result.val_losses[step]:.4f} <= train.target_val_loss "
                            f"{tc.target_val_loss} at step {step}, "
                            f"{result.val_seconds[step]:.1f} s after start: stopping")
                        checkpoint("last.pt")
                    break
                if master and (step % tc.checkpoint_interval == 0 or step == tc.max_steps):
                    checkpoint("last.pt")
            if result.target_step is None and (stop.signal_name is not None
                                               or step < tc.max_steps):
                result.stopped_by = stop.signal_name or f"stop_at={stop_at}"
                if master:
                    checkpoint("last.pt")
                    say(f"{result.stopped_by}: saved {run_dir / 'last.pt'} at step {step}; "
                        f"continue with: python train.py --resume {run_dir}")
    finally:
        bar.close()
        if writer is not None:
            if step > 0 and result.losses:
                hparams = {f"{s}.{k}": v for s, section in cfg.to_dict().items()
                           for k, v in section.items() if isinstance(v, (int, float, str, bool))}
                writer.add_hparams(hparams, {"hparam/best_val_loss": best_val,
                                             "hparam/final_train_loss": result.losses[-1]},
                                   run_name=".")
            writer.close()
        if distributed:
            dist.destroy_process_group()
    result.step, result.best_val_loss = step, best_val
    return result


__all__ = ["train", "TrainResult", "TrainingError", "CheckpointError", "lr_at", "make_optimizer"]
