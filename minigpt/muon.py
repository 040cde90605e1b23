"""Muon: momentum whose update is orthogonalised, for the weight matrices inside the blocks.

Each step takes the (Nesterov) momentum of a matrix's gradient and replaces it by the nearest
semi-orthogonal matrix (all singular values 1), found with a few Newton-Schulz iterations, so
every direction of the update moves at the same rate. https://kellerjordan.github.io/posts/muon/

Parameters in groups with "muon": False (embeddings, head, biases, norms) get AdamW (minigpt.optim's,
on torch's fused kernel), each group with its own lr.
"""

import torch

from minigpt.optim import AdamW

# Coefficients of the quintic Newton-Schulz iteration (from the Muon write-up above): they push
# singular values into roughly [0.7, 1.2] in 5 steps, which is close enough to 1 for training.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for each matrix g = U S V^T in a (..., m, n) batch."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(AdamW):
    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, muon=True)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step([p for p in group["params"] if p.grad is not None], group)
            else:
                self._adamw_step(group)

    def _muon_step(self, params, group):
        """Nesterov momentum, orthogonalised; matrices of one shape in one batched call."""
        by_shape: dict[torch.Size, list] = {}
        for p in params:
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p)
            buf = state["momentum"].mul_(group["momentum"]).add_(p.grad)
            by_shape.setdefault(p.shape, []).append((p, p.grad.add(buf, alpha=group["momentum"])))
        for shape, items in by_shape.items():
            updates = orthogonalise(torch.stack([u for _, u in items]))
            scale = max(1.0, shape[0] / shape[1]) ** 0.5  # the same RMS step for tall matrices
            for (p, _), update in zip(items, updates):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)
