"""turbogen.generate's other inputs against transformers' own generate on the tiny Llama and GPT-2: ``inputs_embeds``
(alone, the output then holding only the new tokens; and with the ids they embed), user ``position_ids`` and
``prefill_chunk_size`` (chunked prefill), with greedy and beam search, the dynamic and the static cache. Same tokens,
and scores bit for bit (the same model calls); the same exception type for calls transformers refuses."""

from __future__ import annotations

import pytest
import torch

from conftest import (GPT2_LEGACY_CACHE_IN_4_45, STATIC_CACHES_IN_4_45, skip_here_on_transformers_4_45,
                      skip_on_transformers_4_45, skip_on_transformers_5)
from tiny_models import MODEL_KINDS, encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_same_generation
from turbogen import UnsupportedByTurbogen
from turbogen.generate import generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

#: Why the prefill-chunk comparisons are skipped under transformers 4.45.
NO_PREFILL_CHUNKS_IN_4_45 = "its generate has no `prefill_chunk_size`"

PROMPTS = {
    "single": ["the quick brown"],
    "padded": ["the quick brown fox", "stop", "hello world again"],
}
NEW_TOKENS = 6
METHODS = {
    "greedy": {},
    # Sampling from one candidate: deterministic, so comparable with transformers' draws.
    "sample_top1": {"do_sample": True, "top_k": 1, "num_return_sequences": 2},
    "beam": {"num_beams": 3, "num_return_sequences": 2},
}


