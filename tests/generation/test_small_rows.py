"""The smaller transformers v4.57 generation features, each against transformers itself: ``validate_stopping_criteria``,
``ConfidenceCriteria`` (an assistant model's ``is_assistant`` stopping rule), classifier-free guidance (the batched
processor, and ``guidance_scale`` in generate for several rows), ``AsyncTextIteratorStreamer``,
``GenerationConfig.save_pretrained(push_to_hub=True)`` offline, and generation parameters set on ``model.config``."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pytest
import torch
import transformers
from transformers.generation import logits_process as hf_processors
from transformers.generation import stopping_criteria as hf_stopping

from conftest import skip_on_transformers_4_45, skip_on_transformers_5
from tiny_models import encode_batch, tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_bit_exact
from turbogen import GenerationConfig
from turbogen.errors import UnsupportedByTurbogen
from turbogen.generate import generate
from turbogen.processors.guidance import ClassifierFreeGuidanceLogitsProcessor
from turbogen.stopping import (ConfidenceCriteria, EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList,
                               validate_stopping_criteria)
from turbogen.streamers import AsyncTextIteratorStreamer

pytestmark = pytest.mark.usefixtures("tiny_model_environment")


def _record_warnings(function):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function()
    return result, [(warning.category, str(warning.message)) for warning in caught]


# -- validate_stopping_criteria ------------------------------------------------------------------------------


@pytest.mark.parametrize("listed", [None, 10, 12], ids=["no_max_length", "same", "different"])
def test_validate_stopping_criteria_matches_transformers(listed):
    ours = StoppingCriteriaList([EosTokenCriteria(3)])
    theirs = hf_stopping.StoppingCriteriaList([hf_stopping.EosTokenCriteria(3)])
    if listed is not None:
        ours.append(MaxLengthCriteria(listed))
        theirs.append(hf_stopping.MaxLengthCriteria(listed))
    expected, expected_warnings = _record_warnings(lambda: hf_stopping.validate_stopping_criteria(theirs, 10))
    actual, actual_warnings = _record_warnings(lambda: validate_stopping_criteria(ours, 10))
    assert [category for category, _ in actual_warnings] == [category for category, _ in expected_warnings]
    assert [message for _, message in actual_warnings] == [message for _, message in expected_warnings]
    assert [type(c).__name__ for c in actual] == [type(c).__name__ for c in expected]
    assert actual.max_length == expected.max_length
    assert actual is not ours and len(ours) == (1 if listed is None else 2)  # a copy; the input is left alone
    assert actual[0] is not ours[0]
    input_ids = torch.tensor([[1, 2, 3], [1, 2, 4]])
    assert torch.equal(actual(input_ids, None), expected(input_ids, None))


def test_validate_stopping_criteria_rejects_a_plain_list():
    with pytest.raises(TypeError, match="stopping_criteria"):
        validate_stopping_criteria([MaxLengthCriteria(5)], 5)


# -- ConfidenceCriteria --------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.001, 0.01, 0.5])
def test_confidence_criteria_call_matches_transformers(threshold):
    generator = torch.Generator().manual_seed(0)
    scores = tuple(torch.randn(2, 50, generator=generator) * 3 for _ in range(3))
    for last in range(50):
        input_ids = torch.tensor([[1, last], [2, 7]])
        expected = hf_stopping.ConfidenceCriteria(threshold)(input_ids, scores)
        assert ConfidenceCriteria(threshold)(input_ids, scores) == expected


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.9, 0.0])
def test_assistant_confidence_stops_generate_like_transformers(threshold, batch):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["the quick brown fox", "hello world again"][:batch])
    kwargs = dict(max_new_tokens=10, is_assistant=True, assistant_confidence_threshold=threshold, do_sample=False,
                  output_scores=True, return_dict_in_generate=True)
    expected = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    actual = generate(model, input_ids, attention_mask=attention_mask, **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    for got, want in zip(actual.scores, expected.scores):
        assert_bit_exact(got, want)
    if threshold in (0.2, 0.35):  # the thresholds chosen to stop these prompts part-way
        assert input_ids.shape[1] < actual.sequences.shape[1] < input_ids.shape[1] + 10


def test_assistant_confidence_without_recorded_scores_is_a_clear_error():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["the quick brown fox"])
    with pytest.raises(ValueError, match="output_scores=True"):
        generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3, is_assistant=True)
    with pytest.raises(TypeError, match="assistant_confidence_threshold"):
        ConfidenceCriteria("0.4")


# -- classifier-free guidance --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_batched_guidance_processor_matches_transformers(scale):
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 40, generator=generator)
    input_ids = torch.ones(3, 4, dtype=torch.long)
    expected = hf_processors.ClassifierFreeGuidanceLogitsProcessor(scale)(input_ids, scores)
    assert_bit_exact(ClassifierFreeGuidanceLogitsProcessor(scale)(input_ids, scores), expected)


def test_batched_guidance_processor_refuses_what_transformers_refuses():
    for scale in (1, 0.5):
        with pytest.raises(ValueError):
            hf_processors.ClassifierFreeGuidanceLogitsProcessor(scale)
        with pytest.raises(ValueError, match="guidance scale"):
            ClassifierFreeGuidanceLogitsProcessor(scale)
    input_ids, scores = torch.ones(3, 4, dtype=torch.long), torch.zeros(3, 40)
    with pytest.raises(ValueError):
        hf_processors.ClassifierFreeGuidanceLogitsProcessor(2.0)(input_ids, scores)
    with pytest.raises(ValueError, match="twice the rows"):
        ClassifierFreeGuidanceLogitsProcessor(2.0)(input_ids, scores)


@pytest.mark.parametrize("negative", ["none", "ids", "ids_and_mask"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_guidance_scale_in_generate_with_several_rows_matches_transformers(negative, use_cache):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["the quick brown fox", "stop", "hello world again"])
    negative_ids, negative_mask = encode_batch(["bad", "very bad thing", "no"])
    kwargs = dict(max_new_tokens=5, guidance_scale=1.5, do_sample=False, use_cache=use_cache,
                  return_dict_in_generate=True, output_scores=True)
    if negative != "none":
        kwargs["negative_prompt_ids"] = negative_ids
    if negative == "ids_and_mask":
        kwargs["negative_prompt_attention_mask"] = negative_mask
    expected = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    actual = generate(model, input_ids, attention_mask=attention_mask, **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    for got, want in zip(actual.scores, expected.scores):
        assert_bit_exact(got, want)


# -- AsyncTextIteratorStreamer -------------------------------------------------------------------------------


async def _stream(streamer_class, run_generate, tokenizer):
    streamer = streamer_class(tokenizer, skip_prompt=True, timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("sequences", run_generate(streamer)))
    thread.start()
    pieces = [piece async for piece in streamer]
    thread.join(timeout=60)
    return pieces, result["sequences"]


@skip_on_transformers_4_45("it has no AsyncTextIteratorStreamer")
def test_async_streamer_yields_what_transformers_async_streamer_yields():
    model = tiny_model("gpt2")
    tokenizer = tiny_tokenizer()
    input_ids, attention_mask = encode_batch(["hello world"])
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=12, do_sample=False)
    expected_pieces, expected = asyncio.run(_stream(
        transformers.AsyncTextIteratorStreamer, lambda s: model.generate(input_ids, streamer=s, **kwargs), tokenizer))
    actual_pieces, actual = asyncio.run(_stream(
        AsyncTextIteratorStreamer, lambda s: generate(model, input_ids, streamer=s, **kwargs), tokenizer))
    assert torch.equal(actual, expected)
    assert actual_pieces == expected_pieces
    assert "".join(actual_pieces) == tokenizer.decode(actual[0, input_ids.shape[1]:]) and "".join(actual_pieces)


def test_async_streamer_needs_a_running_loop_and_times_out():
    with pytest.raises(RuntimeError, match="inside a coroutine"):
        AsyncTextIteratorStreamer(tiny_tokenizer())

    async def wait_for_nothing():
        streamer = AsyncTextIteratorStreamer(tiny_tokenizer(), timeout=0.05)
        return [piece async for piece in streamer]

    with pytest.raises(TimeoutError):
        asyncio.run(wait_for_nothing())


# -- GenerationConfig.save_pretrained(push_to_hub=True) ------------------------------------------------------


def test_save_pretrained_push_to_hub_is_a_clear_offline_error(tmp_path):
    config = GenerationConfig(max_new_tokens=5)
    with pytest.raises(UnsupportedByTurbogen, match="push_to_hub") as raised:
        config.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="someone/model")
    assert raised.value.reason == "push_to_hub" and isinstance(raised.value, ValueError)
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match="commit_message"):
        config.save_pretrained(tmp_path / "out", commit_message="x")
    path = config.save_pretrained(tmp_path / "out", push_to_hub=False)
    assert GenerationConfig.from_pretrained(path.parent).max_new_tokens == 5


# -- generation parameters set on model.config ---------------------------------------------------------------

MODEL_CONFIG_EDITS = {
    "length_ngram": dict(max_length=12, no_repeat_ngram_size=1),
    "penalty": dict(repetition_penalty=1.5, max_length=11),
    "sampling_top_k_1": dict(do_sample=True, top_k=1, max_length=11),
}
LEGACY_WARNING = "modified the pretrained model configuration to control generation"


def _edited_model(edits):
    model = tiny_model("llama", fresh=True)
    for name, value in edits.items():
        setattr(model.config, name, value)
    return model


@skip_on_transformers_5("generate() refuses generation parameters set on model.config (a ValueError)")
@pytest.mark.parametrize("edits", list(MODEL_CONFIG_EDITS), ids=list(MODEL_CONFIG_EDITS))
def test_generation_parameters_set_on_model_config_apply_like_transformers(edits):
    input_ids, attention_mask = encode_batch(["the quick brown fox", "a"])
    reference, edited = _edited_model(MODEL_CONFIG_EDITS[edits]), _edited_model(MODEL_CONFIG_EDITS[edits])
    expected, expected_warnings = _record_warnings(lambda: reference.generate(input_ids, attention_mask=attention_mask))
    actual, actual_warnings = _record_warnings(lambda: generate(edited, input_ids, attention_mask=attention_mask))
    assert torch.equal(actual, expected)
    assert any(LEGACY_WARNING in message for _, message in expected_warnings)
    assert [category for category, message in actual_warnings if LEGACY_WARNING in message] == [UserWarning]
    assert edited.generation_config == reference.generation_config  # replaced, as transformers replaces it
    _, again = _record_warnings(lambda: generate(edited, input_ids, attention_mask=attention_mask))
    assert not any(LEGACY_WARNING in message for _, message in again)


def test_model_config_edits_apply_under_either_transformers_release():
    # turbogen keeps 4.57's rule under transformers 5 too: the edited max_length is the one used
    model = _edited_model(dict(max_length=9))
    input_ids, attention_mask = encode_batch(["the quick brown fox"])
    with pytest.warns(UserWarning, match=LEGACY_WARNING):
        out = generate(model, input_ids, attention_mask=attention_mask)
    assert out.shape[1] == 9


def test_model_config_edits_are_ignored_once_the_generation_config_is_edited_or_given():
    input_ids, attention_mask = encode_batch(["the quick brown fox"])
    model = _edited_model(dict(max_length=9))
    model.generation_config.max_new_tokens = 3  # the user's own choice now: the model config no longer counts
    out, caught = _record_warnings(lambda: generate(model, input_ids, attention_mask=attention_mask))
    assert out.shape[1] == input_ids.shape[1] + 3 and not any(LEGACY_WARNING in m for _, m in caught)
    model = _edited_model(dict(max_length=9))
    given = GenerationConfig(max_new_tokens=2)
    out, caught = _record_warnings(lambda: generate(model, input_ids, attention_mask=attention_mask,
                                                    generation_config=given))
    assert out.shape[1] == input_ids.shape[1] + 2 and not any(LEGACY_WARNING in m for _, m in caught)
