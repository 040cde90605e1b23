"""Read and edit what flows through a GPT, by the name of a hook point.

Every `minigpt.model.HookPoint` is named by its module path. In the order the stream meets them:

    blocks.{i}.hook_resid_in      (B, T, C)     the residual stream entering block i (i = 0: the
                                                token embeddings with their positions)
    blocks.{i}.attn.hook_pattern  (B, H, T, S)  each head's attention weights (asking for them
                                                switches that layer to the explicit softmax path)
    blocks.{i}.attn.hook_heads    (B, T, H, D)  each head's output, before W_out mixes the heads
    blocks.{i}.hook_attn_out      (B, T, C)     what attention adds to the stream
    blocks.{i}.hook_resid_mid     (B, T, C)     the stream between attention and feed-forward
    blocks.{i}.ffn.hook_neurons   (B, T, F)     the feed-forward neurons, after GELU
    blocks.{i}.hook_ffn_out       (B, T, C)     what the feed-forward block adds
    blocks.{i}.hook_resid_out     (B, T, C)     the stream leaving block i
    hook_final_norm               (B, T, C)     the stream after the final norm, as the head reads it

    with capture(model, ["blocks.0.attn.hook_pattern"]) as seen:
        logits = model(ids)
    seen["blocks.0.attn.hook_pattern"]                  # (B, H, T, T)

    with edit(model, {"blocks.1.attn.hook_heads": lambda z: z * keep}):
        logits = model(ids)                             # those heads knocked out

The forward pass knows nothing of who watches (torch forward hooks, removed when the block ends);
inspection, the interventions and the app are built on these two context managers.
"""

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch

from minigpt.model import GPT, HookPoint


def hook_points(model: GPT) -> dict[str, HookPoint]:
    """Every hook point of model by name (capture fills its dict in the order the forward pass
    reaches them)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def _named(model: GPT, names: Iterable[str]) -> dict[str, HookPoint]:
    points = hook_points(model)
    unknown = [name for name in names if name not in points]
    if unknown:
        raise KeyError(f"no hook point {unknown[0]!r} in this model; it has "
                       f"{', '.join(list(points)[:12])}, ...")
    return {name: points[name] for name in names}


@contextlib.contextmanager
def hooked(model: GPT, hooks: dict[str, Callable]) -> Iterator[None]:
    """Attach hooks[name](module, args, output) to each named hook point within the block."""
    handles = [point.register_forward_hook(hooks[name])
               for name, point in _named(model, hooks).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture(model: GPT, names: Iterable[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass stores the activation of each named hook point (all
    of them by default) in the yielded dict, detached; a later pass overwrites an earlier one."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output):
            seen[name] = output.detach()
        return hook

    names = list(hook_points(model) if names is None else names)
    with hooked(model, {name: keep(name) for name in names}):
        yield seen


@contextlib.contextmanager
def edit(model: GPT, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Within the block, each named hook point's activation is replaced by edits[name](activation)
    (a new tensor of the same shape) in every forward pass."""
    def replace(name: str):
        def hook(module, args, output):
            return edits[name](output)
        return hook

    with hooked(model, {name: replace(name) for name in edits}):
        yield
