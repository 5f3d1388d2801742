"""turbogen.generate with ``cache_implementation="static"`` (turbogen.cache.StaticKVCache).

The static cache must be invisible in the results: greedy search and beam search give transformers' tokens
(transformers runs with its default dynamic cache, the oracle) and the scores of turbogen's own dynamic-cache
run; seeded sampling draws the same tokens as with the dynamic cache. Tiny random-weight Llama and GPT-2.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from conftest import STATIC_CACHES_IN_4_45, skip_on_transformers_4_45
from tiny_models import EOS_ID, MODEL_KINDS, encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_close_across_compilations
from turbogen.cache import StaticKVCache
from turbogen.generate import FINISH_CHECK_LAG, generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PROMPTS = {
    "single": ["the quick brown"],
    "padded": ["the quick brown fox", "stop", "hello world again"],
}
NEW_TOKENS = 8


def _run(model, batch, cache_implementation, **options):
    """turbogen's dict output for the prompts ``batch`` with the given cache."""
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    return generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                    cache_implementation=cache_implementation, return_dict_in_generate=True, output_scores=True,
                    **options)


def _assert_same_scores(actual, expected):
    """The recorded scores of two runs that differ only in their cache: the static cache attends over every
    preallocated slot (masked), so its sums are ordered differently and the scores agree up to rounding."""
    assert len(actual.scores) == len(expected.scores)
    for got, want in zip(actual.scores, expected.scores):
        assert_close_across_compilations(got, want)


@pytest.mark.parametrize("batch", sorted(PROMPTS))
@pytest.mark.parametrize("kind", MODEL_KINDS)
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_greedy_search_matches_dynamic_cache_and_transformers(kind, batch):
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    expected = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    static = _run(model, batch, "static")
    dynamic = _run(model, batch, None)
    assert torch.equal(static.sequences, expected)
    assert torch.equal(dynamic.sequences, expected)
    _assert_same_scores(static, dynamic)


@pytest.mark.parametrize("num_beams", [1, 3])
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_model_preparing_its_own_inputs_gets_the_same_tokens(num_beams):
    """A model overriding ``prepare_inputs_for_generation`` is driven through it (transformers 5 then builds the
    static cache's attention mask there), with the results of the dynamic cache and of transformers."""

    class PreparesItsOwnInputs(transformers.LlamaForCausalLM):
        def prepare_inputs_for_generation(self, input_ids, **kwargs):
            return super().prepare_inputs_for_generation(input_ids, **kwargs)

    reference = tiny_model("llama")
    model = PreparesItsOwnInputs(reference.config).eval()
    model.load_state_dict(reference.state_dict())
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    expected = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                              num_beams=num_beams)
    static = _run(model, "padded", "static", num_beams=num_beams)
    assert isinstance(static.past_key_values, StaticKVCache)
    assert torch.equal(static.sequences, expected)
    _assert_same_scores(static, _run(model, "padded", None, num_beams=num_beams))


