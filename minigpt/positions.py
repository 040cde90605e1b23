"""How a GPT knows where each token is: the deck's sinusoidal table, a learned table (GPT-2),
rotary embeddings (RoPE), or nothing (an ablation). `minigpt.model.GPT` builds one with
`positional_encoding(cfg.pos_encoding, ...)`.

Shapes: T positions, C embed_dim, D head_dim, as in minigpt/model.py.
"""

import math

import torch
from torch import nn


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


def positional_encoding(kind: str, context_length: int, embed_dim: int,
                        head_dim: int) -> PositionalEncoding:
    """The encoding model.pos_encoding names: sinusoidal, learned, rope or none."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(context_length, embed_dim)
    if kind == "learned":
        return LearnedPositionalEncoding(context_length, embed_dim)
    if kind == "rope":
        return RotaryEmbedding(head_dim)
    return PositionalEncoding()  # "none": the model sees a bag of tokens


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles whose cos/sin are (T, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)
