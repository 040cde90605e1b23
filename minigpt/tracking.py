"""What a run shows in TensorBoard (`tensorboard --logdir runs`): loss curves, learning rate,
gradient norm and speed at every step; at every evaluation the val/train loss, a text sample and
each layer's attention over a fixed probe prompt as an image; position tables; and at the end the
hyperparameters with the final metrics (HParams tab). Only rank 0 writes: elsewhere `TensorBoardLog`
is given no directory and does nothing.
"""

import json
from pathlib import Path

import torch

from minigpt.heatmap import attention_image, positional_encoding_image, to_tensor


class TensorBoardLog:
    def __init__(self, run_dir: Path | None):
        self.writer = None
        if run_dir is not None:
            # Imported here: TensorBoard costs ~15 MB and a second of start-up, needed only to train.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def start(self, config: dict, probe_tokens: list[str], step: int) -> None:
        """The resolved config and the probe prompt's tokens."""
        if self.writer is None:
            return
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", step)
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
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", grad_norm, step)
        self.writer.add_scalar("perf/tokens_per_sec", tokens_per_sec, step)

    def evaluation(self, step: int, losses: dict[str, float], sample: str | None,
                   attentions: list[torch.Tensor], probe_tokens: list[str]) -> None:
        """Losses, a sample continuing the probe, and each layer's attention (H, T, T) over it."""
        if self.writer is None:
            return
        self.writer.add_scalar("val/loss", losses["val"], step)
        self.writer.add_scalar("eval/train_loss", losses["train"], step)
        if sample is not None:
            self.writer.add_text("sample", sample, step)
        for layer, weights in enumerate(attentions, start=1):
            image = attention_image(weights, probe_tokens, title=f"layer {layer},")
            self.writer.add_image(f"attention/layer{layer}", to_tensor(image), step)

    def close(self, config: dict, best_val_loss: float, final_train_loss: float | None) -> None:
        """The HParams summary (when this process trained at least one step), then close."""
        if self.writer is None:
            return
        if final_train_loss is not None:
            hparams = {f"{section}.{key}": value for section, table in config.items()
                       for key, value in table.items()
                       if isinstance(value, (int, float, str, bool))}
            self.writer.add_hparams(hparams, {"hparam/best_val_loss": best_val_loss,
                                              "hparam/final_train_loss": final_train_loss},
                                    run_name=".")
        self.writer.close()
