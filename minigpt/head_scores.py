"""What each attention head does, in numbers, and whether the model learns in context.

    scores = head_scores(model, val_tokens)
    scores.induction          # (L, H): attention from the second copy of a repeated random
                              # sequence to the token after the first occurrence (Olsson et al.)
    scores.in_context_learning  # loss late in the context minus loss early on (< 0: it learns)
    head_kinds(scores)        # {(layer, head): "induction", ...} for the heads that stand out

Scores of a head are mean attention weights, so each is in [0, 1]:
- previous-token: from each token to the one just before it (text from the val split);
- first-token: from each token (but the first) to the first, the "attention sink";
- duplicate-token: from each token of the repeated copy to its own earlier occurrence;
- induction: from each token of the repeated copy to the token after its earlier occurrence, the
  head that lets a model continue a pattern it saw once (https://arxiv.org/abs/2209.11895). A
  head that attends uniformly scores about 1/T on these; a random-init model stays near that.
The in-context-learning score follows the same paper: the loss around position 0.8 T minus the
loss around position 0.1 T of the context (each averaged over 10% of the context and over up to
64 val windows); negative when later tokens are predicted better, from what came before them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minigpt.errors import InputError
from minigpt.hooks import capture
from minigpt.model import GPT, eval_mode

KINDS = ("previous-token", "first-token", "duplicate-token", "induction")
STANDS_OUT = 0.3  # a head whose score of a kind passes this is named for it
LOSS_WINDOWS = 64  # val windows averaged for the loss by position


@dataclass
class HeadScores:
    previous_token: torch.Tensor  # (L, H)
    first_token: torch.Tensor  # (L, H)
    duplicate_token: torch.Tensor  # (L, H)
    induction: torch.Tensor  # (L, H)
    loss_by_position: torch.Tensor  # (T,) mean next-token loss at each position of the context
    in_context_learning: float  # loss around 0.8 T minus loss around 0.1 T

    def as_dict(self) -> dict:
        """Plain tensors and floats, for snapshots.pt (torch.load(weights_only=True))."""
        return {"previous_token": self.previous_token, "first_token": self.first_token,
                "duplicate_token": self.duplicate_token, "induction": self.induction,
                "loss_by_position": self.loss_by_position,
                "in_context_learning": self.in_context_learning}


def patterns(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's attention over idx (B, T): (L, B, H, T, T), and the logits (B, T, V)."""
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(model.config.num_layers)]
    with torch.no_grad(), eval_mode(model), capture(model, names) as seen:
        logits = model(idx)
    return torch.stack([seen[name].float() for name in names]), logits


def repeated_random_tokens(vocab_size: int, length: int, batch: int,
                           generator: torch.Generator) -> torch.Tensor:
    """(batch, 2 * length): random tokens, then the same tokens again."""
    first = torch.randint(0, vocab_size, (batch, length), generator=generator)
    return torch.cat([first, first], dim=1)


def val_windows(tokens: torch.Tensor, length: int, batch: int) -> torch.Tensor:
    """(batch, length + 1) windows of the val split spread evenly over it (as many as fit)."""
    count = max(1, min(batch, (len(tokens) - 1) // length))
    starts = torch.linspace(0, len(tokens) - length - 1, count).long()
    return torch.stack([tokens[s:s + length + 1] for s in starts.tolist()]).long()


@torch.no_grad()
def loss_by_position(model: GPT, windows: torch.Tensor, batch: int) -> torch.Tensor:
    """(t,) mean next-token loss at each position of windows (N, t + 1), batch rows at a time."""
    total = torch.zeros(windows.size(1) - 1, device=windows.device)
    with eval_mode(model):
        for rows in windows.split(batch):
            logits = model(rows[:, :-1]).float()
            total += F.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="none").sum(0)
    return total / windows.size(0)


@torch.no_grad()
def head_scores(model: GPT, val_tokens: torch.Tensor, batch: int = 8, seed: int = 0,
                length: int | None = None) -> HeadScores:
    """Every head's four scores and the model's in-context-learning score (see the module
    docstring), from one pass over `batch` val windows and one over repeated random tokens, each
    `length` tokens long (default: the model's context; GPT-2's 1024 would keep gigabytes of
    attention weights on a CPU)."""
    if length is not None and length < 4:
        raise InputError(f"scoring windows must be at least 4 tokens long, got {length}")
    if len(val_tokens) < 9:
        raise InputError(f"scoring needs a text of at least 9 tokens, got {len(val_tokens)}")
    T = min(model.config.context_length, length or model.config.context_length)
    device = model.token_emb.weight.device
    windows = val_windows(val_tokens, min(T, len(val_tokens) - 1), LOSS_WINDOWS).to(device)
    weights, _ = patterns(model, windows[:batch, :-1])  # (L, B, H, t, t)
    t = weights.size(-1)
    later = torch.arange(1, t)
    previous = weights[..., later, later - 1].mean(dim=(1, 3))  # (L, H)
    first = weights[..., 1:, 0].mean(dim=(1, 3))
    losses = loss_by_position(model, windows, batch)
    band = max(1, round(0.05 * t))  # positions on either side, averaged: one alone is noisy
    early, late = (losses[max(0, round(f * t) - band):round(f * t) + band + 1].mean()
                   for f in (0.1, 0.8))

    half = T // 2
    generator = torch.Generator().manual_seed(seed)
    repeated = repeated_random_tokens(model.config.vocab_size, half, batch, generator)
    weights, _ = patterns(model, repeated.to(device))  # (L, B, H, 2 * half, 2 * half)
    i = torch.arange(half - 1)  # tokens of the second copy that have a token after them
    duplicate = weights[..., half + i, i].mean(dim=(1, 3))
    induction = weights[..., half + i, i + 1].mean(dim=(1, 3))
    return HeadScores(previous.cpu(), first.cpu(), duplicate.cpu(), induction.cpu(),
                      losses.cpu(), float(late - early))


def head_kinds(scores: HeadScores, threshold: float = STANDS_OUT) -> dict[tuple[int, int], str]:
    """The kind each head stands out for, {(layer, head): "induction"} with layers counted from
    1; a head that passes threshold in no kind is left out, and one that passes it in several is
    named for its highest score."""
    stacked = torch.stack([scores.previous_token, scores.first_token, scores.duplicate_token,
                           scores.induction])  # (4, L, H)
    best, kind = stacked.max(dim=0)
    return {(layer + 1, head): KINDS[int(kind[layer, head])]
            for layer, head in zip(*torch.nonzero(best > threshold, as_tuple=True))
            for layer, head in [(int(layer), int(head))]}
