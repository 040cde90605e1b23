"""Optimizers, all from torch.optim: AdamW, or Muon for the weight matrices inside the blocks.

    optimizers = make_optimizers(model, cfg.train)   # a list: [AdamW] or [Muon, AdamW]

AdamW decays weight matrices only: not biases and LayerNorm gains (which set scales, not
features) and not the token/position embeddings (rows of rare tokens would shrink towards zero
between their updates) unless train.decay_embeddings. Muon (https://kellerjordan.github.io/posts/muon/)
takes the Nesterov momentum of each matrix's gradient and replaces it by the nearest
semi-orthogonal matrix, so every direction of the update moves at the same rate (`Muon` below is
torch's, computing that matrix in float32 on CPU); it is defined for
matrices only, so embeddings, head, biases and norms stay with AdamW; its weight decay is
train.muon_weight_decay (off by default). Every group keeps its peak rate as "initial_lr"; the
training loop scales all groups by one schedule.
"""

import math

import torch
from torch import nn

from minigpt.config import TrainConfig

NEURON_NORM_BETA = 0.95  # train.muon_neuron_norm's EMA, as NorMuon's paper and modded-nanogpt


def orthogonalise(matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Approximately the nearest semi-orthogonal matrix to `matrix` (U V^T of its SVD), in float32:
    Newton-Schulz's quintic iteration X <- a X + (b G + c G^2) X with G = X X^T, from X scaled to
    a spectral norm of at most 1; the coefficients push small singular values up fast, leaving
    each between about 0.5 and 1.5 (https://kellerjordan.github.io/posts/muon/)."""
    a, b, c = coefficients
    wide = matrix.size(0) <= matrix.size(1)
    x = matrix.float() if wide else matrix.float().T  # G is then the smaller of the two squares
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(matrix.dtype)


def normalise_neurons(update: torch.Tensor, variance: torch.Tensor, beta: float) -> torch.Tensor:
    """NorMuon's step on an orthogonalised update (Li et al. 2025, arXiv 2510.05491): each row
    (one output neuron's weights) divided by the root of its recent mean square (variance, an
    (rows, 1) EMA with this beta, updated in place), then the whole rescaled to the norm it had.
    Orthogonalising evens out the update's directions but not its neurons: some rows come out
    larger than others step after step, and this evens those out too."""
    variance.lerp_(update.square().mean(dim=1, keepdim=True), 1 - beta)
    normalised = update * variance.clamp(min=1e-10).rsqrt()
    return normalised * (update.norm() / normalised.norm().clamp(min=1e-10))


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with its Newton-Schulz iteration in float32 on CPU, and optionally
    NorMuon's normalisation of each neuron's step (neuron_norm = its EMA's beta; 0 off).

    torch's runs it in bfloat16, which a CPU without native bfloat16 matmuls (no AVX512-BF16 or
    AMX: AMD Zen 3, most laptops) emulates slowly: on a 2-core Zen 3 its step took 427 ms of a
    494 ms training step (2 x 128, batch 12 x 128), and with this one the whole step took 87 ms
    (docs/records.md). Everything else (the
    Nesterov momentum, its buffers in the optimizer state, the rate scaling, the decoupled weight
    decay) is torch's, so checkpoints move freely between the two; on GPUs torch's step runs
    unless neuron_norm is on (its EMA is then in the state too, as "neuron_variance").
    """

    def __init__(self, params, neuron_norm: float = 0.0, **options):
        super().__init__(params, **options)
        self.neuron_norm = neuron_norm

    @torch.no_grad()
    def step(self, closure=None):
        if not self.neuron_norm and any(p.device.type != "cpu" for group in self.param_groups
                                        for p in group["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum, lr = group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"])
                if self.neuron_norm:
                    if "neuron_variance" not in state:
                        state["neuron_variance"] = update.new_zeros(update.size(0), 1)
                    update = normalise_neurons(update, state["neuron_variance"], self.neuron_norm)
                rows, cols = p.shape
                scale = (math.sqrt(max(1, rows / cols)) if group["adjust_lr_fn"] in (None, "original")
                         else 0.2 * math.sqrt(max(rows, cols)))  # "match_rms_adamw"
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)
        return loss


def split_parameters(model: nn.Module, cfg: TrainConfig) -> dict[str, list[nn.Parameter]]:
    """The model's parameters (tied ones once) as "muon" (matrices inside the blocks, when
    cfg.optimizer is muon), "decay" (other matrices) and "no_decay" (the rest: biases, norms, the
    embeddings unless cfg.decay_embeddings, and the short convolutions' few weights a channel)."""
    no_decay = set()
    if not cfg.decay_embeddings:
        no_decay = {id(p) for p in model.embedding_parameters()}
    muon = ({id(p) for p in model.blocks.parameters() if p.dim() == 2}
            if cfg.optimizer == "muon" else set())
    groups = {"muon": [], "decay": [], "no_decay": []}
    for p in {id(p): p for p in model.parameters()}.values():
        name = ("muon" if id(p) in muon else
                "decay" if p.dim() == 2 and id(p) not in no_decay else "no_decay")
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
        optimizers.insert(0, Muon(params["muon"], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                                  weight_decay=cfg.muon_weight_decay, adjust_lr_fn="original",
                                  neuron_norm=NEURON_NORM_BETA if cfg.muon_neuron_norm else 0.0))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers
