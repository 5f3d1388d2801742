"""BeamSearchState on hand-made scores: the bookkeeping rules, and the Gumbel-top-k candidate draws of beam
sampling (end-to-end parity with transformers is in test_generate.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tolerances import assert_bit_exact, assert_close_across_compilations, assert_draws_follow
from turbogen.generation.beam_search import BeamSearchParams, BeamSearchState, FusedBeamSearchState

EOS = 3
FILL = -1


def _state(batch_size=1, num_beams=2, vocab_size=4, prompt=(7, 8), max_length=6, length_penalty=1.0,
           early_stopping=False, do_sample=False, seeds=None):
    params = BeamSearchParams(batch_size=batch_size, num_beams=num_beams, vocab_size=vocab_size,
                              max_length=max_length, prompt_length=len(prompt), length_penalty=length_penalty,
                              early_stopping=early_stopping, num_eos_tokens=1, do_sample=do_sample)
    input_ids = torch.tensor([list(prompt)] * (batch_size * num_beams))
    return BeamSearchState(input_ids, params, FILL, seeds)


def _log_probs(*rows):
    """Per-beam log-probabilities from (unnormalised) probability rows."""
    probs = torch.tensor(rows, dtype=torch.float32)
    return (probs / probs.sum(-1, keepdim=True)).log()


def _step(state, log_probs, length):
    candidates = state.candidates(log_probs, length)
    tails = state.candidate_tails(candidates, 1)
    stopped = (tails[:, -1] == EOS).view(state.params.batch_size, -1)
    return candidates, state.advance(candidates, stopped)


def test_first_step_expands_only_the_first_beam():
    state = _state()
    # Beam 1 would win if it were alive: it must not be, all beams start as copies of one prompt.
    candidates, parents = _step(state, _log_probs([1, 2, 3, 0.5], [9, 9, 9, 9]), length=2)
    assert candidates.sequences[0, :, 2].tolist() == [2, 1, 0, 3]
    assert parents.tolist() == [0, 0]
    assert state.running_sequences[0, :, :3].tolist() == [[7, 8, 2], [7, 8, 1]]
    assert not state.is_finished.any()


def test_eos_candidate_in_top_beams_is_finished_with_length_penalty():
    state = _state(length_penalty=2.0)
    _step(state, _log_probs([1, 1, 1, 6], [1, 1, 1, 1]), length=2)  # EOS is the best continuation
    eos_log_prob = math.log(6 / 9)
    assert state.is_finished[0].tolist() == [True, False]
    assert state.sequences[0, 0, :3].tolist() == [7, 8, EOS]
    # float32 arithmetic against a float64 oracle: equal up to float32 rounding.
    assert_close_across_compilations(state.scores[0, 0], torch.tensor(eos_log_prob / 1**2.0))
    assert EOS not in state.running_sequences[0, :, 2].tolist(), "finished hypotheses do not keep running"
    assert state.beam_indices[0, 0, 0].item() == 0


def test_early_stopping_true_ends_once_every_row_has_num_beams_hypotheses():
    state = _state(early_stopping=True)
    _step(state, _log_probs([1, 1, 1, 6], [1, 1, 1, 1]), length=2)
    assert not bool(state.is_done())
    _step(state, _log_probs([1, 1, 1, 6], [1, 1, 1, 6]), length=3)
    assert state.is_finished.all()
    assert bool(state.is_done())


def test_two_steps_end_to_end_result():
    """Step 1: EOS is best (finished at length 1); step 2: both live beams end with EOS (length 2). The
    heuristic then sees no running beam able to beat the worst hypothesis, so the search is over."""
    state = _state()
    probs = [1, 2, 3, 12]
    _step(state, _log_probs(probs, probs), length=2)
    assert state.running_sequences[0, :, 2].tolist() == [2, 1]
    _step(state, _log_probs(probs, probs), length=3)
    assert bool(state.is_done())

    sequences, scores, beam_indices = state.result(num_return_sequences=2)
    assert sequences.tolist() == [[7, 8, EOS, FILL], [7, 8, 2, EOS]]
    assert beam_indices.tolist() == [[0, -1], [0, 0]]
    p = torch.tensor(probs, dtype=torch.float64) / sum(probs)
    expected = [math.log(p[EOS]), (math.log(p[2]) + math.log(p[EOS])) / 2]
    assert_close_across_compilations(scores, torch.tensor(expected, dtype=torch.float32))


def test_stopping_every_candidate_ends_the_search():
    state = _state()
    candidates = state.candidates(_log_probs([1, 2, 3, 4], [1, 1, 1, 1]), 2)
    state.advance(candidates, torch.ones(1, state.params.candidates_per_row, dtype=torch.bool))
    assert bool(state.is_done())
    assert state.is_finished.all(), "the top `num_beams` stopped candidates become hypotheses"


@pytest.mark.parametrize("do_sample", [False, True])
def test_overwriting_the_log_probs_gives_the_same_candidates(do_sample):
    """``overwrite=True`` reuses the caller's log-probabilities as scratch space; the candidates do not change."""
    seeds = torch.tensor([9], dtype=torch.int64) if do_sample else None
    log_probs = _log_probs([1, 2, 3, 4], [4, 3, 2, 1])
    states = [_state(do_sample=do_sample, seeds=seeds) for _ in range(2)]
    for state in states:  # one step first, so that both beams have a (different) cumulative score
        _step(state, log_probs, length=2)
    expected = states[0].candidates(log_probs, 3)
    scratch = log_probs.clone()
    actual = states[1].candidates(scratch, 3, overwrite=True)
    assert torch.equal(actual.log_probs, expected.log_probs)
    assert torch.equal(actual.sequences, expected.sequences)
    assert torch.equal(actual.beam_indices, expected.beam_indices)
    assert not torch.equal(scratch, log_probs), "the scratch scores hold the accumulated scores"


