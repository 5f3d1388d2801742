"""turbogen.processors against transformers v4.57's processors (the oracle), on seeded random inputs.

Every processor is run side by side with transformers' class of the same name, built with the same
arguments, and must give bit-identical scores (NaN where transformers has NaN). The pure functions
of turbogen.processors.functional are also checked with per-row tensor parameters, row by row,
against transformers' scalar processors. Validation tests check the error type and that the
message names the argument.
"""

from __future__ import annotations

import collections
import logging
import zlib

import pytest
import torch
import transformers.generation.logits_process as hf

import turbogen.processors as tp
from turbogen.processors import functional as ref

from conftest import NO_PROMPT_IGNORE_LENGTH_IN_4_45, skip_on_transformers_4_45, skip_on_transformers_5
from tiny_models import tiny_model
from tolerances import assert_bit_exact

NEG_INF = float("-inf")
SHAPES = [(1, 50), (3, 97), (8, 300)]  # (batch, vocab)
CONTEXT_LENGTH = 12


def make_inputs(seed: int, batch: int, vocab: int, length: int = CONTEXT_LENGTH, ties: bool = False,
                dtype: torch.dtype = torch.float32):
    """Seeded ``(input_ids, scores)``; with ``ties`` the scores sit on a coarse grid so many are equal,
    and the context reuses few tokens so n-grams and repetitions actually occur."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, vocab, generator=generator) * 3
    if ties:
        scores = torch.round(scores * 2) / 2
    input_ids = torch.randint(0, min(vocab, 8), (batch, length), generator=generator)
    return input_ids, scores.to(dtype)


def assert_identical(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same dtype, shape and bits (NaN matching NaN)."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert_bit_exact(ours, theirs)


def run_both(name: str, args, kwargs, input_ids, scores):
    ours = getattr(tp, name)(*args, **kwargs)(input_ids, scores.clone())
    theirs = getattr(hf, name)(*args, **kwargs)(input_ids, scores.clone())
    return ours, theirs


def special_rows(scores: torch.Tensor) -> torch.Tensor:
    """Overwrite rows 1-4 with hard cases: all but one token at -inf; two tied finite tokens; one
    dominant logit; four tied tokens (probabilities exactly 1/4, so cumulative sums land exactly
    on 1 - top_p for top_p in {0.25, 0.5, 0.75}) among tokens whose probability underflows to 0."""
    scores = scores.clone()
    vocab = scores.shape[-1]
    scores[1] = NEG_INF
    scores[1, vocab // 2] = 0.5
    scores[2] = NEG_INF
    scores[2, 3] = scores[2, vocab - 1] = 1.0
    scores[3, 0] = 80.0
    scores[4] = -200.0
    scores[4, [2, 5, 11, 17]] = 0.0
    return scores


# (class name, args, kwargs): every processor whose arguments do not depend on the inputs.
SIMPLE_CASES = [
    ("TemperatureLogitsWarper", (0.7,), {}),
    ("TemperatureLogitsWarper", (1.9,), {}),
    ("TopKLogitsWarper", (1,), {}),
    ("TopKLogitsWarper", (7,), {}),
    ("TopKLogitsWarper", (3,), {"min_tokens_to_keep": 5}),
    ("TopKLogitsWarper", (50,), {}),
    ("TopKLogitsWarper", (1000,), {}),
    ("TopKLogitsWarper", (4,), {"filter_value": -1234.5}),
    ("TopPLogitsWarper", (0.9,), {}),
    ("TopPLogitsWarper", (0.3,), {"min_tokens_to_keep": 4}),
    ("TopPLogitsWarper", (1.0,), {}),
    ("TopPLogitsWarper", (0.0,), {}),
    ("TopPLogitsWarper", (1e-6,), {}),
    ("TopPLogitsWarper", (0.6,), {"filter_value": -50.0}),
    ("TopPLogitsWarper", (0.5,), {}),
    ("TopPLogitsWarper", (0.75,), {"min_tokens_to_keep": 2}),
    ("MinPLogitsWarper", (0.05,), {}),
    ("MinPLogitsWarper", (0.5,), {"min_tokens_to_keep": 3}),
    ("MinPLogitsWarper", (0.0,), {}),
    ("MinPLogitsWarper", (1.0,), {}),
    ("TypicalLogitsWarper", (0.9,), {}),
    ("TypicalLogitsWarper", (0.2,), {"min_tokens_to_keep": 3}),
    ("EpsilonLogitsWarper", (3e-3,), {}),
    ("EpsilonLogitsWarper", (0.2,), {"min_tokens_to_keep": 2}),
    ("EtaLogitsWarper", (3e-3,), {}),
    ("EtaLogitsWarper", (0.3,), {"min_tokens_to_keep": 2}),
    ("LogitNormalization", (), {}),
    ("RepetitionPenaltyLogitsProcessor", (1.3,), {}),
    ("RepetitionPenaltyLogitsProcessor", (0.6,), {}),
    ("RepetitionPenaltyLogitsProcessor", (1.5,), {"prompt_ignore_length": 5}),
    ("NoRepeatNGramLogitsProcessor", (1,), {}),
    ("NoRepeatNGramLogitsProcessor", (2,), {}),
    ("NoRepeatNGramLogitsProcessor", (3,), {}),
    ("NoRepeatNGramLogitsProcessor", (CONTEXT_LENGTH,), {}),
    ("NoRepeatNGramLogitsProcessor", (CONTEXT_LENGTH + 1,), {}),
    ("NoRepeatNGramLogitsProcessor", (CONTEXT_LENGTH + 2,), {}),
    ("SequenceBiasLogitsProcessor", ([[[3], 2.5], [[1, 3], -1.0], [[2, 4, 3], 4.0], [[5, 6], 0.5]],), {}),
    ("SequenceBiasLogitsProcessor", ({(1, 2): -3.0, (7,): 1.0},), {}),
    # Sequences exactly one longer than the context are skipped by transformers even when their
    # prefix is the whole context.
    ("SequenceBiasLogitsProcessor", ([[[1] * CONTEXT_LENGTH + [4], 9.0]],), {}),
    ("SequenceBiasLogitsProcessor", ([[[1] * (CONTEXT_LENGTH - 1) + [4], 9.0]],), {}),
    ("NoBadWordsLogitsProcessor", ([[3], [1, 2], [0, 4, 5], [2]],), {"eos_token_id": 2}),
    ("NoBadWordsLogitsProcessor", ([[1, 1], [6]],), {"eos_token_id": [6, 7]}),
    ("MinLengthLogitsProcessor", (CONTEXT_LENGTH + 1, [2, 3]), {}),
    ("MinLengthLogitsProcessor", (CONTEXT_LENGTH, 2), {}),
    ("MinNewTokensLengthLogitsProcessor", (10, 3, [1, 4]), {}),
    ("MinNewTokensLengthLogitsProcessor", (9, 3, 4), {}),
    ("ForcedBOSTokenLogitsProcessor", (5,), {}),
    ("ForcedEOSTokenLogitsProcessor", (CONTEXT_LENGTH + 1, [2, 4]), {}),
    ("ForcedEOSTokenLogitsProcessor", (CONTEXT_LENGTH + 2, 2), {}),
    ("InfNanRemoveLogitsProcessor", (), {}),
    ("ExponentialDecayLengthPenalty", ((2, 1.5), [2, 3], 5), {}),
    ("ExponentialDecayLengthPenalty", ((10, 1.5), 2, 5), {}),
    ("SuppressTokensLogitsProcessor", ([1, 2, 40, 9999],), {}),
    ("SuppressTokensAtBeginLogitsProcessor", ([0, 3], CONTEXT_LENGTH), {}),
    ("SuppressTokensAtBeginLogitsProcessor", ([0, 3], CONTEXT_LENGTH - 1), {}),
]


def _case_id(case):
    name, args, kwargs = case
    shown = ",".join([repr(a)[:20] for a in args] + [f"{k}={v}" for k, v in kwargs.items()])
    return f"{name}({shown})"


def _where_transformers_has_it(case):
    """``case`` as a parameter, skipped under transformers 4.45 when it builds what 4.45's class does not take."""
    if "prompt_ignore_length" in case[2]:
        return pytest.param(case, marks=skip_on_transformers_4_45(NO_PROMPT_IGNORE_LENGTH_IN_4_45))
    return case


