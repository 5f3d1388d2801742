"""The tolerance helpers of tests/tolerances.py: each accepts what the policy allows and rejects the rest."""

from __future__ import annotations

import pytest
import torch

from tolerances import (CROSS_COMPILATION_TOLERANCE, assert_bit_exact, assert_close_across_compilations,
                        assert_draws_follow, cross_compilation_tolerance)


def test_bit_exact_accepts_only_identical_floats():
    scores = torch.tensor([1.0, -float("inf"), float("nan")])
    assert_bit_exact(scores.clone(), scores)
    with pytest.raises(AssertionError):
        assert_bit_exact(scores + torch.tensor([1e-7, 0.0, 0.0]), scores)


def test_cross_compilation_tolerance_scales_with_the_largest_finite_value():
    logits = torch.tensor([12.0, 0.014, -3.0, -float("inf")])
    assert cross_compilation_tolerance(logits) == {"rtol": 1e-4, "atol": pytest.approx(1.2e-3)}
    assert cross_compilation_tolerance(logits.half())["rtol"] == CROSS_COMPILATION_TOLERANCE[torch.float16]
    # A float16 computation compared in float32 gets float16's tolerance.
    assert cross_compilation_tolerance(logits, torch.float16)["atol"] == pytest.approx(12.0 * 1e-2)
    with pytest.raises(TypeError, match="dtype"):
        cross_compilation_tolerance(logits, torch.int64)
    with pytest.raises(TypeError, match="expected"):
        cross_compilation_tolerance(torch.arange(3))


def test_close_across_compilations_allows_rounding_at_the_scale_of_the_tensor():
    logits = torch.tensor([12.243, 0.014, -3.5, -float("inf")])
    # The difference that broke atol=rtol=1e-5 on one host: 1.02e-5 on a logit of 0.014 (7 ulps of 12.2).
    assert_close_across_compilations(logits + torch.tensor([0.0, 1.02e-5, 0.0, 0.0]), logits)
    with pytest.raises(AssertionError):  # a real error, e.g. a wrong cache slot, is far larger
        assert_close_across_compilations(logits + torch.tensor([0.0, 0.05, 0.0, 0.0]), logits)
    with pytest.raises(AssertionError):  # a masked score must stay masked
        assert_close_across_compilations(torch.tensor([12.243, 0.014, -3.5, -1e9]), logits)


def _draws(probabilities: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(probabilities, count, replacement=True, generator=generator)


def test_draws_follow_accepts_the_true_distribution_and_rejects_a_tempered_one():
    logits = torch.linspace(4.0, -4.0, 50, dtype=torch.float64)
    probabilities = torch.softmax(logits / 1.5, dim=-1)
    assert_draws_follow(_draws(probabilities, 8000, seed=0), probabilities)
    # Tail tokens expect fewer than 5 draws each: they are pooled, not tested cell by cell.
    assert_draws_follow(_draws(probabilities, 300, seed=1), probabilities)
    tempered = torch.softmax(logits / 1.3, dim=-1)
    with pytest.raises(AssertionError, match="do not follow the expected distribution"):
        assert_draws_follow(_draws(tempered, 8000, seed=0), probabilities)


def test_draws_follow_rejects_a_token_of_probability_zero():
    probabilities = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    tokens = torch.tensor([0, 1] * 50 + [2])
    with pytest.raises(AssertionError, match=r"probability 0 were drawn: \[2\]"):
        assert_draws_follow(tokens, probabilities)


def test_draws_follow_validates_its_arguments():
    probabilities = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(TypeError, match="tokens"):
        assert_draws_follow(torch.tensor([0.0, 1.0]), probabilities)
    with pytest.raises(ValueError, match="sum to 1"):
        assert_draws_follow(torch.tensor([0, 1]), torch.tensor([0.5, 0.6], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ids in \[0, 2\)"):
        assert_draws_follow(torch.tensor([0, 2]), probabilities)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        assert_draws_follow(torch.tensor([0, 1]), probabilities, false_alarm_rate=0.0)
