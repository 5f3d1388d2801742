"""Every ``cache_implementation`` of transformers 4.57, and transformers' cache objects passed as
``past_key_values``: turbogen.generate must give transformers' own ``generate`` output for the same call.

The models are a tiny Mistral (every layer a 4-token sliding window, shorter than the sequences) and a tiny
Gemma-2-style model (a sliding-window layer, then a full-attention one), so the sliding-window and hybrid cache
layers are exercised. Tokens and beam indices must be equal; scores bit for bit where turbogen builds the cache
class transformers builds (it then makes the same model calls), else within the cross-compilation tolerance
(``"static"`` is turbogen's own cache, which keeps every position of a sliding layer).

Offloaded kinds stream layers through CUDA and are tested on a GPU only; ``"quantized"`` needs its backend
(optimum-quanto) and is skipped, with the reason, where it is not installed.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache

from conftest import CACHE_API_IN_4_45, TRANSFORMERS_5, TRANSFORMERS_VERSION, skip_on_transformers_4_45
from tiny_models import encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_bit_exact, assert_close_across_compilations
from turbogen.cache import (CACHE_IMPLEMENTATIONS, OFFLOADED_CACHE_IMPLEMENTATIONS, StaticKVCache, make_cache,
                            quantized_backend_available)
from turbogen.generate import generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PROMPTS = {
    "single": ["the quick brown fox jumps"],
    # Different lengths, so the second row is left-padded.
    "padded": ["the quick brown fox jumps", "stop"],
}
NEW_TOKENS = 8
# The kinds a CPU runs (the offloaded ones need CUDA, "quantized" its backend).
CPU_KINDS = ("dynamic", "static", "dynamic_full", "sliding_window", "hybrid", "hybrid_chunked")
# Per model, the kinds compared: all of them on the all-sliding Mistral; on the hybrid Gemma-2 the ones whose
# cache differs per layer kind.
CASES = [("mistral", kind) for kind in CPU_KINDS] + [("gemma2", kind) for kind in ("hybrid", "static", "dynamic")]

_HAS_CUDA = torch.cuda.is_available()
_NO_CUDA = pytest.mark.skipif(not _HAS_CUDA, reason="offloaded caches stream layers through CUDA (transformers "
                                                    "refuses them without a CUDA device): needs a GPU")
_QUANTO = quantized_backend_available("quanto")


def _v5_skip(kind: str):
    """Why transformers 5 cannot be compared for ``kind``, or None."""
    if TRANSFORMERS_5 and kind == "dynamic_full":
        return f"transformers {TRANSFORMERS_VERSION} has no cache_implementation='dynamic_full' (4.57 has)"
    return None


def _generate_both(model, batch: str, beams: int, make_kwargs=lambda: {}, device=None):
    """(transformers' output, turbogen's output) for the same call; ``make_kwargs`` gives each call its own
    arguments (a fresh cache object each)."""
    input_ids, attention_mask = encode_batch(PROMPTS[batch])
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    common = dict(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=beams, return_dict_in_generate=True,
                  output_scores=True)
    expected = model.generate(input_ids, attention_mask=attention_mask, **common, **make_kwargs())
    actual = generate(model, input_ids, attention_mask=attention_mask, **common, **make_kwargs())
    return expected, actual


def _assert_same(expected, actual, beams: int, bit_exact: bool) -> None:
    assert torch.equal(actual.sequences, expected.sequences)
    if beams > 1:
        assert torch.equal(actual.beam_indices, expected.beam_indices)
    check = assert_bit_exact if bit_exact else assert_close_across_compilations
    assert len(actual.scores) == len(expected.scores)
    for got, want in zip(actual.scores, expected.scores):
        check(got, want)
    if beams > 1:
        check(actual.sequences_scores, expected.sequences_scores)
    assert actual.past_key_values.get_seq_length() == expected.past_key_values.get_seq_length()


@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beam2"])
@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("model_kind, kind", CASES, ids=[f"{m}-{k}" for m, k in CASES])
@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_cache_implementation_matches_transformers(model_kind, kind, batch, beams):
    if _v5_skip(kind):
        pytest.skip(_v5_skip(kind))
    model = tiny_model(model_kind)
    expected, actual = _generate_both(model, batch, beams, lambda: {"cache_implementation": kind})
    # transformers 5 ignores cache_implementation="hybrid" (it builds its default dynamic cache); 4.57 does not.
    same_class = type(actual.past_key_values).__name__ == type(expected.past_key_values).__name__
    _assert_same(expected, actual, beams, bit_exact=same_class)
    if kind != "static" and not (TRANSFORMERS_5 and kind == "hybrid"):
        assert same_class, (type(actual.past_key_values), type(expected.past_key_values))


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_the_sliding_window_changes_the_output():
    """The comparisons above can fail: the tiny Mistral's 4-token window changes what it generates (a cache that
    kept or dropped the wrong positions would change the tokens)."""
    input_ids, attention_mask = encode_batch(PROMPTS["padded"])
    windowed = generate(tiny_model("mistral"), input_ids, attention_mask=attention_mask,
                        max_new_tokens=NEW_TOKENS, cache_implementation="sliding_window")
    unwindowed = generate(tiny_model("mistral", sliding_window=None), input_ids, attention_mask=attention_mask,
                          max_new_tokens=NEW_TOKENS)
    assert not torch.equal(windowed, unwindowed)


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_make_cache_builds_what_transformers_builds():
    mistral, gemma2 = tiny_model("mistral"), tiny_model("gemma2")
    assert set(CACHE_IMPLEMENTATIONS) >= set(CPU_KINDS) | set(OFFLOADED_CACHE_IMPLEMENTATIONS) | {"quantized"}
    dynamic = make_cache("dynamic", mistral, batch_size=2, max_cache_len=9)
    assert type(dynamic) is DynamicCache and all(dynamic.is_sliding)
    full = make_cache("dynamic_full", mistral, batch_size=2, max_cache_len=9)
    assert type(full) is DynamicCache and not any(full.is_sliding)
    assert isinstance(make_cache("static", mistral, batch_size=2, max_cache_len=9), StaticKVCache)
    for kind in ("sliding_window", "hybrid", "hybrid_chunked"):
        cache = make_cache(kind, gemma2, batch_size=2, max_cache_len=9)
        assert type(cache) is StaticCache and not cache.offloading
        assert list(cache.is_sliding) == [True, False]
        assert cache.layers[1].max_cache_len == 9  # the full-attention layer holds max_cache_len positions
        on_mistral = make_cache(kind, mistral, batch_size=1, max_cache_len=9)
        assert type(on_mistral) is StaticCache and all(on_mistral.is_sliding)


@pytest.mark.parametrize("kind", OFFLOADED_CACHE_IMPLEMENTATIONS)
@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_offloaded_kinds_need_a_cuda_model(kind):
    with pytest.raises(ValueError, match="CUDA"):
        make_cache(kind, tiny_model("mistral"), batch_size=1, max_cache_len=8)


@_NO_CUDA
@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beam2"])
@pytest.mark.parametrize("kind", OFFLOADED_CACHE_IMPLEMENTATIONS)
def test_offloaded_kinds_match_transformers_on_cuda(kind, beams):
    model = tiny_model("gemma2", fresh=True).to("cuda")
    expected, actual = _generate_both(model, "padded", beams, lambda: {"cache_implementation": kind}, device="cuda")
    _assert_same(expected, actual, beams, bit_exact=True)
    assert actual.past_key_values.offloading


@pytest.mark.skipif(not _QUANTO, reason="cache_implementation='quantized' needs optimum-quanto, not installed")
@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beam2"])
@pytest.mark.parametrize("batch", PROMPTS)
def test_quantized_matches_transformers(batch, beams):
    # Full attention only: transformers 5's QuantizedCache refuses sliding-window layers.
    config = {"nbits": 4, "residual_length": 2, "q_group_size": 8}
    expected, actual = _generate_both(tiny_model("llama"), batch, beams,
                                      lambda: {"cache_implementation": "quantized", "cache_config": dict(config)})
    _assert_same(expected, actual, beams, bit_exact=True)


@pytest.mark.skipif(_QUANTO, reason="optimum-quanto is installed: the quantized cache runs")
@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_quantized_without_its_backend_is_an_import_error():
    input_ids, attention_mask = encode_batch(PROMPTS["single"])
    cache_config = {"backend": "quanto", "nbits": 4}
    with pytest.raises(ImportError, match="optimum"):
        generate(tiny_model("llama"), input_ids, attention_mask=attention_mask, max_new_tokens=2,
                 cache_implementation="quantized", cache_config=cache_config)
    assert cache_config == {"backend": "quanto", "nbits": 4}  # the caller's dict is left as it was


def _prompt_length(batch: str) -> int:
    return encode_batch(PROMPTS[batch])[0].shape[1]


USER_CACHES = {
    "DynamicCache": lambda model, rows, length: DynamicCache(),
    "DynamicCache-config": lambda model, rows, length: DynamicCache(config=model.config),
    "StaticCache": lambda model, rows, length: StaticCache(config=model.config, max_cache_len=length),
}


@pytest.mark.parametrize("beams", [1, 2], ids=["greedy", "beam2"])
@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("cache", USER_CACHES)
@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_transformers_cache_object_as_past_key_values(cache, batch, beams):
    """A transformers cache passed as ``past_key_values`` is used as given (each call gets its own), with
    transformers' output."""
    model = tiny_model("gemma2")
    rows = len(PROMPTS[batch]) * beams
    length = _prompt_length(batch) + NEW_TOKENS
    caches = []

    def fresh():
        caches.append(USER_CACHES[cache](model, rows, length))
        return {"past_key_values": caches[-1]}

    expected, actual = _generate_both(model, batch, beams, fresh)
    _assert_same(expected, actual, beams, bit_exact=True)
    assert actual.past_key_values is caches[1]


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_a_prefilled_dynamic_cache_continues_the_prompt():
    """A DynamicCache already holding the prompt's first tokens: only the rest of the prompt is fed."""
    model = tiny_model("gemma2")
    input_ids, attention_mask = encode_batch(PROMPTS["single"])

    def prefilled():
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=input_ids[:, :-2], attention_mask=attention_mask[:, :-2], past_key_values=cache,
                  use_cache=True)
        return cache

    common = dict(max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_scores=True)
    expected = model.generate(input_ids, attention_mask=attention_mask, past_key_values=prefilled(), **common)
    actual = generate(model, input_ids, attention_mask=attention_mask, past_key_values=prefilled(), **common)
    _assert_same(expected, actual, beams=1, bit_exact=True)
