"""turbogen.ops.beam_step: the reference against generate()'s torch beam search (BeamSearchState, which equals
transformers 4.57), and every backend against the reference: bit for bit with ``normalized=True``; with
``normalized=False`` integer outputs equal and float outputs within the cross-compilation tolerance (the
log-softmax's sum is reduced in another order)."""

from __future__ import annotations

import itertools

import pytest
import torch

from turbogen import ops, ref
from turbogen.generation.beam_search import BeamSearchParams, BeamSearchState
from turbogen.ops.beam import BEAM_STEP, BeamStep

from conftest import backend_params, device_for
from tolerances import assert_bit_exact, assert_close_across_compilations

NAN = float("nan")
INF = float("inf")
EARLY_STOPPING = (False, True, "never")
LENGTH_PENALTIES = (-0.7, 0.0, 1.5)


def _backends():
    """Every backend but ref, skipped where unavailable or where the op has no launcher for it (yet)."""
    params = []
    for param in backend_params(("cpu", "triton", "cuda")):
        name = param.values[0]
        marks = list(param.marks)
        if name not in BEAM_STEP.backends:
            marks.append(pytest.mark.skip(reason=f"beam_step has no {name} launcher"))
        params.append(pytest.param(name, id=param.id, marks=marks))
    return params


def make_inputs(batch=3, beams=3, vocab=500, num_eos=1, seed=0, first_step=False, dtype=torch.float32):
    """Random inputs in the shapes of a beam-search step: log-probability-like running scores (or the first step's
    0 / -1e9), sorted finished slots, some full, some empty (-1e9), closed rows; EOS ids among each row's likely tokens (so that
    candidates stop) plus, with two ids, one outside the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch * beams, vocab, generator=g) * 3).to(dtype)
    if first_step:
        running = torch.zeros(batch, beams)
        running[:, 1:] = -1e9
    else:
        running = -torch.rand(batch, beams, generator=g).mul(6).sort(dim=1).values.flip(1).contiguous() * 1.0
    filled = torch.randint(0, beams + 1, (batch,), generator=g)
    is_finished = torch.arange(beams)[None, :] < filled[:, None]
    finished = torch.where(is_finished, -torch.rand(batch, beams, generator=g) * 8 - 2, torch.tensor(-1e9))
    finished = finished.sort(dim=1, descending=True).values.contiguous()
    is_finished = is_finished.contiguous()
    # A row is closed (may_improve False) only once it holds num_beams hypotheses, as in a real search (an open
    # slot's -1e9 would tie with a closed row's demoted candidates, a tie transformers' torch.topk leaves open).
    may_improve = (torch.rand(batch, generator=g) < 0.8) | (filled < beams)
    likely = logits.float().argmax(dim=1).unique().tolist()
    eos_ids = [likely[0], vocab + 7][:num_eos] if num_eos < 2 else [likely[0], vocab + 7]
    if num_eos == 2 and len(likely) > 1:
        eos_ids = [likely[1], vocab + 7]
    eos = torch.tensor(eos_ids[:num_eos], dtype=torch.int64)
    return logits, running, finished, is_finished, may_improve, eos


def _call(inputs, backend, device=torch.device("cpu"), **options):
    tensors = [t.to(device) for t in inputs]
    for name in ("seeds", "offsets"):
        if options.get(name) is not None:
            options[name] = options[name].to(device)
    options.setdefault("generated_length", 3)
    options.setdefault("max_generated_length", 9)
    return ops.beam_step(*tensors, backend=backend, **options)


def assert_same_outputs(actual, expected, exact: bool):
    assert len(actual) == len(expected) == 9
    for name, got, want in zip(expected._fields, actual, expected):
        got = got.cpu()
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.is_floating_point():
            (assert_bit_exact if exact else assert_close_across_compilations)(got, want)
        else:
            assert torch.equal(got, want), name


# -- the reference is generate()'s beam search -------------------------------------------------------------

def _state_from(inputs, length_penalty, early_stopping, seeds=None, offset=0, generated_length=3, max_generated=9):
    logits, running, finished, is_finished, may_improve, eos = inputs
    batch, beams = running.shape
    prompt = 2
    params = BeamSearchParams(batch_size=batch, num_beams=beams, vocab_size=logits.shape[1],
                              max_length=prompt + max_generated, prompt_length=prompt, length_penalty=length_penalty,
                              early_stopping=early_stopping, num_eos_tokens=eos.shape[0], do_sample=seeds is not None)
    state = BeamSearchState(torch.zeros(batch * beams, prompt, dtype=torch.int64), params, -1, seeds)
    state.running_scores = running.clone()
    state.scores = finished.clone()
    state.is_finished = is_finished.clone()
    state.may_improve = may_improve.clone()[:, None]
    if seeds is not None:
        state.offsets.fill_(offset)
    return state, prompt + generated_length - 1


@pytest.mark.parametrize("num_eos", [0, 1, 2])
@pytest.mark.parametrize("early_stopping", EARLY_STOPPING)
@pytest.mark.parametrize("length_penalty", [-0.7, 0.0, 1.5])
@pytest.mark.parametrize("sampling", [False, True])
def test_reference_is_the_torch_beam_search(num_eos, early_stopping, length_penalty, sampling):
    """ref.beam_step's outputs are BeamSearchState.candidates + advance's state, bit for bit (normalized log-probs,
    as generate() passes them when it records scores or runs processors)."""
    for seed, all_stop in itertools.product(range(3), (False, True)):
        inputs = make_inputs(num_eos=num_eos, seed=seed, first_step=seed == 0)
        logits, running, finished, is_finished, may_improve, eos = inputs
        log_probs = torch.log_softmax(logits, dim=-1)
        seeds = torch.tensor([11, 1 << 40, 5], dtype=torch.int64) if sampling else None
        state, length = _state_from(inputs, length_penalty, early_stopping, seeds=seeds, offset=4)
        out = _call((log_probs, *inputs[1:]), "ref", normalized=True, length_penalty=length_penalty,
                    early_stopping=early_stopping, all_stop=all_stop, seeds=seeds,
                    offsets=None if seeds is None else torch.full((3,), 4, dtype=torch.int64))
        candidates = state.candidates(log_probs, length)
        stopped = torch.isin(candidates.sequences[:, :, length], eos)
        if all_stop:
            stopped = torch.ones_like(stopped)
        parents = state.advance(candidates, stopped if (num_eos or all_stop) else None)

        assert_bit_exact(out.candidate_scores, candidates.log_probs)
        assert torch.equal(out.candidate_flat % logits.shape[1], candidates.sequences[:, :, length])
        if not all_stop:
            # (When every candidate stops, the search ends and the running beams are never used: their demoted
            # scores all round to -1e9, a tie that torch.topk breaks in no specified order.)
            assert_bit_exact(out.next_scores, state.running_scores)
            flat_parents = out.candidate_flat.gather(1, out.next_source) // logits.shape[1]
            flat_parents = flat_parents + torch.arange(3)[:, None] * 3
            assert torch.equal(flat_parents.reshape(-1), parents)
        assert_bit_exact(out.next_finished_scores, state.scores)
        assert torch.equal(out.next_is_finished, state.is_finished)
        assert torch.equal(out.next_may_improve, state.may_improve[:, 0])
        assert torch.equal(out.row_is_finite, torch.ones(3, dtype=torch.bool))


# -- every backend against the reference ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("num_eos", [0, 1, 2])
@pytest.mark.parametrize("early_stopping", EARLY_STOPPING)
@pytest.mark.parametrize("length_penalty", LENGTH_PENALTIES)
def test_backend_matches_reference(backend, num_eos, early_stopping, length_penalty):
    if backend == "triton" and not (num_eos == EARLY_STOPPING.index(early_stopping) == LENGTH_PENALTIES.index(
            length_penalty)):
        pytest.skip("interpreter time: Triton runs the diagonal of the matrix (every value once), cpu all of it")
    device = device_for(backend)
    for seed, all_stop, normalized, sampling in itertools.product((0, 1), (False, True), (False, True),
                                                                  (False, True)):
        inputs = make_inputs(num_eos=num_eos, seed=seed, first_step=seed == 0)
        if normalized:
            inputs = (torch.log_softmax(inputs[0], dim=-1), *inputs[1:])
        options = dict(normalized=normalized, length_penalty=length_penalty, early_stopping=early_stopping,
                       all_stop=all_stop, generated_length=2 + seed, max_generated_length=7)
        if sampling:
            options.update(seeds=torch.tensor([3, -5, 1 << 62], dtype=torch.int64),
                           offsets=torch.tensor([0, 7, 1 << 33], dtype=torch.int64))
        expected = _call(inputs, "ref", **dict(options))
        actual = _call(inputs, backend, device, **dict(options))
        assert_same_outputs(actual, expected, exact=normalized)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalized", [False, True])
def test_16_bit_logits(backend, dtype, normalized):
    inputs = make_inputs(batch=2, beams=4, vocab=1000, num_eos=1, seed=5, dtype=dtype)
    expected = _call(inputs, "ref", normalized=normalized)
    actual = _call(inputs, backend, device_for(backend), normalized=normalized)
    assert_same_outputs(actual, expected, exact=normalized)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("shape", [(1, 4, 32000), (2, 1, 5), (1, 2, 3), (8, 4, 3001), (3, 5, 64)])
def test_shapes(backend, shape):
    batch, beams, vocab = shape
    for normalized, sampling in itertools.product((False, True), (False, True)):
        inputs = make_inputs(batch=batch, beams=beams, vocab=vocab, num_eos=1, seed=vocab)
        options = dict(normalized=normalized)
        if sampling:
            options.update(seeds=torch.arange(batch, dtype=torch.int64) + 100,
                           offsets=torch.arange(batch, dtype=torch.int64))
        expected = _call(inputs, "ref", **dict(options))
        actual = _call(inputs, backend, device_for(backend), **dict(options))
        assert_same_outputs(actual, expected, exact=normalized)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("normalized", [False, True])
def test_non_finite_rows(backend, normalized):
    """A beam with a NaN, one with +inf, one all -inf, one with some -inf: NaN ranks as -inf, row_is_finite says
    which batch rows could be sampled, and the other rows are unaffected."""
    inputs = list(make_inputs(batch=4, beams=2, vocab=300, num_eos=1, seed=9))
    logits = inputs[0].clone()
    logits[0, 17] = NAN       # batch row 0, beam 0
    logits[2, 5] = INF        # batch row 1, beam 0
    logits[4] = -INF          # batch row 2, beam 0: no finite logit
    logits[6, :250] = -INF    # batch row 3, beam 0: 50 finite logits
    inputs[0] = logits
    for sampling in (False, True):
        options = dict(normalized=normalized)
        if sampling:
            options.update(seeds=torch.arange(4, dtype=torch.int64), offsets=torch.zeros(4, dtype=torch.int64))
        expected = _call(inputs, "ref", **dict(options))
        actual = _call(inputs, backend, device_for(backend), **dict(options))
        assert_same_outputs(actual, expected, exact=normalized)
        # torch's log_softmax makes a row with NaN, +inf or no finite logit all NaN; normalized scores are used as
        # they are, so there only NaN and +inf make the batch row non-finite.
        assert expected.row_is_finite.tolist() == [False, False, normalized, True]


def test_nan_ranks_as_minus_infinity():
    """In the reference, NaN candidates come after every number (and -inf ties to the lower index)."""
    scores = torch.tensor([[0.0, -1.0, -2.0, -3.0], [NAN, -INF, -INF, NAN]])
    running = torch.zeros(1, 2)
    out = ref.beam_step(scores, running, torch.full((1, 2), -1e9), torch.zeros(1, 2, dtype=torch.bool),
                        torch.ones(1, dtype=torch.bool), torch.empty(0, dtype=torch.int64),
                        torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), True, 1, 5, 1.0, 0, False)
    assert out[1].tolist() == [[0, 1, 2, 3]]
    out = ref.beam_step(scores.flip(0), running, torch.full((1, 2), -1e9), torch.zeros(1, 2, dtype=torch.bool),
                        torch.ones(1, dtype=torch.bool), torch.empty(0, dtype=torch.int64),
                        torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), True, 1, 5, 1.0, 0, False)
    assert out[1].tolist() == [[4, 5, 6, 7]] and out[0][0, 0].item() == 0.0


@pytest.mark.parametrize("backend", _backends())
def test_batch_rows_are_independent(backend):
    device = device_for(backend)
    inputs = make_inputs(batch=4, beams=3, vocab=700, num_eos=2, seed=3)
    seeds = torch.tensor([9, 8, 7, 6], dtype=torch.int64)
    offsets = torch.tensor([1, 2, 3, 4], dtype=torch.int64)
    together = _call(inputs, backend, device, seeds=seeds, offsets=offsets)
    for b in range(4):
        logits, running, finished, is_finished, may_improve, eos = inputs
        row = (logits[3 * b : 3 * b + 3], running[b : b + 1], finished[b : b + 1], is_finished[b : b + 1],
               may_improve[b : b + 1], eos)
        alone = _call(row, backend, device, seeds=seeds[b : b + 1], offsets=offsets[b : b + 1])
        for name, a, t in zip(together._fields, alone, together):
            assert torch.equal(a, t[b : b + 1]), (b, name)


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu", "cuda")))
def test_sampling_uses_seed_and_offset_and_leaves_offsets(backend):
    if backend not in BEAM_STEP.backends:
        pytest.skip(f"beam_step has no {backend} launcher")
    device = device_for(backend)
    inputs = make_inputs(batch=2, beams=2, vocab=50, num_eos=0, seed=4)
    inputs = (torch.zeros_like(inputs[0]), *inputs[1:])  # uniform: the noise alone picks the candidates
    seeds = torch.tensor([1, 2], dtype=torch.int64, device=device)
    offsets = torch.tensor([0, 0], dtype=torch.int64, device=device)
    first = _call(inputs, backend, device, seeds=seeds, offsets=offsets)
    assert offsets.tolist() == [0, 0], "the op does not advance the offsets"
    again = _call(inputs, backend, device, seeds=seeds, offsets=offsets)
    assert torch.equal(first.candidate_flat, again.candidate_flat)
    moved = _call(inputs, backend, device, seeds=seeds, offsets=offsets + 1)
    assert not torch.equal(first.candidate_flat, moved.candidate_flat)
    # The draw is the Gumbel-top-k of the contract's noise (ops.gumbel_noise).
    acc = (torch.log_softmax(inputs[0].float(), -1).view(2, 2, 50) + inputs[1][:, :, None]).view(2, 100)
    noise = ops.gumbel_noise(seeds.cpu(), offsets.cpu(), 2, 100)
    assert torch.equal(first.candidate_flat.cpu(), torch.sort(acc + noise, descending=True, stable=True).indices[:, :4])


def test_validation_names_the_argument():
    inputs = make_inputs(batch=2, beams=2, vocab=10, num_eos=1)
    logits, running, finished, is_finished, may_improve, eos = inputs
    kw = dict(generated_length=1, max_generated_length=4)
    cases = [
        (ValueError, "logits", (logits[:3], running, finished, is_finished, may_improve, eos), kw),
        (TypeError, "running_scores", (logits, running.double(), finished, is_finished, may_improve, eos), kw),
        (ValueError, "finished_scores", (logits, running, finished[:1], is_finished, may_improve, eos), kw),
        (TypeError, "is_finished", (logits, running, finished, is_finished.int(), may_improve, eos), kw),
        (ValueError, "may_improve", (logits, running, finished, is_finished, may_improve[None], eos), kw),
        (TypeError, "eos", (logits, running, finished, is_finished, may_improve, eos.int()), kw),
        (ValueError, "generated_length", inputs, dict(kw, generated_length=0)),
        (TypeError, "max_generated_length", inputs, dict(kw, max_generated_length=2.0)),
        (ValueError, "length_penalty", inputs, dict(kw, length_penalty=INF)),
        (ValueError, "early_stopping", inputs, dict(kw, early_stopping="always")),
        (TypeError, "normalized", inputs, dict(kw, normalized=1)),
        (ValueError, "seeds and offsets", inputs, dict(kw, seeds=torch.zeros(2, dtype=torch.int64))),
        (ValueError, "offsets", inputs, dict(kw, seeds=torch.zeros(2, dtype=torch.int64),
                                             offsets=torch.zeros(3, dtype=torch.int64))),
        (ValueError, "columns", (logits[:, :1].contiguous(), *inputs[1:]), kw),
    ]
    for error, name, args, options in cases:
        with pytest.raises(error, match=name):
            ops.beam_step(*args, **options)


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_custom_op_passes_opcheck(backend):
    inputs = make_inputs(batch=2, beams=2, vocab=40, num_eos=1)
    seeds = torch.tensor([1, 2], dtype=torch.int64)
    torch.library.opcheck(torch.ops.turbogen.beam_step.default,
                          (*inputs, seeds, seeds + 3, False, 2, 6, 1.0, 0, False, backend))


def test_reference_compiles_fullgraph():
    torch.compiler.reset()
    inputs = make_inputs(batch=2, beams=2, vocab=64, num_eos=1, seed=2)
    call = lambda logits: ops.beam_step(logits, *inputs[1:], generated_length=2, max_generated_length=5,  # noqa: E731
                                        early_stopping="never", backend="ref")
    expected = call(inputs[0])
    actual = torch.compile(call, fullgraph=True)(inputs[0])
    assert_same_outputs(actual, expected, exact=False)


@pytest.mark.parametrize("sampling", [False, True], ids=["search", "sampling"])
@pytest.mark.parametrize("backend", backend_params(("ref", "cpu", "triton", "cuda")))
def test_prepared_step_equals_the_op(backend, sampling):
    """BeamStep validates the constant arguments once; each step returns exactly what beam_step returns."""
    if backend not in BEAM_STEP.backends:
        pytest.skip(f"beam_step has no {backend} launcher")
    device = device_for(backend)
    inputs = [t.to(device) for t in make_inputs(batch=2, beams=3, vocab=60, num_eos=2, seed=6)]
    logits, running, finished, is_finished, may_improve, eos = inputs
    seeds = torch.tensor([4, 9], dtype=torch.int64, device=device) if sampling else None
    options = dict(max_generated_length=7, length_penalty=0.8, early_stopping="never")
    prepared = BeamStep(2, 3, 60, device, eos, seeds=seeds, backend=backend, **options)
    assert prepared.backend == backend and prepared.candidates_per_row == 9
    for generated_length, all_stop, normalized in ((2, False, False), (7, True, True)):
        offsets = torch.tensor([generated_length, 1], dtype=torch.int64, device=device) if sampling else None
        step = dict(generated_length=generated_length, all_stop=all_stop, normalized=normalized)
        expected = ops.beam_step(*inputs, seeds=seeds, offsets=offsets, backend=backend, **options, **step)
        actual = prepared.step(logits, running, finished, is_finished, may_improve, offsets=offsets, **step)
        for name, got, want in zip(expected._fields, actual, expected):
            assert torch.equal(got, want), name


def test_prepared_step_validation_names_the_argument():
    logits, running, finished, is_finished, may_improve, eos = make_inputs(batch=2, beams=2, vocab=10, num_eos=1)
    seeds = torch.zeros(2, dtype=torch.int64)
    build = dict(max_generated_length=4)
    for error, name, args, options in [
        (ValueError, "num_beams", (2, 0, 10, "cpu", eos), build),
        (TypeError, "eos", (2, 2, 10, "cpu", eos.int()), build),
        (ValueError, "seeds", (2, 2, 10, "cpu", eos), dict(build, seeds=seeds[:1])),
        (ValueError, "length_penalty", (2, 2, 10, "cpu", eos), dict(build, length_penalty=INF)),
        (ValueError, "early_stopping", (2, 2, 10, "cpu", eos), dict(build, early_stopping="always")),
        (ValueError, "columns", (2, 2, 1, "cpu", eos), build),
    ]:
        with pytest.raises(error, match=name):
            BeamStep(*args, **options)
    searching = BeamStep(2, 2, 10, "cpu", eos, **build)
    sampling = BeamStep(2, 2, 10, "cpu", eos, seeds=seeds, **build)
    state = (running, finished, is_finished, may_improve)
    for error, name, call in [
        (ValueError, "logits", lambda: searching.step(logits[:, :9].contiguous(), *state, generated_length=1)),
        (TypeError, "running_scores", lambda: searching.step(logits, running.double(), *state[1:], generated_length=1)),
        (ValueError, "running_scores", lambda: searching.step(logits, running.view(4, 1), finished.view(4, 1),
                                                             is_finished.view(4, 1), may_improve.repeat(2),
                                                             generated_length=1)),
        (ValueError, "may_improve", lambda: searching.step(logits, *state[:3], may_improve[None], generated_length=1)),
        (ValueError, "generated_length", lambda: searching.step(logits, *state, generated_length=0)),
        (TypeError, "all_stop", lambda: searching.step(logits, *state, generated_length=1, all_stop=1)),
        (ValueError, "offsets", lambda: searching.step(logits, *state, generated_length=1, offsets=seeds)),
        (ValueError, "offsets", lambda: sampling.step(logits, *state, generated_length=1)),
        (ValueError, "offsets", lambda: sampling.step(logits, *state, generated_length=1, offsets=seeds[:1])),
    ]:
        with pytest.raises(error, match=name):
            call()
