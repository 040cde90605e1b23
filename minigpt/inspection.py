"""Look inside a trained model for one prompt: attention weights, layer outputs, the logit lens.

    seen = inspect_prompt(model, tokenizer, "the cat sat on")
    seen.attentions[layer]          # (H, T, T): head h, query t, key s
    seen.hidden_states[layer]       # (T, C): 0 is the embeddings, i the output of block i
    seen.logit_lens[layer]          # top next-token guesses read from that layer's output
    seen.layer_change               # (L, T): how much each block changed each position
    seen.attention_change           # (L, T): ... its attention sublayer alone; ffn_change likewise
    seen.norm_scales                # the residual stream's size before and after each LayerNorm
    token_probabilities(model, ids, start)   # what the model gave each token after start

Plain tensors and dataclasses only; pictures are drawn by minigpt.heatmap (Pillow) or the app.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
class NormScale:
    """The size (root mean square over C) of each token's vector entering and leaving one
    LayerNorm: the norm rescales every token to about the same size."""

    name: str  # "layer 1, norm 1" (before attention in pre-norm blocks), ..., "final norm"
    before: torch.Tensor  # (T,)
    after: torch.Tensor  # (T,)


@dataclass
class PromptInspection:
    tokens: list[str]  # the prompt's tokens as text
    attentions: list[torch.Tensor]  # per layer (H, T, T)
    hidden_states: list[torch.Tensor]  # embeddings, then each block's output: L + 1 of (T, C)
    logit_lens: list[LensLayer]  # L + 1 layers
    layer_change: torch.Tensor  # (L, T): |h_i - h_(i-1)| / |h_(i-1)| per position
    attention_change: torch.Tensor  # (L, T): |attention output| / |the stream it is added to|
    ffn_change: torch.Tensor | None  # (L, T): the same for the feed-forward output (None: no FFN)
    norm_scales: list[NormScale]  # every LayerNorm in the order the stream meets them
    next_token_probs: torch.Tensor  # (V,) the model's distribution after the prompt


@torch.no_grad()
def logit_lens(model: GPT, hidden: torch.Tensor) -> torch.Tensor:
    """Read next-token logits straight from an intermediate hidden state (..., C) -> (..., V),
    through the final norm and head (https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru)."""
    return model.head(model.final_norm(hidden))


@contextlib.contextmanager
def recording(modules: dict[tuple[str, int], nn.Module | None]):
    """Within the block, every forward of modules[key] stores (its input, its output) for batch
    item 0 in the yielded dict under key (torch forward hooks; removed on exit)."""
    seen = {}

    def keep(key):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output  # attention: (y, weights)
            seen[key] = (args[0][0].float(), out[0].float())
        return hook

    handles = [m.register_forward_hook(keep(key)) for key, m in modules.items() if m is not None]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def sublayer_modules(model: GPT) -> dict[tuple[str, int], nn.Module | None]:
    """Every block, its attention, feed-forward and norm modules, and the final norm, named
    (part, layer) with layers counted from 1 (None where an ablation removed the part)."""
    modules = {("final_norm", 0): model.final_norm}
    for layer, block in enumerate(model.blocks, 1):
        modules[("block", layer)] = block
        for part in ("attn", "ffn", "norm1", "norm2"):
            modules[(part, layer)] = getattr(block, part)
    return modules


def sublayer_changes(model: GPT, seen: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, T) sizes of each attention and feed-forward output relative to the residual stream it
    is added to: the block's input for attention; for the FFN, the stream between the sublayers
    (what norm2 reads in a pre-norm block, what the FFN reads in a post-norm one)."""
    pre = model.config.norm_placement == "pre"
    layers = range(1, model.config.num_layers + 1)

    def relative(out, stream):
        return out.norm(dim=-1) / stream.norm(dim=-1).clamp_min(1e-12)

    attention = torch.stack([relative(seen[("attn", i)][1], seen[("block", i)][0])
                             for i in layers])
    if not model.config.ffn:
        return attention, None
    ffn = torch.stack([relative(seen[("ffn", i)][1], seen[("norm2" if pre else "ffn", i)][0])
                       for i in layers])
    return attention, ffn


