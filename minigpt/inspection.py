"""Look inside a trained model for one prompt: attention weights, layer outputs, the logit lens.

    seen = inspect_prompt(model, tokenizer, "the cat sat on")
    seen.attentions[layer]          # (H, T, T): head h, query t, key s
    seen.hidden_states[layer]       # (T, C): 0 is the embeddings, i the output of block i
    seen.logit_lens[layer]          # top next-token guesses read from that layer's output
    seen.layer_change               # (L, T): how much each block changed each position
    seen.attention_change           # (L, T): ... its attention sublayer alone; ffn_change likewise
    seen.norm_scales                # the residual stream's size before and after each LayerNorm
    token_probabilities(model, ids, start)   # what the model gave each token after start
    top_activations(model, val, layer, neuron)  # the val text where a feed-forward neuron fires

Built on the model's hook points (minigpt.hooks): one forward pass records every activation.
Plain tensors and dataclasses only; pictures are drawn by minigpt.heatmap (Pillow) or the app.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from minigpt.generation import check_ids, encode_prompt
from minigpt.hooks import capture
from minigpt.model import GPT, eval_mode
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
    ids: list[int]  # the prompt's token ids (cut to the context)
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
    return model.unembed(model.final_norm(hidden))


def run_with_hooks(model: GPT, ids: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of ids in eval mode, with every hook point's activation for the one
    sequence (batch dimension dropped): (logits (T, V), {hook point name: activation})."""
    idx = torch.tensor([ids], device=model.token_emb.weight.device)
    check_ids(model, idx)
    with torch.no_grad(), eval_mode(model), capture(model) as seen:
        logits = model(idx)
    return logits[0], {name: value[0] for name, value in seen.items()}


def residual_stream(model: GPT, seen: dict) -> list[torch.Tensor]:
    """The stream at the embeddings and after each block: L + 1 of (T, C)."""
    layers = range(model.config.num_layers)
    return [seen["blocks.0.hook_resid_in"], *(seen[f"blocks.{i}.hook_resid_out"] for i in layers)]


def sublayer_changes(model: GPT, seen: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, T) sizes of each attention and feed-forward output relative to the residual stream it
    is added to: the block's input for attention; for the FFN, the stream between the sublayers
    (what norm2 reads in a pre-norm block, what the FFN reads in a post-norm one)."""
    layers = range(model.config.num_layers)

    def relative(out, stream):
        return out.float().norm(dim=-1) / stream.float().norm(dim=-1).clamp_min(1e-12)

    attention = torch.stack([relative(seen[f"blocks.{i}.hook_attn_out"],
                                      seen[f"blocks.{i}.hook_resid_in"]) for i in layers])
    if not model.config.ffn:
        return attention, None
    ffn = torch.stack([relative(seen[f"blocks.{i}.hook_ffn_out"],
                                seen[f"blocks.{i}.hook_resid_mid"]) for i in layers])
    return attention, ffn


@torch.no_grad()
def norm_scales(model: GPT, seen: dict) -> list[NormScale]:
    """The stream's root-mean-square size per token, into and out of every real LayerNorm, in the
    order the stream meets them. Pre-norm blocks normalise the stream a sublayer reads; post-norm
    blocks normalise the sum of the stream and what the sublayer added."""
    def rms(x):
        return x.float().pow(2).mean(dim=-1).sqrt()

    scales = []
    for i, block in enumerate(model.blocks):
        into = [seen[f"blocks.{i}.hook_resid_in"]]
        if block.ffn is not None:
            into.append(seen[f"blocks.{i}.hook_resid_mid"])
        added = [seen[f"blocks.{i}.hook_attn_out"], seen.get(f"blocks.{i}.hook_ffn_out")]
        for n, (norm, x, out) in enumerate(zip((block.norm1, block.norm2), into, added), 1):
            if isinstance(norm, nn.LayerNorm):
                x = x if block.pre_norm else block.add(x, out)
                scales.append(NormScale(f"layer {i + 1}, norm {n}", rms(x), rms(norm(x))))
    if isinstance(model.final_norm, nn.LayerNorm):
        x = residual_stream(model, seen)[-1]
        scales.append(NormScale("final norm", rms(x), rms(model.final_norm(x))))
    return scales


@torch.no_grad()
def inspect_prompt(model: GPT, tokenizer: Tokenizer, prompt: str | list[int], top_k: int = 5,
                   drop_unknown: bool = False) -> PromptInspection:
    """Everything the views show for one prompt: text, or token ids already made by
    encode_prompt. Runs in eval mode and leaves the model's mode as it found it."""
    ids = (prompt if isinstance(prompt, list)
           else encode_prompt(tokenizer, prompt, model.config.context_length, drop_unknown))
    logits, seen = run_with_hooks(model, ids)
    hidden = [h.float() for h in residual_stream(model, seen)]  # L + 1 of (T, C)
    lens = []
    for layer, h in enumerate(hidden):
        probs = torch.softmax(logit_lens(model, h.to(logits.dtype)).float(), dim=-1)
        top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        lens.append(LensLayer(layer, [[tokenizer.decode([i]) for i in row]
                                      for row in top.indices.tolist()], top.values.cpu()))
    change = torch.stack([(hidden[i] - hidden[i - 1]).norm(dim=-1) / hidden[i - 1].norm(dim=-1)
                          for i in range(1, len(hidden))])
    attention_change, ffn_change = sublayer_changes(model, seen)
    return PromptInspection(
        ids=ids,
        tokens=[tokenizer.decode([i]) for i in ids],
        attentions=[seen[f"blocks.{i}.attn.hook_pattern"].float().cpu()
                    for i in range(model.config.num_layers)],
        hidden_states=[h.cpu() for h in hidden],
        logit_lens=lens,
        layer_change=change.cpu(),
        attention_change=attention_change.cpu(),
        ffn_change=None if ffn_change is None else ffn_change.cpu(),
        norm_scales=[NormScale(n.name, n.before.cpu(), n.after.cpu())
                     for n in norm_scales(model, seen)],
        next_token_probs=torch.softmax(logits[-1].float(), dim=-1).cpu(),
    )


