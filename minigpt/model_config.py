"""ModelConfig: the shape and options of a GPT (minigpt/model.py), checked when it is made.

    cfg = ModelConfig(vocab_size=65, context_length=256, embed_dim=128, num_heads=4, num_layers=4)

Every field is a config key under [model] (`python train.py --help` lists them with this help).
"""

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

from minigpt.errors import ConfigError


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def check_fields(section: str, values) -> None:
    """What every field's type says: a choice among its Literal's values, and no NaN or infinity
    (they mean nothing for any setting; NaN would slip through range checks, since every
    comparison with it is false). For the dataclasses of every config section."""
    for name, tp in typing.get_type_hints(type(values)).items():
        value = getattr(values, name)
        if typing.get_origin(tp) is Literal:
            check_choice(f"{section}.{name}", value, typing.get_args(tp))
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{name} must be a finite number, got {value}")


def _option(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class ModelConfig:
    """Shape and options of a GPT. Validated on construction (ConfigError, a ValueError)."""

    vocab_size: int | None = _option(None, "number of token ids (set from the tokenizer)")
    context_length: int = _option(128, "longest sequence the model attends over")
    embed_dim: int = _option(128, "width of the residual stream (C)")
    num_heads: int = _option(4, "attention heads per layer (H)")
    num_layers: int = _option(4, "number of transformer blocks")
    ffn_mult: int = _option(4, "feed-forward hidden width as a multiple of embed_dim")
    dropout: float = _option(0.0, "dropout probability, in [0, 1)")
    pos_encoding: Literal["sinusoidal", "learned", "rope", "none"] = _option(
        "learned", "how positions enter the model (none: an ablation)")
    norm_placement: Literal["pre", "post"] = _option(
        "pre", "LayerNorm before each sublayer (GPT-2) or after")
    tie_weights: bool = _option(True, "share the token embedding with the output head")
    bias: bool = _option(True, "biases in Linear and LayerNorm layers")
    activation: Literal["gelu", "gelu_tanh", "relu2"] = _option(
        "gelu", "feed-forward nonlinearity: exact GELU, GPT-2's tanh approximation, or relu2 "
                "(ReLU squared, https://arxiv.org/abs/2109.08668)")
    # Speedrun options (configs/shakespeare_char_*.toml; docs/records.md has what each bought).
    qk_norm: bool = _option(False, "RMS-normalise each head's queries and keys before their dot "
                                   "product (QK-norm): attention scores stay bounded, so higher "
                                   "learning rates stay stable")
    logit_softcap: float = _option(0.0, "squash the logits smoothly into (-cap, cap) with "
                                        "cap * tanh(logits / cap) (0: off)")
    zero_init_proj: bool = _option(False, "start the projections that write into the residual "
                                          "stream at zero, so every block begins as the identity")
    short_conv: int = _option(0, "kernel size K of a causal depthwise convolution on each "
                                 "sublayer's input, so it reads the last K - 1 positions too "
                                 "(0: off; records.md has what 4 bought)")
    # Ablation switches: each removes one part, to show what it is for (README, "Take it apart").
    # A single head of the same width is num_heads = 1.
    residual: bool = _option(True, "add each sublayer's output to its input (false: the output "
                                   "replaces it; an ablation)")
    layer_norm: bool = _option(True, "LayerNorms in the blocks and before the head (false: none; "
                                     "an ablation)")
    ffn: bool = _option(True, "a feed-forward sublayer in every block (false: attention only; an "
                              "ablation)")
    causal: bool = _option(True, "hide later tokens from attention (false lets training cheat by "
                                 "reading the answer; an ablation)")

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
        if isinstance(self.short_conv, bool) or not (
                isinstance(self.short_conv, int) and self.short_conv >= 0):
            raise ConfigError(f"model.short_conv must be an integer >= 0 (0: off), "
                              f"got {self.short_conv!r}")
        if isinstance(self.logit_softcap, bool) or not (
                isinstance(self.logit_softcap, (int, float)) and 0 <= self.logit_softcap < math.inf):
            raise ConfigError(f"model.logit_softcap must be a number >= 0 (0: off), "
                              f"got {self.logit_softcap!r}")
        check_fields("model", self)  # the choices of pos_encoding, norm_placement, activation
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
