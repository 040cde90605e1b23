"""Sampling helpers: temperature, top-k, top-p, including the edge cases that broke peers."""

import pytest
import torch

from minigpt.sampling import check_sampling_args, sample_next, top_k_filter, top_p_filter

LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])


def test_top_k_keeps_the_k_largest():
    out = top_k_filter(LOGITS, 2)
    assert torch.equal(torch.isfinite(out), torch.tensor([[False, True, True, False],
                                                          [False, False, True, True]]))
    assert torch.equal(out[torch.isfinite(out)], LOGITS[torch.isfinite(out)])


@pytest.mark.parametrize("k", [None, 0, 4, 1000])
def test_top_k_disabled_or_larger_than_vocabulary_keeps_all(k):
    assert torch.equal(top_k_filter(LOGITS, k), LOGITS)


def test_top_k_does_not_modify_its_input():
    logits = LOGITS.clone()
    top_k_filter(logits, 1)
    top_p_filter(logits, 0.1)
    assert torch.equal(logits, LOGITS)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = torch.isfinite(top_p_filter(logits, 0.8))
    assert keep.tolist() == [[True, True, False, False]]
    keep = torch.isfinite(top_p_filter(logits, 0.81))
    assert keep.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("p", [None, 1.0])
def test_top_p_of_one_keeps_all(p):
    assert torch.equal(top_p_filter(LOGITS, p), LOGITS)


@pytest.mark.parametrize("p", [1e-9, 1e-300])  # 1e-300 is 0 in float32
def test_tiny_top_p_keeps_the_top_token_only(p):
    out = top_p_filter(LOGITS, p)
    assert torch.isfinite(out).sum(-1).tolist() == [1, 1]
    assert sample_next(LOGITS, 1.0, top_p=p).tolist() == [1, 2]


@pytest.mark.parametrize("temperature", [1e-3, 1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_is_all_but_greedy(temperature):
    """logits / T would overflow to +-inf (and NaN probabilities) below about 1e-38."""
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0)) * 10
    assert torch.equal(sample_next(logits, temperature), logits.argmax(-1))


def test_temperature_zero_is_greedy():
    assert sample_next(LOGITS, temperature=0).tolist() == [1, 2]


def test_sampling_follows_the_tempered_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(20000, 1)
    draws = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)
    cold = sample_next(logits, 0.25, generator=torch.Generator().manual_seed(0))
    assert (cold == 0).float().mean() > 0.95


def test_same_generator_seed_same_draws():
    logits = torch.randn(8, 50)
    a = sample_next(logits, 1.0, 10, 0.9, torch.Generator().manual_seed(5))
    b = sample_next(logits, 1.0, 10, 0.9, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("args,message", [
    ((-0.5, None, None), "temperature must be a finite number >= 0"),
    ((1.0, -1, None), "top_k must be >= 0"),
    ((1.0, None, 0.0), r"top_p must be in \(0, 1\]"),
    ((1.0, None, 1.5), r"top_p must be in \(0, 1\]"),
])
def test_invalid_controls(args, message):
    with pytest.raises(ValueError, match=message):
        check_sampling_args(*args)
