"""The GPT model: a decoder-only transformer, block by block, as the workshop deck draws it.

    token ids -> token embedding (+ position) -> Block x num_layers -> [final norm] -> head -> logits

Read top to bottom: the hook points, attention, the feed-forward block, the short convolution
(an option), the block, the GPT. Its config (ModelConfig, the shape and options) is
minigpt/model_config.py; positions are minigpt/positions.py; decoding (the KV cache, sampling,
stop sequences) is minigpt/generation.py; reading and editing the hook points is
minigpt/hooks.py.

Shape letters used in the comments below:
    B batch size, T sequence length (time), S keys attended to (T, or more with a KV cache),
    C embed_dim, H num_heads, D head_dim = C // H, V vocab_size.
"""

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.model_config import ModelConfig
from minigpt.positions import LearnedPositionalEncoding, apply_rotary, positional_encoding

if TYPE_CHECKING:  # the cache is decoding's (minigpt.generation); attention only fills it
    from minigpt.generation import KVCache

# ----------------------------------------------------------------------------- hook points

class HookPoint(nn.Identity):
    """A named place in the forward pass where an activation can be read or replaced.

    It returns its input unchanged; a forward hook on it (see minigpt.hooks, which names each one
    by its module path, e.g. "blocks.0.attn.hook_pattern") sees the activation and may return a
    replacement. The forward pass knows nothing of who watches: with no hook a HookPoint costs
    one module call (and torch.compile removes even that).
    """

    @property
    def active(self) -> bool:
        """Whether a hook is attached (attention then computes its pattern explicitly)."""
        return bool(self._forward_hooks)


# ----------------------------------------------------------------------------- attention

def causal_mask(num_queries: int, num_keys: int, device=None) -> torch.Tensor:
    """(T, S) boolean mask, True where query t may attend to key s: the last T of S keys are the
    queries' own positions, so query t sees keys 0 .. S - T + t (the deck's triangle when S == T)."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(
        diagonal=num_keys - num_queries)


def attention_pattern(q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D) + causal mask): q (B, H, T, D), k (B, H, S, D) -> (B, H, T, S),
    each row a distribution over the keys a query may see (0 where the mask hides a key)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if causal:
        mask = causal_mask(q.size(2), k.size(2), device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def explicit_attention(q, k, v, dropout: float = 0.0, training: bool = False,
                       causal: bool = True):
    """softmax(Q K^T / sqrt(D) + causal mask) V written out, the reference the fused kernel is
    tested against: q (B, H, T, D), k and v (B, H, S, D) -> output (B, H, T, D), weights."""
    weights = attention_pattern(q, k, causal)
    return F.dropout(weights, dropout, training) @ v, weights


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: every head attends over earlier positions only (all
    positions when cfg.causal is off, the ablation that lets training read the answer).

    Hook points: hook_pattern (B, H, T, S), each head's attention weights; hook_heads
    (B, T, H, D), each head's output before W_out mixes them into the stream.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.causal = cfg.causal
        self.qk_norm = cfg.qk_norm
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.bias)  # W_q, W_k, W_v
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)  # W_out
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.hook_pattern = HookPoint()
        self.hook_heads = HookPoint()

    def forward(self, x, rotation=None, cache: "KVCache | None" = None, layer: int = 0):
        """x (B, T, C) -> (B, T, C). With a cache, x holds only the new positions."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, T, D) each: heads become a batch dimension
        if self.qk_norm:  # every query and key becomes a vector of RMS 1
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotation is not None:  # rope: positions enter here, as a rotation of q and k
            q, k = apply_rotary(q, *rotation), apply_rotary(k, *rotation)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, D)
        dropout = self.dropout if self.training else 0.0
        if self.hook_pattern.active:  # someone reads or edits the pattern: write it out
            weights = self.hook_pattern(attention_pattern(q, k, self.causal))  # (B, H, T, S)
            y = F.dropout(weights, dropout, self.training) @ v
        elif T == k.size(2):  # the fused kernel, for training and prefill
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)
        else:  # new tokens after cached ones: T == 1 sees every key, so the mask is all True
            mask = None if T == 1 or not self.causal else causal_mask(T, k.size(2), x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = self.hook_heads(y.transpose(1, 2))  # (B, T, H, D)
        return self.resid_dropout(self.proj(y.reshape(B, T, C)))  # concatenate heads, mix


# ----------------------------------------------------------------------------- feed-forward

class FeedForward(nn.Module):
    """Per-position MLP: expand to ffn_mult * C, GELU (or ReLU squared), project back to C. Hook
    point: hook_neurons (B, T, ffn_mult * C), the activations after the nonlinearity."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.embed_dim, cfg.ffn_mult * cfg.embed_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_mult * cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation = cfg.activation
        self.hook_neurons = HookPoint()

    def forward(self, x):
        x = self.fc(x)
        if self.activation == "relu2":
            x = F.relu(x).square()
        else:
            x = F.gelu(x, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.dropout(self.proj(self.hook_neurons(x)))


# ----------------------------------------------------------------------------- short convolution

class ShortConv(nn.Module):
    """A causal depthwise convolution with a residual, before a sublayer (cfg.short_conv = K):

        y_t = x_t + sum over k < K of w_k * x_(t-k)     (w_k a weight per channel, starting at 0;
                                                         w_k is weight[:, 0, K - 1 - k])

    so each position reads the last K - 1 positions' features before attention or the
    feed-forward does, which a small character model otherwise spends its attention learning
    (the "Canon layers" of Allen-Zhu's Physics of Language Models, part 4.1). It starts as the
    identity; positions before the start read as zeros. With a cache, the last K - 1 inputs are
    kept there, so decoding one token at a time gives what the whole sequence gives.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.embed_dim, 1, cfg.short_conv))  # Conv1d's layout

    def forward(self, x, cache: "KVCache | None" = None):
        """x (B, T, C) -> (B, T, C)."""
        keep = self.weight.size(-1) - 1
        padded = F.pad(x, (0, 0, keep, 0)) if cache is None else cache.recent(self, x, keep)
        # As (B, C, 1, keep + T) the stream's memory is channels-last, which the 2-D depthwise
        # kernel reads in place: about a third of conv1d's time, which copies it channels-first.
        windows = padded.transpose(1, 2).unsqueeze(2)
        y = F.conv2d(windows, self.weight.unsqueeze(2), groups=x.size(2))  # (B, C, 1, T)
        return x + y.squeeze(2).transpose(1, 2)