@pytest.mark.parametrize("batch,vocab", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("case", [_where_transformers_has_it(case) for case in SIMPLE_CASES], ids=_case_id)
def test_matches_transformers(case, batch, vocab):
    name, args, kwargs = case
    input_ids, scores = make_inputs(zlib.crc32(f"{name}{batch}{vocab}".encode()), batch, vocab)
    assert_identical(*run_both(name, args, kwargs, input_ids, scores))


WARPERS_AND_PENALTIES = [case for case in SIMPLE_CASES if case[0] not in ("InfNanRemoveLogitsProcessor",)]

# Edge cases transformers 5 handles differently on purpose; turbogen keeps 4.57's results (the spec).
MIN_P_TIES_CHANGED = ("MinPLogitsWarper keeps its `min_tokens_to_keep` tokens by torch.topk over the probabilities "
                      "(4.57: argsort of the scores), so it breaks ties between equal scores differently")
EOS_DECAY_OF_MINUS_INF_CHANGED = ("ExponentialDecayLengthPenalty leaves an EOS score of -inf at -inf "
                                  "(4.57 adds |score| * (factor ** steps - 1) to it, which gives nan)")


def _on_ties_and_masked_rows(case):
    """``case`` as a parameter, skipped under transformers 5 when 5.x changed its result on these rows (and under
    4.45 when 4.45's class does not take its arguments)."""
    name, _, kwargs = case
    if "prompt_ignore_length" in kwargs:
        return _where_transformers_has_it(case)
    if name == "MinPLogitsWarper" and kwargs.get("min_tokens_to_keep", 1) > 1:
        return pytest.param(case, marks=skip_on_transformers_5(MIN_P_TIES_CHANGED))
    if name == "ExponentialDecayLengthPenalty":
        return pytest.param(case, marks=skip_on_transformers_5(EOS_DECAY_OF_MINUS_INF_CHANGED))
    return case


@pytest.mark.parametrize("case", [_on_ties_and_masked_rows(case) for case in WARPERS_AND_PENALTIES], ids=_case_id)
def test_matches_transformers_on_ties_and_masked_rows(case):
    """Tied scores, rows with a single finite token, rows with two tied finite tokens, a dominant logit."""
    name, args, kwargs = case
    input_ids, scores = make_inputs(7, 5, 64, ties=True)
    assert_identical(*run_both(name, args, kwargs, input_ids, special_rows(scores)))


@pytest.mark.parametrize("case", [c for c in SIMPLE_CASES if c[0].endswith("Warper") or c[0] == "LogitNormalization"],
                         ids=_case_id)
def test_warpers_match_transformers_on_all_neg_inf_rows(case):
    name, args, kwargs = case
    input_ids, scores = make_inputs(3, 3, 40)
    scores[1] = NEG_INF
    if name != "EtaLogitsWarper":
        assert_identical(*run_both(name, args, kwargs, input_ids, scores))
        return
    # transformers' eta warper rejects the row (its Categorical validates the NaN it normalises
    # to, at the cost of a host sync); turbogen leaves it as it is and treats the others alike.
    ours = getattr(tp, name)(*args, **kwargs)(input_ids, scores)
    theirs = getattr(hf, name)(*args, **kwargs)(input_ids[[0, 2]], scores[[0, 2]])
    assert_identical(ours[[0, 2]], theirs)
    assert_identical(ours[1], scores[1])


def test_inf_nan_remove_matches_transformers():
    input_ids, scores = make_inputs(11, 4, 60)
    scores[0, :5] = float("nan")
    scores[1, 3] = float("inf")
    scores[2, 7:9] = NEG_INF
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        ours, theirs = run_both("InfNanRemoveLogitsProcessor", (), {}, input_ids, scores.to(dtype))
        assert_identical(ours, theirs)
        assert torch.isfinite(ours).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [
    ("TemperatureLogitsWarper", (0.7,), {}),
    ("TopKLogitsWarper", (5,), {}),
    ("TopPLogitsWarper", (0.8,), {}),
    ("MinPLogitsWarper", (0.1,), {}),
    ("TypicalLogitsWarper", (0.7,), {}),
    ("EtaLogitsWarper", (0.01,), {}),
    ("RepetitionPenaltyLogitsProcessor", (1.4,), {}),
    ("ExponentialDecayLengthPenalty", ((2, 1.5), [2, 3], 5), {}),
], ids=_case_id)
def test_matches_transformers_in_reduced_precision(case, dtype):
    name, args, kwargs = case
    input_ids, scores = make_inputs(5, 4, 80, dtype=dtype)
    assert_identical(*run_both(name, args, kwargs, input_ids, scores))


