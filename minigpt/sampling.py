"""Next-token sampling: temperature, top-k and top-p (nucleus) as small pure functions.

Each function takes logits of shape (B, V) and returns a tensor of the same shape (filtered
logits) or of shape (B,) (chosen token ids). They never modify their input.
"""

import math

import torch

from minigpt.errors import InputError


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise InputError (a ValueError) for sampling controls that have no meaning."""
    if not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0 means greedy), got "
                         f"{temperature}")
    if top_k is not None and top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 or None disables it), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf. k of 0/None or >= V keeps all."""
    if not k or k >= logits.size(-1):
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches p (always at least one).

    Nucleus sampling, https://arxiv.org/abs/1904.09751. p of None or 1.0 keeps all.
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the mass before it already reaches p; the top token never is.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # even when p is below float32's smallest number (it becomes 0)
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose one token per row from logits (B, V) -> (B,). Temperature 0 is greedy argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # Shifted so that the largest is 0 (softmax does not change) and divided by at least 1e-30
    # (float32 holds it): a tiny temperature sends the others far below 0, where dividing the
    # raw logits would give +-inf, or 0/0 below float32's range, and NaN probabilities.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, 1e-30)
    probs = torch.softmax(top_p_filter(top_k_filter(logits, top_k), top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
