"""turbogen.ops.sample / filter_logits on rows holding +inf, -inf and NaN: every backend computes the
reference's function (turbogen.ref.sampling) exactly, infinities included.

In the reference, NaN reads as -inf, and a +inf tempered logit makes every probability of its row
NaN (softmax computes inf - inf): top-p and min-p then remove nothing, so the kept set is top-k's
alone; the token is the lowest-index +inf (every kept +inf scores +inf after noise) and its logprob
is NaN, greedy or not.
"""

from __future__ import annotations

import pytest
import torch

import turbogen.ops.sampling as ops_sampling

from conftest import backend_params, device_for

# Triton's interpreter runs the kernels in numpy, which warns about the inf - inf they compute on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

INF, NAN = float("inf"), float("nan")

# (temperature, top_k, top_p, min_p): each filter alone, together, greedy, and min-p with top-k.
FILTERS = [
    dict(),
    dict(min_p=0.1),
    dict(min_p=1.0),
    dict(temperature=0.7, top_p=0.9),
    dict(top_p=1e-6),
    dict(top_k=1),
    dict(top_k=2),
    dict(top_k=40),
    dict(top_k=3, top_p=0.8, min_p=0.3),
    dict(temperature=1.5, top_k=2, min_p=0.5),
    dict(temperature=0.0),
    dict(temperature=0.0, top_k=3, min_p=0.2),
]


def rows_with_infinities(vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random logits with, row by row: one +inf; two +inf among NaN and -inf; +inf in the last
    column; only +inf and non-finite values; +inf in a mostly-NaN row; -inf and NaN but no +inf;
    all NaN; a finite value that overflows to +inf once divided by a temperature below 1."""
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(8, vocab, generator=generator) * 3
    logits[0, vocab // 2] = INF
    logits[1, 3], logits[1, vocab - 5] = INF, INF
    logits[1, :3], logits[1, 4:9] = NAN, -INF
    logits[2, -1] = INF
    logits[3] = -INF
    logits[3, 1::3] = NAN
    logits[3, 7], logits[3, 2] = INF, INF
    logits[4, ::2] = NAN
    logits[4, 5] = INF
    logits[5, ::3], logits[5, 1::3] = -INF, NAN
    logits[6] = NAN
    logits[7, 11] = 3.0e38  # +inf as float16; in float32 and bfloat16, +inf once divided by 0.7
    return logits.to(dtype).to(device)


def _cases(backend: str):
    """(vocab, dtype): a small row, and one long enough for the CPU's small-top-k candidate path;
    Triton's interpreter costs milliseconds per program, so it gets the small one in float32 and
    bfloat16."""
    if backend == "triton" and not torch.cuda.is_available():
        return [(70, torch.float32), (70, torch.bfloat16)]
    return [(vocab, dtype) for vocab in (70, 1000) for dtype in (torch.float32, torch.float16, torch.bfloat16)]


def _assert_identical(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal values, infinities of the same sign and NaN in the same places."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_filter_logits_matches_reference(backend, filters):
    device = device_for(backend)
    for vocab, dtype in _cases(backend):
        logits = rows_with_infinities(vocab, dtype, device)
        expected = ops_sampling.filter_logits(logits, backend="ref", **filters)
        _assert_identical(ops_sampling.filter_logits(logits, backend=backend, **filters), expected,
                          f"filter_logits vocab={vocab} {dtype}")


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_sample_matches_reference(backend, filters):
    device = device_for(backend)
    for vocab, dtype in _cases(backend):
        logits = rows_with_infinities(vocab, dtype, device)
        seeds = torch.arange(logits.shape[0], device=device) * 104729 + vocab
        tokens, logprobs = ops_sampling.sample(logits, seed=seeds, offset=3, return_logprobs=True,
                                               backend=backend, **filters)
        expected_tokens, expected_logprobs = ops_sampling.sample(logits, seed=seeds, offset=3, return_logprobs=True,
                                                                 backend="ref", **filters)
        assert tokens.tolist() == expected_tokens.tolist(), f"vocab={vocab} {dtype}"
        infinite = torch.isnan(expected_logprobs)
        assert torch.isnan(logprobs[infinite]).all(), f"vocab={vocab} {dtype}: a +inf row's logprob is NaN"
        torch.testing.assert_close(logprobs[~infinite], expected_logprobs[~infinite], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
def test_per_row_parameters_with_infinities(backend):
    device = device_for(backend)
    vocab, dtype = _cases(backend)[0]
    logits = rows_with_infinities(vocab, dtype, device)
    rows = logits.shape[0]
    filters = dict(temperature=torch.tensor([1.0, 0.0, 0.7, 1.3, 0.0, 1.0, 0.5, 0.7], device=device),
                   top_k=torch.tensor([0, 2, 0, 5, 1, 0, 3, 0], device=device),
                   top_p=torch.tensor([0.9, 1.0, 0.5, 1.0, 0.7, 0.2, 1.0, 1.0], dtype=torch.float64, device=device),
                   min_p=torch.tensor([0.2, 0.0, 0.0, 0.4, 0.1, 0.3, 1.0, 0.0], device=device))
    seeds = torch.arange(rows, device=device) + 11
    expected_filtered = ops_sampling.filter_logits(logits, backend="ref", **filters)
    _assert_identical(ops_sampling.filter_logits(logits, backend=backend, **filters), expected_filtered,
                      "filter_logits")
    tokens, logprobs = ops_sampling.sample(logits, seed=seeds, return_logprobs=True, backend=backend, **filters)
    expected_tokens, expected_logprobs = ops_sampling.sample(logits, seed=seeds, return_logprobs=True, backend="ref",
                                                             **filters)
    assert tokens.tolist() == expected_tokens.tolist()
    _assert_identical(logprobs.isnan(), expected_logprobs.isnan(), "NaN logprobs")


def test_reference_semantics_of_infinities():
    """What the comparisons above pin down, stated on the reference itself."""
    logits = torch.tensor([[1.0, INF, 3.0, -INF, INF, NAN, 2.0]])
    filtered = ops_sampling.filter_logits(logits, min_p=0.5, top_p=0.5, backend="ref")
    # top-p and min-p remove nothing next to a +inf; NaN reads as -inf.
    assert filtered.tolist() == [[1.0, INF, 3.0, -INF, INF, -INF, 2.0]]
    # top-k still applies: two +inf fill k = 2.
    assert ops_sampling.filter_logits(logits, top_k=2, backend="ref").isfinite().sum() == 0
    tokens, logprobs = ops_sampling.sample(logits, seed=5, return_logprobs=True, backend="ref")
    assert tokens.tolist() == [1] and logprobs.isnan().all()
    tokens, logprobs = ops_sampling.sample(logits, seed=5, temperature=0.0, return_logprobs=True, backend="ref")
    assert tokens.tolist() == [1] and logprobs.isnan().all()
