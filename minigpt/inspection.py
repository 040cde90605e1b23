"""Look inside a trained model for one prompt: attention weights, layer outputs, the logit lens.

    seen = inspect_prompt(model, tokenizer, "the cat sat on")
    seen.attentions[layer]          # (H, T, T): head h, query t, key s
    seen.hidden_states[layer]       # (T, C): 0 is the embeddings, i the output of block i
    seen.logit_lens[layer]          # top next-token guesses read from that layer's output
    seen.layer_change               # (L, T): how much each block changed each position
    token_probabilities(model, ids, start)   # what the model gave each token after start

Plain tensors and dataclasses only; pictures are drawn by minigpt.heatmap (Pillow) or the app.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from minigpt.generation import encode_prompt
from minigpt.model import GPT
from minigpt.tokenizer import Tokenizer


@dataclass
class LensLayer:
    """Logit lens of one layer: the top next-token guesses at each position."""

    layer: int  # 0: embeddings, i: output of block i
    tokens: list[list[str]]  # (T, k) token texts
    probs: torch.Tensor  # (T, k)


@dataclass
class PromptInspection:
    tokens: list[str]  # the prompt's tokens as text
    attentions: list[torch.Tensor]  # per layer (H, T, T)
    hidden_states: list[torch.Tensor]  # embeddings, then each block's output: L + 1 of (T, C)
    logit_lens: list[LensLayer]  # L + 1 layers
    layer_change: torch.Tensor  # (L, T): |h_i - h_(i-1)| / |h_(i-1)| per position
    next_token_probs: torch.Tensor  # (V,) the model's distribution after the prompt


@torch.no_grad()
def logit_lens(model: GPT, hidden: torch.Tensor) -> torch.Tensor:
    """Read next-token logits straight from an intermediate hidden state (..., C) -> (..., V),
    through the final norm and head (https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru)."""
    return model.head(model.final_norm(hidden))


@torch.no_grad()
def inspect_prompt(model: GPT, tokenizer: Tokenizer, prompt: str | list[int], top_k: int = 5,
                   drop_unknown: bool = False) -> PromptInspection:
    """prompt is text, or token ids already made by encode_prompt."""
    model.eval()
    ids = (prompt if isinstance(prompt, list)
           else encode_prompt(tokenizer, prompt, model.config.context_length, drop_unknown))
    device = model.token_emb.weight.device
    seen = model.inspect(torch.tensor([ids], device=device))
    hidden = [seen.embeddings[0], *(h[0] for h in seen.hidden_states)]  # L + 1 of (T, C)
    lens = []
    for layer, h in enumerate(hidden):
        probs = torch.softmax(logit_lens(model, h).float(), dim=-1)
        top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        lens.append(LensLayer(layer, [[tokenizer.decode([i]) for i in row]
                                      for row in top.indices.tolist()], top.values.cpu()))
    change = torch.stack([(hidden[i] - hidden[i - 1]).norm(dim=-1) / hidden[i - 1].norm(dim=-1)
                          for i in range(1, len(hidden))])
    return PromptInspection(
        tokens=[tokenizer.decode([i]) for i in ids],
        attentions=[a[0].cpu() for a in seen.attentions],
        hidden_states=[h.cpu() for h in hidden],
        logit_lens=lens,
        layer_change=change.cpu(),
        next_token_probs=torch.softmax(seen.logits[0, -1].float(), dim=-1).cpu(),
    )


@torch.no_grad()
def token_probabilities(model: GPT, ids: list[int], start: int) -> list[float]:
    """The probability the model gave each of ids[start:], from the context it would have been
    chosen in: the last context_length tokens before it (as exact decoding sees them)."""
    window, device = model.config.context_length, model.token_emb.weight.device
    model.eval()
    probs = []
    for position in range(start, len(ids)):
        context = torch.tensor([ids[max(0, position - window):position]], device=device)
        probs.append(torch.softmax(model(context)[0, -1].float(), dim=-1)[ids[position]].item())
    return probs


SNAPSHOTS = "snapshots.pt"  # in a run directory: the probe prompt seen at every evaluation


@torch.no_grad()
def probe_snapshot(model: GPT, ids: list[int], top_k: int = 5) -> dict:
    """What the model does with a prompt, small enough to keep at every evaluation: each layer's
    attention (L, H, T, T) and the logit lens's top_k guesses (L + 1, T, top_k), as fp16/int32."""
    was_training = model.training
    model.eval()
    seen = model.inspect(torch.tensor([ids], device=model.token_emb.weight.device))
    model.train(was_training)
    hidden = torch.stack([seen.embeddings[0], *(h[0] for h in seen.hidden_states)])
    top = torch.softmax(logit_lens(model, hidden).float(), dim=-1).topk(top_k, dim=-1)
    return {"attention": torch.stack([a[0] for a in seen.attentions]).half().cpu(),
            "lens_ids": top.indices.int().cpu(), "lens_probs": top.values.half().cpu()}


def load_snapshots(run_dir) -> dict | None:
    """A run's snapshots: {"tokens": [...], "steps": [...], "snapshots": [probe_snapshot, ...]},
    or None when the run has none (or an unreadable file)."""
    path = Path(run_dir) / SNAPSHOTS
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a damaged file only costs the pictures of training
        return None
