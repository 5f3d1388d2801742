"""Stopping criteria: each against transformers' own class, their merging and planning, and their effect
through turbogen.generate."""

from __future__ import annotations

import time

import pytest
import torch
import transformers
from transformers.generation import stopping_criteria as hf_stopping

from conftest import BEAM_SEARCH_IN_4_45, skip_here_on_transformers_4_45, skip_on_transformers_4_45
from tiny_models import EOS_ID, PAD_ID, encode_batch, tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen import GenerationConfig
from turbogen.generate import generate
from turbogen.models import build_byte_level_tokenizer
from turbogen.stopping import (
    EosTokenCriteria,
    MaxLengthCriteria,
    MaxTimeCriteria,
    StoppingCriteria,
    StoppingCriteriaList,
    StoppingPlan,
    StopStringCriteria,
    build_stopping_criteria,
    token_texts,
)

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

TEXTS = [
    "the quick brown fox jumps over the lazy dog. stop the fox before it stops again!",
    "a stopwatch stopped at the bus stop; nonstop traffic kept going.",
    "hello world, hello tokens, hello again. the end is near, the end is here.",
]
STOP_STRINGS = ["stop", "top", " the", "o", "p at", ". the end", "lo, hel"]


def _byte_level_tokenizer():
    return build_byte_level_tokenizer(TEXTS * 3, vocab_size=300)


def _every_prefix(tokenizer):
    """Every prefix of every text's token ids, as one left-padded batch."""
    prefixes = []
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prefixes += [ids[:n] for n in range(1, len(ids) + 1)]
    width = max(len(p) for p in prefixes)
    return torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prefixes])


@pytest.mark.parametrize("tokenizer_kind", ["metaspace", "byte_level"])
def test_stop_strings_match_transformers_on_every_prefix(tokenizer_kind):
    """Both criteria see the same batch of every prefix of some texts; stop strings spanning several tokens,
    overhanging either end, or single characters must give the same verdicts."""
    tokenizer = tiny_tokenizer() if tokenizer_kind == "metaspace" else _byte_level_tokenizer()
    batch = _every_prefix(tokenizer)
    for stops in (STOP_STRINGS, ["stop"], ["o"], [" the", "hello again"]):
        expected = hf_stopping.StopStringCriteria(tokenizer, stops)(batch, None)
        actual = StopStringCriteria(tokenizer, stops)(batch, None)
        assert torch.equal(actual, expected), stops
        assert 0 < int(actual.sum()) < batch.shape[0], "the data should contain both verdicts"


def test_token_texts_match_transformers_clean_vocabulary():
    for tokenizer in (tiny_tokenizer(), _byte_level_tokenizer()):
        texts, ids = hf_stopping.StopStringCriteria.clean_tokenizer_vocab(tokenizer)
        ours = token_texts(tokenizer)
        assert all(ours[i] == text for text, i in zip(texts, ids))


def test_stop_string_needs_tokenizer_and_strings():
    with pytest.raises(ValueError, match="tokenizer"):
        StopStringCriteria(None, "stop")
    with pytest.raises(ValueError, match="stop_strings"):
        StopStringCriteria(tiny_tokenizer(), [""])
    with pytest.raises(ValueError, match="tokenizer"):
        build_stopping_criteria(GenerationConfig(stop_strings="stop"))


def test_unknown_token_ids_never_match():
    criterion = StopStringCriteria(tiny_tokenizer(), "o")
    assert not criterion(torch.tensor([[10_000, -1]]), None).any()


def test_eos_criteria_per_row_with_several_ids():
    criterion = EosTokenCriteria([5, 9])
    input_ids = torch.tensor([[1, 5], [5, 1], [3, 9]])
    assert criterion(input_ids, None).tolist() == [True, False, True]
    assert EosTokenCriteria(9)(input_ids, None).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="eos_token_id"):
        EosTokenCriteria([])


def test_length_and_time_criteria():
    input_ids = torch.zeros(2, 5, dtype=torch.long)
    assert MaxLengthCriteria(5)(input_ids, None).tolist() == [True, True]
    assert MaxLengthCriteria(6)(input_ids, None).tolist() == [False, False]
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        MaxLengthCriteria(10, max_position_embeddings=4)(input_ids, None)
    assert not MaxTimeCriteria(60.0)(input_ids, None).any()
    assert MaxTimeCriteria(0.5, initial_timestamp=time.time() - 1)(input_ids, None).all()
    with pytest.raises(ValueError, match="max_length"):
        MaxLengthCriteria(0)
    with pytest.raises(ValueError, match="max_time"):
        MaxTimeCriteria(-1)


def test_criteria_list_ors_any_callable_including_transformers_criteria():
    class LastTokenIsOdd(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, -1] % 2 == 1)[:, None]  # [rows, 1] is accepted too

    criteria = StoppingCriteriaList([LastTokenIsOdd(), hf_stopping.EosTokenCriteria(eos_token_id=4),
                                     lambda input_ids, scores: False])
    assert criteria(torch.tensor([[0, 1], [0, 4], [0, 6]]), None).tolist() == [True, True, False]
    assert criteria.max_length is None
    assert StoppingCriteriaList([MaxLengthCriteria(7)]).max_length == 7


