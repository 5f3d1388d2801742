"""Logits stages (turbogen.processors.stages) against the processor lists they stand for.

The contract, checked bit for bit on seeded random token streams: after accepting the tokens of
``input_ids`` beyond the prompt, ``stages.apply(input_ids, scores)`` equals
``LogitsProcessorList(processors)(input_ids, scores)``, also after reorders (beam search), rollbacks
(equal to the shortened history) and resets (equal to the new prompt's history). Rollbacks of a
different length per row (speculative decoding) leave rows of different lengths, so there each row
is checked against the processors applied to that row's own history.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers.generation.logits_process as hf

import turbogen.processors as tp
from turbogen.processors.ngram_stages import NoRepeatNGramStage
from turbogen.processors.penalty_stages import PenaltyStage
from turbogen.processors.stages import ProcessorStage

from conftest import NO_PROMPT_IGNORE_LENGTH_IN_4_45, TRANSFORMERS_4_45, skip_on_transformers_4_45
from test_processors import assert_identical

ROWS, VOCAB, PROMPT_LENGTH, PAD_ID = 4, 24, 5, 0
WINDOW = 8


def transformers_repetition_penalty(penalty: float, prompt_ignore_length: int):
    """transformers' repetition penalty leaving the first ``prompt_ignore_length`` tokens unpenalised; under
    transformers 4.45, whose class has no such parameter (4.56 added it), 4.45's class penalising every token."""
    if TRANSFORMERS_4_45:
        return hf.RepetitionPenaltyLogitsProcessor(penalty)
    return hf.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=prompt_ignore_length)


def mixed_processors():
    """A processor list mixing stateful built-ins (turbogen's and transformers' repetition penalty,
    the presence/frequency penalty) with stateless ones of every origin (a user callable included)."""
    return tp.LogitsProcessorList([
        tp.RepetitionPenaltyLogitsProcessor(1.4),
        transformers_repetition_penalty(0.8, prompt_ignore_length=3),
        tp.PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.25, prompt_length=PROMPT_LENGTH),
        tp.NoRepeatNGramLogitsProcessor(2),
        hf.NoRepeatNGramLogitsProcessor(3),
        tp.MinNewTokensLengthLogitsProcessor(PROMPT_LENGTH, 3, [1, 2]),
        hf.NoBadWordsLogitsProcessor([[3, 4], [7]], eos_token_id=2),
        lambda input_ids, scores: scores + 0.01 * input_ids.shape[-1],
        tp.TemperatureLogitsWarper(0.7),
        hf.TopKLogitsWarper(12),
    ])


# Each stateful built-in, alone: together, the n-gram bans and the top-k filter would hide most
# penalised scores behind -inf, and a wrong penalty could go unnoticed.
STATEFUL_PROCESSORS = {
    "repetition": lambda: tp.RepetitionPenaltyLogitsProcessor(1.4),
    "repetition-transformers-ignoring-3": lambda: transformers_repetition_penalty(0.8, prompt_ignore_length=3),
    "presence-frequency": lambda: tp.PresenceFrequencyPenaltyLogitsProcessor(0.5, 0.25, prompt_length=PROMPT_LENGTH),
    "presence-frequency-from-2": lambda: tp.PresenceFrequencyPenaltyLogitsProcessor(-0.3, 0.5, prompt_length=2),
    "1-gram": lambda: tp.NoRepeatNGramLogitsProcessor(1),
    "2-gram": lambda: tp.NoRepeatNGramLogitsProcessor(2),
    "3-gram-transformers": lambda: hf.NoRepeatNGramLogitsProcessor(3),
}


def stateful_processors():
    """Processors that never read ``input_ids`` once staged (so rows may differ in length)."""
    return [build() for build in STATEFUL_PROCESSORS.values()] + [tp.TopKLogitsWarper(12)]


def left_padded_prompts(generator: torch.Generator, rows: int = ROWS, length: int = PROMPT_LENGTH) -> torch.Tensor:
    """Random prompts from a small vocabulary (so tokens repeat), row ``r`` left-padded with ``r`` pads."""
    prompts = torch.randint(1, 10, (rows, length), generator=generator)
    for row in range(rows):
        prompts[row, :min(row, length - 1)] = PAD_ID
    return prompts