def position_similarity(table: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows of a (positions, C) table -> (positions, positions):
    1 on the diagonal, and for the sinusoidal table no other entry of a row reaches it (every
    position has its own fingerprint) while neighbours are more alike than distant positions."""
    unit = torch.nn.functional.normalize(table.detach().float(), dim=-1)
    return unit @ unit.T


@torch.no_grad()
def nearest_tokens(embedding: torch.Tensor, token: int, count: int) -> tuple[list[int], list[float]]:
    """The count tokens (itself excluded) whose rows of a (V, C) embedding have the highest
    cosine similarity with token's row, most similar first: (ids, similarities)."""
    unit = torch.nn.functional.normalize(embedding.detach().float(), dim=-1)
    similarity = unit @ unit[token]
    similarity[token] = -2.0  # below any cosine
    top = similarity.topk(min(count, similarity.numel() - 1))
    return top.indices.tolist(), top.values.tolist()


@torch.no_grad()
def token_probabilities(model: GPT, ids: list[int], start: int) -> list[float]:
    """The probability the model gave each of ids[start:], from the context it would have been
    chosen in: the last context_length tokens before it (as exact decoding sees them)."""
    window, device = model.config.context_length, model.token_emb.weight.device
    probs = []
    with eval_mode(model):
        for position in range(start, len(ids)):
            context = torch.tensor([ids[max(0, position - window):position]], device=device)
            logits = model(context)[0, -1].float()
            probs.append(torch.softmax(logits, dim=-1)[ids[position]].item())
    return probs


@dataclass
class NeuronContext:
    """One place in a text where a feed-forward neuron fires strongly, with the text around it."""

    ids: list[int]  # the tokens shown, the peak among them
    activations: torch.Tensor  # (len(ids),) the neuron's activation at each of them
    peak: int  # the index in ids of the token where it fired


@torch.no_grad()
def top_activations(model: GPT, tokens: torch.Tensor, layer: int, neuron: int, count: int = 8,
                    before: int = 10, after: int = 3, batch: int = 16) -> list[NeuronContext]:
    """The count places in a token stream (a val split) where feed-forward neuron `neuron` of
    block `layer` (from 1) is most active, strongest first, at least before + after tokens apart.
    The stream is cut into windows of context_length tokens, each read on its own, so a token's
    activation is what the model computes with the window before it as context."""
    cfg = model.config
    if not cfg.ffn:
        raise ValueError("this model has no feed-forward blocks (model.ffn = false): no neurons")
    if not (1 <= layer <= cfg.num_layers and 0 <= neuron < model.blocks[0].ffn.fc.out_features):
        raise ValueError(f"no neuron {neuron} in layer {layer}")
    if len(tokens) == 0:
        raise ValueError("no tokens to read: pass a text of at least one token")
    T = min(cfg.context_length, len(tokens))
    windows = tokens[:len(tokens) // T * T].view(-1, T).to(model.token_emb.weight.device)
    name = f"blocks.{layer - 1}.ffn.hook_neurons"
    acts = []
    with eval_mode(model), capture(model, [name]) as seen:
        for rows in windows.long().split(batch):
            model(rows)
            acts.append(seen[name][..., neuron].float().cpu())
    acts = torch.cat(acts)  # (windows, T)
    found: list[tuple[int, int]] = []
    for flat in acts.flatten().argsort(descending=True).tolist():
        w, t = divmod(flat, T)
        if all(w != fw or abs(t - ft) > before + after for fw, ft in found):
            found.append((w, t))
        if len(found) == count:
            break
    contexts = []
    for w, t in found:
        start, end = max(0, t - before), min(T, t + after + 1)
        contexts.append(NeuronContext(windows[w, start:end].tolist(), acts[w, start:end], t - start))
    return contexts


SNAPSHOTS = "snapshots.pt"  # in a run directory: the probe prompt seen at every evaluation


@torch.no_grad()
def probe_snapshot(model: GPT, ids: list[int], top_k: int = 5) -> dict:
    """What the model does with a prompt, small enough to keep at every evaluation: each layer's
    attention (L, H, T, T) and the logit lens's top_k guesses (L + 1, T, top_k), as fp16/int32."""
    _, seen = run_with_hooks(model, ids)
    hidden = torch.stack(residual_stream(model, seen))  # (L + 1, T, C)
    probs = torch.softmax(logit_lens(model, hidden).float(), dim=-1)
    top = probs.topk(min(top_k, probs.size(-1)), dim=-1)  # a vocabulary may have fewer
    attention = [seen[f"blocks.{i}.attn.hook_pattern"] for i in range(model.config.num_layers)]
    return {"attention": torch.stack(attention).half().cpu(),
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