@pytest.mark.parametrize("batch", sorted(PROMPTS))
@pytest.mark.parametrize("kind", MODEL_KINDS)
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_beam_search_matches_dynamic_cache_and_transformers(kind, batch):
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    options = dict(num_beams=3, num_return_sequences=2, length_penalty=0.5)
    expected = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                              return_dict_in_generate=True, output_scores=True, **options)
    static = _run(model, batch, "static", **options)
    assert torch.equal(static.sequences, expected.sequences)
    assert torch.equal(static.beam_indices, expected.beam_indices)
    assert_close_across_compilations(static.sequences_scores, expected.sequences_scores)
    _assert_same_scores(static, _run(model, batch, None, **options))


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("kind", MODEL_KINDS)
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_rows_finishing_early_match_transformers(kind, num_beams, monkeypatch):
    """Rows stopping at different steps (EOS), with the finish flag read two steps late so that the loop runs
    past the end and must crop the static cache back."""
    monkeypatch.setitem(FINISH_CHECK_LAG, "cpu", 2)
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    greedy = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                            do_sample=False)[:, input_ids.shape[1]:]
    # Row i's greedy token at step (2, 4, 1)[i] becomes an EOS id, so the rows finish at different steps.
    eos = sorted({int(greedy[row, step]) for row, step in enumerate((2, 4, 1))})
    options = dict(max_new_tokens=NEW_TOKENS, num_beams=num_beams, eos_token_id=eos, do_sample=False)
    expected = model.generate(input_ids, attention_mask=attention_mask, **options)
    actual = generate(model, input_ids, attention_mask=attention_mask, cache_implementation="static", **options)
    assert torch.isin(expected[:, input_ids.shape[1]:], torch.tensor(eos)).any(), "some row should finish early"
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_seeded_sampling_draws_the_same_tokens_as_with_the_dynamic_cache(kind):
    model = tiny_model(kind)
    options = dict(do_sample=True, seed=11, num_return_sequences=2, top_k=20, top_p=0.9, temperature=0.8,
                   repetition_penalty=1.2)
    static = _run(model, "padded", "static", **options)
    dynamic = _run(model, "padded", None, **options)
    assert torch.equal(static.sequences, dynamic.sequences)
    _assert_same_scores(static, dynamic)
    # Also without recorded scores, where the sampling warpers are fused into the sampler.
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    fused = {cache: generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                             cache_implementation=cache, **options) for cache in ("static", None)}
    assert torch.equal(fused["static"], fused[None])


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_beam_sampling_draws_the_same_tokens_as_with_the_dynamic_cache():
    model = tiny_model("llama")
    options = dict(do_sample=True, num_beams=3, seed=3)
    assert torch.equal(_run(model, "padded", "static", **options).sequences,
                       _run(model, "padded", None, **options).sequences)


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_returned_cache_is_static_and_sized_for_the_generation():
    model = tiny_model("llama")
    output = _run(model, "padded", "static", num_beams=2)
    cache = output.past_key_values
    rows, prompt_length = 3 * 2, encode_batch(PROMPTS["padded"])[0].shape[1]
    assert isinstance(cache, StaticKVCache)
    assert cache.batch_size == rows
    # The last generated token is never fed back, so the cache holds one position less than max_length.
    assert cache.max_cache_len == prompt_length + NEW_TOKENS - 1
    assert cache.get_seq_length() == _run(model, "padded", None, num_beams=2).past_key_values.get_seq_length()


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_beam_search_reorders_the_static_cache_in_place_once_per_step(monkeypatch):
    reorders = []
    reorder = StaticKVCache.reorder_cache

    def recording_reorder(cache, beam_idx):
        reorder(cache, beam_idx)
        reorders.append((cache.key_cache.data_ptr(), cache.value_cache.data_ptr()))

    monkeypatch.setattr(StaticKVCache, "reorder_cache", recording_reorder)
    output = _run(tiny_model("llama"), "padded", "static", num_beams=3, eos_token_id=None)
    cache = output.past_key_values
    assert len(reorders) == NEW_TOKENS
    assert set(reorders) == {(cache.key_cache.data_ptr(), cache.value_cache.data_ptr())}


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_user_static_cache_is_filled_in_place():
    """A StaticKVCache passed as ``past_key_values`` is used as it is: written in place (same storage), with the
    tokens of a fresh dynamic cache."""
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    cache = StaticKVCache(model.config, batch_size=input_ids.shape[0], max_cache_len=input_ids.shape[1] + NEW_TOKENS,
                          dtype=torch.float32)
    storage = cache.key_cache.data_ptr()
    actual = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                      past_key_values=cache)
    expected = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS)
    assert torch.equal(actual, expected)
    assert cache.key_cache.data_ptr() == storage
    assert cache.get_seq_length() == actual.shape[1] - 1


@pytest.mark.parametrize("name", ["offloaded_static", "offloaded", "no_such_cache"])
def test_cache_implementations_that_cannot_run_are_refused(name):
    """An unknown name, or an offloaded cache for a CPU model (offloading needs CUDA); the other kinds are
    compared with transformers in tests/cache/test_cache_implementations.py."""
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS["single"])
    with pytest.raises(ValueError, match="cache_implementation"):
        generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=2, cache_implementation=name,
                 eos_token_id=EOS_ID)