# --------------------------------------------------------------------------------------------
# Per-row tensor parameters of the pure functions
# --------------------------------------------------------------------------------------------


def rowwise_oracle(make_processor, values, input_ids, scores):
    """Row ``r`` processed by transformers' processor built for ``values[r]``."""
    return torch.cat([make_processor(value)(input_ids[r:r + 1], scores[r:r + 1]) for r, value in enumerate(values)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_per_row_temperature(dtype):
    input_ids, scores = make_inputs(1, 4, 90, dtype=dtype)
    values = [0.3, 0.7, 1.0, 2.5]
    expected = rowwise_oracle(hf.TemperatureLogitsWarper, values, input_ids, scores)
    assert_identical(ref.temperature(scores, torch.tensor(values)), expected)


@pytest.mark.parametrize("min_tokens_to_keep", [1, 4])
def test_per_row_top_k(min_tokens_to_keep):
    input_ids, scores = make_inputs(2, 6, 64, ties=True)
    values = [1, 3, 10, 64, 500, 2]
    expected = rowwise_oracle(lambda k: hf.TopKLogitsWarper(k, min_tokens_to_keep=min_tokens_to_keep),
                              values, input_ids, scores)
    assert_identical(ref.top_k(scores, torch.tensor(values), min_tokens_to_keep=min_tokens_to_keep), expected)
    scalar_expected = hf.TopKLogitsWarper(3, min_tokens_to_keep=min_tokens_to_keep)(input_ids, scores)
    assert_identical(ref.top_k(scores, 3, min_tokens_to_keep=min_tokens_to_keep), scalar_expected)


def test_top_k_zero_disables_the_row():
    _, scores = make_inputs(2, 3, 30)
    filtered = ref.top_k(scores, torch.tensor([0, 2, -1]))
    assert_identical(filtered[[0, 2]], scores[[0, 2]])
    assert (filtered[1] > NEG_INF).sum() == 2
    assert_identical(ref.top_k(scores, 0), scores)


@pytest.mark.parametrize("min_tokens_to_keep", [1, 3])
def test_per_row_top_p(min_tokens_to_keep):
    input_ids, scores = make_inputs(3, 6, 120, ties=True)
    values = [0.0, 1e-6, 0.35, 0.9, 0.999, 1.0]
    expected = rowwise_oracle(lambda p: hf.TopPLogitsWarper(p, min_tokens_to_keep=min_tokens_to_keep),
                              values, input_ids, scores)
    per_row = torch.tensor(values, dtype=torch.float64)
    assert_identical(ref.top_p(scores, per_row, min_tokens_to_keep=min_tokens_to_keep), expected)


@pytest.mark.parametrize("min_tokens_to_keep", [1, pytest.param(3, marks=skip_on_transformers_5(MIN_P_TIES_CHANGED))])
def test_per_row_min_p(min_tokens_to_keep):
    input_ids, scores = make_inputs(4, 5, 70, ties=True)
    values = [0.0, 0.02, 0.2, 0.7, 1.0]
    expected = rowwise_oracle(lambda p: hf.MinPLogitsWarper(p, min_tokens_to_keep=min_tokens_to_keep),
                              values, input_ids, scores)
    assert_identical(ref.min_p(scores, torch.tensor(values), min_tokens_to_keep=min_tokens_to_keep), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_per_row_repetition_penalty(dtype):
    input_ids, scores = make_inputs(5, 4, 50, dtype=dtype)
    values = [0.5, 1.0, 1.2, 3.0]
    expected = rowwise_oracle(hf.RepetitionPenaltyLogitsProcessor, values, input_ids, scores)
    assert_identical(ref.repetition_penalty(input_ids, scores, torch.tensor(values)), expected)


# --------------------------------------------------------------------------------------------
# Processors whose arguments depend on the inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,vocab", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("name,args", [
    ("EncoderRepetitionPenaltyLogitsProcessor", (1.5,)),
    ("EncoderRepetitionPenaltyLogitsProcessor", (0.7,)),
    ("EncoderNoRepeatNGramLogitsProcessor", (1,)),
    ("EncoderNoRepeatNGramLogitsProcessor", (2,)),
    ("EncoderNoRepeatNGramLogitsProcessor", (3,)),
])
def test_encoder_processors_match_transformers(name, args, batch, vocab):
    input_ids, scores = make_inputs(batch * vocab, batch, vocab)
    encoder_input_ids = torch.randint(0, 8, (batch, 9), generator=torch.Generator().manual_seed(vocab))
    assert_identical(*run_both(name, (*args, encoder_input_ids), {}, input_ids, scores))


@pytest.mark.parametrize("length", [1, 2, 3, 6])
def test_encoder_no_repeat_ngram_with_beams_matches_transformers(length):
    """Three hypotheses per prompt; short decoder contexts included (transformers slices with a
    negative start there)."""
    prompts, beams = 2, 3
    input_ids, scores = make_inputs(length, prompts * beams, 40, length=length)
    encoder_input_ids = torch.randint(0, 8, (prompts, 10), generator=torch.Generator().manual_seed(1))
    assert_identical(*run_both("EncoderNoRepeatNGramLogitsProcessor", (3, encoder_input_ids), {}, input_ids, scores))


def test_encoder_repetition_penalty_gives_every_hypothesis_its_prompt():
    """With several hypotheses per prompt, each row is penalised with its own prompt's tokens (what
    transformers computes when given the prompts expanded to one row per hypothesis)."""
    prompts, per_prompt = 2, 3
    input_ids, scores = make_inputs(9, prompts * per_prompt, 30)
    encoder_input_ids = torch.tensor([[1, 2, 3], [20, 21, 22]])
    ours = tp.EncoderRepetitionPenaltyLogitsProcessor(1.7, encoder_input_ids)(input_ids, scores)
    expanded = encoder_input_ids.repeat_interleave(per_prompt, dim=0)
    assert_identical(ours, hf.EncoderRepetitionPenaltyLogitsProcessor(1.7, expanded)(input_ids, scores))


def test_sequence_bias_sums_biases_on_a_shared_last_token_like_transformers():
    input_ids = torch.tensor([[5, 1, 2, 3], [0, 9, 2, 3]])
    _, scores = make_inputs(0, 2, 12)
    sequence_bias = [[[3], 0.1], [[2, 3], 1.3], [[1, 2, 3], -0.7], [[9, 2, 3], 2.9], [[4], NEG_INF]]
    assert_identical(*run_both("SequenceBiasLogitsProcessor", (sequence_bias,), {}, input_ids, scores))


def test_no_bad_words_that_are_all_eos_changes_nothing():
    """transformers raises a confusing error here (its bias dict ends up empty)."""
    input_ids, scores = make_inputs(0, 2, 20)
    assert_identical(tp.NoBadWordsLogitsProcessor([[2]], eos_token_id=2)(input_ids, scores), scores)


def test_forced_bos_matches_transformers_on_the_first_step_only():
    _, scores = make_inputs(0, 3, 30)
    for length in (1, 2):
        input_ids = torch.zeros(3, length, dtype=torch.long)
        assert_identical(*run_both("ForcedBOSTokenLogitsProcessor", (7,), {}, input_ids, scores))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_prefix_constrained_matches_transformers(num_beams):
    input_ids, scores = make_inputs(3, 4, 30)

    def allowed(batch_id, row_input_ids):
        return [batch_id, int(row_input_ids[-1]) + 10, 29]

    assert_identical(*run_both("PrefixConstrainedLogitsProcessor", (allowed, num_beams), {}, input_ids, scores))


def test_prefix_constrained_accepts_a_tensor_of_allowed_tokens():
    input_ids, scores = make_inputs(3, 2, 30)
    processor = tp.PrefixConstrainedLogitsProcessor(lambda batch_id, ids: torch.tensor([4, 5]), 1)
    kept = processor(input_ids, scores) > NEG_INF
    assert kept.sum(dim=-1).tolist() == [2, 2] and kept[:, 4:6].all()


@pytest.mark.parametrize("seeding_scheme", ["lefthash", "selfhash"])
@pytest.mark.parametrize("context_width", [1, 3])
def test_watermark_matches_transformers(seeding_scheme, context_width):
    input_ids, scores = make_inputs(13, 3, 64)
    options = dict(greenlist_ratio=0.3, bias=1.5, hashing_key=12345, seeding_scheme=seeding_scheme,
                   context_width=context_width)
    ours = tp.WatermarkLogitsProcessor(64, "cpu", **options)(input_ids, scores)
    theirs = hf.WatermarkLogitsProcessor(64, "cpu", **options)(input_ids, scores)
    assert_identical(ours, theirs)
    assert (ours != scores).any()


def test_watermark_selfhash_works_with_a_vocabulary_smaller_than_its_candidate_count():
    """transformers indexes 40 candidates and fails below 40 tokens; here all candidates are tried."""
    input_ids, scores = make_inputs(2, 2, 16)
    processor = tp.WatermarkLogitsProcessor(16, "cpu", greenlist_ratio=0.5, seeding_scheme="selfhash")
    boosted = processor(input_ids, scores) - scores
    assert set(boosted.unique().tolist()) <= {0.0, 2.0} and (boosted == 2.0).any()


def test_watermark_skips_a_too_short_context(caplog):
    input_ids, scores = make_inputs(2, 2, 16, length=1)
    processor = tp.WatermarkLogitsProcessor(16, "cpu", context_width=2)
    with caplog.at_level(logging.WARNING):
        assert_identical(processor(input_ids, scores), scores)
    assert "context" in caplog.text or "at least 2 tokens" in caplog.text


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("negative_prompt", [False, True])
def test_unbatched_cfg_matches_transformers_over_several_steps(use_cache, negative_prompt):
    model = tiny_model("llama")
    vocab = model.config.vocab_size
    input_ids, _ = make_inputs(0, 2, vocab, length=5)
    negative = torch.tensor([[4, 5, 6], [7, 8, 9]]) if negative_prompt else None
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]]) if negative_prompt else None
    ours = tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, model, negative, mask, use_cache=use_cache)
    theirs = hf.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, model, negative, mask, use_cache=use_cache)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            scores = torch.randn(2, vocab, generator=generator)
            assert_identical(ours(input_ids, scores), theirs(input_ids, scores))
            input_ids = torch.cat([input_ids, torch.randint(0, vocab, (2, 1), generator=generator)], dim=1)


