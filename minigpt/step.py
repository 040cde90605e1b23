"""One optimizer step: the loss, the learning-rate schedule and `Trainer.step`, which runs
grad_accum micro-batches forward and backward, clips and steps the optimizers.

    trainer = Trainer(model, cfg.train, Runtime.from_config(cfg.train))
    loss, grad_norm = trainer.step(next_batch)

`python -m minigpt.bench train` times this same step; `minigpt.training.train` runs it in its
loop.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from minigpt.config import TrainConfig
from minigpt.errors import CheckpointError
from minigpt.model import GPT
from minigpt.optim import make_optimizers
from minigpt.runtime import Runtime


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then down to cfg.min_lr at max_steps: a cosine,
    or (lr_schedule "wsd") lr held until the last cooldown_fraction of the steps, then a line."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(cfg.cooldown_fraction * cfg.max_steps))
        remaining = min(1.0, (cfg.max_steps - step) / cooldown)  # 1 until the cooldown starts
        return cfg.min_lr + max(0.0, remaining) * (cfg.lr - cfg.min_lr)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(progress, 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def muon_momentum_at(step: int, cfg: TrainConfig) -> float:
    """Muon's momentum: from 0.85 up to cfg.muon_momentum over muon_momentum_warmup steps (a
    young model's gradients change fast, so the early average should forget sooner)."""
    if step >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    start = min(0.85, cfg.muon_momentum)
    return start + (cfg.muon_momentum - start) * step / cfg.muon_momentum_warmup


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

    def schedule(self, step: int) -> float:
        """Set the rates (and Muon's momentum) of the step after `step` optimizer steps; returns
        the lr. Every group's peak rate is scaled by lr / train.lr: one schedule for all."""
        lr, momentum = lr_at(step, self.cfg), muon_momentum_at(step, self.cfg)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr / self.cfg.lr
                if isinstance(optimizer, torch.optim.Muon):
                    group["momentum"] = momentum
        return lr

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
        """The weights, optimizers and scaler, whole. Under FSDP a collective: every rank calls
        it, and rank 0's is the complete one."""
        weights, optimizers = self.runtime.full_state(self.model, self.optimizers)
        return {"model": weights, "optimizers": optimizers, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Weights, optimizer and scaler state from a checkpoint (every rank reads it whole). The
        peak rates stay those of the current config, since train.lr may change on resume."""
        saved = state["optimizers"] if "optimizers" in state else [state["optimizer"]]  # v1: one
        peaks = [[g["initial_lr"] for g in o.param_groups] for o in self.optimizers]
        try:
            if len(saved) != len(self.optimizers):
                raise ValueError("another number of optimizers")
            self.runtime.load_full_state(self.model, self.optimizers, state["model"], saved)
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"the checkpoint's optimizer state does not fit train.optimizer = "
                f"{self.cfg.optimizer!r} ({err}); runs saved by minigpt's own Muon before it moved "
                f"to torch.optim.Muon cannot be resumed, but their weights still sample") from None
        for optimizer, group_peaks in zip(self.optimizers, peaks):
            for group, peak in zip(optimizer.param_groups, group_peaks):
                group["initial_lr"] = peak
        self.scaler.load_state_dict(state["scaler"])
