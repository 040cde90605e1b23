"""Test a hypothesis about a model, not only look: knock parts out, patch activations from one
prompt into another, and split a logit into what each part wrote.

    result = ablate(model, ids, heads=[(1, 2)])            # layer 1 (from 1), head 2 (from 0)
    result.loss_change, result.next_token_change           # what the model lost without it
    found = patch(model, clean_ids, corrupted_ids, answer=7, wrong=9)
    found.residual                                         # (L + 1, T) recovery, 0 .. 1
    parts = logit_attribution(model, ids, token=7)         # {"embeddings": ..., "L1H0": ...}

Layers are counted from 1 as in the app (layer 0 is the embeddings), heads and neurons from 0.
Everything runs through the model's hook points (minigpt.hooks), in eval mode.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.errors import InputError
from minigpt.generation import check_ids
from minigpt.hooks import capture, edit
from minigpt.model import GPT, eval_mode


@dataclass
class AblationResult:
    loss: float  # next-token loss over ids, as the model is
    ablated_loss: float  # ... with the parts knocked out
    next_token_probs: torch.Tensor  # (V,) after the last token, as the model is
    ablated_next_token_probs: torch.Tensor  # (V,) with the parts knocked out

    @property
    def loss_change(self) -> float:
        return self.ablated_loss - self.loss

    @property
    def next_token_change(self) -> float:
        """KL(model || ablated model) of the next-token distribution, in nats."""
        p, q = self.next_token_probs, self.ablated_next_token_probs
        return float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum())


def _as_batch(model: GPT, ids) -> torch.Tensor:
    idx = torch.as_tensor(ids, device=model.token_emb.weight.device)
    idx = idx[None] if idx.dim() == 1 else idx
    check_ids(model, idx)
    if idx.size(1) > model.config.context_length:
        raise InputError(f"{idx.size(1)} tokens do not fit the model's context of "
                         f"{model.config.context_length}")
    return idx


def _check_parts(model: GPT, heads: Iterable, neurons: Iterable) -> None:
    cfg = model.config
    for layer, head in heads:
        if not (1 <= layer <= cfg.num_layers and 0 <= head < cfg.num_heads):
            raise InputError(f"no head {head} in layer {layer}: layers 1..{cfg.num_layers}, "
                             f"heads 0..{cfg.num_heads - 1}")
    for layer, neuron in neurons:
        width = cfg.ffn_mult * cfg.embed_dim
        if not cfg.ffn or not (1 <= layer <= cfg.num_layers and 0 <= neuron < width):
            raise InputError(f"no feed-forward neuron {neuron} in layer {layer}"
                             + ("" if cfg.ffn else ": this model has no feed-forward blocks"))


def ablation_edits(model: GPT, heads: Iterable[tuple[int, int]] = (),
                   neurons: Iterable[tuple[int, int]] = (), method: str = "zero",
                   reference=None) -> dict:
    """The hook edits that knock heads (their outputs, before W_out) or feed-forward neurons (after
    GELU) out: set to zero, or to their mean over the tokens of `reference` (method "mean")."""
    heads, neurons = list(heads), list(neurons)
    _check_parts(model, heads, neurons)
    if method not in ("zero", "mean"):
        raise InputError(f"method must be 'zero' or 'mean', got {method!r}")
    groups: dict[str, list[int]] = {}  # hook point -> the heads or neurons to knock out there
    for layer, head in heads:
        groups.setdefault(f"blocks.{layer - 1}.attn.hook_heads", []).append(head)
    for layer, neuron in neurons:
        groups.setdefault(f"blocks.{layer - 1}.ffn.hook_neurons", []).append(neuron)
    means = {}
    if method == "mean":
        if reference is None:
            raise InputError("mean ablation needs reference token ids to average over")
        with torch.no_grad(), eval_mode(model), capture(model, list(groups)) as seen:
            model(_as_batch(model, reference))
        means = {name: value.flatten(0, 1).mean(0) for name, value in seen.items()}

    def replace(name: str, indices: list[int]):
        def hook(activation):  # (B, T, H, D) heads or (B, T, F) neurons
            out = activation.clone()
            out[:, :, indices] = means[name][indices] if name in means else 0
            return out
        return hook

    return {name: replace(name, sorted(set(indices))) for name, indices in groups.items()}


@torch.no_grad()
def _loss_and_next(model: GPT, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
    logits = model(idx).float()
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten()) \
        if idx.size(1) > 1 else torch.tensor(float("nan"))
    return float(loss), torch.softmax(logits[0, -1], dim=-1).cpu()


def ablate(model: GPT, ids, heads: Iterable[tuple[int, int]] = (),
           neurons: Iterable[tuple[int, int]] = (), method: str = "zero",
           reference=None) -> AblationResult:
    """The next-token loss over ids and the distribution after its last token, with and without
    the given heads (layer, head) and feed-forward neurons (layer, neuron) knocked out."""
    idx = _as_batch(model, ids)
    edits = ablation_edits(model, heads, neurons, method, reference)
    with eval_mode(model):
        loss, probs = _loss_and_next(model, idx)
        with edit(model, edits):
            ablated_loss, ablated_probs = _loss_and_next(model, idx)
    return AblationResult(loss, ablated_loss, probs, ablated_probs)


# ----------------------------------------------------------------------------- patching

@dataclass
class PatchingResult:
    """Normalised recovery of the logit difference answer - wrong after the last token: 0 is the
    corrupted run's, 1 the clean run's, for the clean activation patched into the corrupted run."""

    clean_diff: float
    corrupted_diff: float
    residual: torch.Tensor  # (L + 1, T): the stream entering block l (l = L: leaving the last)
    heads: torch.Tensor  # (L, H): one head's output at every position
    ffn: torch.Tensor | None  # (L, T): one feed-forward output at one position (None: no FFN)


def _diff(model: GPT, idx: torch.Tensor, answer: int, wrong: int, edits: dict) -> float:
    with edit(model, edits):
        logits = model(idx)[0, -1].float()
    return float(logits[answer] - logits[wrong])


def _positions_patch(clean: torch.Tensor, position: int | None, head: int | None = None):
    """An edit writing the clean activation at one position (None: all) or one head's slice."""
    def hook(activation):
        out = activation.clone()
        where = (slice(None), slice(None) if position is None else position)
        where += (head,) if head is not None else ()
        out[where] = clean[where]
        return out
    return hook