def test_unbatched_cfg_scale_one_is_log_softmax_without_calling_the_model():
    def model(*args, **kwargs):
        raise AssertionError("the model must not be called")

    input_ids, scores = make_inputs(0, 2, 20)
    processed = tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.0, model)(input_ids, scores)
    assert_identical(processed, scores.log_softmax(dim=-1))


# --------------------------------------------------------------------------------------------
# Presence / frequency penalty (no transformers counterpart: a direct oracle)
# --------------------------------------------------------------------------------------------


def presence_frequency_oracle(input_ids, scores, presence, frequency, prompt_length):
    """Token counting in Python, then vLLM's two float32 subtractions, one row at a time."""
    expected = scores.float().clone()
    for row in range(scores.shape[0]):
        counts = collections.Counter(input_ids[row, prompt_length:].tolist())
        row_presence = presence[row] if isinstance(presence, list) else presence
        row_frequency = frequency[row] if isinstance(frequency, list) else frequency
        for token, count in counts.items():
            value = expected[row, token]
            value = value - torch.tensor(row_frequency, dtype=torch.float32) * torch.tensor(float(count))
            expected[row, token] = value - torch.tensor(row_presence, dtype=torch.float32)
    return expected.to(scores.dtype)


@pytest.mark.parametrize("prompt_length", [0, 4, CONTEXT_LENGTH])
@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.3), (1.2, 0.7), (-0.4, 0.25)])
def test_presence_frequency_penalty(presence, frequency, prompt_length):
    input_ids, scores = make_inputs(prompt_length, 4, 40)
    processor = tp.PresenceFrequencyPenaltyLogitsProcessor(presence, frequency, prompt_length=prompt_length)
    expected = presence_frequency_oracle(input_ids, scores, presence, frequency, prompt_length)
    assert_identical(processor(input_ids, scores), expected)


