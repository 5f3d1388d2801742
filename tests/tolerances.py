"""The suite's tolerance policy, in code: every float comparison in the tests goes through one of these.

docs/design.md ("Tolerances in tests") states the policy and its reasons. In short:

- bit-exact (:func:`assert_bit_exact`, or ``torch.equal`` for tokens and integer results): the same
  arithmetic on the same inputs, e.g. a rerun of one kernel, or turbogen's processors against transformers'
  where both compute the same float operations in the same order;
- scaled to the magnitude (:func:`assert_close_across_compilations`): one computation run by differently
  compiled, batched, padded or threaded code (eager against traced, a static against a dynamic KV cache,
  one row against a batch), whose summation order, and so whose rounding, legitimately differs;
- statistical (:func:`assert_draws_follow`): sampled tokens against the distribution they are drawn from,
  with a bound sized to the number of draws.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "CROSS_COMPILATION_TOLERANCE",
    "DISTRIBUTION_FALSE_ALARM_RATE",
    "assert_bit_exact",
    "assert_close_across_compilations",
    "assert_draws_follow",
    "cross_compilation_tolerance",
]

#: Relative tolerance, by the dtype a computation runs in, between differently compiled/batched/threaded runs of
#: it. The same number is used as a fraction of the largest magnitude in the expected tensor for the absolute
#: tolerance (see :func:`cross_compilation_tolerance`). float32: about 840 ulps of the largest value; the worst
#: difference seen on any host so far is 7 ulps of it (a tiny Llama's logits, traced against eager, in
#: transformers 5), and the bugs these comparisons exist to catch (a wrong cache slot, an off-by-one mask, a
#: wrong temperature) move values by 1e-2 of that magnitude or more. 16-bit dtypes round every stored
#: intermediate to 8 (bfloat16) or 11 (float16) significant bits, so the bound is a few ulps of the largest value.
CROSS_COMPILATION_TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

#: Probability that :func:`assert_draws_follow` rejects draws that do follow the expected distribution.
#: The tests use fixed seeds, so each outcome is deterministic; this bounds the fraction of seeds (and of hosts
#: whose float rounding moves a few draws) on which a correct sampler would fail.
DISTRIBUTION_FALSE_ALARM_RATE = 1e-6

# Pearson's chi-square statistic follows its asymptotic distribution only when every cell expects a few draws
# (Cochran's rule: at least 5); cells expecting fewer are pooled into one.
_MIN_EXPECTED_DRAWS_PER_CELL = 5.0


def assert_bit_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``actual`` equals ``expected`` bit for bit (infinities and NaNs in the same places), with
    ``torch.testing``'s report of the mismatching elements when it does not."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def cross_compilation_tolerance(expected: torch.Tensor, dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """``rtol``/``atol`` for comparing a result with ``expected`` computed by differently compiled code.

    Rounding differences of a reordered sum are proportional to the magnitudes summed, not to the result: in a
    network, a logit near zero carries as large an absolute error as the largest logit. So ``atol`` is
    ``rtol`` times the largest finite magnitude in ``expected`` (infinities, e.g. masked scores, must match
    exactly and do not count), and ``rtol`` is :data:`CROSS_COMPILATION_TOLERANCE` for ``dtype``.

    Args:
        expected: the reference result.
        dtype: the floating dtype the computation ran in (e.g. the model's), which may be narrower than the
            compared tensors; defaults to ``expected.dtype``.

    Raises:
        TypeError: ``expected`` is not a floating tensor, or ``dtype`` has no tolerance in the policy.
    """
    if not isinstance(expected, torch.Tensor) or not expected.is_floating_point():
        raise TypeError(f"`expected` must be a floating torch.Tensor, got {getattr(expected, 'dtype', type(expected))}")
    dtype = expected.dtype if dtype is None else dtype
    if dtype not in CROSS_COMPILATION_TOLERANCE:
        raise TypeError(f"`dtype` must be one of {list(CROSS_COMPILATION_TOLERANCE)}, got {dtype!r}")
    rtol = CROSS_COMPILATION_TOLERANCE[dtype]
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return {"rtol": rtol, "atol": rtol * scale}


def assert_close_across_compilations(actual: torch.Tensor, expected: torch.Tensor,
                                     dtype: Optional[torch.dtype] = None) -> None:
    """``actual`` equals ``expected`` up to the rounding that differently compiled, batched, padded or threaded
    code may introduce (:func:`cross_compilation_tolerance`); infinities and NaNs must be in the same places."""
    torch.testing.assert_close(actual, expected, equal_nan=True, **cross_compilation_tolerance(expected, dtype))


def assert_draws_follow(tokens: torch.Tensor, probabilities: torch.Tensor,
                        false_alarm_rate: float = DISTRIBUTION_FALSE_ALARM_RATE) -> None:
    """The sampled ``tokens`` are independent draws from ``probabilities``, as far as their number can tell.

    Two checks: no token of probability 0 was drawn (exact), and Pearson's chi-square test of the token counts
    against ``probabilities`` does not reject at level ``false_alarm_rate``. Cells expecting fewer than 5 draws
    are pooled into one, so the chi-square approximation holds; the statistic grows with the number of draws,
    so the bound tightens as ``tokens`` grows (with ``n`` draws, a distribution at chi-square distance ``d`` from
    the expected one adds about ``n * d`` to the statistic). The failure message also gives the total-variation
    distance between the observed frequencies and ``probabilities``.

    Args:
        tokens: 1-D integer tensor of sampled token ids.
        probabilities: 1-D floating tensor over the vocabulary, summing to 1.
        false_alarm_rate: the probability of rejecting draws that do follow ``probabilities``.

    Raises:
        TypeError, ValueError: the arguments are not as described.
        AssertionError: a token of probability 0 was drawn, or the test rejects.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.is_floating_point():
        raise TypeError("`tokens` must be a 1-D integer tensor")
    if not isinstance(probabilities, torch.Tensor) or probabilities.dim() != 1 or not probabilities.is_floating_point():
        raise TypeError("`probabilities` must be a 1-D floating tensor")
    probabilities = probabilities.detach().cpu().double()
    if bool((probabilities < 0).any()) or abs(float(probabilities.sum()) - 1.0) > 1e-6:
        raise ValueError("`probabilities` must be non-negative and sum to 1")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"`false_alarm_rate` must be in (0, 1), got {false_alarm_rate}")
    tokens = tokens.detach().cpu()
    if tokens.numel() == 0 or int(tokens.min()) < 0 or int(tokens.max()) >= probabilities.numel():
        raise ValueError(f"`tokens` must be a non-empty tensor of ids in [0, {probabilities.numel()})")

    draws = tokens.numel()
    counts = torch.bincount(tokens, minlength=probabilities.numel()).double()
    impossible = (probabilities == 0) & (counts > 0)
    if bool(impossible.any()):
        raise AssertionError(f"tokens of probability 0 were drawn: {impossible.nonzero().flatten().tolist()}")

    expected_counts = probabilities * draws
    large = expected_counts >= _MIN_EXPECTED_DRAWS_PER_CELL
    small = ~large & (probabilities > 0)
    observed, expected = counts[large], expected_counts[large]
    if bool(small.any()):
        pooled_observed, pooled_expected = counts[small].sum(), expected_counts[small].sum()
        if float(pooled_expected) >= _MIN_EXPECTED_DRAWS_PER_CELL or observed.numel() == 0:
            observed = torch.cat([observed, pooled_observed.reshape(1)])
            expected = torch.cat([expected, pooled_expected.reshape(1)])
        else:  # still too few expected draws on their own: fold them into the smallest cell
            smallest = int(expected.argmin())
            observed[smallest] += pooled_observed
            expected[smallest] += pooled_expected
    degrees_of_freedom = expected.numel() - 1
    if degrees_of_freedom == 0:  # one cell holds every draw: nothing left to test beyond the support
        return
    statistic = float(((observed - expected) ** 2 / expected).sum())
    p_value = float(torch.special.gammaincc(torch.tensor(degrees_of_freedom / 2, dtype=torch.float64),
                                            torch.tensor(statistic / 2, dtype=torch.float64)))
    total_variation = 0.5 * float((counts / draws - probabilities).abs().sum())
    if p_value < false_alarm_rate:
        raise AssertionError(
            f"{draws} draws do not follow the expected distribution: chi-square {statistic:.1f} with "
            f"{degrees_of_freedom} degrees of freedom, p-value {p_value:.2e} < {false_alarm_rate:.0e} "
            f"(total-variation distance of the frequencies: {total_variation:.4f})")


