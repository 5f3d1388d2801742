"""turbogen.ops.sample / filter_logits on every backend against turbogen.ref, and turbogen.ref
against transformers' warpers (docs/design.md, "Randomness: the determinism contract")."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import turbogen.ops.sampling as ops_sampling
from turbogen import _ext
from turbogen.ref import sampling as ref_sampling

from conftest import backend_params, device_for
from tolerances import assert_bit_exact, assert_close_across_compilations, assert_draws_follow

NEG_INF = float("-inf")

# (temperature, top_k, top_p, min_p): off, the usual mix, each filter alone, and extremes.
MIXES = [
    (1.0, 0, 1.0, 0.0),
    (0.7, 50, 0.9, 0.0),
    (1.3, 0, 0.8, 0.05),
    (0.5, 5, 1.0, 0.2),
    (1.0, 0, 0.3, 0.0),
    (2.0, 100, 0.95, 0.1),
    (1.0, 1, 1.0, 0.0),
    (1.0, 0, 1e-6, 0.0),
    (0.9, 0, 1.0, 1.0),
    (0.0, 0, 1.0, 0.0),
]


def transformers_filter(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float):
    """transformers' sampling warpers, added as GenerationMixin._get_logits_processor adds them."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p != 0.0:
        warpers.append(MinPLogitsWarper(min_p))
    return warpers(None, logits.float())


def random_logits(rows: int, vocab: int, seed: int, scale: float = 3.0, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=generator) * scale).to(dtype).to(device)


def per_row_parameters(rows: int, seed: int, device="cpu") -> dict:
    """A mix of every filter per row, including off and greedy rows."""
    generator = torch.Generator().manual_seed(seed)
    temperature = torch.rand(rows, generator=generator) * 1.5 + 0.25
    temperature[::4] = 0.0
    top_k = torch.randint(1, 120, (rows,), generator=generator)
    top_k[::3] = 0
    top_p = torch.rand(rows, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    top_p[1::5] = 1.0
    min_p = torch.rand(rows, generator=generator) * 0.2
    min_p[::2] = 0.0
    return {name: value.to(device) for name, value in
            dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p).items()}


def draw(backend: str, logits, seed, offset=0, **filters):
    return ops_sampling.sample(logits, seed=seed, offset=offset, return_logprobs=True, backend=backend, **filters)


# ---- the reference is transformers ----------------------------------------------------------------

@pytest.mark.transformers
@pytest.mark.parametrize("vocab", [17, 1000, 32003])
@pytest.mark.parametrize("mix", [m for m in MIXES if m[0] > 0], ids=str)
def test_reference_filter_matches_transformers(vocab, mix):
    temperature, top_k, top_p, min_p = mix
    logits = random_logits(8, vocab, seed=vocab)
    expected = transformers_filter(logits, temperature, top_k, top_p, min_p)
    actual = ref_sampling.filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    assert torch.equal(actual, expected)


@pytest.mark.transformers
def test_reference_per_row_parameters_match_transformers_row_by_row():
    rows, vocab = 16, 1000
    logits = random_logits(rows, vocab, seed=3)
    params = per_row_parameters(rows, seed=4)
    params["temperature"][params["temperature"] == 0] = 0.5
    actual = ref_sampling.filter_logits(logits, **params)
    for r in range(rows):
        expected = transformers_filter(logits[r:r + 1], float(params["temperature"][r]), int(params["top_k"][r]),
                                       float(params["top_p"][r]), float(params["min_p"][r]))
        assert torch.equal(actual[r:r + 1], expected), f"row {r}"


@pytest.mark.transformers
def test_reference_logprobs_are_transformers_log_softmax():
    logits = random_logits(32, 500, seed=5)
    tokens, logprobs = ref_sampling.sample(logits, temperature=0.8, top_k=40, top_p=0.9, seed=11,
                                           return_logprobs=True)
    expected = transformers_filter(logits, 0.8, 40, 0.9, 0.0).log_softmax(-1).gather(1, tokens[:, None])[:, 0]
    # The same log_softmax of the same filtered logits (bit-equal to transformers', tested above).
    assert_bit_exact(logprobs, expected)


