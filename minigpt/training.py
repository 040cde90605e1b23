"""The training loop: `train(cfg)` trains a GPT as the config says and returns what happened.

    from minigpt.config import load_config
    from minigpt.training import train
    result = train(load_config("configs/default.toml"))

`train()` reads top to bottom in four phases:

1. set up the run (`Run.start`): device and ranks, data, model, optimizers, the run directory; all
   that can fail is checked before anything is written;
2. the step (`Trainer.step`): grad_accum micro-batches forward and backward, clip, optimizer step;
3. every eval_interval steps (`evaluate`): the loss on both splits, best.pt, samples and attention
   images in TensorBoard; every checkpoint_interval steps: last.pt;
4. finish: last.pt when stopped early (Ctrl-C, SIGTERM, stop_at, the target loss), the HParams
   summary, closing the log and the process group.

Under torchrun it trains with DistributedDataParallel; `minigpt.runtime.Runtime` holds that.
"""

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minigpt.checkpoint import (
    CHECKPOINT_NAMES,
    check_path,
    describe,
    load,
    load_checkpoint,
    model_from_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)
from minigpt.config import DERIVED_KEYS, LIMITS, Config, TrainConfig, build_config, parse_value
from minigpt.data import Dataset, get_batch, prepare_data
from minigpt.errors import CheckpointError, ConfigError, MiniGPTError, TrainingError
from minigpt.files import atomic_write
from minigpt.inspection import SNAPSHOTS, load_snapshots, probe_snapshot
from minigpt.model import GPT, ModelConfig
from minigpt.optim import make_optimizers
from minigpt.runtime import Runtime, device_memory
from minigpt.tokenizer import Tokenizer, tokenizer_from_dict
from minigpt.tracking import TensorBoardLog


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
    model: GPT | None = None  # the trained model, as it is at the end
    prompt: str = ""  # train.sample_prompt if the tokenizer could encode it, else ""