def norm_scales(model: GPT, seen: dict) -> list[NormScale]:
    """The stream's root-mean-square size per token, into and out of every real LayerNorm."""
    def rms(x):
        return x.pow(2).mean(dim=-1).sqrt()

    names = [((f"norm{n}", i), f"layer {i}, norm {n}")
             for i in range(1, model.config.num_layers + 1) for n in (1, 2)]
    names.append((("final_norm", 0), "final norm"))
    modules = sublayer_modules(model)
    return [NormScale(label, rms(seen[key][0]), rms(seen[key][1])) for key, label in names
            if isinstance(modules[key], nn.LayerNorm)]


@torch.no_grad()
def inspect_prompt(model: GPT, tokenizer: Tokenizer, prompt: str | list[int], top_k: int = 5,
                   drop_unknown: bool = False) -> PromptInspection:
    """prompt is text, or token ids already made by encode_prompt."""
    model.eval()
    ids = (prompt if isinstance(prompt, list)
           else encode_prompt(tokenizer, prompt, model.config.context_length, drop_unknown))
    device = model.token_emb.weight.device
    with recording(sublayer_modules(model)) as parts:
        seen = model.inspect(torch.tensor([ids], dtype=torch.long, device=device))
    attention_change, ffn_change = sublayer_changes(model, parts)
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
        attention_change=attention_change.cpu(),
        ffn_change=None if ffn_change is None else ffn_change.cpu(),
        norm_scales=[NormScale(n.name, n.before.cpu(), n.after.cpu())
                     for n in norm_scales(model, parts)],
        next_token_probs=torch.softmax(seen.logits[0, -1].float(), dim=-1).cpu(),
    )


def position_similarity(table: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows of a (positions, C) table -> (positions, positions):
    1 on the diagonal, and for the sinusoidal table no other entry of a row reaches it (every
    position has its own fingerprint) while neighbours are more alike than distant positions."""
    unit = torch.nn.functional.normalize(table.detach().float(), dim=-1)
    return unit @ unit.T


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
    probs = torch.softmax(logit_lens(model, hidden).float(), dim=-1)
    top = probs.topk(min(top_k, probs.size(-1)), dim=-1)  # a vocabulary may have fewer
    return {"attention": torch.stack([a[0] for a in seen.attentions]).half().cpu(),
            "lens_ids": top.indices.int().cpu(), "lens_probs": top.values.half().cpu()}


def load_snapshots(run_dir) -> dict | None:
    """A run's snapshots: {"tokens": [...], "steps": [...], "snapshots": [probe_snapshot, ...]},
    or None when the run has none (or an unreadable file)."""
    path = Path(run_dir) / SNAPSHOTS
    if not path.is_file():
        return None
    try:
        kept = torch.load(path, weights_only=True)
    except Exception:  # a damaged file only costs the pictures of training
        return None
    return kept if _well_formed(kept) else None


def _well_formed(kept) -> bool:
    """Whether kept has the layout probe_snapshot's callers write: a step and an attention
    tensor (L, H, T, T) per evaluation, T the number of probe tokens."""
    try:
        tokens, steps, snapshots = kept["tokens"], kept["steps"], kept["snapshots"]
        return (all(isinstance(t, str) for t in tokens) and len(steps) == len(snapshots)
                and all(isinstance(s, int) for s in steps)
                and all(isinstance(s["attention"], torch.Tensor) and s["attention"].dim() == 4
                        and s["attention"].shape[-2:] == (len(tokens), len(tokens))
                        for s in snapshots))
    except (TypeError, KeyError, IndexError, AttributeError):
        return False