def test_reference_compiles_fullgraph():
    """Python-int seed and offset make the whole noise computation compile-time constant (the case
    that needs ref.philox's per-round materialisation to compile in reasonable time)."""
    logits = random_logits(6, 1000, seed=6)
    params = per_row_parameters(6, seed=7)
    seed, offset = 1000, 3
    compiled = torch.compile(ref_sampling.sample, fullgraph=True, dynamic=False)
    tokens, logprobs = compiled(logits, seed=seed, offset=offset, return_logprobs=True, **params)
    expected_tokens, expected_logprobs = ref_sampling.sample(logits, seed=seed, offset=offset, return_logprobs=True,
                                                             **params)
    assert torch.equal(tokens, expected_tokens)
    assert_close_across_compilations(logprobs, expected_logprobs)  # Inductor reorders the log_softmax's sums


# ---- every backend computes the reference's function ----------------------------------------------

def _interpreted(backend: str) -> bool:
    return backend == "triton" and not torch.cuda.is_available()


def _cases(backend: str):
    """(rows, vocab, dtype) per backend: Triton's interpreter costs milliseconds per program."""
    if _interpreted(backend):
        return [(1, 17, torch.float32), (4, 1000, torch.bfloat16), (2, 1000, torch.float16)]
    shapes = [(1, 17), (65, 17), (7, 1000), (33, 1000), (3, 32003)]
    return [(rows, vocab, dtype) for rows, vocab in shapes for dtype in (torch.float32, torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
def test_backend_matches_reference(backend):
    device = device_for(backend)
    draws = token_mismatches = filter_mismatches = 0
    for case, (rows, vocab, dtype) in enumerate(_cases(backend)):
        logits = random_logits(rows, vocab, seed=case, dtype=dtype, device=device)
        seeds = torch.arange(rows, device=device) * 7919 + case
        mixes = [dict(zip(("temperature", "top_k", "top_p", "min_p"), mix)) for mix in MIXES]
        mixes.append(per_row_parameters(rows, seed=case, device=device))
        if _interpreted(backend):
            mixes = mixes[1:3] + mixes[-1:]
        for filters in mixes:
            tokens, logprobs = draw(backend, logits, seeds, offset=case, **filters)
            expected_tokens, expected_logprobs = draw("ref", logits, seeds, offset=case, **filters)
            same = tokens == expected_tokens
            draws += rows
            token_mismatches += int((~same).sum())
            assert_close_across_compilations(logprobs[same], expected_logprobs[same])
            kept = torch.isfinite(ops_sampling.filter_logits(logits, backend=backend, **filters))
            expected_kept = torch.isfinite(ops_sampling.filter_logits(logits, backend="ref", **filters))
            filter_mismatches += int((kept != expected_kept).any(dim=1).sum())
    allowed = draws // 1000  # float rounding at a filter boundary or a near-tie of scores (documented)
    assert token_mismatches <= allowed, f"{token_mismatches} of {draws} draws differ from the reference"
    assert filter_mismatches <= allowed, f"{filter_mismatches} of {draws} filtered rows differ from the reference"


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
def test_filtered_values_are_the_tempered_logits(backend):
    device = device_for(backend)
    logits = random_logits(4, 1000, seed=8, dtype=torch.bfloat16, device=device)
    filters = dict(temperature=0.7, top_k=30, top_p=0.8)
    actual = ops_sampling.filter_logits(logits, backend=backend, **filters)
    expected = ops_sampling.filter_logits(logits, backend="ref", **filters)
    assert actual.dtype == torch.float32 and actual.is_contiguous()
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("backend", backend_params())
def test_batch_invariance(backend):
    """A row's token depends on its own logits, parameters, seed and offset only."""
    device = device_for(backend)
    rows = 9
    logits = random_logits(rows, 1000, seed=9, device=device)
    params = per_row_parameters(rows, seed=10, device=device)
    seeds = torch.arange(rows, device=device) * 31 + 5
    offsets = torch.arange(rows, device=device) + 100
    tokens, logprobs = draw(backend, logits, seeds, offsets, **params)

    def subset(index):
        index = torch.as_tensor(index, device=device)
        return draw(backend, logits[index], seeds[index], offsets[index],
                    **{name: value[index] for name, value in params.items()})

    permutation = torch.randperm(rows, generator=torch.Generator().manual_seed(0)).tolist()
    for index in (permutation, [4], [0, 8], list(range(3, 9))):
        sub_tokens, sub_logprobs = subset(index)
        assert torch.equal(sub_tokens, tokens[index]), f"rows {index}"
        assert torch.equal(sub_logprobs, logprobs[index]), f"rows {index}"


# Each case makes its filters change the distribution: over 64 tokens (logits N(0, 2^2)), a temperature
# of 1.3 in place of 1.5, or a min-p 1.6x too large, moves it by 0.08 to 0.14 in total variation, which
# the chi-square test of 10000 draws rejects at a p-value below 1e-40 (its false-alarm rate: 1e-6). The
# cosine similarity > 0.99 that this test used to check accepts the wrong temperature (0.994).
DISTRIBUTION_CASES = [dict(), dict(temperature=1.5), dict(temperature=1.5, top_k=20, top_p=0.9, min_p=0.1)]


@pytest.mark.transformers
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("filters", DISTRIBUTION_CASES, ids=str)
def test_draws_follow_transformers_distribution(backend, filters):
    """Many draws of one row (one offset each) follow softmax of transformers' warped logits, by a
    chi-square test sized to the number of draws (tests/tolerances.py)."""
    if _interpreted(backend) and filters:
        pytest.skip("too slow in Triton's interpreter (a program per draw); test_backend_matches_reference "
                    "checks Triton's filtered draws token for token")
    device = device_for(backend)
    # The interpreter gets a 5-token row and 200 draws: a smoke test; the other backends are the real one.
    vocab, draws = (5, 200) if _interpreted(backend) else (64, 10_000)
    row = random_logits(1, vocab, seed=12, scale=2.0)
    settings = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) | filters
    probs = transformers_filter(row, *settings.values()).softmax(-1)[0]
    tokens = ops_sampling.sample(row.to(device).repeat(draws, 1), seed=torch.full((draws,), 77, device=device),
                                 offset=torch.arange(draws, device=device), backend=backend, **filters)
    assert_draws_follow(tokens.cpu(), probs)


@pytest.mark.transformers
@pytest.mark.parametrize("backend", backend_params())
def test_logprobs_are_log_softmax_of_filtered_logits(backend):
    device = device_for(backend)
    logits = random_logits(8, 300, seed=13, device=device)
    tokens, logprobs = draw(backend, logits, 5, temperature=1.2, top_k=25, top_p=0.85, min_p=0.01)
    expected = transformers_filter(logits.cpu(), 1.2, 25, 0.85, 0.01).log_softmax(-1)
    assert_close_across_compilations(logprobs.cpu(), expected.gather(1, tokens.cpu()[:, None])[:, 0])
    only_tokens = ops_sampling.sample(logits, seed=5, temperature=1.2, top_k=25, top_p=0.85, min_p=0.01,
                                      backend=backend)
    assert torch.equal(only_tokens, tokens)


# ---- edge cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_params())
def test_filters_that_leave_only_the_top(backend):
    device = device_for(backend)
    logits = random_logits(6, 257, seed=14, device=device)
    logits[2, 10] = logits[2, 200] = logits[2].max() + 1  # a tie for the max
    argmax = logits.argmax(dim=1)
    assert argmax[2] == 10
    # The order keeps the lowest index first: one token is left, the lowest of a tie.
    for filters in (dict(top_p=1e-9), dict(temperature=0.0), dict(temperature=0.0, top_k=5, top_p=0.5)):
        tokens, logprobs = draw(backend, logits, 3, **filters)
        assert torch.equal(tokens, argmax), filters
        assert torch.equal(logprobs, torch.zeros_like(logprobs)), filters
    # top-k keeps ties with the k-th value and min-p ties with the max: row 2 keeps both of its tied tokens.
    for filters in (dict(top_k=1), dict(min_p=1.0)):
        tokens, logprobs = draw(backend, logits, 3, **filters)
        assert torch.equal(tokens[[0, 1, 3, 4, 5]], argmax[[0, 1, 3, 4, 5]]), filters
        assert int(tokens[2]) in (10, 200), filters
        expected = torch.zeros(6, device=device)
        expected[2] = -math.log(2.0)
        assert_close_across_compilations(logprobs, expected)  # the kernel's float32 log against the float64 one
        kept = torch.isfinite(ops_sampling.filter_logits(logits, backend=backend, **filters))
        assert kept.sum(dim=1).tolist() == [1, 1, 2, 1, 1, 1], filters


@pytest.mark.parametrize("backend", backend_params())
def test_large_top_k_is_no_filter(backend):
    device = device_for(backend)
    logits = random_logits(4, 100, seed=15, device=device)
    expected = draw(backend, logits, 8)
    for top_k in (100, 101, 10 ** 9):
        actual = draw(backend, logits, 8, top_k=top_k)
        assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])


