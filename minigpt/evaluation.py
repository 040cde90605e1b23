"""How well a model does: the exact loss of a whole split, the sampled estimate of every
evaluation, and the evaluation of a run in training (losses, best.pt, the probe's sample and
pictures) or after it (`evaluate_run`, train.py --eval-only).
"""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from minigpt.checkpoint import CHECKPOINT_NAMES, model_from_checkpoint
from minigpt.config import Config
from minigpt.data import Dataset, get_batch, prepare_data
from minigpt.errors import CheckpointError
from minigpt.generation import generate
from minigpt.head_scores import head_scores
from minigpt.inspection import probe_snapshot
from minigpt.model import GPT, eval_mode
from minigpt.resume import load_resume_state, resume_config
from minigpt.run import Run
from minigpt.runtime import Runtime
from minigpt.step import Diverged, lm_loss
from minigpt.tracking import TensorBoardLog


@torch.no_grad()
def split_loss(model: GPT, tokens: torch.Tensor, batch_size: int, runtime: Runtime) -> float:
    """The exact loss of a split: mean next-token loss over all of tokens, in order, in
    non-overlapping windows of the model's context (the last one shorter), every position scored
    once. Deterministic; time-to-target runs are judged by it (train.eval_batches = 0)."""
    total = torch.zeros((), device=runtime.device)
    with eval_mode(model):
        for x, y in windows(tokens, model.config.context_length, batch_size):
            with runtime.autocast():
                logits = model(x.to(runtime.device))
            total += F.cross_entropy(logits.flatten(0, 1).float(),
                                     y.to(runtime.device).flatten(), reduction="sum")
    return total.item() / (len(tokens) - 1)


def windows(tokens: torch.Tensor, T: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All of tokens as (inputs, targets) batches of non-overlapping windows of T, in order, every
    next-token prediction once: batch_size rows of T, then the shorter rest as a row of its own."""
    n = len(tokens) - 1
    inputs, targets = tokens[:n].long(), tokens[1:].long()
    full = n // T * T
    rows_x, rows_y = inputs[:full].view(-1, T), targets[:full].view(-1, T)
    batches = [(rows_x[i:i + batch_size], rows_y[i:i + batch_size])
               for i in range(0, len(rows_x), batch_size)]
    if full < n:
        batches.append((inputs[None, full:], targets[None, full:]))
    return batches


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
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    losses = {}
    with eval_mode(model):
        for split, tokens in (("train", data.train), ("val", data.val)):
            total = torch.zeros((), device=runtime.device)
            for _ in range(tc.eval_batches):
                x, y = get_batch(tokens, tc.batch_size, cfg.model.context_length, generator,
                                 data.release)
                with runtime.autocast():
                    total += lm_loss(model(x.to(runtime.device)), y.to(runtime.device))
            losses[split] = total.item() / tc.eval_batches
    return losses


def evaluate(run: Run, board: TensorBoardLog, say: Callable[[str], None]) -> dict[str, float]:
    """Phase 3 of training: the losses on both splits (returned), best.pt when val improved
    (saved before it is reported, so no report outruns it), and the probe prompt's sample,
    snapshot and attention images. A non-finite loss raises Diverged, on every rank."""
    step = run.step
    losses = estimate_loss(run.trainer.model, run.data, run.cfg, run.runtime)
    for split, loss in losses.items():
        if not math.isfinite(loss):
            raise Diverged(f"the {split} loss at the evaluation became {loss}")
    improved = losses["val"] < run.best_val
    run.best_val = min(run.best_val, losses["val"])
    if improved:
        run.save("best.pt")
    say(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}"
        + (" (best)" if improved else ""))
    board.losses(step, losses)
    if run.runtime.master and run.cfg.train.probe:
        log_probe(run, board)
    return losses


def log_probe(run: Run, board: TensorBoardLog) -> None:
    """What the model does now, kept at every evaluation and before the first step: a sample
    continuing the probe prompt, the probe's attention and logit lens and every head's scores
    (snapshots.pt, which the app plays back), their pictures and the top scores in TensorBoard,
    and a learned position table."""
    tc, step = run.cfg.train, run.step
    model, tokenizer = run.trainer.model, run.data.tokenizer
    ids = torch.tensor([run.probe], device=run.runtime.device)
    sample = None
    if tc.sample_tokens:
        generator = torch.Generator(device=ids.device).manual_seed(tc.seed)
        out = generate(model, ids, tc.sample_tokens, temperature=0.8, top_k=50,
                       generator=generator)
        sample = tokenizer.decode(out[0].tolist())
    scores = head_scores(model, run.data.val, seed=tc.seed)
    snapshot = {**probe_snapshot(model, run.probe), "head_scores": scores.as_dict()}
    run.keep_snapshot(snapshot)
    board.probe(step, sample, list(snapshot["attention"].float()), run.probe_tokens(), scores)
    if any(p.requires_grad for p in model.pos_emb.parameters()):  # a table that is learned
        board.positions(run.cfg.model.pos_encoding, model.pos_emb.vectors(), step)


def evaluate_run(run_dir: str | Path, overrides: dict[str, str] | None = None,
                 say: Callable[[str], None] = print,
                 splits: tuple[str, ...] = ("train", "val"),
                 checkpoints: tuple[str, ...] = CHECKPOINT_NAMES) -> dict[str, dict[str, float]]:
    """Eval-only: the exact loss (split_loss) of whole splits (both by default) for each
    checkpoint of a run (both by default), {"best.pt": {"train": ..., "val": ...}, ...}; say gets
    a line per checkpoint with perplexity. train.* overrides choose the device, precision and
    batch size."""
    cfg = resume_config(run_dir, overrides)
    runtime = Runtime.from_config(cfg.train)
    results, data = {}, None
    for name in checkpoints:
        if not (Path(run_dir) / name).is_file():
            continue
        state = load_resume_state(run_dir, cfg, Path(run_dir) / name)
        model, tokenizer = model_from_checkpoint(state, runtime.device)
        data = data or prepare_data(cfg.data, cfg.model.context_length, tokenizer)
        started = time.perf_counter()
        losses = {split: split_loss(model, getattr(data, split), cfg.train.batch_size, runtime)
                  for split in splits}
        results[name] = losses
        say(f"{name} (step {state['step']}): "
            + ", ".join(f"{split} loss {loss:.4f} (perplexity {math.exp(loss):.2f}, "
                        f"{len(getattr(data, split)):,} tokens)" for split, loss in losses.items())
            + f" in {time.perf_counter() - started:.1f} s")
    if not results:
        raise CheckpointError(f"{run_dir} holds no checkpoint to evaluate yet")
    return results
