"""Score shapes beyond ``[batch, vocab]``: turbogen's processors take exactly the shapes on which
transformers v4.57's classes work for every input, and give the same values there.

transformers' processors that act on the last dimension alone (warpers such as temperature and
top-k, the minimum-length and suppression processors) take ``[vocab]`` and ``[..., vocab]`` scores;
its repetition penalty takes ``[batch, positions, vocab]`` and penalises the last position; its
unbatched classifier-free guidance takes scores its ``[batch, vocab]`` unconditional scores
broadcast to (e.g. ``[1, 1, vocab]``). Processors that index rows fail in transformers on other
shapes (or only work while inactive), and turbogen's raise a ValueError naming ``scores`` instead.
"""

from __future__ import annotations

import pytest
import torch
import transformers.generation.logits_process as hf

import turbogen.processors as tp

from conftest import skip_on_transformers_4_45, skip_on_transformers_5
from test_processors import assert_identical
from tiny_models import tiny_model

VOCAB = 40
LENGTH = 6
# Shapes with extra or missing leading dimensions, as (scores shape, rows of input_ids).
LEADING_SHAPES = [((VOCAB,), 1), ((1, 1, VOCAB), 1), ((3, 1, VOCAB), 3), ((3, 2, VOCAB), 3), ((2, 1, 3, VOCAB), 2)]

# (class name, args, kwargs) of the processors whose transformers class works on the last dimension
# alone; the context is LENGTH tokens long, so each length-dependent one appears active and inactive.
LAST_DIMENSION_CASES = [
    ("TemperatureLogitsWarper", (0.7,), {}),
    ("TopKLogitsWarper", (5,), {}),
    ("TopKLogitsWarper", (3,), {"min_tokens_to_keep": 6}),
    ("EpsilonLogitsWarper", (0.02,), {}),
    ("EtaLogitsWarper", (0.02,), {"min_tokens_to_keep": 2}),
    ("LogitNormalization", (), {}),
    ("InfNanRemoveLogitsProcessor", (), {}),
    ("SuppressTokensLogitsProcessor", ([1, 4, 39],), {}),
    ("SuppressTokensAtBeginLogitsProcessor", ([1, 4],), {"begin_index": LENGTH}),
    ("SuppressTokensAtBeginLogitsProcessor", ([1, 4],), {"begin_index": LENGTH + 1}),
    ("MinLengthLogitsProcessor", (LENGTH + 1, [2, 3]), {}),
    ("MinLengthLogitsProcessor", (LENGTH, [2, 3]), {}),
    ("MinNewTokensLengthLogitsProcessor", (2, 5, [2, 3]), {}),
    ("MinNewTokensLengthLogitsProcessor", (2, 4, 3), {}),
]

# (class name, args, kwargs) of processors that need [batch, vocab] scores: transformers' fail on
# other shapes whenever they change a score.
ROW_INDEXING_CASES = [
    ("TopPLogitsWarper", (0.8,), {}),
    ("MinPLogitsWarper", (0.1,), {}),
    ("TypicalLogitsWarper", (0.9,), {}),
    ("NoRepeatNGramLogitsProcessor", (2,), {}),
    ("EncoderNoRepeatNGramLogitsProcessor", (2, torch.tensor([[1, 2, 3]])), {}),
    ("EncoderRepetitionPenaltyLogitsProcessor", (1.3, torch.tensor([[1, 2, 3]])), {}),
    ("SequenceBiasLogitsProcessor", ([[[3], 2.5], [[1, 3], -1.0]],), {}),
    ("NoBadWordsLogitsProcessor", ([[3], [1, 2]],), {"eos_token_id": 2}),
    ("PrefixConstrainedLogitsProcessor", (lambda batch_id, ids: [1, 2, 3], 1), {}),
    ("ForcedBOSTokenLogitsProcessor", (1,), {}),
    ("ForcedEOSTokenLogitsProcessor", (LENGTH + 1, [2, 3]), {}),
    ("ExponentialDecayLengthPenalty", ((1, 1.5), [2, 3], 2), {}),
    ("WatermarkLogitsProcessor", (VOCAB, "cpu"), {}),
    ("PresenceFrequencyPenaltyLogitsProcessor", (0.5, 0.2, 2), {}),
]