def random_scores(generator: torch.Generator, rows: int = ROWS) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=generator) * 3


# --------------------------------------------------------------------------------------------
# The contract on random streams
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,dtype", [(seed, torch.float32) for seed in range(6)]
                         + [(6, torch.float16), (7, torch.bfloat16)], ids=str)
def test_stages_equal_the_processor_list_over_a_random_stream(seed, dtype):
    """Rectangular histories: every row accepts the same number of tokens, rollbacks and resets
    keep the rows equally long, so the processor list sees one ``input_ids`` tensor."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    processors = mixed_processors()
    input_ids = left_padded_prompts(generator)
    stages = tp.LogitsStages.from_processors(processors, input_ids, rollback_window=WINDOW)
    # Per row, how many of the last accepted tokens can be rolled back: all of them, up to the window.
    retained = torch.zeros(ROWS, dtype=torch.long)
    for _ in range(24):
        scores = random_scores(generator).to(dtype)
        assert_identical(stages.apply(input_ids, scores), processors(input_ids, scores))
        action = rng.choice(["accept"] * 4 + ["accept several", "rollback", "reorder", "reset"])
        if action.startswith("accept"):
            count = 1 if action == "accept" else rng.randint(2, 4)
            tokens = torch.randint(0, 10, (ROWS, count), generator=generator)
            stages.accept(tokens[:, 0] if count == 1 and rng.random() < 0.5 else tokens)
            input_ids = torch.cat([input_ids, tokens], dim=1)
            retained = torch.clamp(retained + count, max=WINDOW)
        elif action == "rollback":
            n = rng.randint(0, int(retained.min()))
            stages.rollback(torch.arange(ROWS), torch.full((ROWS,), n))
            input_ids = input_ids[:, :input_ids.shape[1] - n]
            retained -= n
        elif action == "reorder":
            index = torch.randint(0, ROWS, (ROWS,), generator=generator)
            stages.reorder(index)
            input_ids, retained = input_ids[index], retained[index]
        else:
            rows = torch.tensor(rng.sample(range(ROWS), rng.randint(1, ROWS)))
            new_prompts = left_padded_prompts(generator, len(rows), input_ids.shape[1])
            stages.reset(rows, new_prompts)
            input_ids = input_ids.clone()
            input_ids[rows] = new_prompts
            retained[rows] = 0
    scores = random_scores(generator)
    assert_identical(stages(input_ids, scores), processors(input_ids, scores))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("processor", [
    pytest.param(name, marks=skip_on_transformers_4_45(NO_PROMPT_IGNORE_LENGTH_IN_4_45)) if "ignoring" in name else name
    for name in [*STATEFUL_PROCESSORS, "all"]])
def test_stages_equal_the_processors_on_each_row_after_ragged_rollbacks(processor, seed):
    """Speculative decoding: rows accept several tokens, then each forgets its own number of them."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    processors = tp.LogitsProcessorList(
        stateful_processors() if processor == "all" else [STATEFUL_PROCESSORS[processor]()])
    prompts = left_padded_prompts(generator)
    histories = list(prompts)
    retained = [0] * ROWS  # as in the test above
    stages = tp.LogitsStages.from_processors(processors, prompts, vocab_size=VOCAB, rollback_window=WINDOW)
    for _ in range(20):
        scores = random_scores(generator)
        # The stages never read the history; an empty one shows it.
        processed = stages.apply(torch.empty(ROWS, 0, dtype=torch.long), scores)
        for row in range(ROWS):
            expected = processors(histories[row].unsqueeze(0), scores[row:row + 1])
            assert_identical(processed[row:row + 1], expected)
        action = rng.choice(["accept", "accept", "rollback", "reorder", "reset"])
        if action == "accept":
            tokens = torch.randint(0, 10, (ROWS, rng.randint(1, 5)), generator=generator)
            stages.accept(tokens)
            histories = [torch.cat([history, row_tokens]) for history, row_tokens in zip(histories, tokens)]
            retained = [min(count + tokens.shape[1], WINDOW) for count in retained]
        elif action == "rollback":
            rows = rng.sample(range(ROWS), rng.randint(1, ROWS))
            n = [rng.randint(0, retained[row]) for row in rows]
            stages.rollback(torch.tensor(rows), torch.tensor(n))
            for row, count in zip(rows, n):
                histories[row] = histories[row][:len(histories[row]) - count]
                retained[row] -= count
        elif action == "reorder":
            index = [rng.randrange(ROWS) for _ in range(ROWS)]
            stages.reorder(torch.tensor(index))
            histories, retained = [histories[i] for i in index], [retained[i] for i in index]
        else:
            row = rng.randrange(ROWS)
            prompt = torch.randint(0, 10, (1, rng.randint(1, 9)), generator=generator)
            stages.reset(torch.tensor([row]), prompt)
            histories[row], retained[row] = prompt[0], 0