def test_presence_frequency_penalty_per_row():
    input_ids, scores = make_inputs(9, 3, 40)
    presence, frequency = [0.0, 0.5, 2.0], [1.0, 0.0, -0.5]
    penalized = ref.presence_frequency_penalty(input_ids, scores, torch.tensor(presence), torch.tensor(frequency), 3)
    assert_identical(penalized, presence_frequency_oracle(input_ids, scores, presence, frequency, 3))


def test_presence_frequency_penalty_keeps_reduced_precision_dtype():
    input_ids, scores = make_inputs(9, 2, 40, dtype=torch.bfloat16)
    penalized = tp.PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.5, prompt_length=2)(input_ids, scores)
    assert_identical(penalized, presence_frequency_oracle(input_ids, scores, 0.5, 0.5, 2))


# --------------------------------------------------------------------------------------------
# The list, purity, validation
# --------------------------------------------------------------------------------------------


def test_processors_do_not_modify_their_inputs():
    input_ids, scores = make_inputs(4, 3, 50)
    before_ids, before_scores = input_ids.clone(), scores.clone()
    for name, args, kwargs in SIMPLE_CASES:
        getattr(tp, name)(*args, **kwargs)(input_ids, scores)
    assert torch.equal(input_ids, before_ids) and torch.equal(scores, before_scores)