@pytest.mark.parametrize("backend", backend_params())
def test_mixed_greedy_and_sampled_rows(backend):
    device = device_for(backend)
    logits = random_logits(4, 500, seed=16, device=device)
    temperature = torch.tensor([0.0, 1.0, 0.0, 0.5], device=device)
    tokens, logprobs = draw(backend, logits, 21, temperature=temperature, top_k=10)
    assert tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()
    assert logprobs[0] == 0 and logprobs[2] == 0
    sampled = draw(backend, logits[[1, 3]], torch.tensor([22, 24], device=device),
                   temperature=temperature[[1, 3]], top_k=10)
    assert torch.equal(tokens[[1, 3]], sampled[0])


@pytest.mark.parametrize("backend", backend_params())
def test_rows_without_finite_logits(backend):
    device = device_for(backend)
    logits = random_logits(5, 300, seed=17, device=device)
    logits[0] = NEG_INF
    logits[1] = float("nan")
    logits[2] = NEG_INF
    logits[2, 123] = -5.0  # a single finite logit
    logits[3, ::2] = float("nan")
    for filters in (dict(), dict(top_k=3, top_p=0.5), dict(temperature=0.0), dict(min_p=0.5)):
        tokens, logprobs = draw(backend, logits, 1, **filters)
        assert tokens[:3].tolist() == [-1, -1, 123], filters
        assert logprobs[0] == NEG_INF and logprobs[1] == NEG_INF and logprobs[2] == 0
        assert tokens[3] % 2 == 1, "drew a NaN logit"
        assert 0 <= tokens[4] < 300
        filtered = ops_sampling.filter_logits(logits, backend=backend, **filters)
        assert bool(torch.isneginf(filtered[:2]).all())
        assert torch.isfinite(filtered[2]).nonzero().flatten().tolist() == [123]