# ----------------------------------------------------------------------------- block

class Block(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection and a LayerNorm.

    post (the deck, the original paper): x = norm(x + sublayer(x))
    pre  (GPT-2, trains deeper models more easily): x = x + sublayer(norm(x))

    The ablation switches take parts away: cfg.residual off makes x = sublayer(...) (no "x +"),
    cfg.layer_norm off makes every norm the identity, cfg.ffn off leaves attention alone.
    cfg.short_conv adds a ShortConv to each sublayer's input.

    Hook points, all (B, T, C), in the order the residual stream meets them: hook_resid_in,
    hook_attn_out (what attention adds), hook_resid_mid (the stream between the sublayers),
    hook_ffn_out (what the feed-forward adds), hook_resid_out.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.residual = cfg.residual
        self.norm1 = layer_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = layer_norm(cfg) if cfg.ffn else None
        self.ffn = FeedForward(cfg) if cfg.ffn else None
        self.conv1 = ShortConv(cfg) if cfg.short_conv else None
        self.conv2 = ShortConv(cfg) if cfg.short_conv and cfg.ffn else None
        self.hook_resid_in, self.hook_resid_mid, self.hook_resid_out = (HookPoint() for _ in "imo")
        self.hook_attn_out, self.hook_ffn_out = HookPoint(), HookPoint()

    def add(self, x, sublayer_out):
        """The residual connection: the sublayer's output is added to the stream it read."""
        return x + sublayer_out if self.residual else sublayer_out

    def forward(self, x, rotation=None, cache=None, layer=0):
        x = self.hook_resid_in(x)
        if self.pre_norm:
            h = self.convolve(self.conv1, self.norm1(x), cache)
            x = self.add(x, self.hook_attn_out(self.attn(h, rotation, cache, layer)))
            x = self.hook_resid_mid(x)
            if self.ffn is not None:
                h = self.convolve(self.conv2, self.norm2(x), cache)
                x = self.add(x, self.hook_ffn_out(self.ffn(h)))
        else:
            h = self.convolve(self.conv1, x, cache)
            x = self.norm1(self.add(x, self.hook_attn_out(self.attn(h, rotation, cache, layer))))
            x = self.hook_resid_mid(x)
            if self.ffn is not None:
                h = self.convolve(self.conv2, x, cache)
                x = self.norm2(self.add(x, self.hook_ffn_out(self.ffn(h))))
        return self.hook_resid_out(x)

    @staticmethod
    def convolve(conv: ShortConv | None, x, cache):
        """A sublayer's input through its short convolution, when the model has them."""
        return x if conv is None else conv(x, cache)


def layer_norm(cfg: ModelConfig) -> nn.Module:
    """nn.LayerNorm over the embedding, or the identity when cfg.layer_norm is off."""
    return nn.LayerNorm(cfg.embed_dim, bias=cfg.bias) if cfg.layer_norm else nn.Identity()


# ----------------------------------------------------------------------------- the model

class GPT(nn.Module):
    """Decoder-only transformer. forward(idx (B, T)) -> logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (use the tokenizer's vocab_size)")
        self.config = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_emb = positional_encoding(cfg.pos_encoding, cfg.context_length, cfg.embed_dim,
                                           cfg.head_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        # Post-norm blocks already end in a LayerNorm; pre-norm needs one before the head.
        self.final_norm = layer_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.hook_final_norm = HookPoint()  # (B, T, C): the stream as the head reads it
        self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:  # https://arxiv.org/abs/1608.05859
            self.head.weight = self.token_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * layers),
        # since each layer adds two of them (https://cdn.openai.com/better-language-models/
        # language_models_are_unsupervised_multitask_learners.pdf, section 2.3).
        for block in self.blocks:
            for sublayer in (block.attn, block.ffn):
                if sublayer is not None and cfg.zero_init_proj:
                    nn.init.zeros_(sublayer.proj.weight)
                elif sublayer is not None:
                    nn.init.normal_(sublayer.proj.weight, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding, LearnedPositionalEncoding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @staticmethod
    def count_params(cfg: ModelConfig) -> int:
        """num_params() of GPT(cfg), without building it: sizes are checked before allocating."""
        C, F, b = cfg.embed_dim, cfg.ffn_mult * cfg.embed_dim, int(cfg.bias)

        def linear(n_in: int, n_out: int) -> int:
            return n_in * n_out + b * n_out

        norm = (C + b * C) * int(cfg.layer_norm)
        ffn = linear(C, F) + linear(F, C) + norm if cfg.ffn else 0
        block = linear(C, 3 * C) + linear(C, C) + norm + ffn
        block += C * cfg.short_conv * (1 + int(cfg.ffn))
        total = cfg.num_layers * block + cfg.vocab_size * C * (1 if cfg.tie_weights else 2)
        total += norm if cfg.norm_placement == "pre" else 0
        return total + (cfg.context_length * C if cfg.pos_encoding == "learned" else 0)

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> int:
        """Training FLOPs per token (forward and backward) at full context: 6 per weight that
        multiplies activations (2 forward, 4 backward) plus 12 * L * T * C for the attention scores
        Q K^T and their use P V. Norms, softmax, short convolutions and the optimizer are left
        out, as is usual."""
        matmul_weights = cfg.num_layers * (4 + 2 * cfg.ffn_mult * cfg.ffn) * cfg.embed_dim ** 2
        matmul_weights += cfg.embed_dim * cfg.vocab_size  # the output head
        return 6 * matmul_weights + 12 * cfg.num_layers * cfg.context_length * cfg.embed_dim

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The token embedding (and the head, when tied) and learned position vectors."""
        return [self.token_emb.weight, *self.pos_emb.parameters()]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; non_embedding leaves out token/position embeddings and the head."""
        params = {id(p): p for p in self.parameters()}  # tied weights count once
        if non_embedding:
            for p in [*self.embedding_parameters(), self.head.weight]:
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    def forward(self, idx: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V). With a cache, idx holds only the new tokens."""
        T = idx.size(1)
        start = self._start(T, cache)
        x = self.dropout(self.pos_emb.embed(self.token_emb(idx), start))  # (B, T, C)
        rotation = self.pos_emb.rotation(start, T)
        for layer, block in enumerate(self.blocks):
            x = block(x, rotation, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.unembed(self.hook_final_norm(self.final_norm(x)))  # (B, T, V)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """The head: a normalised stream (..., C) -> logits (..., V), soft-capped when
        cfg.logit_softcap is set."""
        logits = self.head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def _start(self, T: int, cache: "KVCache | None") -> int:
        """The position of the first of T new tokens; a full cache of a relative (rope) model
        drops its oldest keys, and a sequence longer than an absolute encoding's table fails."""
        start = 0
        if cache is not None:
            overflow = cache.length + T - cache.capacity
            if overflow > 0:
                if not self.pos_emb.relative or overflow > cache.length:
                    raise ValueError("KV cache is full; reset it and prefill the last window")
                cache.evict(overflow)  # relative positions: the window of keys rolls on
            start = cache.position
        if not self.pos_emb.relative and start + T > self.config.context_length:
            raise ValueError(f"sequence reaches position {start + T} but the model's "
                             f"context_length is {self.config.context_length}; crop the input")
        return start


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) within the block, then the mode the model was in.

    The one rule of minigpt: every function that switches a model's mode (evaluation, sampling,
    inspection, interventions) does it through this, so it restores the mode it found.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