def test_processor_list_passes_keyword_arguments_and_requires_them():
    class NeedsStep(tp.LogitsProcessor):
        def __call__(self, input_ids, scores, step):
            return scores + step

    input_ids, scores = make_inputs(0, 2, 10)
    processors = tp.LogitsProcessorList([tp.TemperatureLogitsWarper(2.0), NeedsStep(), hf.TopKLogitsWarper(3)])
    expected = hf.TopKLogitsWarper(3)(input_ids, scores / 2.0 + 5)
    assert_identical(processors(input_ids, scores, step=5), expected)
    with pytest.raises(ValueError, match="step"):
        processors(input_ids, scores)


def _constant_model(*args, **kwargs):
    raise AssertionError("not called")


# (callable building the processor, expected exception, text the message must contain)
INVALID_CONSTRUCTIONS = [
    (lambda: tp.TemperatureLogitsWarper(0.0), ValueError, "do_sample=False"),
    (lambda: tp.TemperatureLogitsWarper(-1.0), ValueError, "temperature"),
    (lambda: tp.TemperatureLogitsWarper("hot"), TypeError, "temperature"),
    (lambda: tp.TopKLogitsWarper(0), ValueError, "top_k"),
    (lambda: tp.TopKLogitsWarper(2.5), TypeError, "top_k"),
    (lambda: tp.TopKLogitsWarper(True), TypeError, "top_k"),
    (lambda: tp.TopKLogitsWarper(5, min_tokens_to_keep=0), ValueError, "min_tokens_to_keep"),
    (lambda: tp.TopPLogitsWarper(1.5), ValueError, "top_p"),
    (lambda: tp.TopPLogitsWarper(0.5, filter_value="x"), TypeError, "filter_value"),
    (lambda: tp.TopPLogitsWarper(0.5, min_tokens_to_keep=0), ValueError, "min_tokens_to_keep"),
    (lambda: tp.MinPLogitsWarper(-0.1), ValueError, "min_p"),
    (lambda: tp.MinPLogitsWarper(float("nan")), ValueError, "min_p"),
    (lambda: tp.TypicalLogitsWarper(1.0), ValueError, "typical_p"),
    (lambda: tp.EpsilonLogitsWarper(0.0), ValueError, "epsilon_cutoff"),
    (lambda: tp.EtaLogitsWarper(1.0), ValueError, "eta_cutoff"),
    (lambda: tp.RepetitionPenaltyLogitsProcessor(0.0), ValueError, "penalty"),
    (lambda: tp.RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=-1), ValueError, "prompt_ignore_length"),
    (lambda: tp.EncoderRepetitionPenaltyLogitsProcessor(1.2, torch.rand(1, 3)), TypeError, "encoder_input_ids"),
    (lambda: tp.EncoderRepetitionPenaltyLogitsProcessor(1.2, torch.tensor([[1, -2]])), ValueError,
     "encoder_input_ids"),
    (lambda: tp.PresenceFrequencyPenaltyLogitsProcessor(float("nan")), ValueError, "presence_penalty"),
    (lambda: tp.PresenceFrequencyPenaltyLogitsProcessor(0.0, float("inf")), ValueError, "frequency_penalty"),
    (lambda: tp.PresenceFrequencyPenaltyLogitsProcessor(0.1, prompt_length=-1), ValueError, "prompt_length"),
    (lambda: tp.NoRepeatNGramLogitsProcessor(0), ValueError, "ngram_size"),
    (lambda: tp.EncoderNoRepeatNGramLogitsProcessor(0, torch.tensor([[1, 2]])), ValueError, "encoder_ngram_size"),
    (lambda: tp.SequenceBiasLogitsProcessor([]), ValueError, "sequence_bias"),
    (lambda: tp.SequenceBiasLogitsProcessor([[[1, -1], 1.0]]), ValueError, "sequence_bias"),
    (lambda: tp.SequenceBiasLogitsProcessor([[[1], "big"]]), ValueError, "sequence_bias"),
    (lambda: tp.SequenceBiasLogitsProcessor({1: 2.0}), ValueError, "sequence_bias"),
    (lambda: tp.NoBadWordsLogitsProcessor([]), ValueError, "bad_words_ids"),
    (lambda: tp.NoBadWordsLogitsProcessor([1, 2]), ValueError, "bad_words_ids"),
    (lambda: tp.NoBadWordsLogitsProcessor([[1, -2]]), ValueError, "bad_words_ids"),
    (lambda: tp.NoBadWordsLogitsProcessor([[]]), ValueError, "bad_words_ids"),
    (lambda: tp.NoBadWordsLogitsProcessor([[1.0]]), ValueError, "bad_words_ids"),
    (lambda: tp.MinLengthLogitsProcessor(-1, 2), ValueError, "min_length"),
    (lambda: tp.MinLengthLogitsProcessor(3, [-1]), ValueError, "eos_token_id"),
    (lambda: tp.MinLengthLogitsProcessor(3, torch.tensor([2.0])), TypeError, "eos_token_id"),
    (lambda: tp.MinNewTokensLengthLogitsProcessor(-1, 2, 2), ValueError, "prompt_length_to_skip"),
    (lambda: tp.MinNewTokensLengthLogitsProcessor(3, -2, 2), ValueError, "min_new_tokens"),
    (lambda: tp.PrefixConstrainedLogitsProcessor("not callable", 1), TypeError, "prefix_allowed_tokens_fn"),
    (lambda: tp.PrefixConstrainedLogitsProcessor(lambda b, s: [1], 0), ValueError, "num_beams"),
    (lambda: tp.ForcedBOSTokenLogitsProcessor(-1), ValueError, "bos_token_id"),
    (lambda: tp.ForcedEOSTokenLogitsProcessor(10, [-1]), ValueError, "eos_token_id"),
    (lambda: tp.ExponentialDecayLengthPenalty((1,), 2, 5), ValueError, "exponential_decay_length_penalty"),
    (lambda: tp.ExponentialDecayLengthPenalty((1.5, 1.1), 2, 5), TypeError, "start_index"),
    (lambda: tp.SuppressTokensLogitsProcessor([1, -3]), ValueError, "suppress_tokens"),
    (lambda: tp.SuppressTokensAtBeginLogitsProcessor([1], -1), ValueError, "begin_index"),
    (lambda: tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, None), TypeError, "model"),
    (lambda: tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, _constant_model, None, torch.ones(1, 2)),
     ValueError, "unconditional_attention_mask"),
    (lambda: tp.WatermarkLogitsProcessor(10, "cpu", seeding_scheme="middlehash"), ValueError, "seeding_scheme"),
    (lambda: tp.WatermarkLogitsProcessor(10, "cpu", greenlist_ratio=1.0), ValueError, "greenlist_ratio"),
    (lambda: tp.WatermarkLogitsProcessor(10, "cpu", context_width=0), ValueError, "context_width"),
    (lambda: tp.WatermarkLogitsProcessor(0, "cpu"), ValueError, "vocab_size"),
]