# -- beam sampling: Gumbel-top-k -----------------------------------------------------------------------------

# Sized so that the chi-square test (false-alarm rate 1e-6) rejects the mistakes it guards against with p-values
# below 1e-30: a second draw made with replacement, a temperature of 1.3 (see the last test of this section).
DRAWS = 10000
PROBS = torch.tensor([0.30, 0.22, 0.15, 0.12, 0.08, 0.06, 0.04, 0.03], dtype=torch.float64)
# Second draw without replacement: P(j) = sum_i p_i p_j / (1 - p_i) over i != j.
SECOND_DRAW_PROBS = PROBS * ((PROBS / (1 - PROBS)).sum() - PROBS / (1 - PROBS))


def _sampled_candidates(seeds: torch.Tensor):
    """Candidates of a first beam-sampling step, one batch row per seed, all rows with ``PROBS``."""
    rows, vocab = seeds.shape[0], PROBS.shape[0]
    state = _state(batch_size=rows, vocab_size=vocab, do_sample=True, seeds=seeds)
    log_probs = PROBS.log().float().repeat(rows * 2, 1)
    return state.candidates(log_probs, length=2)


@pytest.fixture(scope="module")
def first_step_candidates():
    """The candidates of DRAWS first beam-sampling steps with PROBS, each with its own seed."""
    return _sampled_candidates(torch.arange(DRAWS, dtype=torch.int64) + 12345)


def test_beam_sampling_draws_without_replacement_from_the_softmax(first_step_candidates):
    candidates = first_step_candidates
    tokens = candidates.sequences[:, :, 2]  # [rows, K]
    assert all(len(set(row)) == tokens.shape[1] for row in tokens.tolist()), "draws must be distinct"
    assert (candidates.beam_indices[:, :, 0] == torch.arange(DRAWS)[:, None] * 2).all(), "only beam 0 is alive"

    assert_draws_follow(tokens[:, 0], PROBS)
    assert_draws_follow(tokens[:, 1], SECOND_DRAW_PROBS)
    # The candidates' scores are the (unperturbed) accumulated log-probabilities of the drawn tokens: on the first
    # step, a beam score of 0 plus the log-probability, exactly.
    assert_bit_exact(candidates.log_probs, PROBS.log().float()[tokens])


def test_beam_sampling_draw_count_exposes_subtly_wrong_samplers(first_step_candidates):
    """With DRAWS draws, the distribution check rejects what a wrong beam sampler would draw: a second token drawn
    with replacement (from PROBS again), or first tokens drawn at temperature 1.3."""
    tokens = first_step_candidates.sequences[:, :, 2]
    with pytest.raises(AssertionError, match="do not follow"):
        assert_draws_follow(tokens[:, 1], PROBS)
    with pytest.raises(AssertionError, match="do not follow"):
        assert_draws_follow(tokens[:, 0], torch.softmax(PROBS.log() / 1.3, dim=0))


def test_beam_sampling_rows_depend_only_on_their_own_seed():
    seeds = torch.tensor([5, 77, 1 << 40], dtype=torch.int64)
    together = _sampled_candidates(seeds).sequences[:, :, 2]
    alone = torch.cat([_sampled_candidates(seeds[i : i + 1]).sequences[:, :, 2] for i in range(3)])
    assert torch.equal(together, alone)


def test_beam_sampling_requires_seeds():
    with pytest.raises(ValueError, match="seeds"):
        _state(do_sample=True)