def generate_both(model, input_ids, attention_mask, **kwargs):
    """(transformers' result, turbogen's result) of the same ``generate`` call."""
    from turbogen.generate import generate

    expected = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    actual = generate(model, input_ids, attention_mask=attention_mask, **kwargs)
    return expected, actual


def assert_same_generation(expected, actual, beams: bool = False, assert_same_floats=assert_bit_exact) -> None:
    """``actual`` (turbogen's ``return_dict_in_generate`` output) has ``expected``'s (transformers') tokens, beam
    indices and cache length, and its recorded floats (scores, logits, sequence scores) pass
    ``assert_same_floats``: bit-exact against transformers, which makes the same model calls and float
    operations; :func:`assert_close_across_compilations` between differently computed runs."""
    assert torch.equal(actual.sequences, expected.sequences), (actual.sequences, expected.sequences)
    for name in ("scores", "logits"):
        expected_steps, actual_steps = getattr(expected, name), getattr(actual, name)
        assert (expected_steps is None) == (actual_steps is None), name
        if expected_steps is not None:
            assert len(actual_steps) == len(expected_steps), name
            for want, got in zip(expected_steps, actual_steps):
                assert_same_floats(got, want)
    if beams:
        assert torch.equal(actual.beam_indices, expected.beam_indices)
        if expected.sequences_scores is not None:
            assert_same_floats(actual.sequences_scores, expected.sequences_scores)
    if getattr(expected, "past_key_values", None) is not None:
        assert _cache_length(actual.past_key_values) == _cache_length(expected.past_key_values)


def _cache_length(cache) -> int:
    """Positions a returned cache holds: a ``Cache`` object, or legacy ``((key, value), ...)`` tuples (what
    transformers 4.45 returns by default)."""
    if isinstance(cache, (tuple, list)):
        return cache[0][0].shape[-2]
    return cache.get_seq_length()