# ----------------------------------------------------------------------------- the step

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(progress, 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class NonFiniteLoss(ArithmeticError):
    """The loss of a step was NaN or infinite; the weights were not updated."""


class Diverged(ArithmeticError):
    """The weights became NaN or infinite (a step with a finite loss can still blow them up): seen
    as a non-finite loss at an evaluation, or in the weights before a save. Every rank sees it."""


class Trainer:
    """A model with its optimizers and gradient scaler, and `step()`: one optimizer step.
    `python -m minigpt.bench train` times this same step."""

    def __init__(self, model: GPT, cfg: TrainConfig, runtime: Runtime,
                 optimizers: list[torch.optim.Optimizer] | None = None):
        self.model, self.cfg, self.runtime = model, cfg, runtime
        self.train_model = runtime.wrap(model, cfg.compile)  # what forward runs through
        self.optimizers = optimizers if optimizers is not None else make_optimizers(model, cfg)
        self.scaler = torch.amp.GradScaler(runtime.device.type,
                                           enabled=runtime.dtype == torch.float16)

    def set_lr(self, lr: float) -> None:
        """Scale every group's peak rate by lr / train.lr: one schedule for all of them."""
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr / self.cfg.lr

    def step(self, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        """Accumulate gradients over grad_accum micro-batches from next_batch(), clip them and
        step; returns the mean loss (over all ranks under DDP) and the gradient norm before
        clipping. A non-finite loss raises NonFiniteLoss, on every rank, before the weights
        change."""
        accum = self.cfg.grad_accum
        loss_sum = torch.zeros((), device=self.runtime.device)
        for micro in range(accum):
            x, y = next_batch()
            with self.runtime.sync_gradients(self.train_model, sync=micro == accum - 1):
                with self.runtime.autocast():
                    loss = lm_loss(self.train_model(x), y) / accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        loss_value = self.runtime.mean_over_ranks(loss_sum).item()
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(loss_value)
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        return loss_value, grad_norm.item()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Optimizer and scaler state from a checkpoint. The peak rates stay those of the current
        config, since train.lr may change on resume."""
        saved = state["optimizers"] if "optimizers" in state else [state["optimizer"]]  # v1: one
        peaks = [[g["initial_lr"] for g in o.param_groups] for o in self.optimizers]
        try:
            if len(saved) != len(self.optimizers):
                raise ValueError("another number of optimizers")
            for optimizer, optimizer_state in zip(self.optimizers, saved):
                optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"the checkpoint's optimizer state does not fit train.optimizer = "
                f"{self.cfg.optimizer!r} ({err}); runs saved by minigpt's own Muon before it moved "
                f"to torch.optim.Muon cannot be resumed, but their weights still sample") from None
        for optimizer, group_peaks in zip(self.optimizers, peaks):
            for group, peak in zip(optimizer.param_groups, group_peaks):
                group["initial_lr"] = peak
        self.scaler.load_state_dict(state["scaler"])


NOT_CAUSAL = ("model.causal = false: every token can see the tokens after it, including the one "
              "it must predict, so the training loss will fall towards zero by copying the answer. "
              "The model learns nothing it can use to generate; this run only shows why the "
              "causal mask exists.")

# ----------------------------------------------------------------------------- the run

class Run:
    """One training run: config, runtime, data, trainer, directory and counters, and how it is
    checkpointed. Build it with `Run.start`."""

    def __init__(self, cfg: Config, runtime: Runtime, data: Dataset, trainer: Trainer,
                 directory: Path, probe: list[int], prompt: str):
        self.cfg, self.runtime, self.data, self.trainer = cfg, runtime, data, trainer
        self.dir, self.probe = directory, probe
        self.prompt = prompt  # train.sample_prompt when it is the probe prompt (see probe_ids)
        self.step, self.best_val = 0, float("inf")
        self.batches = torch.Generator().manual_seed(cfg.train.seed)  # draws every rank's batches
        self.snapshots: dict | None = None  # snapshots.pt's contents, once the first is kept
        self.tokens_per_step = (cfg.train.batch_size * cfg.train.grad_accum * runtime.world_size
                                * cfg.model.context_length)

    @classmethod
    def start(cls, cfg: Config, resume: str | Path | None = None,
              stop: "StopRequest | None" = None) -> "Run":
        """Check everything that can fail, then build the model and trainer (and load the
        checkpoint when resuming). Nothing is written yet but the removal of what an interrupted
        start or save left behind."""
        if not cfg.model.causal:
            warnings.warn(NOT_CAUSAL, stacklevel=3)
        state = load_resume_state(resume, cfg) if resume is not None else None
        init = load(cfg.train.init_from) if state is None and cfg.train.init_from else None
        runtime = Runtime.from_config(cfg.train)
        tokenizer = saved_tokenizer(state) if state is not None else init[1] if init else None
        data = prepare_data(cfg.data, cfg.model.context_length, tokenizer)
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=data.tokenizer.vocab_size))
        check_fits(cfg.model, cfg.train, runtime.device)
        probe, prompt = probe_ids(data, cfg)
        directory = Path(resume) if resume is not None else new_run_dir(cfg)
        if runtime.master:
            clear_unstarted(directory)
        runtime.start()
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model)
        if init is not None:
            model.load_state_dict(initial_weights(init[0], cfg.model))
        model = model.to(runtime.device)
        run = cls(cfg, runtime, data, Trainer(model, cfg.train, runtime), directory, probe, prompt)
        run.stop = stop or StopRequest()
        if state is not None:
            try:
                run.load_state_dict(state)
            except MiniGPTError:
                raise
            except (KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as err:
                raise CheckpointError(
                    f"the checkpoint in {directory} cannot be resumed: its training state is "
                    f"damaged ({type(err).__name__}: {str(err)[:120]}); its weights may still "
                    f"sample, or start a new run from them with --init-from") from None
        return run

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's micro-batch. One draw serves all ranks, each taking its own slice: every
        rank's stream differs, and the generator state saved by rank 0 resumes all of them."""
        tc, rank = self.cfg.train, self.runtime.rank
        x, y = get_batch(self.data.train, tc.batch_size * self.runtime.world_size,
                         self.cfg.model.context_length, self.batches)
        mine = slice(rank * tc.batch_size, (rank + 1) * tc.batch_size)
        return x[mine].to(self.runtime.device), y[mine].to(self.runtime.device)

    def save(self, name: str) -> None:
        """Write the checkpoint `name` in the run directory (rank 0 only). Weights that are no
        longer finite raise Diverged instead, on every rank, so no save overwrites a good one."""
        if not torch.stack([p.isfinite().all() for p in self.trainer.model.parameters()]).all():
            raise Diverged("the weights became NaN or infinite")
        if not self.runtime.master:
            return
        with self.stop.protected():  # a second Ctrl-C does not cut a save short
            save_checkpoint(self.dir / name, self.state_dict())

    def state_dict(self) -> dict:
        return {
            "model": self.trainer.model.state_dict(), "model_config": asdict(self.cfg.model),
            "tokenizer": self.data.tokenizer.to_dict(), "config": self.cfg.to_dict(),
            **self.trainer.state_dict(), "step": self.step, "best_val_loss": self.best_val,
            "rng": {**self.runtime.rng_state(), "batches": self.batches.get_state()}}

    def keep_snapshot(self, snapshot: dict) -> None:
        """Add what the model does with the probe prompt now to the run's snapshots.pt, which the
        app plays back with a step slider (rank 0 only; a write failure costs only that file)."""
        if not self.runtime.master:
            return
        if self.snapshots is None:  # this process's first evaluation: take over the file's
            kept = load_snapshots(self.dir) or {"steps": [], "snapshots": []}
            earlier = [i for i, s in enumerate(kept["steps"]) if s < self.step]  # resumed: redo
            self.snapshots = {"tokens": self.probe_tokens(),
                              "steps": [kept["steps"][i] for i in earlier],
                              "snapshots": [kept["snapshots"][i] for i in earlier]}
        self.snapshots["steps"].append(self.step)
        self.snapshots["snapshots"].append(snapshot)
        try:
            with self.stop.protected():
                atomic_write(self.dir / SNAPSHOTS, lambda f: torch.save(self.snapshots, f))
        except OSError:
            pass

    def load_state_dict(self, state: dict) -> None:
        step, best = state["step"], state["best_val_loss"]
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= LIMITS["max_steps"]:
            raise ValueError(f"step {step!r}")
        if isinstance(best, bool) or not isinstance(best, (int, float)):
            raise TypeError(f"best_val_loss {best!r}")
        self.trainer.model.load_state_dict(state["model"])
        self.trainer.load_state_dict(state)
        self.step, self.best_val = state["step"], state["best_val_loss"]
        self.batches.set_state(state["rng"]["batches"])
        self.runtime.set_rng_state(state["rng"])

    def open_log(self, log: Callable[[str], None]) -> TensorBoardLog:
        """Rank 0 creates the run directory, writes config.json, opens TensorBoard and prints the
        run's header lines through log; other ranks get a log that writes nothing."""
        if not self.runtime.master:
            return TensorBoardLog(None)
        config = self.cfg.to_dict()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                  encoding="utf-8")
        except OSError as err:
            raise TrainingError(f"cannot write the run directory {self.dir}: "
                                f"{err.strerror or err}; choose a writable --train.out_dir") from None
        board = TensorBoardLog(self.dir)
        board.start(config, self.probe_tokens(), self.step)
        table = self.trainer.model.pos_emb.vectors()
        if table is not None:
            board.positions(self.cfg.model.pos_encoding, table, self.step)
        model, tokenizer = self.trainer.model, self.data.tokenizer
        log(f"config: {json.dumps(config)}")
        log(f"data: {self.data.source}, {len(self.data.train):,} train / {len(self.data.val):,} "
            f"val tokens, {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens")
        log(f"model: {model.num_params():,} parameters "
            f"({model.num_params(non_embedding=True):,} outside embeddings and head)")
        log(f"device: {self.runtime.device} ({str(self.runtime.dtype).removeprefix('torch.')}), "
            f"world size {self.runtime.world_size}, {self.tokens_per_step:,} tokens per step")
        log(f"run directory: {self.dir}" + (f" (resuming at step {self.step})" if self.step else ""))
        return board

    def probe_tokens(self) -> list[str]:
        return [self.data.tokenizer.decode([i]) for i in self.probe]


def load_resume_state(run_dir: str | Path, cfg: Config, path: Path | None = None) -> dict | None:
    """The newest checkpoint of run_dir (last.pt, else best.pt) or path, checked to belong to a
    run of the same model and data; None for a run that was stopped before its first checkpoint."""
    path = path or newest_checkpoint(run_dir)
    if path is None:
        return None
    state = load_checkpoint(path)
    try:
        saved = build_config(_settable(state["config"]))
    except (KeyError, AttributeError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{path} holds no usable run config ({type(err).__name__}: "
                              f"{str(err)[:120]}); sample from it with generate.py, or start a "
                              f"new run from its weights with --init-from") from None
    if (saved.model, saved.data) != (cfg.model, cfg.data):
        raise ConfigError(f"the model/data config differs from the run in {run_dir}; only "
                          f"train.* keys can change when resuming")
    return state


def saved_tokenizer(state: dict) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: a resumed run keeps encoding text with it."""
    try:
        return tokenizer_from_dict(state["tokenizer"])
    except ValueError as err:
        raise CheckpointError(f"the checkpoint's tokenizer is unusable: {err}") from None


# ----------------------------------------------------------------------------- fine-tuning

def init_config(cfg: Config, asked: Iterable[str] = ()) -> Config:
    """The config of a run starting from cfg.train.init_from's weights: the model shape and the
    tokenizer are the source's; model.dropout is cfg's, and cfg may shorten model.context_length.
    asked names the model keys the user set ("model.embed_dim", from the command line or the
    config file); one that differs from the source is refused, since the weights would not fit."""
    model_cfg, tokenizer = describe(cfg.train.init_from)
    for key in asked:
        name = key.removeprefix("model.")
        if name == key or name == "dropout":
            continue
        wanted, fixed = getattr(cfg.model, name), getattr(model_cfg, name)
        if name == "context_length" and wanted <= fixed:
            model_cfg = replace(model_cfg, context_length=wanted)
        elif wanted != fixed:
            raise ConfigError(f"model.{name} = {wanted!r} does not fit the weights of "
                              f"{cfg.train.init_from}, which have model.{name} = {fixed!r}; "
                              f"drop it (only model.dropout, and a shorter model.context_length, "
                              f"can change when fine-tuning)")
    model_cfg = replace(model_cfg, dropout=cfg.model.dropout, vocab_size=None)
    data_cfg = replace(cfg.data, tokenizer=tokenizer.kind)
    return replace(cfg, model=model_cfg, data=data_cfg)


def initial_weights(source: GPT, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """source's weights for a model of config cfg: the same shape except for dropout and a
    context that may be shorter (a learned position table is cut to it)."""
    same = replace(source.config, dropout=cfg.dropout, context_length=cfg.context_length)
    if same != cfg or cfg.context_length > source.config.context_length:
        raise ConfigError("the model config differs from that of train.init_from's weights; build "
                          "it with training.init_config (train.py --init-from does)")
    state = source.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:cfg.context_length]
    return state


def check_fits(cfg: ModelConfig, tc: TrainConfig, device: torch.device) -> None:
    """Refuse, before allocating anything, a run that cannot fit the device: the weights,
    gradients and AdamW moments (4 fp32 copies), plus a micro-batch's activations, estimated
    roughly (about 20 C floats per token and layer kept for the backward pass, and the logits)."""
    params = GPT.count_params(cfg)
    weights, total = 16 * params, device_memory(device)
    if total is None:  # the OS does not say: let the allocator be the judge
        return
    if weights > total:
        raise ConfigError(f"the model has {params:,} parameters and needs about "
                          f"{weights / 2**30:,.1f} GiB for weights, gradients and optimizer state, "
                          f"more than the {total / 2**30:,.1f} GiB of {device}; choose a smaller model")
    tokens = tc.batch_size * cfg.context_length
    activations = 4 * tokens * (20 * cfg.num_layers * cfg.embed_dim + 3 * cfg.vocab_size)
    if weights + activations > total:
        raise ConfigError(f"a micro-batch of train.batch_size={tc.batch_size} sequences of "
                          f"{cfg.context_length} tokens needs about {activations / 2**30:,.1f} GiB "
                          f"of activations, more than the {total / 2**30:,.1f} GiB of {device} "
                          f"holds; use a smaller train.batch_size (train.grad_accum keeps the "
                          f"tokens per step)")


def probe_ids(data: Dataset, cfg: Config) -> tuple[list[int], str]:
    """The prompt of the logged samples and attention images (at most 32 tokens), and its text:
    the tokens of train.sample_prompt, else the start of the val split (and ""). A prompt that the
    tokenizer cannot encode (the default one, with a tokenizer learned from another text) costs a
    warning, not the run."""
    limit = min(32, cfg.model.context_length)
    problem = None
    try:
        ids = data.tokenizer.encode(cfg.train.sample_prompt)
        if cfg.train.sample_prompt and not ids:
            problem = "it holds no tokens"
    except ValueError as err:
        ids, problem = [], str(err)
    if problem:
        warnings.warn(f"train.sample_prompt {cfg.train.sample_prompt[:40]!r} cannot be the probe "
                      f"prompt ({problem}); the samples and attention images start from the "
                      f"validation text instead", stacklevel=2)
    if not ids:
        return data.val[:limit].tolist(), ""
    return ids[-limit:], cfg.train.sample_prompt


def _settable(values: dict) -> dict:
    """A saved config without its derived keys, ready for build_config."""
    return {section: {k: v for k, v in table.items() if (section, k) not in DERIVED_KEYS}
            for section, table in values.items()}


def resume_config(run_dir: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """The config of the run in run_dir (its config.json), with train.* keys overridden."""
    check_path(run_dir)
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json); pass the "
                              f"directory that train.py printed")
    try:
        values = _settable(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is damaged: {err}") from None
    for key, text in (overrides or {}).items():
        if not key.startswith("train."):
            raise ConfigError(f"{key} cannot change when resuming; only train.* keys can")
        values.setdefault("train", {})[key.split(".", 1)[1]] = parse_value(key, text)
    return build_config(values)


def new_run_dir(cfg: Config) -> Path:
    """The directory of a new run. One that exists but holds no checkpoint is a start that was
    stopped early: it is used again (re-running the same command goes on from there)."""
    name = cfg.train.run_name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.train.out_dir) / name
    if run_dir.is_file():
        raise TrainingError(f"{run_dir} is a file, not a run directory; choose another "
                            f"--train.run_name or --train.out_dir")
    if newest_checkpoint(run_dir) is not None:
        raise TrainingError(f"run directory {run_dir} already holds a run; continue it with "
                            f"--resume {run_dir} or choose another --train.run_name")
    return run_dir


def clear_unstarted(run_dir: Path) -> None:
    """Remove what a start stopped before its first checkpoint left (config, TensorBoard events)
    and the temporary files of saves cut short by a kill, so the run starts clean."""
    if not run_dir.is_dir():
        return
    leftovers = [*run_dir.glob(".*.tmp")]
    if newest_checkpoint(run_dir) is None:
        leftovers += [*run_dir.glob("events.out.tfevents.*"), run_dir / "config.json",
                      run_dir / SNAPSHOTS]
    for path in leftovers:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise TrainingError(f"cannot clean up {path}: {err.strerror or err}") from None


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def split_loss(model: GPT, tokens: torch.Tensor, batch_size: int, runtime: Runtime) -> float:
    """The exact loss of a split: mean next-token loss over all of tokens, in order, in
    non-overlapping windows of the model's context (the last one shorter), every position scored
    once. Deterministic; time-to-target runs are judged by it (train.eval_batches = 0)."""
    was_training = model.training
    model.eval()
    T, n = model.config.context_length, len(tokens) - 1
    inputs, targets = tokens[:n].long(), tokens[1:].long()
    full = n // T * T  # the windows of T tokens, as rows; then the shorter rest
    rows_x, rows_y = inputs[:full].view(-1, T), targets[:full].view(-1, T)
    batches = [(rows_x[i:i + batch_size], rows_y[i:i + batch_size])
               for i in range(0, len(rows_x), batch_size)]
    if full < n:
        batches.append((inputs[None, full:], targets[None, full:]))
    total = torch.zeros((), device=runtime.device)
    for x, y in batches:
        with runtime.autocast():
            logits = model(x.to(runtime.device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(runtime.device).flatten(),
                                 reduction="sum")
    model.train(was_training)
    return total.item() / n


def evaluate_run(run_dir: str | Path, overrides: dict[str, str] | None = None,
                 say: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Eval-only: the exact loss (split_loss) of both whole splits for each checkpoint of a run,
    {"best.pt": {"train": ..., "val": ...}, ...}; say gets a line per checkpoint with perplexity.
    train.* overrides choose the device, precision and batch size."""
    cfg = resume_config(run_dir, overrides)
    runtime = Runtime.from_config(cfg.train)
    results, data = {}, None
    for name in CHECKPOINT_NAMES:
        if not (Path(run_dir) / name).is_file():
            continue
        state = load_resume_state(run_dir, cfg, Path(run_dir) / name)
        model, tokenizer = model_from_checkpoint(state, runtime.device)
        data = data or prepare_data(cfg.data, cfg.model.context_length, tokenizer)
        started = time.perf_counter()
        losses = {split: split_loss(model, tokens, cfg.train.batch_size, runtime)
                  for split, tokens in (("train", data.train), ("val", data.val))}
        results[name] = losses
        say(f"{name} (step {state['step']}): "
            + ", ".join(f"{split} loss {loss:.4f} (perplexity {math.exp(loss):.2f}, "
                        f"{len(getattr(data, split)):,} tokens)" for split, loss in losses.items())
            + f" in {time.perf_counter() - started:.1f} s")
    if not results:
        raise CheckpointError(f"{run_dir} holds no checkpoint to evaluate yet")
    return results


@torch.no_grad()
def estimate_loss(model: GPT, data: Dataset, cfg: Config, runtime: Runtime) -> dict[str, float]:
    """Mean loss over eval_batches batches of each split. The batches are the same at every
    eval (a fixed generator), so successive estimates compare like with like.

    eval_batches = 0 scores the whole val split with split_loss, and for the train loss an eighth
    as many tokens from the end of the train split (the train loss only shows the gap; scoring
    the whole train split would cost ten times as much as val)."""
    tc = cfg.train
    if tc.eval_batches == 0:
        return {"train": split_loss(model, data.train[-(len(data.val) // 8):], tc.batch_size,
                                    runtime),
                "val": split_loss(model, data.val, tc.batch_size, runtime)}
    model.eval()
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    losses = {}
    for split, tokens in (("train", data.train), ("val", data.val)):
        total = torch.zeros((), device=runtime.device)
        for _ in range(cfg.train.eval_batches):
            x, y = get_batch(tokens, cfg.train.batch_size, cfg.model.context_length, generator)
            with runtime.autocast():
                total += lm_loss(model(x.to(runtime.device)), y.to(runtime.device))
        losses[split] = total.item() / cfg.train.eval_batches
    model.train()
    return losses


def evaluate(run: Run, board: TensorBoardLog, result: TrainResult, say: Callable[[str], None],
             seconds: float) -> None:
    """Phase 3: losses on both splits, best.pt when val improved (saved before it is reported,
    so no report outruns it), the target check, and a sample and attention images of the probe."""
    tc, step = run.cfg.train, run.step
    losses = estimate_loss(run.trainer.model, run.data, run.cfg, run.runtime)
    for split, loss in losses.items():
        if not math.isfinite(loss):
            raise Diverged(f"the {split} loss at the evaluation became {loss}")
    result.val_losses[step], result.val_seconds[step] = losses["val"], seconds
    if 0 < tc.target_val_loss and losses["val"] <= tc.target_val_loss:
        result.target_step = step  # every rank sees the same val loss
    improved = losses["val"] < run.best_val
    run.best_val = min(run.best_val, losses["val"])
    if improved:
        run.save("best.pt")
    say(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}"
        + (" (best)" if improved else ""))
    if not run.runtime.master:
        return
    model, tokenizer = run.trainer.model, run.data.tokenizer
    ids = torch.tensor([run.probe], device=run.runtime.device)
    sample = None
    if tc.sample_tokens:
        generator = torch.Generator(device=ids.device).manual_seed(tc.seed)
        out = model.generate(ids, tc.sample_tokens, temperature=0.8, top_k=50, generator=generator)
        sample = tokenizer.decode(out[0].tolist())
    snapshot = probe_snapshot(model, run.probe)
    run.keep_snapshot(snapshot)
    board.evaluation(step, losses, sample, list(snapshot["attention"].float()), run.probe_tokens())
    if any(p.requires_grad for p in model.pos_emb.parameters()):  # a table that is learned
        board.positions(run.cfg.model.pos_encoding, model.pos_emb.vectors(), step)


def record_step(run: Run, result: TrainResult, board: TensorBoardLog, bar: tqdm, loss: float,
                lr: float, grad_norm: float, seconds: float) -> None:
    """One step's loss and time in the result, on the progress bar and in TensorBoard."""
    result.step_seconds.append(seconds)
    result.losses.append(loss)
    tokens_per_sec = run.tokens_per_step / seconds
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}",
                    refresh=False)
    board.step(run.step, loss, lr, grad_norm, tokens_per_sec)


def stop_at_target(run: Run, result: TrainResult, say: Callable[[str], None]) -> None:
    """The last evaluation reached train.target_val_loss: say when, and save last.pt."""
    say(f"val {result.val_losses[run.step]:.4f} <= train.target_val_loss "
        f"{run.cfg.train.target_val_loss} at step {run.step}, "
        f"{result.val_seconds[run.step]:.1f} s after start: stopping")
    run.save("last.pt")


def diverged(what: str, run: Run) -> TrainingError:
    """The error that ends a run whose loss or weights became NaN or infinite."""
    kept = (f"the checkpoints in {run.dir} are the last good ones" if newest_checkpoint(run.dir)
            else "before its first checkpoint")
    return TrainingError(f"{what}; stopped ({kept}); try a lower train.lr")


def save_stopped_run(run: Run, result: TrainResult, stop: "StopRequest", stop_at: int | None,
                     say: Callable[[str], None]) -> None:
    """Phase 4 of a run stopped before max_steps (a signal, Cancel, stop_at): save last.pt and
    print how to continue. A second signal does not cut this short."""
    with stop.protected():
        result.stopped_by = stop.reason or (f"stop_at={stop_at}" if stop_at and run.step >= stop_at
                                            else "a signal to another rank")
        run.save("last.pt")
        say(f"{result.stopped_by}: saved {run.dir / 'last.pt'} at step {run.step}; "
            f"continue with: python train.py --resume {run.dir}")


def stop_signals() -> list[int]:
    """Ctrl-C, a polite kill, and on Windows Ctrl-Break (Windows sends no other signal)."""
    return [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s]


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks once per step, so a checkpoint is saved
    before exiting instead of dying mid-step. The previous handlers come back on exit; outside the
    main thread (the demo app trains in one) it installs nothing."""

    def __init__(self, cancelled: Callable[[], bool] | None = None):
        self.signal_name: str | None = None
        self.cancelled = cancelled or (lambda: False)  # a request from elsewhere (the app's button)
        self._previous = {}
        self._protected = 0

    @property
    def reason(self) -> str | None:
        """Why training should stop now: the signal's name, "cancelled", or None."""
        return self.signal_name or ("cancelled" if self.cancelled() else None)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in stop_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and not self._protected:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal_name = self.signal_name or signal.Signals(signum).name

    @contextlib.contextmanager
    def protected(self):
        """Within this block (a save, the final steps) a second signal is not an abort: the
        block finishes, so no file is left half-written and no traceback escapes."""
        self._protected += 1
        try:
            yield
        finally:
            self._protected -= 1

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the loop

def train(cfg: Config, resume: str | Path | None = None, stop_at: int | None = None,
          progress: bool = True, log: Callable[[str], None] = lambda line: None,
          on_step: Callable[[int, int], None] | None = None,
          cancelled: Callable[[], bool] | None = None) -> TrainResult:
    """Train as cfg says; see the module docstring.

    resume: a run directory to continue from its last.pt (cfg from `resume_config`).
    stop_at: pause after this many steps, saving last.pt as an interruption would.
    progress: show a tqdm bar. log: receives the run's header lines (train.py prints them).
    on_step: called with (step, max_steps) after each optimizer step, e.g. for a progress display.
    cancelled: checked before each step; once it returns True, training stops as on Ctrl-C
    (last.pt saved, resumable); the demo app's Cancel button uses it.
    """
    started = time.perf_counter()
    with StopRequest(cancelled) as stop:  # from here on, Ctrl-C and SIGTERM end in a last.pt
        run = Run.start(cfg, resume, stop)  # 1. set up the run
        tc, master = run.cfg.train, run.runtime.master
        board = run.open_log(log)
        bar = tqdm(total=tc.max_steps, initial=run.step, disable=not (progress and master),
                   dynamic_ncols=True, unit="step")
        say = (bar.write if progress else log) if master else (lambda line: None)
        result = TrainResult(run.dir, run.step, run.best_val, prompt=run.prompt)
        try:
            while (run.step < min(tc.max_steps, stop_at or tc.max_steps)
                   and not run.runtime.any_rank(stop.reason is not None)):
                lr = lr_at(run.step, tc)
                run.trainer.set_lr(lr)
                step_start = time.perf_counter()
                loss, grad_norm = run.trainer.step(run.next_batch)  # 2. the step
                run.step += 1
                record_step(run, result, board, bar, loss, lr, grad_norm,
                            time.perf_counter() - step_start)
                if on_step is not None:
                    on_step(run.step, tc.max_steps)
                if run.step % tc.eval_interval == 0 or run.step == tc.max_steps:  # 3. evaluate
                    evaluate(run, board, result, say, time.perf_counter() - started)
                if result.target_step == run.step:
                    stop_at_target(run, result, say)
                    break
                if run.step % tc.checkpoint_interval == 0 or run.step == tc.max_steps:
                    run.save("last.pt")
            if result.target_step is None and run.step < tc.max_steps:  # 4. finish
                save_stopped_run(run, result, stop, stop_at, say)
            elif result.target_step is None and tc.target_val_loss > 0:
                say(f"train.target_val_loss {tc.target_val_loss} not reached in {tc.max_steps} "
                    f"steps (best val {run.best_val:.4f}); train longer with --train.max_steps")
        except NonFiniteLoss as err:
            raise diverged(f"loss became {err} at step {run.step + 1}", run) from None
        except Diverged as err:
            raise diverged(f"{err} after step {run.step}", run) from None
        finally:
            with stop.protected():
                bar.close()
                board.close(run.cfg.to_dict(), run.best_val,
                            result.losses[-1] if result.losses else None)
                run.runtime.close()
    result.step, result.best_val_loss, result.model = run.step, run.best_val, run.trainer.model
    return result


__all__ = ["train", "TrainResult", "Trainer", "Run", "lr_at", "lm_loss", "resume_config",
           "split_loss", "evaluate_run"]