def _gumbel_top_k_oracle(state, log_probs, seeds, offset):
    """The candidate tokens of one beam-sampling step recomputed from the contract: the accumulated scores plus
    the Gumbel noise of each row's seed at ``offset`` (turbogen.ref, the oracle), best ``K`` first."""
    from turbogen.ref.philox import gumbel_noise

    p = state.params
    accumulated = (log_probs.view(p.batch_size, p.num_beams, -1) + state.running_scores[:, :, None]).view(
        p.batch_size, -1)
    noise = gumbel_noise(seeds, torch.full_like(seeds, offset), accumulated.shape[1])
    flat = torch.topk(accumulated + noise, p.candidates_per_row).indices
    return flat % p.vocab_size


def test_beam_sampling_draws_step_n_at_offset_n():
    """Each step's noise uses the next offset (0, then 1, ...): the candidates of the first two steps are the
    contract's Gumbel-top-k draws at offsets 0 and 1, computed independently from the same scores."""
    seeds = torch.tensor([3, 1 << 33, 12345], dtype=torch.int64)
    state = _state(batch_size=3, vocab_size=PROBS.shape[0], do_sample=True, seeds=seeds)
    log_probs = torch.stack([PROBS.roll(shift) for shift in range(6)]).log().float()  # [3 rows * 2 beams, vocab]
    for offset, length in ((0, 2), (1, 3)):
        expected_tokens = _gumbel_top_k_oracle(state, log_probs, seeds, offset)
        candidates = state.candidates(log_probs, length)
        assert torch.equal(candidates.sequences[:, :, length], expected_tokens), offset
        state.advance(candidates, None)
    assert state.offsets.tolist() == [2, 2, 2]


# -- the fused state: the same search as the stepwise one -----------------------------------------------------


@pytest.mark.parametrize("do_sample", [False, True], ids=["search", "sampling"])
@pytest.mark.parametrize("length_penalty", [-0.5, 0.0, 1.3])
@pytest.mark.parametrize("early_stopping", [False, True, "never"], ids=str)
def test_fused_state_follows_the_stepwise_state(early_stopping, length_penalty, do_sample):
    """FusedBeamSearchState (ops.beam_step, per-step history, sequences rebuilt at the end) against
    BeamSearchState (candidates, the EOS criterion, advance) on the same log-probabilities, EOS likely: the same
    parents, next tokens, running sequences, scores and finished flags at every step, and the same result."""
    batch, beams, vocab, prompt_length, max_length = 3, 3, 12, 2, 10
    params = BeamSearchParams(batch_size=batch, num_beams=beams, vocab_size=vocab, max_length=max_length,
                              prompt_length=prompt_length, length_penalty=length_penalty,
                              early_stopping=early_stopping, num_eos_tokens=1, do_sample=do_sample)
    g = torch.Generator().manual_seed(5)
    input_ids = torch.randint(4, vocab, (batch, prompt_length), generator=g).repeat_interleave(beams, dim=0)
    seeds = torch.tensor([3, 5, 7]) if do_sample else None
    stepwise = BeamSearchState(input_ids, params, FILL, None if seeds is None else seeds.clone())
    fused = FusedBeamSearchState(input_ids, params, FILL, torch.tensor([EOS]), None if seeds is None else seeds.clone(),
                                 track_sequences=True)
    finished_early = False
    for length in range(prompt_length, max_length):
        logits = torch.randn(batch * beams, vocab, generator=g) * 2
        logits[:, EOS] += 1.5  # hypotheses finish along the way
        log_probs = torch.log_softmax(logits, dim=-1)
        last = length + 1 == max_length
        candidates = stepwise.candidates(log_probs, length)
        stopped = torch.ones_like(candidates.log_probs, dtype=torch.bool) if last else \
            candidates.sequences[:, :, length] == EOS
        expected_parents = stepwise.advance(candidates, stopped)
        parents = fused.step(log_probs, True, length, last)
        if not last:  # (at the limit every candidate is demoted by 1e9, which rounds some of them to ties, which
            # torch.topk breaks either way; no running beam goes on from there)
            assert torch.equal(parents, expected_parents), length
            assert torch.equal(fused.last_tokens(length + 1), stepwise.last_tokens(length + 1)), length
            assert torch.equal(fused.flat_running_sequences(length + 1), stepwise.flat_running_sequences(length + 1))
            assert torch.equal(fused.running_scores, stepwise.running_scores), length
        for name in ("scores", "is_finished", "may_improve"):
            assert torch.equal(getattr(fused, name).view(batch, -1), getattr(stepwise, name).view(batch, -1)), name
        done = bool(stepwise.is_done())
        assert bool(fused.is_done()) == done, length
        if done:
            finished_early = not last
            break
    assert bool(stepwise.is_finished.any())
    if early_stopping is True:
        assert finished_early, "a search that ends before the length limit is covered"
    for count in (1, beams):
        got_and_wanted = zip(fused.result(count), stepwise.result(count))
        for name, (got, want) in zip(("sequences", "scores", "beam_indices"), got_and_wanted):
            assert got.dtype == want.dtype and torch.equal(got, want), (count, name)
