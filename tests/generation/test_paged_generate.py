"""generate(..., cache_implementation="paged") (issue 10): turbogen's paged KV cache run by PagedRunner.

Every test compares a paged call with the same call over the default dynamic cache: tokens and beam indices
exactly, recorded floats (scores, beam scores) within tests/tolerances.py's cross-compilation tolerance (the paged
attention kernel sums in another order than SDPA). Beam reordering must fork block tables and copy no cache bytes
(only the copy on write of a shared, partly filled last block when a row writes into it). Runs under transformers
4.57 and 5.x, on the tiny Llama and Mistral (4-token sliding window).
"""

from __future__ import annotations

import pytest
import torch

from turbogen import UnsupportedByTurbogen
from turbogen.cache import make_cache
from turbogen.cache.paged import PagedKVCache
from turbogen.generate import generate
from turbogen.generation import paged_runner
from turbogen.generation.paged_runner import PagedRunner

from conftest import PAGED_ATTENTION_IN_4_45, skip_on_transformers_4_45
from tiny_models import encode_batch, tiny_model, tiny_model_environment  # noqa: F401  (a fixture)
from tolerances import assert_close_across_compilations

pytestmark = [pytest.mark.usefixtures("tiny_model_environment"), skip_on_transformers_4_45(PAGED_ATTENTION_IN_4_45)]

KINDS = ("llama", "mistral")
# Prompts of different lengths (left padding), the longest over one 16-slot block with the new tokens.
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog. stop the fox"]


def _both(model, texts, seed: int = 0, **kwargs):
    """(the dynamic cache's result, the paged cache's result) of the same call, each after the same seed."""
    ids, mask = encode_batch(texts)
    torch.manual_seed(seed)
    dynamic = generate(model, ids, attention_mask=mask, **kwargs)
    torch.manual_seed(seed)
    paged = generate(model, ids, attention_mask=mask, cache_implementation="paged", **kwargs)
    return dynamic, paged


def _check_cache(paged) -> None:
    cache = paged.past_key_values
    assert isinstance(cache, PagedKVCache)
    cache.allocator.check()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS], ids=["batch-1", "left-padded"])
def test_greedy_equals_dynamic_cache(kind, texts):
    model = tiny_model(kind)
    dynamic, paged = _both(model, texts, max_new_tokens=24, return_dict_in_generate=True, output_scores=True,
                           output_logits=True)
    assert torch.equal(paged.sequences, dynamic.sequences)
    for name in ("scores", "logits"):
        assert len(getattr(paged, name)) == len(getattr(dynamic, name))
        for got, want in zip(getattr(paged, name), getattr(dynamic, name)):
            assert_close_across_compilations(got, want)
    _check_cache(paged)
    # Each row holds its real tokens only (padding never enters the cache), the last token unfed.
    ids, mask = encode_batch(texts)
    cache = paged.past_key_values
    lengths = sorted(cache.allocator.length(seq) for seq in cache.allocator.sequences)
    assert lengths == sorted((mask.sum(1) + paged.sequences.shape[1] - ids.shape[1] - 1).tolist())
    assert model.config._attn_implementation != "turbogen_paged"  # restored after the call


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_equals_dynamic_cache_for_a_seed(kind):
    model = tiny_model(kind)
    for seed in (0, 1):
        dynamic, paged = _both(model, TEXTS, seed=seed, do_sample=True, top_k=0, max_new_tokens=20,
                               num_return_sequences=2)
        assert torch.equal(paged, dynamic)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("do_sample", [False, True], ids=["beam-search", "beam-sample"])