@pytest.mark.parametrize("backend", backend_params())
def test_empty_shapes(backend):
    device = device_for(backend)
    tokens, logprobs = draw(backend, torch.empty(3, 0, device=device), 0)
    assert tokens.tolist() == [-1, -1, -1] and bool(torch.isneginf(logprobs).all())
    tokens, logprobs = draw(backend, torch.empty(0, 10, device=device), 0)
    assert tokens.shape == (0,) and logprobs.shape == (0,)
    assert ops_sampling.filter_logits(torch.empty(0, 10, device=device), backend=backend).shape == (0, 10)


@pytest.mark.parametrize("backend", backend_params())
def test_seeds_and_offsets(backend):
    device = device_for(backend)
    logits = random_logits(6, 400, seed=18, device=device)
    rows = torch.arange(6, device=device)
    scalar = ops_sampling.sample(logits, seed=1000, offset=4, backend=backend)
    assert torch.equal(scalar, ops_sampling.sample(logits, seed=1000 + rows, offset=torch.full_like(rows, 4),
                                                   backend=backend))
    assert torch.equal(scalar, ops_sampling.sample(logits, seed=torch.tensor(1000, device=device),
                                                   offset=torch.tensor(4, device=device), backend=backend))
    # seeds and offsets are 64-bit words: a scalar seed wraps modulo 2**64.
    wrapped = ops_sampling.sample(logits, seed=2 ** 64 - 3, backend=backend)
    assert torch.equal(wrapped, ops_sampling.sample(logits, seed=rows - 3, backend=backend))
    # Each offset is a fresh draw: over 8 offsets a flat row must not always give the same token.
    flat = torch.zeros(1, 400, device=device)
    assert len({int(ops_sampling.sample(flat, seed=5, offset=o, backend=backend)) for o in range(8)}) > 1