def test_repetition_penalty_counts_left_padding_like_transformers():
    prompts = torch.tensor([[PAD_ID, PAD_ID, 5, 6], [3, 4, 5, 6]])
    processor = hf.RepetitionPenaltyLogitsProcessor(2.0)
    stages = tp.LogitsStages.from_processors([processor], prompts)
    scores = torch.ones(2, 8)
    processed = stages.apply(prompts, scores)
    assert_identical(processed, processor(prompts, scores))
    assert processed[0, PAD_ID] == 0.5 and processed[1, PAD_ID] == 1.0


def test_generated_tokens_before_the_prompt_length_are_not_counted():
    """PresenceFrequencyPenaltyLogitsProcessor counts positions >= prompt_length, whatever the
    prompt given to the stages: with a shorter prompt, the first accepted tokens are skipped."""
    processor = tp.PresenceFrequencyPenaltyLogitsProcessor(1.0, 0.0, prompt_length=4)
    prompt = torch.tensor([[1, 2]])
    stages = tp.LogitsStages.from_processors([processor], prompt)
    stages.accept(torch.tensor([[3, 4, 5]]))
    history = torch.tensor([[1, 2, 3, 4, 5]])
    scores = torch.zeros(1, 8)
    processed = stages.apply(history, scores)
    assert_identical(processed, processor(history, scores))
    assert processed[0].tolist() == [0, 0, 0, 0, 0, -1, 0, 0]


# --------------------------------------------------------------------------------------------
# Building the pipeline
# --------------------------------------------------------------------------------------------


def test_from_processors_makes_the_penalties_stateful_and_wraps_the_rest():
    class ScaledRepetitionPenalty(tp.RepetitionPenaltyLogitsProcessor):
        """A subclass may change the computation, so it keeps the stateless adapter."""

    processors = [
        tp.RepetitionPenaltyLogitsProcessor(1.2),
        hf.RepetitionPenaltyLogitsProcessor(1.2),
        tp.PresenceFrequencyPenaltyLogitsProcessor(0.1, 0.2),
        tp.NoRepeatNGramLogitsProcessor(2),
        hf.NoRepeatNGramLogitsProcessor(3),
        ScaledRepetitionPenalty(1.2),
        hf.TopKLogitsWarper(3),
    ]
    stages = tp.LogitsStages.from_processors(tp.LogitsProcessorList(processors), torch.tensor([[1, 2]]))
    kinds = [type(stage) for stage in stages]
    # A repetition penalty followed by the presence/frequency penalty share one stage (one pass, one state).
    assert kinds == [PenaltyStage, PenaltyStage, NoRepeatNGramStage, NoRepeatNGramStage, ProcessorStage,
                     ProcessorStage]
    assert stages[1].processors == (processors[1], processors[2])
    assert len(stages.processors) == len(processors)
    assert all(ours is theirs for ours, theirs in zip(stages.processors, processors))
    assert isinstance(stages, tp.LogitsStage) and all(isinstance(stage, tp.LogitsStage) for stage in stages)


def test_a_pipeline_says_whether_it_reads_the_history():
    prompt = torch.tensor([[1, 2]])
    assert not tp.LogitsStages.from_processors(stateful_processors()[:-1], prompt).reads_input_ids
    assert tp.LogitsStages.from_processors(stateful_processors(), prompt).reads_input_ids  # the top-k warper
    assert not tp.LogitsStages([]).reads_input_ids


def test_a_pipeline_of_nothing_returns_the_scores():
    stages = tp.LogitsStages.from_processors([], torch.tensor([[1]]))
    scores = torch.randn(1, 5)
    assert len(stages) == 0 and stages.apply(torch.tensor([[1]]), scores) is scores


