"""Optimizers without torch.optim.Optimizer: AdamW on torch's fused kernel, which Muon extends.

torch.optim.Optimizer imports torch._dynamo the first time a parameter group is added: about
70 MB of resident memory and a second of start-up, a fifth of a small CPU run's footprint. The
functional torch.optim.adamw.adamw (the same fused kernel) does not. `Optimizer` here is the part
of torch's class that training uses: `param_groups`, per-parameter `state`, `zero_grad` and
`state_dict`/`load_state_dict` in torch's layout, so GradScaler works with it and optimizer state
moves between these classes and torch.optim.AdamW unchanged.
"""

from collections import defaultdict

import torch
from torch.optim.adamw import adamw


class Optimizer:
    def __init__(self, params, defaults: dict):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups = [{**defaults, **group, "params": list(group["params"])}
                             for group in groups]
        self.state: dict[torch.Tensor, dict] = defaultdict(dict)  # parameter -> its state

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """{"state": {index: state}, "param_groups": [{hyperparameters, "params": [index]}]},
        parameters numbered in group order, as torch.optim does."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        return {"state": {index[id(p)]: state for p, state in self.state.items()},
                "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups than this model")
        by_index = {}
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k in group and k != "params"})
            by_index.update(zip(saved["params"], group["params"]))
        self.state = defaultdict(dict)
        for i, state in state_dict["state"].items():
            p = by_index[i]
            self.state[p] = {k: v.to(p.device, p.dtype) if isinstance(v, torch.Tensor) and v.dim()
                             else v for k, v in state.items()}  # moments; steps stay as saved


class AdamW(Optimizer):
    """torch.optim.AdamW's maths (decoupled weight decay, bias-corrected moments), fused into one
    kernel per group where torch has it for the device (CPU since torch 2.4, CUDA)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, fused: bool | None = None,
                 **defaults):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      **defaults))
        devices = {p.device for group in self.param_groups for p in group["params"]}
        self.fused = all(fused_supported(d) for d in devices) if fused is None else fused

    def _step_device(self, p: torch.Tensor) -> torch.device:
        # The fused kernel wants the step count beside the parameter; the others on the CPU.
        return p.device if self.fused else torch.device("cpu")

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=self._step_device(p))
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for p, state in self.state.items():  # saved by a fused or an unfused optimizer
            if "step" in state:
                step = torch.as_tensor(state["step"], dtype=torch.float32)
                state["step"] = step.to(self._step_device(p))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            self._adamw_step(group)

    def _adamw_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            states = [self._state(p) for p in params]
            beta1, beta2 = group["betas"]
            adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                  [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                  fused=self.fused, foreach=False if self.fused else params[0].device.type != "cpu",
                  amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                  weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def fused_supported(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for device (tried on a one-element tensor)."""
    p, zero = torch.zeros(1, device=device), torch.zeros((), device=device)
    try:
        adamw([p], [p.clone()], [p.clone()], [p.clone()], [], [zero], fused=True,
              amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-3, weight_decay=0.0, eps=1e-8,
              maximize=False)
    except (RuntimeError, TypeError):
        return False
    return True
