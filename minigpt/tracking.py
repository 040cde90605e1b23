"""What a run shows in TensorBoard (`tensorboard --logdir runs`). The scalars open on the loss
curves: `loss/train` (every step), `loss/val` and `loss/train_eval` (each evaluation, on the same
fixed batches); then `perf/tokens_per_sec`, the head scores of each evaluation
(`scores/induction_max`, `scores/previous_token_max`, `scores/in_context_learning`: see
minigpt.head_scores), `train/lr` and `train/grad_norm`. Images: each layer's attention over a
fixed probe prompt before training and at every evaluation (`probe_attention/layerN`, named to
sort after `loss/`, so the Time Series tab opens on the losses), the head-score grid
(`scores/heads`) and the position table (`positions/...`). At the end, the hyperparameters that
matter with the final metrics (`result/...`, HParams tab). Only rank 0 writes: elsewhere
`TensorBoardLog` is given no directory and does nothing.
"""

import json
from pathlib import Path

import torch

from minigpt.files import DiskGuard
from minigpt.head_scores import HeadScores
from minigpt.heatmap import (
    ATTENTION_NOTE,
    add_legend,
    attention_image,
    head_scores_image,
    positional_encoding_image,
    to_tensor,
)


class TensorBoardLog:
    def __init__(self, run_dir: Path | None):
        self.writer = None
        if run_dir is not None:
            # Imported here: TensorBoard costs ~15 MB and a second of start-up, needed only to train.
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir))
            self.writer = DiskGuard(writer, lambda: event_file(writer, run_dir))

    def start(self, config: dict, probe_tokens: list[str], step: int) -> None:
        """The resolved config and the probe prompt's tokens."""
        if self.writer is None:
            return
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", step)
        if probe_tokens:  # none when train.probe is off
            self.writer.add_text("probe", " | ".join(probe_tokens), step)

    def positions(self, kind: str, table: torch.Tensor, step: int) -> None:
        """The (positions, C) table a position encoding adds: `positions/sinusoidal` once, or
        `positions/learned` at every evaluation, as it trains."""
        if self.writer is not None:
            self.writer.add_image(f"positions/{kind}", to_tensor(positional_encoding_image(table)),
                                  step)

    def step(self, step: int, loss: float, lr: float, grad_norm: float,
             tokens_per_sec: float) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("loss/train", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", grad_norm, step)
        self.writer.add_scalar("perf/tokens_per_sec", tokens_per_sec, step)

    def losses(self, step: int, losses: dict[str, float]) -> None:
        """An evaluation's losses on both splits."""
        if self.writer is None:
            return
        self.writer.add_scalar("loss/val", losses["val"], step)
        self.writer.add_scalar("loss/train_eval", losses["train"], step)

    def probe(self, step: int, sample: str | None, attentions: list[torch.Tensor],
              probe_tokens: list[str], scores: HeadScores) -> None:
        """A sample continuing the probe, each layer's attention (H, T, T) over it, and the head
        scores: a grid image and, as scalars, the top induction score and the model's
        in-context-learning score (loss late in the context minus loss early on)."""
        if self.writer is None:
            return
        if sample is not None:
            self.writer.add_text("sample", sample, step)
        for layer, weights in enumerate(attentions, start=1):
            image = attention_image(weights, probe_tokens, cell=24, title=f"layer {layer},")
            image = add_legend(image, 0.0, 1.0, ATTENTION_NOTE)
            self.writer.add_image(f"probe_attention/layer{layer}", to_tensor(image), step)
        kinds = {"previous-token": scores.previous_token, "first-token": scores.first_token,
                 "duplicate-token": scores.duplicate_token, "induction": scores.induction}
        self.writer.add_image("scores/heads", to_tensor(head_scores_image(kinds)), step)
        self.writer.add_scalar("scores/induction_max", float(scores.induction.max()), step)
        self.writer.add_scalar("scores/previous_token_max", float(scores.previous_token.max()),
                               step)
        self.writer.add_scalar("scores/in_context_learning", scores.in_context_learning, step)

    def close(self, config: dict, best_val_loss: float, final_train_loss: float | None) -> None:
        """The HParams summary (when this process trained at least one step), then close."""
        if self.writer is None:
            return
        if final_train_loss is not None:
            self.writer.add_hparams(hparams(config), {"result/best_val_loss": best_val_loss,
                                                      "result/final_train_loss": final_train_loss},
                                    run_name=".")
        self.writer.close()


def event_file(writer, run_dir: Path) -> Path:
    """The event file a SummaryWriter writes (tensorboard keeps its name privately)."""
    name = getattr(getattr(writer.file_writer, "event_writer", None), "_file_name", None)
    return Path(name) if name else run_dir / "events.out.tfevents.*"


HPARAMS = {
    "model": ["vocab_size", "context_length", "embed_dim", "num_heads", "num_layers", "ffn_mult",
              "dropout", "pos_encoding", "norm_placement", "activation", "qk_norm",
              "logit_softcap", "zero_init_proj", "short_conv", "residual", "layer_norm", "ffn",
              "causal"],
    "data": ["dataset", "path", "tokenizer", "sampling"],
    "train": ["optimizer", "lr", "min_lr", "lr_schedule", "batch_size", "seq_len", "grad_accum",
              "max_steps", "warmup_steps", "weight_decay"],
}


def hparams(config: dict) -> dict:
    """The settings that shape a run's result, for comparing runs in the HParams tab: model sizes,
    data and tokenizer, optimizer, rates and schedule, batch and steps (the Muon settings, the
    cooldown and BPE size only where they apply); bookkeeping keys (directories, intervals,
    device) are left out."""
    keys = {section: list(names) for section, names in HPARAMS.items()}
    if config["train"]["optimizer"] == "muon":
        keys["train"] += ["muon_lr", "muon_weight_decay", "muon_momentum", "muon_momentum_warmup"]
    if config["train"]["lr_schedule"] == "wsd":
        keys["train"].append("cooldown_fraction")
    if config["data"]["tokenizer"] == "bpe":
        keys["data"].append("bpe_vocab_size")
    return {f"{section}.{key}": config[section][key] for section, names in keys.items()
            for key in names}
