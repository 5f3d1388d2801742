"""The incremental n-gram stages (turbogen.processors.ngram_stages) against the processors they stand for.

Bit for bit on seeded random token streams mixing ``accept`` (one or several tokens), ``rollback``
(any number, a different one per row), ``reorder`` and ``reset``: each row is checked against the
processor applied to that row's own history (rows differ in length after ragged rollbacks), with
turbogen's and transformers' classes, every n-gram size from 1 to 5, and a growing or fixed capacity.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers.generation.logits_process as hf

import turbogen.processors as tp
from turbogen.processors import ngram_stages
from turbogen.processors.ngram_stages import EncoderNoRepeatNGramStage, NoRepeatNGramStage, ngram_stage_for

from test_processors import assert_identical
from test_stages import assert_step_compiles_once

ROWS, VOCAB = 4, 12
# Small token range, so that n-grams repeat and bans are frequent.
TOKENS = 5
MAX_LENGTH = 96


def random_scores(generator: torch.Generator, rows: int = ROWS, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(rows, VOCAB, generator=generator) * 3).to(dtype)


def check_rows(stage, processor, histories, scores, encoder_rows_per_prompt=None):
    """The stage's apply equals the processor applied to each row's own history."""
    processed = stage.apply(None, scores)
    for row, history in enumerate(histories):
        if encoder_rows_per_prompt is None:
            expected = processor(history.unsqueeze(0), scores[row:row + 1].clone())
        else:
            # The encoder processor maps hypotheses to prompts by position: run it on the whole
            # batch with every row's history replaced by this one, and read this row.
            batch = history.unsqueeze(0).expand(len(histories), -1)
            expected = processor(batch, scores.clone())[row:row + 1]
        assert_identical(processed[row:row + 1], expected)


def run_stream(stage, processor, prompts, seed, steps=40, encoder_rows_per_prompt=None, dtype=torch.float32):
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    histories = list(prompts)
    accepted = [0] * len(histories)
    rows = len(histories)
    for _ in range(steps):
        check_rows(stage, processor, histories, random_scores(generator, rows, dtype), encoder_rows_per_prompt)
        action = rng.choice(["accept"] * 4 + ["accept several", "rollback", "reorder", "reset"])
        if action.startswith("accept"):
            count = 1 if action == "accept" else rng.randint(2, 4)
            tokens = torch.randint(0, TOKENS, (rows, count), generator=generator)
            stage.accept(tokens[:, 0] if count == 1 and rng.random() < 0.5 else tokens)
            histories = [torch.cat([history, row_tokens]) for history, row_tokens in zip(histories, tokens)]
            accepted = [total + count for total in accepted]
        elif action == "rollback":
            chosen = rng.sample(range(rows), rng.randint(1, rows))
            n = [rng.randint(0, accepted[row]) for row in chosen]  # any number: no window
            stage.rollback(torch.tensor(chosen), torch.tensor(n))
            for row, count in zip(chosen, n):
                histories[row] = histories[row][:len(histories[row]) - count]
                accepted[row] -= count
        elif action == "reorder":
            index = [rng.randrange(rows) for _ in range(rows)]
            if rng.random() < 0.3:
                index = list(range(rows))[::-1]  # a pure permutation
            stage.reorder(torch.tensor(index))
            histories, accepted = [histories[i] for i in index], [accepted[i] for i in index]
        else:
            chosen = rng.sample(range(rows), rng.randint(1, rows))
            length = rng.randint(1, 12)
            new_prompts = torch.randint(0, TOKENS, (len(chosen), length), generator=generator)
            stage.reset(torch.tensor(chosen), new_prompts)
            for row, prompt in zip(chosen, new_prompts):
                histories[row], accepted[row] = prompt, 0
    check_rows(stage, processor, histories, random_scores(generator, rows, dtype), encoder_rows_per_prompt)


NGRAM_PROCESSORS = [(origin, size) for origin in ("turbogen", "transformers") for size in range(1, 6)]


@pytest.mark.parametrize("origin,size", NGRAM_PROCESSORS, ids=str)
@pytest.mark.parametrize("max_length", [None, MAX_LENGTH])
@pytest.mark.parametrize("seed", range(3))
def test_no_repeat_ngram_stage_equals_the_processor_over_a_random_stream(origin, size, max_length, seed):
    processor = (tp if origin == "turbogen" else hf).NoRepeatNGramLogitsProcessor(size)
    prompts = torch.randint(0, TOKENS, (ROWS, 1 + seed * 3), generator=torch.Generator().manual_seed(seed))
    stage = ngram_stage_for(processor, prompts, max_length=max_length)
    assert type(stage) is NoRepeatNGramStage
    run_stream(stage, processor, prompts, seed=10 * size + seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_no_repeat_ngram_stage_keeps_the_scores_dtype(dtype):
    processor = hf.NoRepeatNGramLogitsProcessor(2)
    prompts = torch.randint(0, TOKENS, (ROWS, 6), generator=torch.Generator().manual_seed(0))
    run_stream(ngram_stage_for(processor, prompts), processor, prompts, seed=5, steps=15, dtype=dtype)


@pytest.mark.parametrize("origin,size", [(origin, size) for origin in ("turbogen", "transformers")
                                         for size in range(1, 5)], ids=str)
@pytest.mark.parametrize("encoder_length", [2, 14])
@pytest.mark.parametrize("seed", range(2))
def test_encoder_no_repeat_ngram_stage_equals_the_processor_over_a_random_stream(origin, size, encoder_length, seed):
    generator = torch.Generator().manual_seed(seed)
    prompts_count, per_prompt = 2, 3  # 2 prompts, 3 hypotheses each
    encoder_ids = torch.randint(0, TOKENS, (prompts_count, encoder_length), generator=generator)
    processor = (tp if origin == "turbogen" else hf).EncoderNoRepeatNGramLogitsProcessor(size, encoder_ids)
    prompts = torch.randint(0, TOKENS, (prompts_count * per_prompt, 1 + seed), generator=generator)
    stage = ngram_stage_for(processor, prompts, max_length=MAX_LENGTH if seed else None)
    assert type(stage) is EncoderNoRepeatNGramStage
    run_stream(stage, processor, prompts, seed=seed, steps=30, encoder_rows_per_prompt=per_prompt)


def test_a_single_encoder_prompt_may_be_one_dimensional():
    processor = hf.EncoderNoRepeatNGramLogitsProcessor(2, torch.tensor([1, 2, 3, 1, 4]))
    stage = ngram_stage_for(processor, torch.tensor([[0, 1], [3, 1]]))
    scores = torch.zeros(2, 6)
    # After 1 came 2 and 4 in the prompt.
    inf = float("-inf")
    assert stage.apply(None, scores).tolist() == [[0, 0, inf, 0, inf, 0]] * 2


def test_hash_collisions_never_ban_anything(monkeypatch):
    """Every prefix in one bucket: the probes find each by its real tokens, and no other."""
    monkeypatch.setattr(ngram_stages, "_prefix_hash", lambda tokens: torch.zeros(tokens.shape[:-1], dtype=torch.long))
    encoder_ids = torch.randint(0, TOKENS, (2, 30), generator=torch.Generator().manual_seed(3))
    processor = tp.EncoderNoRepeatNGramLogitsProcessor(3, encoder_ids)
    prompts = torch.randint(0, TOKENS, (4, 3), generator=torch.Generator().manual_seed(4))
    stage = ngram_stage_for(processor, prompts)
    assert stage._probes > 5  # the collisions really happened
    run_stream(stage, processor, prompts, seed=7, steps=30, encoder_rows_per_prompt=2)


def test_ngram_stage_for_takes_exactly_the_ngram_processors():
    class Subclass(tp.NoRepeatNGramLogitsProcessor):
        pass

    prompt = torch.tensor([[1, 2]])
    assert ngram_stage_for(Subclass(2), prompt) is None
    assert ngram_stage_for(tp.RepetitionPenaltyLogitsProcessor(1.2), prompt) is None
    assert ngram_stage_for(hf.TopKLogitsWarper(3), prompt) is None
    assert type(ngram_stage_for(hf.NoRepeatNGramLogitsProcessor(2), prompt)) is NoRepeatNGramStage
    encoder = tp.EncoderNoRepeatNGramLogitsProcessor(2, prompt)
    assert type(ngram_stage_for(encoder, prompt)) is EncoderNoRepeatNGramStage
    assert ngram_stage_for(encoder, prompt).reads_input_ids is False


def test_the_capacity_grows_unless_fixed():
    processor = tp.NoRepeatNGramLogitsProcessor(3)
    prompt = torch.tensor([[1, 2, 3]])
    growing = ngram_stage_for(processor, prompt)
    fixed = ngram_stage_for(processor, prompt, max_length=6)
    for stage in (growing, fixed):
        stage.accept(torch.tensor([[1, 2]]))
    history, scores = torch.tensor([[1, 2, 3, 1, 2]]), torch.zeros(1, 6)
    for stage in (growing, fixed):
        assert_identical(stage.apply(None, scores), processor(history, scores))
        assert stage.apply(None, scores)[0, 3] == float("-inf")
    growing.accept(torch.tensor([[3, 4, 5, 1, 2]]))
    history = torch.tensor([[1, 2, 3, 1, 2, 3, 4, 5, 1, 2]])
    assert_identical(growing.apply(None, scores), processor(history, scores))
    with pytest.raises(RuntimeError):
        fixed.accept(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="max_length"):
        fixed.reset(torch.tensor([0]), torch.ones(1, 7, dtype=torch.long))


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_a_decode_step_with_the_ngram_stages_compiles_into_one_graph_once(size):
    generator = torch.Generator().manual_seed(size)
    prompts = torch.randint(0, TOKENS, (ROWS, 5), generator=generator)
    encoder = tp.EncoderNoRepeatNGramLogitsProcessor(size, torch.randint(0, TOKENS, (2, 12), generator=generator))
    processors = [tp.NoRepeatNGramLogitsProcessor(size), encoder]
    stages = tp.LogitsStages([ngram_stage_for(p, prompts, max_length=40) for p in processors])
    twin = tp.LogitsStages([ngram_stage_for(p, prompts, max_length=40) for p in processors])
    assert_step_compiles_once(stages, twin, prompts, random_scores, generator, tokens=TOKENS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("size", [2, 3, 4])
def test_the_ngram_stages_on_cuda_equal_the_processors(size):
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(size)
    prompts = torch.randint(0, TOKENS, (ROWS, 5), generator=generator)
    processor = tp.NoRepeatNGramLogitsProcessor(size)
    stage = ngram_stage_for(processor, prompts.to(device), max_length=MAX_LENGTH)
    histories = prompts
    for _ in range(20):
        scores = random_scores(generator)
        assert_identical(stage.apply(None, scores.to(device)).cpu(), processor(histories, scores))
        tokens = torch.randint(0, TOKENS, (ROWS, 2), generator=generator)
        stage.accept(tokens.to(device))
        histories = torch.cat([histories, tokens], dim=1)


# (stage builder, use, expected exception, text the message must contain)
INVALID_USES = [
    (lambda stage: stage.accept(torch.tensor([[1.0]])), TypeError, "tokens"),
    (lambda stage: stage.accept(torch.tensor([1, 2, 3])), ValueError, "tokens"),
    (lambda stage: stage.rollback(torch.tensor([0]), torch.tensor([1])), ValueError, "n"),
    (lambda stage: stage.reorder(torch.tensor([0])), ValueError, "index"),
    (lambda stage: stage.reset(torch.tensor([0]), torch.tensor([[-1]])), ValueError, "prompt_ids"),
    (lambda stage: stage.apply(None, torch.zeros(3, 8)), ValueError, "scores"),
    (lambda stage: stage.apply(None, torch.zeros(2, 3)), ValueError, "vocabulary"),
]


@pytest.mark.parametrize("use,error,text", INVALID_USES, ids=range(len(INVALID_USES)))
@pytest.mark.parametrize("kind", ["self", "encoder"])
def test_invalid_uses_raise_naming_the_argument(use, error, text, kind):
    prompt = torch.tensor([[5, 5, 5], [5, 5, 5]])
    processor = (tp.NoRepeatNGramLogitsProcessor(2) if kind == "self"
                 else tp.EncoderNoRepeatNGramLogitsProcessor(2, torch.tensor([5, 5, 5])))
    with pytest.raises(error, match=text):
        use(ngram_stage_for(processor, prompt))


def test_encoder_rows_must_group_by_prompt():
    processor = tp.EncoderNoRepeatNGramLogitsProcessor(2, torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match="multiple"):
        ngram_stage_for(processor, torch.ones(3, 2, dtype=torch.long))
