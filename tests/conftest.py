"""Shared fixtures: small seeded models of every variant, CPU only."""

import itertools

import pytest
import torch

from minigpt import GPT, ModelConfig

VARIANTS = list(itertools.product(("sinusoidal", "learned", "rope"), ("pre", "post")))


def tiny_config(**overrides) -> ModelConfig:
    options = dict(vocab_size=23, context_length=16, embed_dim=32, num_heads=4, num_layers=2)
    return ModelConfig(**{**options, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1]}")
def variant_model(request) -> GPT:
    pos_encoding, norm_placement = request.param
    return GPT(tiny_config(pos_encoding=pos_encoding, norm_placement=norm_placement)).eval()