def inputs(seed: int, shape, rows: int):
    """Seeded ``(input_ids, scores)``: a repetitive context (so penalties and n-grams bite) and scores
    with a few infinities and a NaN (so inf/NaN removal has work)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 6, (rows, LENGTH), generator=generator)
    scores = torch.randn(*shape, generator=generator) * 3
    flat = scores.view(-1)
    flat[3], flat[7], flat[-1] = float("inf"), float("-inf"), float("nan")
    return input_ids, scores


def _case_id(case) -> str:
    name, args, kwargs = case
    return f"{name}-{len(args)}-{sorted(kwargs.items())}"


@pytest.mark.parametrize("shape,rows", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("case", LAST_DIMENSION_CASES, ids=_case_id)
def test_last_dimension_processors_take_any_leading_dimensions_like_transformers(case, shape, rows):
    name, args, kwargs = case
    input_ids, scores = inputs(len(shape), shape, rows)
    if name not in ("LogitNormalization", "InfNanRemoveLogitsProcessor"):
        scores = torch.nan_to_num(scores, nan=0.0)
    ours = getattr(tp, name)(*args, **kwargs)(input_ids, scores.clone())
    theirs = getattr(hf, name)(*args, **kwargs)(input_ids, scores.clone())
    assert_identical(ours, theirs)


@skip_on_transformers_4_45("its repetition penalty takes [batch, vocab] scores only (4.57 also [batch, positions, "
                           "vocab], penalising the last position) and has no `prompt_ignore_length`")
@pytest.mark.parametrize("prompt_ignore_length", [None, 2])
@pytest.mark.parametrize("penalty", [1.3, 0.6])
@pytest.mark.parametrize("shape", [(1, 1, VOCAB), (3, 1, VOCAB), (3, 4, VOCAB)], ids=str)
def test_repetition_penalty_on_positions_penalises_the_last_one_like_transformers(shape, penalty,
                                                                                  prompt_ignore_length):
    input_ids, scores = inputs(7, shape, shape[0])
    scores = torch.nan_to_num(scores, nan=0.0, posinf=5.0, neginf=-5.0)
    before = scores.clone()
    ours = tp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length)(input_ids, scores)
    # transformers penalises in place and returns the same tensor, so it gets a copy.
    theirs = hf.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length)(input_ids, scores.clone())
    assert_identical(ours, theirs)
    assert torch.equal(scores, before), "turbogen's processors leave their inputs untouched"
    assert not torch.equal(ours[:, -1], before[:, -1])


@pytest.mark.parametrize("shape,rows", [((1, 1, VOCAB), 1), ((3, 1, VOCAB), 1), ((1, 2, VOCAB), 2)], ids=str)
def test_unbatched_cfg_takes_scores_the_unconditional_scores_broadcast_to(shape, rows):
    model = tiny_model("llama")
    vocab = model.config.vocab_size
    shape = shape[:-1] + (vocab,)
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, vocab, (rows, 4), generator=generator)
    ours = tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, model)
    theirs = hf.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, model)
    with torch.no_grad():
        for _ in range(2):
            scores = torch.randn(*shape, generator=generator)
            assert_identical(ours(input_ids, scores), theirs(input_ids, scores))
            input_ids = torch.cat([input_ids, torch.randint(0, vocab, (rows, 1), generator=generator)], dim=1)


def test_unbatched_cfg_rejects_scores_that_would_broadcast_to_another_shape():
    model = tiny_model("llama")
    vocab = model.config.vocab_size
    processor = tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, model)
    # transformers returns [2, 2, vocab] scores here (every row guided by every unconditional row).
    with pytest.raises(ValueError, match="input_ids"):
        processor(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1, vocab))


def test_unbatched_cfg_with_scale_one_takes_any_leading_dimensions():
    scores = torch.randn(2, 1, 3, 20)
    processed = tp.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.0, lambda *args, **kwargs: None)(
        torch.zeros(1, 2, dtype=torch.long), scores)
    assert_identical(processed, scores.log_softmax(dim=-1))


@pytest.mark.parametrize("shape,rows", [((VOCAB,), 1), ((1, 1, VOCAB), 1), ((3, 1, VOCAB), 3)], ids=str)
@pytest.mark.parametrize("case", ROW_INDEXING_CASES, ids=_case_id)
def test_row_indexing_processors_reject_other_shapes_naming_scores(case, shape, rows):
    name, args, kwargs = case
    input_ids, scores = inputs(1, shape, rows)
    with pytest.raises(ValueError, match="scores"):
        getattr(tp, name)(*args, **kwargs)(input_ids, scores)


# transformers 5 rewrote these two on the last dimension; 4.57, the spec, indexes rows.
_VECTORISED_IN_5 = ("MinPLogitsWarper", "NoRepeatNGramLogitsProcessor")


def _premise_case(case):
    if case[0] in _VECTORISED_IN_5:
        return pytest.param(case, marks=skip_on_transformers_5(f"{case[0]} works on [..., vocab] scores"))
    return case


@pytest.mark.parametrize("case", [_premise_case(case) for case in ROW_INDEXING_CASES if hasattr(hf, case[0])],
                         ids=_case_id)
def test_transformers_fails_on_those_shapes_when_the_processor_acts(case):
    """The premise of the test above: transformers gives no usable result on these shapes, so
    raising loses nothing. Each case is arranged to change scores on [batch, vocab] input."""
    name, args, kwargs = case
    input_ids, scores = inputs(1, (1, 1, VOCAB), 1)
    input_ids = input_ids[:, :1] if name == "ForcedBOSTokenLogitsProcessor" else input_ids
    input_ids = torch.tensor([[1, 2, 1, 2, 1, 2]]) if "NGram" in name else input_ids
    with pytest.raises((IndexError, RuntimeError)):
        getattr(hf, name)(*args, **kwargs)(input_ids, torch.nan_to_num(scores, nan=0.0))
