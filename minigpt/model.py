"""The GPT model: a decoder-only transformer, block by block, as the workshop deck draws it.

    token ids -> token embedding (+ position) -> Block x num_layers -> [final norm] -> head -> logits

Shape letters used in the comments below:
    B batch size, T sequence length (time), S keys attended to (T, or more with a KV cache),
    C embed_dim, H num_heads, D head_dim = C // H, V vocab_size.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.errors import ConfigError
from minigpt.sampling import check_sampling_args, sample_next

POS_ENCODINGS = ("sinusoidal", "learned", "rope", "none")
NORM_PLACEMENTS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and options of a GPT. Validated on construction (ConfigError, a ValueError)."""

    vocab_size: int | None = field(
        default=None, metadata={"help": "number of token ids (set from the tokenizer)"})
    context_length: int = field(
        default=128, metadata={"help": "longest sequence the model attends over"})
    embed_dim: int = field(default=128, metadata={"help": "width of the residual stream (C)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads per layer (H)"})
    num_layers: int = field(default=4, metadata={"help": "number of transformer blocks"})
    ffn_mult: int = field(
        default=4, metadata={"help": "feed-forward hidden width as a multiple of embed_dim"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability, in [0, 1)"})
    pos_encoding: Literal["sinusoidal", "learned", "rope", "none"] = field(
        default="learned", metadata={"help": "how positions enter the model (none: an ablation)"})
    norm_placement: Literal["pre", "post"] = field(
        default="pre", metadata={"help": "LayerNorm before each sublayer (GPT-2) or after"})
    tie_weights: bool = field(
        default=True, metadata={"help": "share the token embedding with the output head"})
    bias: bool = field(default=True, metadata={"help": "biases in Linear and LayerNorm layers"})
    activation: Literal["gelu", "gelu_tanh"] = field(
        default="gelu", metadata={"help": "feed-forward nonlinearity: exact GELU, or GPT-2's tanh "
                                          "approximation"})
    # Ablation switches: each removes one part, to show what it is for (README, "Take it apart").
    # A single head of the same width is num_heads = 1.
    residual: bool = field(
        default=True, metadata={"help": "add each sublayer's output to its input (false: the "
                                        "output replaces it; an ablation)"})
    layer_norm: bool = field(
        default=True, metadata={"help": "LayerNorms in the blocks and before the head (false: "
                                        "none; an ablation)"})
    ffn: bool = field(
        default=True, metadata={"help": "a feed-forward sublayer in every block (false: attention "
                                        "only; an ablation)"})
    causal: bool = field(
        default=True, metadata={"help": "hide later tokens from attention (false lets training "
                                        "cheat by reading the answer; an ablation)"})

    def __post_init__(self):
        sizes = ["context_length", "embed_dim", "num_heads", "num_layers", "ffn_mult"]
        if self.vocab_size is not None:
            sizes.insert(0, "vocab_size")
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads "
                f"({self.num_heads}); try num_heads in {_divisors(self.embed_dim)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ConfigError(f"model.pos_encoding must be one of {POS_ENCODINGS}, "
                             f"got {self.pos_encoding!r}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ConfigError(f"model.norm_placement must be one of {NORM_PLACEMENTS}, "
                             f"got {self.norm_placement!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation must be one of {ACTIVATIONS}, "
                             f"got {self.activation!r}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope needs an even head_dim, got {self.head_dim} "
                             f"(embed_dim / num_heads)")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Build from plain data (a checkpoint, a JSON file), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; valid: {sorted(known)}")
        return cls(**values)


def _divisors(n: int, limit: int = 64) -> list[int]:
    """The divisors of n up to limit (at most a few steps, however large n is)."""
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


# ----------------------------------------------------------------------------- positions

def sinusoidal_table(num_positions: int, embed_dim: int) -> torch.Tensor:
    """The deck's (and the paper's) PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(...).

    https://arxiv.org/abs/1706.03762 section 3.5. Returns (num_positions, C).
    """
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    div_term = torch.exp(torch.arange(0, embed_dim, 2, dtype=torch.float64)
                         * (-math.log(10000.0) / embed_dim))  # (C/2,)
    table = torch.zeros(num_positions, embed_dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: embed_dim // 2])
    return table.float()


class PositionalEncoding(nn.Module):
    """How the model knows where each token is. One interface for every kind:

    - `embed(x, start)` adds position information to the token embeddings x (B, T, C) of
      positions start .. start + T - 1 (absolute encodings);
    - `rotation(start, length)` gives what attention rotates queries and keys by, or None;
    - `vectors()` is the (positions, C) table added to the embeddings, for pictures, or None;
    - `relative` says attention depends on distances only, so a cache of keys may roll on past
      the context (GPT.stream's past_context="fast").

    This base class adds nothing: a model built with it has no position information at all.
    """

    relative = False

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x

    def rotation(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def vectors(self) -> torch.Tensor | None:
        return None


class SinusoidalPositionalEncoding(PositionalEncoding):
    """Fixed sine/cosine position stamps added to the (scaled) token embeddings."""

    def __init__(self, context_length: int, embed_dim: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(context_length, embed_dim), persistent=False)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        # The paper scales embeddings by sqrt(C) so that the fixed stamps do not drown them.
        return x * math.sqrt(x.size(-1)) + self.table[start:start + x.size(1)]

    def vectors(self) -> torch.Tensor:
        return self.table


class LearnedPositionalEncoding(PositionalEncoding):
    """One trained vector per position (GPT-2)."""

    def __init__(self, context_length: int, embed_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(context_length, embed_dim))

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x + self.weight[start:start + x.size(1)]

    def vectors(self) -> torch.Tensor:
        return self.weight


class RotaryEmbedding(PositionalEncoding):
    """Rotary position embedding (RoPE), https://arxiv.org/abs/2104.09864.

    Rotates each (first half, second half) pair of q and k channels by an angle proportional to the
    position, so the score q_m . k_n depends on m - n only. Works for any position, so a cache of
    keys can roll on past context_length.
    """

    relative = True

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def rotation(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles of positions start .. start + length - 1, (T, D/2) each."""
        positions = torch.arange(start, start + length, device=self.inv_freq.device).float()
        angles = torch.outer(positions, self.inv_freq)  # (T, D/2)
        return angles.cos(), angles.sin()


def positional_encoding(cfg: "ModelConfig") -> PositionalEncoding:
    """The encoding cfg.pos_encoding names."""
    if cfg.pos_encoding == "sinusoidal":
        return SinusoidalPositionalEncoding(cfg.context_length, cfg.embed_dim)
    if cfg.pos_encoding == "learned":
        return LearnedPositionalEncoding(cfg.context_length, cfg.embed_dim)
    if cfg.pos_encoding == "rope":
        return RotaryEmbedding(cfg.head_dim)
    return PositionalEncoding()  # "none": the model sees a bag of tokens


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles whose cos/sin are (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


# ----------------------------------------------------------------------------- attention

class KVCache:
    """Keys and values of the positions seen so far, for every layer, so decoding feeds one token
    per step instead of the whole sequence.

    `length` slots are filled; `position` is the absolute position of the next token (it exceeds
    `length` once a rope model has rolled old keys out of the window).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device=None, dtype=None):
        shape = (cfg.num_layers, batch_size, cfg.num_heads, cfg.context_length, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = cfg.context_length
        self.length = 0
        self.position = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H, T, D) after the filled slots; return all keys and values (B, H, S, D)."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
        self.position += num_tokens

    def evict(self, num_tokens: int) -> None:
        """Drop the oldest num_tokens keys and values (used by rope models past context_length)."""
        keep = self.length - num_tokens
        self.keys[:, :, :, :keep] = self.keys[:, :, :, num_tokens:self.length].clone()
        self.values[:, :, :, :keep] = self.values[:, :, :, num_tokens:self.length].clone()
        self.length = keep

    def reset(self) -> None:
        self.length = 0
        self.position = 0


def causal_mask(num_queries: int, num_keys: int, device=None) -> torch.Tensor:
    """(T, S) boolean mask, True where query t may attend to key s: the last T of S keys are the
    queries' own positions, so query t sees keys 0 .. S - T + t (the deck's triangle when S == T)."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(
        diagonal=num_keys - num_queries)


def explicit_attention(q, k, v, dropout: float = 0.0, training: bool = False,
                       causal: bool = True):
    """softmax(Q K^T / sqrt(D) + causal mask) V, written out so the weights can be returned.

    q (B, H, T, D), k and v (B, H, S, D) -> output (B, H, T, D), weights (B, H, T, S).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if causal:
        mask = causal_mask(q.size(2), k.size(2), device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return F.dropout(weights, dropout, training) @ v, weights


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: every head attends over earlier positions only (all
    positions when cfg.causal is off, the ablation that lets training read the answer)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.causal = cfg.causal
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.bias)  # W_q, W_k, W_v
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)  # W_out
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rotation=None, cache: KVCache | None = None, layer: int = 0,
                return_weights: bool = False):
        """x (B, T, C) -> (B, T, C), and the weights (B, H, T, S) when return_weights is set."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, T, D) each: heads become a batch dimension
        if rotation is not None:  # rope: positions enter here, as a rotation of q and k
            q, k = apply_rotary(q, *rotation), apply_rotary(k, *rotation)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, D)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if return_weights:
            y, weights = explicit_attention(q, k, v, dropout, self.training, self.causal)
        elif T == k.size(2):  # the fused kernel, for training and prefill
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)
        else:  # new tokens after cached ones: T == 1 sees every key, so the mask is all True
            mask = None if T == 1 or not self.causal else causal_mask(T, k.size(2), x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate the heads
        return self.resid_dropout(self.proj(y)), weights


class FeedForward(nn.Module):
    """Per-position MLP: expand to ffn_mult * C, GELU, project back to C."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.embed_dim, cfg.ffn_mult * cfg.embed_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_mult * cfg.embed_dim, cfg.embed_dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection and a LayerNorm.

    post (the deck, the original paper): x = norm(x + sublayer(x))
    pre  (GPT-2, trains deeper models more easily): x = x + sublayer(norm(x))

    The ablation switches take parts away: cfg.residual off makes x = sublayer(...) (no "x +"),
    cfg.layer_norm off makes every norm the identity, cfg.ffn off leaves attention alone.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.residual = cfg.residual
        self.norm1 = layer_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = layer_norm(cfg) if cfg.ffn else None
        self.ffn = FeedForward(cfg) if cfg.ffn else None

    def add(self, x, sublayer_out):
        """The residual connection: the sublayer's output is added to the stream it read."""
        return x + sublayer_out if self.residual else sublayer_out

    def forward(self, x, rotation=None, cache=None, layer=0, return_weights=False):
        if self.pre_norm:
            attn_out, weights = self.attn(self.norm1(x), rotation, cache, layer, return_weights)
            x = self.add(x, attn_out)
            if self.ffn is not None:
                x = self.add(x, self.ffn(self.norm2(x)))
        else:
            attn_out, weights = self.attn(x, rotation, cache, layer, return_weights)
            x = self.norm1(self.add(x, attn_out))
            if self.ffn is not None:
                x = self.norm2(self.add(x, self.ffn(x)))
        return x, weights


def layer_norm(cfg: ModelConfig) -> nn.Module:
    """nn.LayerNorm over the embedding, or the identity when cfg.layer_norm is off."""
    return nn.LayerNorm(cfg.embed_dim, bias=cfg.bias) if cfg.layer_norm else nn.Identity()


# ----------------------------------------------------------------------------- the model

@dataclass
class Inspection:
    """What `GPT.inspect` saw: logits (B, T, V); per layer, attention weights (B, H, T, T) and
    the hidden state leaving the block (B, T, C); `embeddings` is the input to the first block."""

    logits: torch.Tensor
    embeddings: torch.Tensor
    attentions: list[torch.Tensor]
    hidden_states: list[torch.Tensor]


class GPT(nn.Module):
    """Decoder-only transformer. forward(idx (B, T)) -> logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (use the tokenizer's vocab_size)")
        self.config = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_emb = positional_encoding(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        # Post-norm blocks already end in a LayerNorm; pre-norm needs one before the head.
        self.final_norm = layer_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:  # https://arxiv.org/abs/1608.05859
            self.head.weight = self.token_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * layers),
        # since each layer adds two of them (https://cdn.openai.com/better-language-models/
        # language_models_are_unsupervised_multitask_learners.pdf, section 2.3).
        for block in self.blocks:
            for sublayer in (block.attn, block.ffn):
                if sublayer is not None:
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
        total = cfg.num_layers * block + cfg.vocab_size * C * (1 if cfg.tie_weights else 2)
        total += norm if cfg.norm_placement == "pre" else 0
        return total + (cfg.context_length * C if cfg.pos_encoding == "learned" else 0)

    @staticmethod
    def flops_per_token(cfg: ModelConfig) -> int:
        """Training FLOPs per token (forward and backward) at full context: 6 per weight that
        multiplies activations (2 forward, 4 backward) plus 12 * L * T * C for the attention scores
        Q K^T and their use P V. Norms, softmax and the optimizer are left out, as is usual."""
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

    def _run(self, idx, cache: KVCache | None = None, return_weights: bool = False):
        start, T = 0, idx.size(1)
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
        x = self.dropout(self.pos_emb.embed(self.token_emb(idx), start))  # (B, T, C)
        rotation = self.pos_emb.rotation(start, T)
        embeddings, attentions, hidden_states = x, [], []
        for layer, block in enumerate(self.blocks):
            x, weights = block(x, rotation, cache, layer, return_weights)
            attentions.append(weights)
            hidden_states.append(x)
        if cache is not None:
            cache.advance(T)
        logits = self.head(self.final_norm(x))  # (B, T, V)
        return logits, embeddings, attentions, hidden_states

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V). With a cache, idx holds only the new tokens."""
        return self._run(idx, cache)[0]

    @torch.no_grad()
    def inspect(self, idx: torch.Tensor) -> Inspection:
        """Run idx (B, T) through the explicit attention path, keeping every layer's attention
        weights and output, for visualising attention and comparing layer outputs."""
        self.check_ids(idx)
        return Inspection(*self._run(idx, return_weights=True))

    def check_ids(self, idx: torch.Tensor) -> None:
        """Refuse a prompt that no embedding row fits: not integer ids, no token, or an id outside
        the vocabulary (on CUDA the lookup would end the process with a device-side assert).
        Generation and inspection check; the training step does not pay for it."""
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(f"token ids must be an integer tensor, got {idx.dtype}")
        if idx.size(-1) == 0:
            raise ValueError("generation and inspection need at least one prompt token")
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}) (the "
                             f"vocabulary), got ids from {low} to {high}")

    def new_cache(self, batch_size: int) -> KVCache:
        weight = self.token_emb.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype)

    @torch.no_grad()
    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None, use_cache: bool = True,
               past_context: str = "exact",
               choose: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens next-token batches (B,), continuing idx (B, T).

        Every next token is predicted from the last context_length tokens. With use_cache the
        prompt is processed once and each step feeds one token, which gives the same logits as
        recomputing the window, as long as the sequence fits the context. Past it, past_context
        says what happens:

        - "exact" (the default): every step recomputes the window of the last context_length
          tokens, as use_cache=False does throughout: the logits are those of the model on that
          window, whatever the position encoding or depth. Slower past the context.
        - "fast": keep using a cache. Relative (rope) models drop the oldest cached keys and
          values, a rolling window: with one layer this equals recomputing the window, with more
          it differs (deeper layers' cached keys were computed while the dropped tokens were still
          visible). Absolute encodings re-prefill the last context_length // 2 + 1 tokens when
          the cache is full, so the window shrinks to half and grows back, paying for a prefill
          once every context_length / 2 tokens.

        choose picks the next tokens from the logits (B, V) instead of sampling with temperature,
        top_k and top_p (tests use it to feed fixed tokens and read the logits).
        """
        check_sampling_args(temperature, top_k, top_p)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.check_ids(idx)
        if past_context not in ("exact", "fast"):
            raise ValueError(f"past_context must be 'exact' or 'fast', got {past_context!r}")
        choose = choose or (lambda logits: sample_next(logits, temperature, top_k, top_p,
                                                       generator))
        window = self.config.context_length
        cache = self.new_cache(idx.size(0)) if use_cache else None
        idx = idx[:, -window:]
        logits = self(idx, cache)[:, -1]
        for step in range(max_new_tokens):
            next_token = choose(logits)  # (B,)
            yield next_token
            if step == max_new_tokens - 1:
                return
            idx = torch.cat([idx, next_token[:, None]], dim=1)[:, -window:]  # the last window
            if cache is not None and cache.length == window:  # the cache is full
                if past_context == "exact":
                    cache = None  # from here on, recompute the window every step
                elif not self.pos_emb.relative:
                    cache.reset()
                    logits = self(idx[:, -(window // 2 + 1):], cache)[:, -1]
                    continue
            logits = (self(idx) if cache is None else self(next_token[:, None], cache))[:, -1]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 stop: Sequence[Sequence[int]] = (), pad_id: int = -1,
                 past_context: str = "exact") -> torch.Tensor:
        """Sample up to max_new_tokens tokens after idx (B, T); returns idx with them appended.

        stop: token-id sequences. A row ends just before the first stop sequence it produces (the
        sequence is not returned), and generation ends once every row has ended. Rows that end
        before the longest one are filled up with pad_id: -1 by default, which is no token's id, so
        `row[row >= 0]` gives a row back. (Stop *strings* are handled on text, by
        minigpt.generation.generate_text, since token boundaries need not match them.)
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise TypeError("GPT.generate takes a (B, T) tensor of token ids (the deck's "
                            "MiniTransformer.generate also takes a plain list)")
        stop = [list(s) for s in stop if len(s)]
        rows = [[] for _ in range(idx.size(0))]  # the new tokens of each row
        ends: list[int | None] = [None] * idx.size(0)  # where each row's first stop sequence begins
        was_training = self.training
        self.eval()
        try:
            for tokens in self.stream(idx, max_new_tokens, temperature, top_k, top_p, generator,
                                      use_cache, past_context):
                for i, token in enumerate(tokens.tolist()):
                    rows[i].append(token)
                    if ends[i] is None:
                        ends[i] = _stop_start(rows[i], stop)
                if stop and None not in ends:
                    break
        finally:
            self.train(was_training)
        kept = [row if end is None else row[:end] for row, end in zip(rows, ends)]
        new = torch.full((idx.size(0), max(map(len, kept))), pad_id, dtype=torch.long,
                         device=idx.device)
        for i, row in enumerate(kept):
            new[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return torch.cat([idx, new], dim=1)


def _stop_start(row: list[int], stops: list[list[int]]) -> int | None:
    """Where a stop sequence that row ends with begins, or None."""
    for seq in stops:
        if row[-len(seq):] == seq:
            return len(row) - len(seq)
    return None


class MiniTransformer(GPT):
    """The deck's MiniTransformer: a GPT with sinusoidal positions and post-norm blocks, built from
    keyword sizes. `MiniTransformer(vocab_size=V, embed_dim=64, num_heads=4, num_layers=2)`."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, num_heads: int = 4,
                 num_layers: int = 2, **options):
        options = {"pos_encoding": "sinusoidal", "norm_placement": "post", **options}
        super().__init__(ModelConfig(vocab_size=vocab_size, embed_dim=embed_dim,
                                     num_heads=num_heads, num_layers=num_layers, **options))

    def generate(self, idx: torch.Tensor | list[int], max_new_tokens: int, **options):
        """The deck's form as well: idx may be a plain list of token ids, and then the ids come
        back as a list (the prompt, then the new tokens, cut before a stop sequence)."""
        if not isinstance(idx, list):
            return super().generate(idx, max_new_tokens, **options)
        batch = torch.tensor([idx], dtype=torch.long, device=self.token_emb.weight.device)
        return super().generate(batch, max_new_tokens, **options)[0].tolist()