# Offsets and seeds whose high 32 bits are set, some read as uint64 >= 2**63 (negative int64).
WIDE_COUNTERS = torch.tensor([2 ** 32, 2 ** 32 + 1, 2 ** 33 + 5, 2 ** 40 + 7, 2 ** 62 + 3, 2 ** 63 - 1, -1, -(2 ** 62)])
LOW_32_BITS = 0xFFFFFFFF


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
@pytest.mark.parametrize("counter", ["offset", "seed"])
def test_counters_beyond_32_bits_match_reference(backend, counter):
    """Seeds and offsets are 64-bit words: every backend reads their high halves as the reference does."""
    device = device_for(backend)
    rows = WIDE_COUNTERS.shape[0]
    # Flat logits: the token is the argmax of the noise alone, a fresh one for every counter.
    logits = torch.zeros(rows, 1000, device=device)
    wide = dict(seed=torch.full((rows,), 1234), offset=torch.full((rows,), 56)) | {counter: WIDE_COUNTERS}
    truncated = wide | {counter: WIDE_COUNTERS & LOW_32_BITS}

    def tokens(counters, backend):
        return ops_sampling.sample(logits, **{name: value.to(device) for name, value in counters.items()},
                                   backend=backend)

    expected = tokens(wide, "ref")
    # The high halves matter: a backend that dropped them would draw other tokens in most rows.
    assert int((expected != tokens(truncated, "ref")).sum()) >= rows - 1
    assert torch.equal(tokens(wide, backend), expected)


def tied_rows(device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of exactly tied tokens (the rest -inf) whose ascending cumulative probabilities hit
    ``1 - top_p`` exactly (powers of two, exact in float32), with the per-row ``top_p``."""
    vocab = 64
    logits = torch.full((5, vocab), NEG_INF)
    logits[0, 10:18] = 0.0  # 8 tokens of 1/8: cumulative 1/8, 2/8 <= 1 - 0.75, so 2 go, 6 stay
    logits[1] = 3.0  # 64 tokens of 1/64: 32 go, 32 stay at top_p 0.5
    logits[2, 40:44] = -2.0  # 4 tokens of 1/4: 2 go, 2 stay at top_p 0.5
    logits[3, 7] = logits[3, 50] = 1.0  # 2 tokens of 1/2: 1 goes, 1 stays at top_p 0.5
    logits[4, 20:24] = 0.5  # 4 tokens of 1/4: 1 goes, 3 stay at top_p 0.75
    top_p = torch.tensor([0.75, 0.5, 0.5, 0.5, 0.75], dtype=torch.float64)
    return logits.to(device), top_p.to(device)


@pytest.mark.transformers
def test_reference_top_p_boundary_on_tied_tokens_is_transformers():
    """transformers removes a token whose ascending cumulative probability is <= 1 - top_p (so the
    token exactly on the boundary goes); among tied tokens the reference keeps the lowest indices."""
    logits, top_p = tied_rows("cpu")
    kept = torch.isfinite(ref_sampling.filter_logits(logits, top_p=top_p))
    assert kept.sum(dim=1).tolist() == [6, 32, 2, 1, 3]
    for row in range(logits.shape[0]):
        expected = transformers_filter(logits[row:row + 1], 1.0, 0, float(top_p[row]), 0.0)
        assert int(torch.isfinite(expected).sum()) == int(kept[row].sum()), f"row {row}"
        tied = torch.isfinite(logits[row]).nonzero().flatten()
        assert kept[row].nonzero().flatten().tolist() == tied[:int(kept[row].sum())].tolist(), f"row {row}"


@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
def test_top_p_boundary_on_tied_tokens_matches_reference(backend):
    device = device_for(backend)
    logits, top_p = tied_rows(device)
    for temperature in (1.0, 0.5):
        filters = dict(temperature=temperature, top_p=top_p)
        kept = torch.isfinite(ops_sampling.filter_logits(logits, backend=backend, **filters))
        assert torch.equal(kept, torch.isfinite(ops_sampling.filter_logits(logits, backend="ref", **filters)))
        for offset in range(2 if _interpreted(backend) else 8):
            tokens, logprobs = draw(backend, logits, 99, offset, **filters)
            expected_tokens, expected_logprobs = draw("ref", logits, 99, offset, **filters)
            assert torch.equal(tokens, expected_tokens), f"temperature {temperature}, offset {offset}"
            assert_close_across_compilations(logprobs, expected_logprobs)


@pytest.mark.parametrize("backend", backend_params())
def test_prepared_sampler_draws_what_sample_draws(backend):
    """ops.Sampler (parameters validated once, for decode loops) is ops.sample, call for call."""
    device = device_for(backend)
    logits = random_logits(8, 300, seed=22, device=device)
    filters = per_row_parameters(8, seed=23, device=device)
    sampler = ops_sampling.Sampler(8, device, seed=77, backend=backend, **filters)
    assert sampler.backend == backend
    for offset in range(3):
        expected = draw(backend, logits, 77, offset=offset, **filters)
        actual = sampler(logits, offset, return_logprobs=True)
        assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
        assert torch.equal(sampler(logits, torch.tensor(offset, device=device)), expected[0])


@pytest.mark.parametrize("logits,error", [
    (torch.zeros(3, 10), ValueError),
    (torch.zeros(4), ValueError),
    (torch.zeros(4, 10, dtype=torch.int64), TypeError),
    (torch.zeros(10, 4).t(), ValueError),
])
def test_prepared_sampler_refuses_logits_it_was_not_built_for(logits, error):
    sampler = ops_sampling.Sampler(4, "cpu", seed=0, top_k=3)
    with pytest.raises(error, match="logits"):
        sampler(logits, 0)
    with pytest.raises(ValueError, match="offset"):
        sampler(torch.zeros(4, 10), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="rows"):
        ops_sampling.Sampler(-1, "cpu", seed=0)
    with pytest.raises(ValueError, match="top_p"):
        ops_sampling.Sampler(4, "cpu", seed=0, top_p=2.0)


# ---- validation, custom op, compile ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,name", [
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_k=torch.ones(4)), TypeError, "top_k"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=torch.tensor([1.0, float("nan"), 1.0, 1.0])), ValueError, "temperature"),
    (dict(temperature=torch.ones(3)), ValueError, "temperature"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=torch.ones(4, dtype=torch.int32)), TypeError, "seed"),
    (dict(seed=torch.ones(3, dtype=torch.int64)), ValueError, "seed"),
    (dict(seed=2 ** 64), ValueError, "seed"),
    (dict(offset=torch.zeros(2, 2, dtype=torch.int64)), ValueError, "offset"),
    (dict(backend="gpu"), ValueError, "backend"),
])
def test_invalid_arguments_name_the_argument(kwargs, error, name):
    arguments = dict(seed=0) | kwargs
    with pytest.raises(error, match=name):
        ops_sampling.sample(torch.zeros(4, 10), **arguments)


@pytest.mark.parametrize("logits,error", [
    (torch.zeros(10), ValueError),
    (torch.zeros(4, 10, dtype=torch.float64), TypeError),
    (torch.zeros(10, 4).t(), ValueError),
    ([[0.0, 1.0]], TypeError),
])
def test_invalid_logits(logits, error):
    with pytest.raises(error, match="logits"):
        ops_sampling.sample(logits, seed=0)
    with pytest.raises(error, match="logits"):
        ops_sampling.filter_logits(logits)


def test_strided_rows_are_read_correctly():
    """Rows a stride apart (a slice of a wider buffer) give the same result as a contiguous copy."""
    backend = "cpu" if _ext.extension_error() is None else "ref"
    wide = random_logits(6, 1500, seed=19)
    view = wide[:, 100:1100]
    assert view.stride() == (1500, 1)
    assert torch.equal(ops_sampling.sample(view, seed=3, top_k=20, backend=backend),
                       ops_sampling.sample(view.contiguous(), seed=3, top_k=20, backend=backend))


# opcheck and compiling ops.sample / ops.filter_logits: tests/ops/test_registry.py, for every op.

@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_prepared_sampler_compiles_fullgraph(backend):
    logits = random_logits(4, 1000, seed=21)
    seeds = torch.arange(4) + 9
    sampler = ops_sampling.Sampler(4, "cpu", temperature=0.7, top_k=50, top_p=0.9, seed=seeds, backend=backend)
    compiled_sampler = torch.compile(lambda logits: sampler(logits, 3, return_logprobs=True), fullgraph=True)
    tokens, logprobs = compiled_sampler(logits)
    expected_tokens, expected_logprobs = sampler(logits, 3, return_logprobs=True)
    assert torch.equal(tokens, expected_tokens)
    if backend == "ref":  # Inductor compiles the reference's torch ops, and reorders their sums
        assert_close_across_compilations(logprobs, expected_logprobs)
    else:  # the compiled graph calls the same C++ kernel
        assert_bit_exact(logprobs, expected_logprobs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", backend_params(("cuda", "triton")))
def test_cuda_graph_replay_draws_fresh_tokens(backend):
    """Seeds and offsets in device memory: a captured graph advances them between replays."""
    logits = random_logits(4, 5000, seed=22, scale=0.5, device="cuda")
    seeds = torch.arange(4, device="cuda") + 100
    offset = torch.zeros(4, dtype=torch.int64, device="cuda")
    params = dict(temperature=torch.full((4,), 0.9, device="cuda"), top_k=torch.full((4,), 200, device="cuda"),
                  top_p=torch.full((4,), 0.95, dtype=torch.float64, device="cuda"))
    ops_sampling.sample(logits, seed=seeds, offset=offset, backend=backend, **params)  # warm up (compile)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = ops_sampling.sample(logits, seed=seeds, offset=offset, backend=backend, **params)
    replayed = []
    for step in range(3):
        offset.fill_(step)
        graph.replay()
        replayed.append(tokens.clone())
        expected = ops_sampling.sample(logits, seed=seeds, offset=step, backend="ref", **params)
        assert torch.equal(replayed[-1], expected)
    assert not all(torch.equal(replayed[0], t) for t in replayed[1:])