def _embeds(model, input_ids, noise: float = 0.05):
    """The prompt's embeddings, perturbed (fixed noise), so that nothing could recover them from token ids."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
    generator = torch.Generator().manual_seed(0)
    return embeds + noise * torch.randn(embeds.shape, generator=generator, dtype=embeds.dtype)


def _both(model, **kwargs):
    kwargs = {"return_dict_in_generate": True, "output_scores": True, **kwargs}
    expected = model.generate(**kwargs)
    actual = generate(model, **kwargs)
    return expected, actual


# ----------------------------------------------------------------------------------------------------------
# inputs_embeds
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_inputs_embeds_matches_transformers(kind, batch, method):
    skip_here_on_transformers_4_45(GPT2_LEGACY_CACHE_IN_4_45, when=kind == "gpt2")
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    expected, actual = _both(model, inputs_embeds=_embeds(model, input_ids), attention_mask=attention_mask,
                             max_new_tokens=NEW_TOKENS, **METHODS[method])
    # Only the new tokens, as in transformers.
    assert actual.sequences.shape[1] <= NEW_TOKENS
    assert_same_generation(expected, actual, beams=method == "beam")


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_inputs_embeds_lengths_and_cache_match_transformers(cache):
    """Without ``max_new_tokens``, ``max_length`` / ``min_length`` count the embedded positions (transformers
    subtracts them); no attention mask given; the static cache holds the embedded positions too."""
    skip_here_on_transformers_4_45(STATIC_CACHES_IN_4_45, when=cache == "static")
    model = tiny_model("llama")
    input_ids, _ = encode_batch(PROMPTS["single"])
    extra = {} if cache == "dynamic" else {"cache_implementation": "static"}
    expected, actual = _both(model, inputs_embeds=_embeds(model, input_ids), max_length=input_ids.shape[1] + 5,
                             min_length=input_ids.shape[1] + 3, **extra)
    assert expected.sequences.shape[1] == 5
    assert_same_generation(expected, actual)


@skip_on_transformers_4_45(GPT2_LEGACY_CACHE_IN_4_45)
def test_inputs_embeds_with_their_input_ids_matches_transformers():
    """With both, the first step feeds the embeddings and the output starts with the given ids."""
    model = tiny_model("gpt2")
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    expected, actual = _both(model, input_ids=input_ids, inputs_embeds=_embeds(model, input_ids),
                             attention_mask=attention_mask, max_new_tokens=NEW_TOKENS)
    assert torch.equal(actual.sequences[:, : input_ids.shape[1]], input_ids)
    assert_same_generation(expected, actual)


@skip_on_transformers_5("5.x feeds one-position embeddings only at the first step")
@skip_on_transformers_4_45("it feeds one-position embeddings only at the first step")
def test_one_position_embeds_match_transformers_4_57():
    """transformers 4.57 feeds one-position embeddings again at every step (its slicing cannot tell them from
    the one new token); turbogen reproduces that."""
    model = tiny_model("llama")
    input_ids, _ = encode_batch(PROMPTS["single"])
    expected, actual = _both(model, inputs_embeds=_embeds(model, input_ids[:, -1:]), max_new_tokens=NEW_TOKENS)
    assert_same_generation(expected, actual)


def test_inputs_embeds_errors_like_transformers():
    model = tiny_model("llama")
    input_ids, _ = encode_batch(PROMPTS["single"])
    embeds = _embeds(model, input_ids)
    # max_length counts the embedded positions: no room left for a new token.
    for call in (model.generate, lambda **kw: generate(model, **kw)):
        with pytest.raises(ValueError):
            call(inputs_embeds=embeds, max_length=input_ids.shape[1])
    with pytest.raises(ValueError, match="inputs_embeds"):
        generate(model, inputs_embeds=input_ids, max_new_tokens=2)  # ids are not embeddings
    # Ids that are not the embedded ones: refused (transformers' masks would not cover the embeddings).
    with pytest.raises(UnsupportedByTurbogen):
        generate(model, input_ids=input_ids[:, 1:], inputs_embeds=embeds, max_new_tokens=2)


# ----------------------------------------------------------------------------------------------------------
# position_ids
# ----------------------------------------------------------------------------------------------------------


@skip_on_transformers_5("5.x extends the user's position_ids at each step; 4.57 reuses the last prompt position")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
@skip_on_transformers_4_45("its generate does not take user `position_ids` for the prompt")
def test_user_position_ids_match_transformers_4_57(kind, batch, method):
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    position_ids = (attention_mask.cumsum(-1) + 4).masked_fill(attention_mask == 0, 0)
    expected, actual = _both(model, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             max_new_tokens=NEW_TOKENS, **METHODS[method])
    assert_same_generation(expected, actual, beams=method == "beam")


@skip_on_transformers_5("5.x extends the user's position_ids at each step; 4.57 reuses the last prompt position")
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_user_position_ids_with_static_cache_match_transformers_4_57():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    position_ids = (attention_mask.cumsum(-1) + 2).masked_fill(attention_mask == 0, 0)
    expected, actual = _both(model, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             max_new_tokens=NEW_TOKENS, cache_implementation="static")
    assert_same_generation(expected, actual)


def test_user_position_ids_errors():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS["single"])
    with pytest.raises(ValueError, match="position_ids"):
        generate(model, input_ids, position_ids=torch.arange(2)[None], max_new_tokens=2)
    # transformers 4.57 passes prompt-long positions with ever longer inputs, and fails at the second step.
    with pytest.raises(ValueError, match="position_ids"):
        generate(model, input_ids, position_ids=torch.arange(input_ids.shape[1])[None], use_cache=False,
                 max_new_tokens=2)


# ----------------------------------------------------------------------------------------------------------
# prefill_chunk_size
# ----------------------------------------------------------------------------------------------------------


@skip_on_transformers_5("5.x chunks the whole prompt (4.57 all but its last position, then fed alone: other "
                        "chunks, other float sums) and gives chunks the attention mask's positions (4.57 the cache "
                        "positions)")
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
@skip_on_transformers_4_45(NO_PREFILL_CHUNKS_IN_4_45)
def test_prefill_chunks_match_transformers_4_57(kind, batch, cache):
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    assert input_ids.shape[1] > 2
    extra = {} if cache == "dynamic" else {"cache_implementation": "static"}
    expected, actual = _both(model, input_ids=input_ids, attention_mask=attention_mask, prefill_chunk_size=2,
                             max_new_tokens=NEW_TOKENS, output_hidden_states=True, **extra)
    assert_same_generation(expected, actual)
    # Only the last prompt position's call is recorded, as in transformers.
    assert len(actual.hidden_states) == len(expected.hidden_states)
    assert actual.hidden_states[0][0].shape == expected.hidden_states[0][0].shape


@skip_on_transformers_5("5.x chunks the whole prompt, last position included (other chunks, other float sums)")
@skip_on_transformers_4_45(NO_PREFILL_CHUNKS_IN_4_45)
def test_prefill_chunks_with_sampling_match_transformers_4_57():
    model = tiny_model("gpt2")
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    expected, actual = _both(model, input_ids=input_ids, attention_mask=attention_mask, prefill_chunk_size=3,
                             max_new_tokens=NEW_TOKENS, **METHODS["sample_top1"])
    assert_same_generation(expected, actual)


@skip_on_transformers_4_45(NO_PREFILL_CHUNKS_IN_4_45)
def test_prefill_chunks_are_ignored_by_beam_search_as_in_transformers():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    expected, actual = _both(model, input_ids=input_ids, attention_mask=attention_mask, prefill_chunk_size=2,
                             max_new_tokens=NEW_TOKENS, **METHODS["beam"])
    assert_same_generation(expected, actual, beams=True)


@skip_on_transformers_4_45(NO_PREFILL_CHUNKS_IN_4_45)
def test_prefill_chunk_errors_like_transformers():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS["single"])
    kwargs = {"attention_mask": attention_mask, "prefill_chunk_size": 2, "max_new_tokens": 2, "use_cache": False}
    for call in (model.generate, lambda ids, **kw: generate(model, ids, **kw)):
        with pytest.raises(ValueError, match="without a cache"):
            call(input_ids, **kwargs)
    with pytest.raises(ValueError, match="prefill_chunk_size"):
        generate(model, input_ids, prefill_chunk_size=0, max_new_tokens=2)
    with pytest.raises(UnsupportedByTurbogen):
        generate(model, inputs_embeds=_embeds(model, input_ids), prefill_chunk_size=2, max_new_tokens=2)