def test_keyword_arguments_reach_the_processors_that_take_them():
    class NeedsStep(tp.LogitsProcessor):
        def __call__(self, input_ids, scores, step):
            return scores + step

    input_ids = torch.tensor([[1, 2]])
    stages = tp.LogitsStages.from_processors([tp.RepetitionPenaltyLogitsProcessor(2.0), NeedsStep()], input_ids)
    scores = torch.ones(1, 4)
    assert stages(input_ids, scores, step=3).tolist() == [[4.0, 3.5, 3.5, 4.0]]
    with pytest.raises(ValueError, match="step"):
        stages(input_ids, scores)


def test_pipelines_nest():
    prompt = torch.tensor([[1, 2]])
    inner = tp.LogitsStages.from_processors([tp.RepetitionPenaltyLogitsProcessor(2.0)], prompt)
    outer = tp.LogitsStages([inner, ProcessorStage(tp.TemperatureLogitsWarper(0.5))])
    outer.accept(torch.tensor([3]))
    assert outer.apply(torch.tensor([[1, 2, 3]]), torch.ones(1, 5)).tolist() == [[2.0, 1.0, 1.0, 1.0, 2.0]]


def test_stages_among_the_processors_are_used_as_they_are():
    prompt = torch.tensor([[1, 2]])
    stage = tp.LogitsStages.from_processors([tp.PresenceFrequencyPenaltyLogitsProcessor(1.0)], prompt)[0]
    stages = tp.LogitsStages.from_processors([stage, tp.TemperatureLogitsWarper(0.5)], prompt)
    assert stages[0] is stage and stages.processors[0] is stage.processor
    stages.accept(torch.tensor([3]))
    assert stages.apply(torch.tensor([[1, 2, 3]]), torch.ones(1, 5)).tolist() == [[2.0, 0.0, 0.0, 0.0, 2.0]]


def test_stages_leave_their_inputs_untouched():
    generator = torch.Generator().manual_seed(0)
    prompts = left_padded_prompts(generator)
    stages = tp.LogitsStages.from_processors(mixed_processors(), prompts)
    scores = random_scores(generator)
    before_ids, before_scores = prompts.clone(), scores.clone()
    stages.apply(prompts, scores)
    assert torch.equal(prompts, before_ids) and torch.equal(scores, before_scores)


# --------------------------------------------------------------------------------------------
# State sizing, capture, validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [None, VOCAB])
def test_tokens_accepted_before_the_first_apply_count(vocab_size):
    """Without ``vocab_size`` the state grows to the largest id seen until the scores fix it."""
    processor = tp.PresenceFrequencyPenaltyLogitsProcessor(0.0, 1.0)
    stages = tp.LogitsStages.from_processors([processor], torch.tensor([[1, 1]]), vocab_size=vocab_size)
    stages.accept(torch.tensor([[20, 20, 3]]))
    stages.reset(torch.tensor([0]), torch.tensor([[22, 2]]))
    stages.accept(torch.tensor([21]))
    history = torch.tensor([[22, 2, 21]])
    scores = torch.zeros(1, VOCAB)
    assert_identical(stages.apply(history, scores), processor(history, scores))


def test_state_sized_for_another_vocabulary_is_an_error():
    stages = tp.LogitsStages.from_processors([tp.RepetitionPenaltyLogitsProcessor(1.5)], torch.tensor([[30]]))
    with pytest.raises(ValueError, match="vocabulary"):
        stages.apply(torch.tensor([[30]]), torch.zeros(1, 20))
    sized = tp.LogitsStages.from_processors([tp.RepetitionPenaltyLogitsProcessor(1.5)], torch.tensor([[3]]),
                                            vocab_size=20)
    with pytest.raises(ValueError, match="vocabulary"):
        sized.apply(torch.tensor([[3]]), torch.zeros(1, 21))