@pytest.mark.parametrize("build,error,text", INVALID_CONSTRUCTIONS, ids=range(len(INVALID_CONSTRUCTIONS)))
def test_invalid_arguments_raise_naming_them(build, error, text):
    with pytest.raises(error, match=text):
        build()
    # transformers raises ValueError for wrong types too; code catching that keeps working.
    with pytest.raises(ValueError, match=text):
        build()


# (processor, input_ids, scores, expected exception, text) for problems only a call can reveal.
_IDS, _SCORES = make_inputs(0, 2, 20)
INVALID_CALLS = [
    (tp.NoBadWordsLogitsProcessor([[1, 20]]), _IDS, _SCORES, ValueError, "bad_words_ids"),
    (tp.SequenceBiasLogitsProcessor([[[25], 1.0]]), _IDS, _SCORES, ValueError, "sequence_bias"),
    (tp.ForcedBOSTokenLogitsProcessor(20), _IDS[:, :1], _SCORES, ValueError, "bos_token_id"),
    (tp.ForcedEOSTokenLogitsProcessor(5, [3, 30]), _IDS, _SCORES, ValueError, "eos_token_id"),
    (tp.ExponentialDecayLengthPenalty((1, 1.1), 21, 2), _IDS, _SCORES, ValueError, "eos_token_id"),
    (tp.EncoderRepetitionPenaltyLogitsProcessor(1.2, torch.tensor([[1, 2, 25]])), _IDS, _SCORES, ValueError,
     "encoder_input_ids"),
    (tp.EncoderNoRepeatNGramLogitsProcessor(2, torch.tensor([[1, 2], [3, 4], [5, 6]])), _IDS, _SCORES, ValueError,
     "encoder_input_ids"),
    (tp.WatermarkLogitsProcessor(30, "cpu"), _IDS, _SCORES, ValueError, "vocab_size"),
    (tp.PrefixConstrainedLogitsProcessor(lambda b, s: [], 1), _IDS, _SCORES, ValueError, "empty"),
    (tp.PrefixConstrainedLogitsProcessor(lambda b, s: [-1], 1), _IDS, _SCORES, ValueError, "prefix_allowed_tokens_fn"),
    (tp.PrefixConstrainedLogitsProcessor(lambda b, s: [20], 1), _IDS, _SCORES, ValueError, "prefix_allowed_tokens_fn"),
    (tp.PrefixConstrainedLogitsProcessor(lambda b, s: [1], 3), _IDS, _SCORES, ValueError, "num_beams"),
    (tp.RepetitionPenaltyLogitsProcessor(1.2), _IDS, _SCORES[0], ValueError, "scores"),
    (tp.RepetitionPenaltyLogitsProcessor(1.2), _IDS.float(), _SCORES, TypeError, "input_ids"),
    (tp.RepetitionPenaltyLogitsProcessor(1.2), _IDS[:1], _SCORES, ValueError, "input_ids"),
    (tp.TopKLogitsWarper(3), _IDS, _SCORES.long(), TypeError, "scores"),
]


@pytest.mark.parametrize("processor,input_ids,scores,error,text", INVALID_CALLS, ids=range(len(INVALID_CALLS)))
def test_invalid_calls_raise_naming_the_argument(processor, input_ids, scores, error, text):
    with pytest.raises(error, match=text):
        processor(input_ids, scores)