def _pair(model: GPT, clean_ids, corrupted_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean and corrupted prompts as (1, T) batches, checked: the same length, not equal."""
    clean, corrupted = _as_batch(model, clean_ids)[:1], _as_batch(model, corrupted_ids)[:1]
    if clean.shape != corrupted.shape:
        raise InputError(f"the clean and corrupted prompts must have the same number of tokens, "
                         f"got {clean.size(1)} and {corrupted.size(1)}: change a word for a word")
    if torch.equal(clean, corrupted):
        raise InputError("the clean and corrupted prompts are the same tokens: patching compares "
                         "two prompts that differ somewhere")
    return clean, corrupted


@torch.no_grad()
def patching_tokens(model: GPT, clean_ids, corrupted_ids) -> tuple[int, int]:
    """(answer, wrong) for patching a pair: the clean run's prediction, and the corrupted run's
    (its second choice when both runs predict the same token)."""
    clean, corrupted = _pair(model, clean_ids, corrupted_ids)
    with eval_mode(model):
        logits = model(torch.cat([clean, corrupted]))[:, -1]
    answer = int(logits[0].argmax())
    ranked = logits[1].topk(2).indices.tolist()
    return answer, ranked[1] if ranked[0] == answer else ranked[0]


@torch.no_grad()
def patch(model: GPT, clean_ids, corrupted_ids, answer: int, wrong: int) -> PatchingResult:
    """Activation patching: run the clean and the corrupted prompt (same length), then rerun the
    corrupted one with one clean activation written in, at each (layer, position) of the
    residual stream, each head's output and each (layer, position) of the feed-forward output."""
    clean, corrupted = _pair(model, clean_ids, corrupted_ids)
    cfg, T = model.config, clean.size(1)
    with eval_mode(model):
        with capture(model) as seen:
            clean_diff = _diff(model, clean, answer, wrong, {})
        corrupted_diff = _diff(model, corrupted, answer, wrong, {})
        scale = clean_diff - corrupted_diff

        def recovery(name: str, position: int | None, head: int | None = None) -> float:
            patched = _diff(model, corrupted, answer, wrong,
                            {name: _positions_patch(seen[name], position, head)})
            return (patched - corrupted_diff) / scale if scale else float("nan")

        stream = [f"blocks.{i}.hook_resid_in" for i in range(cfg.num_layers)]
        stream.append(f"blocks.{cfg.num_layers - 1}.hook_resid_out")
        residual = torch.tensor([[recovery(name, t) for t in range(T)] for name in stream])
        heads = torch.tensor([[recovery(f"blocks.{i}.attn.hook_heads", None, h)
                               for h in range(cfg.num_heads)] for i in range(cfg.num_layers)])
        ffn = torch.tensor([[recovery(f"blocks.{i}.hook_ffn_out", t) for t in range(T)]
                            for i in range(cfg.num_layers)]) if cfg.ffn else None
    return PatchingResult(clean_diff, corrupted_diff, residual, heads, ffn)


# ----------------------------------------------------------------------------- attribution

POST_NORM = ("direct logit attribution splits the stream that reaches the head into the parts "
             "that were added to it; a post-norm model (norm_placement = 'post') normalises the "
             "stream after every sublayer, so no part reaches the head unchanged. Use ablate() or "
             "patch() instead")


@torch.no_grad()
def logit_attribution(model: GPT, ids, token: int, position: int = -1) -> dict[str, float]:
    """Direct logit attribution for a pre-norm model: the logit of `token` at `position` split
    into the embeddings, each head (L1H0 ...) and each attention output bias, each feed-forward
    block (L1 FFN ...) and the final norm's bias, through the final LayerNorm with its scale frozen
    at the value of this input. The parts sum to the logit; with model.logit_softcap, to the
    logit before the cap (cap * tanh(logit / cap) bends the sum, so no part has a share of it)."""
    cfg = model.config
    if cfg.norm_placement != "pre" or not cfg.residual:
        raise InputError(POST_NORM if cfg.norm_placement != "pre" else
                         "direct logit attribution needs the residual stream (model.residual)")
    idx = _as_batch(model, ids)[:1]
    with eval_mode(model), capture(model) as seen:
        model(idx)
    parts = {"embeddings": seen["blocks.0.hook_resid_in"][0, position]}
    for i, block in enumerate(model.blocks):
        heads = seen[f"blocks.{i}.attn.hook_heads"][0, position]  # (H, D)
        columns = block.attn.proj.weight.view(cfg.embed_dim, cfg.num_heads, cfg.head_dim)
        for h in range(cfg.num_heads):
            parts[f"L{i + 1}H{h}"] = columns[:, h] @ heads[h]
        if block.attn.proj.bias is not None:
            parts[f"L{i + 1} attention bias"] = block.attn.proj.bias
        if block.ffn is not None:
            parts[f"L{i + 1} FFN"] = seen[f"blocks.{i}.hook_ffn_out"][0, position]
    stream = seen[f"blocks.{cfg.num_layers - 1}.hook_resid_out"][0, position]
    logit = float(model.head(model.final_norm(stream))[token])  # before any soft-cap
    direction = model.head.weight[token]
    norm = model.final_norm
    if isinstance(norm, nn.LayerNorm):
        scale = (stream.var(unbiased=False) + norm.eps).rsqrt()  # frozen at this input's value
        weight = norm.weight if norm.weight is not None else torch.ones_like(stream)
        out = {name: float(((v - v.mean()) * scale * weight) @ direction)
               for name, v in parts.items()}
        if norm.bias is not None:
            out["final norm bias"] = float(norm.bias @ direction)
    else:
        out = {name: float(v @ direction) for name, v in parts.items()}
    assert abs(sum(out.values()) - logit) < 1e-3 * max(1.0, abs(logit)), (sum(out.values()), logit)
    return out