def test_a_decode_step_with_stateful_stages_compiles_into_one_graph_once():
    """No host synchronisation and no data-dependent Python (``fullgraph=True`` fails on either), and
    no state that changes the graph from step to step (a recompilation is an error here)."""
    processors = stateful_processors()
    prompts = left_padded_prompts(torch.Generator().manual_seed(0))
    sizes = {"vocab_size": VOCAB, "rollback_window": WINDOW, "max_length": 32}
    stages = tp.LogitsStages.from_processors(processors, prompts, **sizes)
    twin = tp.LogitsStages.from_processors(processors, prompts, **sizes)
    assert_step_compiles_once(stages, twin, prompts, random_scores, torch.Generator().manual_seed(1), tokens=10)


def assert_step_compiles_once(stages, twin, prompts, make_scores, generator, tokens: int) -> None:
    """A decode step calling every verb of ``stages`` (4 rows) compiles with ``fullgraph=True`` into one graph
    reused for four steps (a recompilation is an error) and processes as ``twin`` does eagerly. ``make_scores``
    draws a step's scores from ``generator``; accepted tokens are drawn from ``[0, tokens)``."""
    torch._dynamo.reset()  # every caller compiles this same `step` code, for its own shapes

    def step(scores, accepted, rows, n, index):
        processed = stages.apply(prompts, scores)
        stages.accept(accepted)
        stages.rollback(rows, n)
        stages.reorder(index)
        return processed

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(4):
            arguments = (make_scores(generator), torch.randint(0, tokens, (4, 3), generator=generator),
                         torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([1, 0, 3, 3]))
            expected = twin.apply(prompts, arguments[0])
            twin.accept(arguments[1])
            twin.rollback(*arguments[2:4])
            twin.reorder(arguments[4])
            assert_identical(compiled(*arguments), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_decode_step_with_stateful_stages_replays_in_a_cuda_graph():
    device = torch.device("cuda")
    processors = stateful_processors()
    prompts = left_padded_prompts(torch.Generator().manual_seed(0)).to(device)
    sizes = {"vocab_size": VOCAB, "rollback_window": WINDOW, "max_length": 64}
    stages = tp.LogitsStages.from_processors(processors, prompts, **sizes)
    twin = tp.LogitsStages.from_processors(processors, prompts, **sizes)
    inputs = {
        "scores": torch.zeros(ROWS, VOCAB, device=device),
        "tokens": torch.zeros(ROWS, 3, dtype=torch.long, device=device),
        "rows": torch.tensor([0, 2], device=device),
        "n": torch.zeros(2, dtype=torch.long, device=device),
        "index": torch.arange(ROWS, device=device),
    }

    def step(pipeline):
        processed = pipeline.apply(prompts, inputs["scores"])
        pipeline.accept(inputs["tokens"])
        pipeline.rollback(inputs["rows"], inputs["n"])
        pipeline.reorder(inputs["index"])
        return processed

    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        step(stages)  # warm-up, outside the capture
    torch.cuda.current_stream().wait_stream(side_stream)
    step(twin)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        processed = step(stages)
    generator = torch.Generator().manual_seed(2)
    for _ in range(4):
        inputs["scores"].copy_(random_scores(generator))
        inputs["tokens"].copy_(torch.randint(0, 10, (ROWS, 3), generator=generator))
        inputs["n"].copy_(torch.randint(0, 4, (2,), generator=generator))
        inputs["index"].copy_(torch.randint(0, ROWS, (ROWS,), generator=generator))
        graph.replay()
        assert_identical(processed, step(twin))


# (callable given fresh stages and acting on them, expected exception, text the message must contain)
INVALID_USES = [
    (lambda stages: stages.accept(torch.tensor([[1.0]])), TypeError, "tokens"),
    (lambda stages: stages.accept(torch.tensor([1, 2, 3])), ValueError, "tokens"),
    (lambda stages: stages.accept(torch.ones(2, 1, 1, dtype=torch.long)), ValueError, "tokens"),
    (lambda stages: stages.rollback(torch.tensor([0]), torch.tensor([1])), ValueError, "n"),
    (lambda stages: stages.rollback(torch.tensor([0]), torch.tensor([-1])), ValueError, "n"),
    (lambda stages: stages.rollback(torch.tensor([0, 1]), torch.tensor([0])), ValueError, "n"),
    (lambda stages: stages.rollback([0], torch.tensor([0])), TypeError, "rows"),
    (lambda stages: stages.reorder(torch.tensor([0])), ValueError, "index"),
    (lambda stages: stages.reset(torch.tensor([0]), torch.tensor([[1], [2]])), ValueError, "prompt_ids"),
    (lambda stages: stages.reset(torch.tensor([0]), torch.tensor([[-1]])), ValueError, "prompt_ids"),
    (lambda stages: stages.apply(torch.tensor([[1]]), torch.zeros(3, 8)), ValueError, "scores"),
]


@pytest.mark.parametrize("use,error,text", INVALID_USES, ids=range(len(INVALID_USES)))
def test_invalid_uses_raise_naming_the_argument(use, error, text):
    stages = tp.LogitsStages.from_processors([tp.RepetitionPenaltyLogitsProcessor(1.5)], torch.tensor([[1], [2]]))
    with pytest.raises(error, match=text):
        use(stages)


def test_rolling_back_more_than_the_window_is_an_error():
    processor = tp.RepetitionPenaltyLogitsProcessor(1.5)
    stages = tp.LogitsStages.from_processors([processor], torch.tensor([[1]]), rollback_window=2)
    stages.accept(torch.tensor([[2, 3, 4]]))  # more at once than the window holds: the last 2 are kept
    stages.rollback(torch.tensor([0]), torch.tensor([2]))
    history, scores = torch.tensor([[1, 2]]), torch.ones(1, 6)
    assert_identical(stages.apply(history, scores), processor(history, scores))
    with pytest.raises(ValueError, match="rollback_window"):
        stages.rollback(torch.tensor([0]), torch.tensor([1]))


def test_the_ngram_history_grows_as_rows_do_unless_its_capacity_is_fixed():
    processor = tp.NoRepeatNGramLogitsProcessor(2)
    prompt = torch.tensor([[1, 2, 3]])
    growing = tp.LogitsStages.from_processors([processor], prompt)
    fixed = tp.LogitsStages.from_processors([processor], prompt, max_length=5)
    for stages in (growing, fixed):
        stages.accept(torch.tensor([[1, 2]]))
    history = torch.tensor([[1, 2, 3, 1, 2]])
    scores = torch.zeros(1, 6)
    for stages in (growing, fixed):
        # 2 followed 1 and 3 followed 2: with the context ending in 2, 3 is banned.
        assert_identical(stages.apply(history, scores), processor(history, scores))
        assert stages.apply(history, scores)[0, 3] == float("-inf")
    growing.accept(torch.tensor([[3, 4, 5, 1]]))
    with pytest.raises(RuntimeError):
        fixed.accept(torch.tensor([[3]]))
    with pytest.raises(ValueError, match="max_length"):
        fixed.reset(torch.tensor([0]), torch.ones(1, 6, dtype=torch.long))


def test_the_ngram_ban_rolls_back_any_number_of_accepted_tokens():
    stages = tp.LogitsStages.from_processors([tp.NoRepeatNGramLogitsProcessor(2)], torch.tensor([[1]]),
                                             rollback_window=1)
    stages.accept(torch.tensor([[2, 1, 3, 1]]))
    stages.rollback(torch.tensor([0]), torch.tensor([2]))
    # The history is back to 1 2 1: after 1 came 2, so 2 is banned (3 no longer is).
    assert stages.apply(None, torch.zeros(1, 4)).tolist() == [[0, 0, float("-inf"), 0]]
    with pytest.raises(ValueError, match="accepted"):
        stages.rollback(torch.tensor([0]), torch.tensor([3]))


def test_invalid_pipelines_raise_naming_the_argument():
    with pytest.raises(TypeError, match="stages"):
        tp.LogitsStages([tp.TemperatureLogitsWarper(0.5)])
    with pytest.raises(TypeError, match="processors"):
        tp.LogitsStages.from_processors(tp.TemperatureLogitsWarper(0.5), torch.tensor([[1]]))
    with pytest.raises(TypeError, match="prompt_ids"):
        tp.LogitsStages.from_processors([], [[1]])
    with pytest.raises(TypeError, match="processor"):
        ProcessorStage("not callable")
    for name, value in (("vocab_size", 0), ("rollback_window", 2.0), ("max_length", -1)):
        with pytest.raises(ValueError, match=name):
            tp.LogitsStages.from_processors([], torch.tensor([[1]]), **{name: value})