def test_beam_search_equals_dynamic_cache(kind, do_sample):
    model = tiny_model(kind)
    dynamic, paged = _both(model, TEXTS, num_beams=3, num_return_sequences=2, length_penalty=0.7,
                           max_new_tokens=20, do_sample=do_sample, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(paged.sequences, dynamic.sequences)
    assert torch.equal(paged.beam_indices, dynamic.beam_indices)
    assert_close_across_compilations(paged.sequences_scores, dynamic.sequences_scores)
    for got, want in zip(paged.scores, dynamic.scores):
        assert_close_across_compilations(got, want)
    _check_cache(paged)


def test_beam_reordering_forks_block_tables_and_copies_no_cache_bytes(monkeypatch):
    model = tiny_model("llama")
    seen = {"moves": 0, "shared": 0, "copies": [], "in_reorder": False}
    original_reorder, original_copy = PagedRunner.reorder, PagedKVCache.copy_blocks

    def reorder(self, index):
        cache = self.past_key_values
        before = [tensor.clone() for tensor in (*cache.key_caches, *cache.value_caches)]
        pointers = [tensor.data_ptr() for tensor in (*cache.key_caches, *cache.value_caches)]
        parents = [cache.allocator.blocks(seq) for seq in self._seqs]
        seen["in_reorder"] = True
        try:
            original_reorder(self, index)
        finally:
            seen["in_reorder"] = False
        after = (*cache.key_caches, *cache.value_caches)
        assert [tensor.data_ptr() for tensor in after] == pointers
        for old, new in zip(before, after):
            assert torch.equal(old, new), "reorder wrote into the cache"
        sources = index.tolist()
        if sources != list(range(self.rows)):
            seen["moves"] += 1
        for row, source in enumerate(sources):  # each row is now a fork of its parent: the same blocks
            assert cache.allocator.blocks(self._seqs[row]) == parents[source]
        seen["shared"] += sum(cache.allocator.ref_count(block) > 1 for block in range(cache.num_blocks))
        cache.allocator.check()

    def copy_blocks(self, copies):
        copies = list(copies)
        assert not seen["in_reorder"], "reorder copied blocks"
        seen["copies"].append(len(copies))
        return original_copy(self, copies)

    monkeypatch.setattr(PagedRunner, "reorder", reorder)
    monkeypatch.setattr(PagedKVCache, "copy_blocks", copy_blocks)
    dynamic, paged = _both(model, TEXTS, num_beams=3, num_return_sequences=2, length_penalty=0.7,
                           max_new_tokens=20, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(paged.sequences, dynamic.sequences)
    assert seen["moves"] > 0 and seen["shared"] > 0  # beams did move and share blocks
    # Copy on write only: at most one block per row but one of the rows sharing it, per step.
    rows = paged.past_key_values.allocator.sequences
    assert seen["copies"] and max(seen["copies"]) <= len(rows) - 1
    _check_cache(paged)


def test_make_cache_sizes_the_paged_cache_for_the_call():
    model = tiny_model("llama")
    cache = make_cache("paged", model, batch_size=3, max_cache_len=33)
    assert isinstance(cache, PagedKVCache)
    assert (cache.block_size, cache.num_blocks, cache.max_blocks_per_seq) == (16, 3 * 3, 3)
    assert (cache.num_layers, cache.kv_heads, cache.head_dim) == (2, 2, 8)


def test_attention_implementation_is_restored_when_the_forward_raises(monkeypatch):
    model = tiny_model("llama", fresh=True)
    before = model.config._attn_implementation

    def broken(*args, **kwargs):
        assert model.config._attn_implementation == "turbogen_paged"
        raise RuntimeError("boom")

    monkeypatch.setattr(paged_runner, "paged_forward", broken)
    ids, mask = encode_batch(TEXTS)
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, ids, attention_mask=mask, max_new_tokens=3, cache_implementation="paged")
    assert model.config._attn_implementation == before


@pytest.mark.parametrize(("kwargs", "named"), [
    (dict(output_attentions=True, return_dict_in_generate=True), "output_attentions"),
    (dict(output_hidden_states=True, return_dict_in_generate=True), "output_hidden_states"),
    pytest.param(dict(penalty_alpha=0.6, top_k=4), "contrastive search",
                 marks=pytest.mark.filterwarnings("ignore:GenerationConfig has flags")),
    (dict(prefill_chunk_size=4), "prefill_chunk_size"),
    (dict(prompt_lookup_num_tokens=2), "cache_implementation='paged'"),
    (dict(position_ids=torch.arange(14).expand(2, 14)), "position_ids"),
], ids=["attentions", "hidden-states", "contrastive", "prefill-chunks", "speculative", "model-input"])
def test_refusals_name_the_option(kwargs, named):
    ids, mask = encode_batch(TEXTS)
    with pytest.raises(UnsupportedByTurbogen, match=named):
        generate(tiny_model("llama"), ids, attention_mask=mask, max_new_tokens=3, cache_implementation="paged",
                 **kwargs)


@pytest.mark.filterwarnings("ignore:GenerationConfig has flags")
def test_use_cache_false_ignores_the_cache_implementation_as_for_every_cache():
    dynamic, paged = _both(tiny_model("llama"), TEXTS, max_new_tokens=5, use_cache=False)
    assert torch.equal(paged, dynamic)


def test_refuses_masks_other_than_left_padding_and_foreign_models():
    ids, mask = encode_batch(TEXTS)
    with pytest.raises(UnsupportedByTurbogen, match="left padding"):
        generate(tiny_model("llama"), ids, attention_mask=mask.flip(1), max_new_tokens=3,
                 cache_implementation="paged")
    model = tiny_model("llama", fresh=True)
    # A model class outside transformers' attention interface:
    model.__class__ = type("NoInterface", (type(model),), {"_supports_attention_backend": False})
    with pytest.raises(UnsupportedByTurbogen, match="attention interface"):
        generate(model, ids, attention_mask=mask, max_new_tokens=3, cache_implementation="paged")


def _runner(model, ids, mask, max_length: int = 40) -> PagedRunner:
    from turbogen.config import GenerationConfig
    from turbogen.generation.record import Record

    cache = make_cache("paged", model, batch_size=ids.shape[0], max_cache_len=max_length - 1)
    return PagedRunner(model, ids, {"attention_mask": mask}, cache, True, max_length, Record(GenerationConfig()))


def test_crop_then_decode_equals_a_run_that_never_fed_the_cropped_tokens():
    model = tiny_model("llama")
    ids, mask = encode_batch(TEXTS)
    prompt = ids.shape[1]
    tokens = torch.tensor([[5, 6], [7, 8], [9, 10]])  # three decoding steps, two rows
    with torch.no_grad():
        runner = _runner(model, ids, mask)
        runner.prefill(ids)
        for step in tokens:
            runner.decode(step)
        runner.crop(torch.tensor([prompt + 1, prompt + 2]))  # rows of different lengths
        assert runner.fed_lengths.tolist() == [prompt + 1, prompt + 2]
        got = runner.decode(torch.tensor([11, 12]))
        runner.past_key_values.allocator.check()
        with pytest.raises(ValueError, match="into the prompt"):
            runner.crop(prompt - 1)
        expected = []
        for row, kept in ((0, 1), (1, 2)):
            alone = _runner(model, ids[row:row + 1], mask[row:row + 1])
            alone.prefill(ids[row:row + 1])
            for step in tokens[:kept]:
                alone.decode(step[row:row + 1])
            expected.append(alone.decode(torch.tensor([11 + row]))[0])
    assert_close_across_compilations(got, torch.stack(expected))