def test_custom_criteria_are_merged_as_in_transformers():
    """A custom criterion of a built-in kind (turbogen's class, or transformers' class of that name) replaces
    the built-in one in place; other custom criteria are appended."""
    config = GenerationConfig(max_length=20, max_time=10.0, eos_token_id=EOS_ID)
    eos = torch.tensor([EOS_ID])
    custom_length = MaxLengthCriteria(8)
    with pytest.warns(UserWarning, match="MaxLengthCriteria"):
        merged = build_stopping_criteria(config, eos_token_ids=eos, custom=[custom_length])
    assert [type(c) for c in merged] == [MaxLengthCriteria, MaxTimeCriteria, EosTokenCriteria]
    assert merged[0] is custom_length

    foreign_time = hf_stopping.MaxTimeCriteria(5.0)
    custom_eos = EosTokenCriteria(7)
    subclass = type("LongerLength", (MaxLengthCriteria,), {})(30)  # a subclass is not the same kind
    with pytest.warns(UserWarning) as warned:
        merged = build_stopping_criteria(config, eos_token_ids=eos, custom=[foreign_time, subclass, custom_eos])
    assert sorted(str(w.message).split()[2] for w in warned) == ["EosTokenCriteria", "MaxTimeCriteria"]
    assert [type(merged[0]), merged[1], merged[2], merged[3]] == [MaxLengthCriteria, foreign_time, custom_eos,
                                                                  subclass]
    assert merged[0].max_length == 20


def test_stopping_plan_separates_host_and_row_conditions():
    tokenizer = tiny_tokenizer()
    plan = StoppingPlan([MaxLengthCriteria(10), MaxLengthCriteria(8), EosTokenCriteria(2),
                         StopStringCriteria(tokenizer, ["stop", "a"])])
    assert plan.max_length == 8 and plan.tail_tokens == 4 and plan.pads_finished_rows and plan.rows_are_pure
    assert not plan.stops_all(7) and plan.stops_all(8)
    assert plan.rows_done(torch.tensor([[5, 2], [5, 6]]), None).tolist() == [True, False]

    foreign = StoppingPlan([hf_stopping.EosTokenCriteria(eos_token_id=2), hf_stopping.MaxLengthCriteria(6)])
    assert foreign.tail_tokens is None and foreign.pads_finished_rows and not foreign.rows_are_pure
    assert not foreign.stops_all(5) and foreign.stops_all(6)
    assert StoppingPlan([hf_stopping.MaxTimeCriteria(0.5, initial_timestamp=time.time() - 1)]).stops_all(1)
    assert StoppingPlan([MaxLengthCriteria(4)]).rows_done(torch.zeros(1, 2, dtype=torch.long), None) is None


# -- through generate ----------------------------------------------------------------------------------------


def _stop_string_from_greedy_output(model, input_ids, attention_mask):
    """A stop string made of the end of the 3rd generated token and the start of the 4th of row 0, so that
    it only appears in the output across a token boundary."""
    tokenizer = tiny_tokenizer()
    greedy = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8)
    texts = token_texts(tokenizer)
    new = greedy[0, input_ids.shape[1]:].tolist()
    return texts[new[2]][-2:] + texts[new[3]][:2]


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_with_stop_strings_matches_transformers(num_beams):
    skip_here_on_transformers_4_45(BEAM_SEARCH_IN_4_45, when=num_beams > 1)
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(TEXTS[:1] + ["stop"])
    stop = _stop_string_from_greedy_output(model, input_ids, attention_mask)
    options = dict(max_new_tokens=8, stop_strings=[stop], tokenizer=tiny_tokenizer(), num_beams=num_beams)
    expected = model.generate(input_ids, attention_mask=attention_mask, **options)
    actual = generate(model, input_ids, attention_mask=attention_mask, **options)
    assert torch.equal(actual, expected)
    if num_beams == 1:
        assert stop in tiny_tokenizer().decode(actual[0, input_ids.shape[1]:])


def test_generate_stop_strings_without_tokenizer_is_an_error():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello"])
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3, stop_strings="stop")


def test_generate_max_time_stops_every_row():
    model = tiny_model("gpt2")
    input_ids, attention_mask = encode_batch(TEXTS)
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=10, max_time=0.0)
    assert out.shape[1] == input_ids.shape[1] + 1  # the running step completes, then time is up


def test_generate_with_transformers_custom_criteria_matches_transformers():
    class RowZeroStopsAtLength(transformers.StoppingCriteria):
        def __init__(self, length):
            self.length = length
            self.calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.calls += 1
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            done[0] = input_ids.shape[1] >= self.length
            return done

    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(TEXTS)
    expected_criterion, actual_criterion = RowZeroStopsAtLength(input_ids.shape[1] + 2), \
        RowZeroStopsAtLength(input_ids.shape[1] + 2)
    expected = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, eos_token_id=None,
                              stopping_criteria=transformers.StoppingCriteriaList([expected_criterion]))
    actual = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=6, eos_token_id=None,
                      stopping_criteria=[actual_criterion])
    assert torch.equal(actual, expected)
    assert actual_criterion.calls == expected_criterion.calls == 6


@pytest.mark.parametrize("library", ["turbogen", "transformers"])
@skip_on_transformers_4_45("it raises for a custom stopping criterion of a default's type (4.57 lets it replace "
                           "the default)")
def test_generate_custom_max_length_criterion_replaces_the_configured_one(library):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(TEXTS[:1])
    length = input_ids.shape[1] + 5
    custom = MaxLengthCriteria(length) if library == "turbogen" else hf_stopping.MaxLengthCriteria(length)
    with pytest.warns(UserWarning, match="MaxLengthCriteria"):
        out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3, stopping_criteria=[custom])
    hf_criteria = transformers.StoppingCriteriaList([hf_stopping.MaxLengthCriteria(length)])
    expected = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, stopping_criteria=hf_criteria)
    assert out.shape[1] == length and torch.equal(out, expected)
    assert (out[:, input_ids.shape[1]:] != PAD_ID).all()
