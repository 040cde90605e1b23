"""Optimizers, all from torch.optim: AdamW, or Muon for the weight matrices inside the blocks.

    optimizers = make_optimizers(model, cfg.train)   # a list: [AdamW] or [Muon, AdamW]

AdamW decays weight matrices only: not biases and LayerNorm gains (which set scales, not
features) and not the token/position embeddings (rows of rare tokens would shrink towards zero
between their updates) unless train.decay_embeddings. Muon (https://kellerjordan.github.io/posts/muon/)
takes the Nesterov momentum of each matrix's gradient and replaces it by the nearest
semi-orthogonal matrix, so every direction of the update moves at the same rate; it is defined for
matrices only, so embeddings, head, biases and norms stay with AdamW; its weight decay is
train.muon_weight_decay (off by default). Every group keeps its peak rate as "initial_lr"; the
training loop scales all groups by one schedule.
"""

import torch
from torch import nn

from minigpt.config import TrainConfig


def split_parameters(model: nn.Module, cfg: TrainConfig) -> dict[str, list[nn.Parameter]]:
    """The model's parameters (tied ones once) as "muon" (matrices inside the blocks, when
    cfg.optimizer is muon), "decay" (other matrices) and "no_decay" (the rest)."""
    no_decay = set()
    if not cfg.decay_embeddings:
        no_decay = {id(p) for p in model.embedding_parameters()}
    muon = ({id(p) for p in model.blocks.parameters() if p.dim() == 2}
            if cfg.optimizer == "muon" else set())
    groups = {"muon": [], "decay": [], "no_decay": []}
    for p in {id(p): p for p in model.parameters()}.values():
        name = ("muon" if id(p) in muon else
                "decay" if p.dim() >= 2 and id(p) not in no_decay else "no_decay")
        groups[name].append(p)
    return groups


def make_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """[AdamW], or [Muon, AdamW] when cfg.optimizer is "muon"; AdamW fused into one kernel where
    the device has it."""
    params = split_parameters(model, cfg)
    groups = [{"params": params["decay"], "weight_decay": cfg.weight_decay},
              {"params": params["no_decay"], "weight_decay": 0.0}]
    try:
        adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except RuntimeError:  # a device this torch has no fused AdamW kernel for: the plain one
        adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    optimizers = [adamw]
    if params["muon"]:
        # "original" scales each matrix's step by sqrt(max(1, rows / cols)), so tall matrices
        # move at the same RMS rate as square ones.
        optimizers.insert(0, torch.optim.Muon(params["muon"], lr=cfg.muon_lr,
                                              weight_decay=cfg.muon_weight_decay,
                                              adjust_lr_fn="original"))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers
