"""turbogen.ops.verify on every backend against turbogen.ref.verify, and turbogen.ref.verify against its
definition (docs/design.md, "Contract extensions"): coupled mode is ops.sample at offset + i position by
position; rejection mode is distribution-exact with acceptance sum(min(p, q))."""

from __future__ import annotations

import pytest
import torch

from turbogen import ops
from turbogen.ref import sampling as ref_sampling

from conftest import backend_params, device_for
from test_sampling import per_row_parameters

NEG_INF = float("-inf")

# (temperature, top_k, top_p, min_p), as tests/ops/test_sampling.py mixes them.
MIXES = [
    dict(),
    dict(temperature=0.7, top_k=50, top_p=0.9),
    dict(temperature=1.3, top_p=0.8, min_p=0.05),
    dict(temperature=0.5, top_k=5, min_p=0.2),
    dict(temperature=0.0),
]


def _interpreted(backend: str) -> bool:
    return backend == "triton" and not torch.cuda.is_available()


def random_logits(rows: int, positions: int, vocab: int, seed: int, scale: float = 3.0, dtype=torch.float32,
                  device="cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, positions, vocab, generator=generator) * scale).to(dtype).to(device)


def target_tokens(logits, seed, offset, **filters) -> torch.Tensor:
    """int64 [rows, k + 1]: ops.sample (ref) of every position at offset + i: coupled mode's target."""
    rows, positions, _ = logits.shape
    offsets = torch.as_tensor(offset, device=logits.device).reshape(-1).expand(rows)
    if seed is None:
        filters = dict(filters, temperature=0.0)
        seed = 0
    return torch.stack([ops.sample(logits[:, i].contiguous(), seed=seed, offset=offsets + i, backend="ref",
                                   **filters) for i in range(positions)], dim=1)


def drafts_for(target: torch.Tensor, vocab: int, seed: int) -> torch.Tensor:
    """Drafts that follow ``target`` for a random number of positions per row, then diverge: a wrong token,
    no draft (-1, other negatives), an id >= vocab, or nothing (the row accepts everything)."""
    generator = torch.Generator().manual_seed(seed)
    rows, positions = target.shape
    k = positions - 1
    drafts = target[:, :k].clone().cpu()
    for r in range(rows):
        if k == 0:
            break
        first_wrong = int(torch.randint(0, k + 1, (), generator=generator))
        if first_wrong == k:
            continue
        kind = r % 4
        wrong = [(int(drafts[r, first_wrong]) + 1) % vocab, -1, vocab + r, -7 - r][kind]
        drafts[r, first_wrong] = wrong
        # Later drafts are noise: never read past the first rejection.
        drafts[r, first_wrong + 1:] = torch.randint(-1, vocab, (k - first_wrong - 1,), generator=generator)
    return drafts.to(target.device)


def draft_distribution(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """float32 [rows, k, vocab]: a draft's q near the target's distribution (so drafts get accepted), with
    mass on every token."""
    generator = torch.Generator().manual_seed(seed)
    rows, positions, vocab = logits.shape
    noise = torch.randn(rows, positions - 1, vocab, generator=generator).to(logits.device)
    return torch.softmax(logits[:, :-1].float() * 0.8 + noise, dim=-1).contiguous()


def sample_drafts(q: torch.Tensor, seed: int) -> torch.Tensor:
    """int64 [rows, k]: one draw per position from q (torch's generator: independent of the contract's noise)."""
    rows, k, vocab = q.shape
    if k == 0:
        return torch.empty(rows, 0, dtype=torch.int64, device=q.device)
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(q.reshape(-1, vocab).cpu(), 1, generator=generator).reshape(rows, k).to(q.device)


# ---- the reference is its definition ----------------------------------------------------------------

@pytest.mark.parametrize("filters", MIXES + ["per_row"], ids=str)
@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
def test_reference_coupled_is_sample_at_offset_plus_i(filters, greedy):
    rows, k, vocab = 12, 4, 300
    logits = random_logits(rows, k + 1, vocab, seed=1)
    filters = per_row_parameters(rows, seed=2) if filters == "per_row" else filters
    seed = None if greedy else torch.arange(rows) * 13 + 5
    offset = torch.arange(rows) + 40
    target = target_tokens(logits, seed, offset, **filters)
    drafts = drafts_for(target, vocab, seed=3)
    accepted, tokens = ops.verify(logits, drafts, seed=seed, offset=offset, backend="ref", **filters)
    for r in range(rows):
        expected_accepted = 0
        while expected_accepted < k and drafts[r, expected_accepted] == target[r, expected_accepted]:
            expected_accepted += 1
        assert accepted[r] == expected_accepted
        assert tokens[r, :expected_accepted + 1].tolist() == target[r, :expected_accepted + 1].tolist()
        assert (tokens[r, expected_accepted + 1:] == -1).all()


def test_reference_greedy_is_the_argmax_and_self_speculation_accepts_everything():
    logits = random_logits(5, 4, 100, seed=4)
    argmax = logits.argmax(dim=-1)
    accepted, tokens = ops.verify(logits, argmax[:, :3], backend="ref")
    assert accepted.tolist() == [3] * 5 and torch.equal(tokens, argmax)
    seeds = torch.arange(5) + 9
    sampled = target_tokens(logits, seeds, 7, top_k=10)
    accepted, tokens = ops.verify(logits, sampled[:, :3], seed=seeds, offset=7, top_k=10, backend="ref")
    assert accepted.tolist() == [3] * 5 and torch.equal(tokens, sampled)


def test_reference_rejection_with_greedy_rows_is_coupled_greedy():
    """A greedy target is a point mass: the argmax draft is accepted (p / q >= 1 > u), any other rejected
    (p = 0) and corrected to the argmax."""
    logits = random_logits(6, 4, 50, seed=5)
    q = draft_distribution(logits, seed=6)
    drafts = drafts_for(logits.argmax(dim=-1), 50, seed=7)
    coupled = ops.verify(logits, drafts, backend="ref")
    for seed in (None, torch.arange(6) + 1):
        rejection = ops.verify(logits, drafts, draft_probs=q, mode="rejection", seed=seed, temperature=0.0,
                               backend="ref")
        assert torch.equal(rejection.accepted, coupled.accepted) and torch.equal(rejection.tokens, coupled.tokens)


def _rejection_draws(backend: str, draws: int, chunk: int, k: int):
    """``draws`` verifications of k drafts sampled from q, at one pair of target / draft distributions;
    returns (p [k, vocab], q [k, vocab], accepted [draws], tokens [draws, k + 1])."""
    vocab = 8
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(1, k + 1, vocab, generator=generator) * 1.5
    filters = dict(temperature=0.9, top_k=6)
    p = ref_sampling.filter_logits(logits[0], **filters).softmax(dim=-1)[:k]
    q = torch.softmax(torch.randn(k, vocab, generator=generator), dim=-1)
    accepted, tokens = [], []
    for start in range(0, draws, chunk):
        rows = min(chunk, draws - start)
        drafts = torch.multinomial(q, rows, replacement=True, generator=generator).t().contiguous()
        result = ops.verify(logits.expand(rows, k + 1, vocab), drafts, draft_probs=q.expand(rows, k, vocab),
                            mode="rejection", seed=torch.arange(start, start + rows) * 7 + 3,
                            offset=torch.arange(start, start + rows) % 5, backend=backend, **filters)
        accepted.append(result.accepted)
        tokens.append(result.tokens)
    return p, q, torch.cat(accepted), torch.cat(tokens)


def _total_variation(tokens: torch.Tensor, p: torch.Tensor) -> float:
    frequencies = torch.bincount(tokens, minlength=p.shape[0]).double() / tokens.shape[0]
    return 0.5 * float((frequencies - p.double()).abs().sum())


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_rejection_mode_is_distribution_exact_with_maximal_acceptance(backend):
    """10^6 verifications (vLLM's rejection-sampler test style): the first emitted token follows the target's
    p (total variation < 0.01, where a wrong residual or acceptance rule is off by 0.05 and more); the draft is
    accepted with probability sum(min(p, q)) (the most any scheme can accept; binomial sd 0.0005 here); and
    the second token, given the first draft was accepted, follows the second position's p. The reference
    (Philox in int64 torch arithmetic: about a minute per million rows of two drafts on this CPU) verifies one
    draft per row; the cpu kernel, which equals it token for token (test_backend_matches_reference), two."""
    k = 1 if backend == "ref" else 2
    p, q, accepted, tokens = _rejection_draws(backend, 1_000_000, chunk=250_000, k=k)
    assert bool((tokens[:, 0] >= 0).all())
    assert _total_variation(tokens[:, 0], p[0]) < 0.01
    acceptance = float((accepted >= 1).double().mean())
    assert abs(acceptance - float(torch.minimum(p[0], q[0]).sum())) < 0.003
    if k > 1:
        second = tokens[accepted >= 1, 1]
        assert _total_variation(second, p[1]) < 0.01
    # Tokens the filters remove (p = 0) are never emitted, though q proposes them.
    assert not bool(torch.isin(tokens[:, 0], (p[0] == 0).nonzero().flatten()).any())


# ---- every backend equals the reference ------------------------------------------------------------

def _cases(backend: str):
    """(rows, k, vocab, dtype) per backend: Triton's interpreter costs milliseconds per program."""
    if _interpreted(backend):
        return [(1, 0, 17, torch.float32), (3, 2, 300, torch.bfloat16), (2, 3, 1000, torch.float16)]
    shapes = [(1, 0, 17), (1, 4, 1000), (5, 4, 1000), (9, 2, 300)]
    # The large vocabulary (more than one CPU chunk per row) once: its reference draws are the slow part.
    return [(rows, k, vocab, dtype) for rows, k, vocab in shapes for dtype in (torch.float32, torch.float16,
                                                                                torch.bfloat16)] + [(3, 8, 32003, torch.float32)]


def _assert_same(actual, expected, context):
    assert actual.accepted.dtype == torch.int64 and actual.tokens.dtype == torch.int64
    assert torch.equal(actual.accepted.cpu(), expected.accepted.cpu()), context
    assert torch.equal(actual.tokens.cpu(), expected.tokens.cpu()), context


@pytest.mark.parametrize("mode", ["coupled", "rejection"])
@pytest.mark.parametrize("backend", backend_params(("cpu", "triton", "cuda")))
def test_backend_matches_reference(backend, mode):
    device = device_for(backend)
    for case, (rows, k, vocab, dtype) in enumerate(_cases(backend)):
        logits = random_logits(rows, k + 1, vocab, seed=case, dtype=dtype, device=device)
        seeds = torch.arange(rows, device=device) * 7919 + case
        offsets = torch.arange(rows, device=device) * 3 + case
        mixes = [dict(seed=seeds, **mix) for mix in MIXES] + [dict(seed=None)]
        mixes.append(dict(seed=seeds, **per_row_parameters(rows, seed=case, device=device)))
        if _interpreted(backend):
            mixes = [mixes[1], mixes[-2], mixes[-1]]
        for filters in mixes:
            target = target_tokens(logits, filters["seed"], offsets,
                                   **{n: v for n, v in filters.items() if n != "seed"})
            q = draft_distribution(logits, seed=case) if mode == "rejection" else None
            drafts = drafts_for(target, vocab, seed=case) if mode == "coupled" else sample_drafts(q, seed=case)
            arguments = dict(draft_probs=q, mode=mode, offset=offsets, **filters)
            expected = ops.verify(logits, drafts, backend="ref", **arguments)
            _assert_same(ops.verify(logits, drafts, backend=backend, **arguments), expected,
                         (rows, k, vocab, dtype, filters))


@pytest.mark.parametrize("backend", backend_params())
def test_coupled_tokens_are_sample_position_by_position(backend):
    """The emitted tokens are ops.sample's on the same backend at offset + i (non-speculative decoding)."""
    device = device_for(backend)
    rows, k, vocab = 6, 3, 500
    logits = random_logits(rows, k + 1, vocab, seed=21, device=device)
    seeds, offsets = torch.arange(rows, device=device) + 100, torch.arange(rows, device=device) * 5
    filters = dict(temperature=0.8, top_k=40, top_p=0.95)
    sampled = torch.stack([ops.sample(logits[:, i].contiguous(), seed=seeds, offset=offsets + i, backend=backend,
                                      **filters) for i in range(k + 1)], dim=1)
    drafts = drafts_for(sampled, vocab, seed=22)
    accepted, tokens = ops.verify(logits, drafts, seed=seeds, offset=offsets, backend=backend, **filters)
    for r in range(rows):
        n = int(accepted[r])
        assert tokens[r, :n + 1].tolist() == sampled[r, :n + 1].tolist()
        assert n == k or drafts[r, n] != sampled[r, n]


@pytest.mark.parametrize("mode", ["coupled", "rejection"])
@pytest.mark.parametrize("backend", backend_params())
def test_rows_without_finite_logits_emit_minus_one(backend, mode):
    device = device_for(backend)
    vocab = 64
    logits = random_logits(4, 3, vocab, seed=23, device=device)
    logits[0, 0] = NEG_INF          # nothing at position 0: -1 at once
    logits[1, 1] = float("nan")     # NaN reads as -inf: the row stops at position 1
    logits[2] = NEG_INF
    logits[3, :, 5] = 50.0          # token 5 everywhere: a row that accepts every draft 5
    drafts = torch.tensor([[3, 4], [5, 5], [-1, 2], [5, 5]], device=device)
    q = torch.full((4, 2, vocab), 1.0 / vocab, device=device) if mode == "rejection" else None
    for seed in (None, torch.arange(4, device=device) + 1):
        accepted, tokens = ops.verify(logits, drafts, draft_probs=q, mode=mode, seed=seed, backend=backend)
        assert tokens[0].tolist() == [-1, -1, -1] and tokens[2].tolist() == [-1, -1, -1]
        assert accepted[0] == 0 and accepted[2] == 0
        assert tokens[3].tolist() == [5, 5, 5] and accepted[3] == 2
        if int(accepted[1]) == 1:
            assert tokens[1].tolist() == [5, -1, -1]


@pytest.mark.parametrize("backend", backend_params())
def test_k_zero_is_plain_sampling(backend):
    device = device_for(backend)
    logits = random_logits(3, 1, 200, seed=24, device=device)
    empty = torch.empty(3, 0, dtype=torch.int64, device=device)
    for mode, probs in (("coupled", None), ("rejection", torch.empty(3, 0, 200, device=device))):
        accepted, tokens = ops.verify(logits, empty, draft_probs=probs, mode=mode, seed=9, offset=4, top_k=20,
                                      backend=backend)
        assert accepted.tolist() == [0, 0, 0]
        assert torch.equal(tokens[:, 0], ops.sample(logits[:, 0], seed=9, offset=4, top_k=20, backend=backend))


@pytest.mark.parametrize("backend", backend_params())
def test_scalar_parameters_are_every_rows_parameters(backend):
    device = device_for(backend)
    rows, k, vocab = 4, 2, 300
    logits = random_logits(rows, k + 1, vocab, seed=25, device=device)
    drafts = drafts_for(target_tokens(logits, 50, 6, top_k=30, top_p=0.9), vocab, seed=26)
    scalar = ops.verify(logits, drafts, seed=50, offset=6, temperature=0.9, top_k=30, top_p=0.9, backend=backend)
    tensors = ops.verify(logits, drafts, seed=torch.arange(rows, device=device) + 50,
                         offset=torch.full((rows,), 6, device=device),
                         temperature=torch.full((rows,), 0.9, device=device),
                         top_k=torch.full((rows,), 30, device=device),
                         top_p=torch.full((rows,), 0.9, dtype=torch.float64, device=device), backend=backend)
    _assert_same(tensors, scalar, "per-row == scalar")


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_batch_invariance_and_strided_logits(backend):
    """A row's result depends on its own inputs only; a non-contiguous view reads as its copy."""
    rows, k, vocab = 7, 3, 400
    wide = random_logits(rows, k + 3, vocab + 10, seed=27)
    logits = wide[:, 1:k + 2, 5:vocab + 5]
    seeds, offsets = torch.arange(rows) * 3 + 1, torch.arange(rows) + 2
    q = draft_distribution(logits.contiguous(), seed=28)
    drafts = sample_drafts(q, seed=29)
    for mode, probs in (("coupled", None), ("rejection", q)):
        whole = ops.verify(logits, drafts, draft_probs=probs, mode=mode, seed=seeds, offset=offsets, top_p=0.9,
                           backend=backend)
        _assert_same(whole, ops.verify(logits.contiguous(), drafts, draft_probs=probs, mode=mode, seed=seeds,
                                       offset=offsets, top_p=0.9, backend=backend), "strided")
        for index in ([3], [6, 0, 2]):
            part = ops.verify(logits[index], drafts[index], draft_probs=None if probs is None else probs[index],
                              mode=mode, seed=seeds[index], offset=offsets[index], top_p=0.9, backend=backend)
            assert torch.equal(part.accepted, whole.accepted[index]) and torch.equal(part.tokens, whole.tokens[index])


# ---- validation, compile, CUDA graphs --------------------------------------------------------------

def _valid_arguments():
    return dict(target_logits=torch.zeros(2, 3, 10), draft_tokens=torch.zeros(2, 2, dtype=torch.int64), seed=0)


@pytest.mark.parametrize("overrides,error,name", [
    (dict(target_logits=torch.zeros(2, 10)), ValueError, "target_logits"),
    (dict(target_logits=torch.zeros(2, 3, 10, dtype=torch.float64)), TypeError, "target_logits"),
    (dict(target_logits=torch.zeros(2, 3, 0)), ValueError, "target_logits"),
    (dict(target_logits=torch.zeros(2, 0, 10)), ValueError, "target_logits"),
    (dict(target_logits=torch.zeros(2, 10, 3).transpose(1, 2)), ValueError, "target_logits"),
    (dict(target_logits=[[[0.0]]]), TypeError, "target_logits"),
    (dict(draft_tokens=torch.zeros(2, 2, dtype=torch.int32)), TypeError, "draft_tokens"),
    (dict(draft_tokens=torch.zeros(2, 3, dtype=torch.int64)), ValueError, "draft_tokens"),
    (dict(draft_tokens=torch.zeros(3, 2, dtype=torch.int64)), ValueError, "draft_tokens"),
    (dict(mode="greedy"), ValueError, "mode"),
    (dict(draft_probs=torch.zeros(2, 2, 10)), ValueError, "draft_probs"),
    (dict(mode="rejection"), ValueError, "draft_probs"),
    (dict(mode="rejection", draft_probs=torch.zeros(2, 2, 10, dtype=torch.float16)), TypeError, "draft_probs"),
    (dict(mode="rejection", draft_probs=torch.zeros(2, 2, 9)), ValueError, "draft_probs"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=torch.ones(3)), ValueError, "temperature"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=torch.ones(3, dtype=torch.int64)), ValueError, "seed"),
    (dict(offset=torch.zeros(2, 2, dtype=torch.int64)), ValueError, "offset"),
    (dict(offset=2 ** 64), ValueError, "offset"),
    (dict(backend="gpu"), ValueError, "backend"),
])
def test_invalid_arguments_name_the_argument(overrides, error, name):
    arguments = _valid_arguments() | overrides
    with pytest.raises(error, match=name):
        ops.verify(arguments.pop("target_logits"), arguments.pop("draft_tokens"), **arguments)


# opcheck and compiling ops.verify through its public function: tests/ops/test_registry.py, for every op.

@pytest.mark.parametrize("mode", ["coupled", "rejection"])
@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_verify_step_compiles_fullgraph(backend, mode):
    """A compiled speculative step: verify with tensor seeds and offsets, then the offsets advance by the
    tokens emitted."""
    torch.compiler.reset()
    rows, k, vocab = 3, 2, 100
    logits = random_logits(rows, k + 1, vocab, seed=30)
    seeds = torch.arange(rows) + 1
    q = draft_distribution(logits, seed=32) if mode == "rejection" else None

    def step(logits, drafts, offsets):
        accepted, tokens = ops.verify(logits, drafts, draft_probs=q, mode=mode, seed=seeds, offset=offsets,
                                      temperature=0.8, top_k=20, backend=backend)
        return accepted, tokens, offsets + accepted + 1

    drafts = drafts_for(target_tokens(logits, seeds, 4, temperature=0.8, top_k=20), vocab, seed=31)
    offsets = torch.full((rows,), 4)
    compiled = torch.compile(step, fullgraph=True)(logits, drafts, offsets)
    expected = step(logits, drafts, offsets)
    for actual, wanted in zip(compiled, expected):
        assert torch.equal(actual, wanted)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", backend_params(("cuda", "triton")))
def test_cuda_graph_replay_verifies_fresh_offsets(backend):
    rows, k, vocab = 4, 3, 5000
    logits = random_logits(rows, k + 1, vocab, seed=32, scale=0.5, device="cuda")
    seeds = torch.arange(rows, device="cuda") + 100
    offset = torch.zeros(rows, dtype=torch.int64, device="cuda")
    drafts = torch.randint(0, vocab, (rows, k), device="cuda")
    params = dict(temperature=torch.full((rows,), 0.9, device="cuda"), top_k=torch.full((rows,), 200, device="cuda"))
    ops.verify(logits, drafts, seed=seeds, offset=offset, backend=backend, **params)  # warm up (compile)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = ops.verify(logits, drafts, seed=seeds, offset=offset, backend=backend, **params)
    for step in range(3):
        offset.fill_(step * 10)
        graph.replay()
        expected = ops.verify(logits, drafts, seed=seeds, offset=step * 10, backend="ref", **params)
        _assert_same(result, expected, f"replay {step}")
