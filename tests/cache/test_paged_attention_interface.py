"""turbogen.attention: stock transformers models with attn_implementation="turbogen_paged" over a PagedKVCache.

Every test compares the logits of packed paged forwards (several sequences' prefill chunks and decode tokens in one
call) with the same weights run per sequence with attn_implementation="eager" and a DynamicCache, in the same
chunks, in fp32 within 1e-4. Unused cache slots start as NaN, so a read outside a sequence's keys would show.
Runs under transformers 4.57 and 5.x (the models are built in-process: tests/tiny_models.py).
"""

from __future__ import annotations

import functools

import pytest
import torch

from turbogen.attention import (PAGED_ATTENTION_NAME, PagedBatch, active_paged_batch, paged_attention_forward,
                                paged_forward, register_paged_attention)
from turbogen.cache import PagedKVCache

from conftest import PAGED_ATTENTION_IN_4_45, backend_params, skip_on_transformers_4_45
from tiny_models import tiny_model, tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)

pytestmark = [pytest.mark.usefixtures("tiny_model_environment"), skip_on_transformers_4_45(PAGED_ATTENTION_IN_4_45)]

ATOL = RTOL = 1e-4
# Llama (GQA), Mistral (4-token sliding window), Qwen2 (GQA, qkv bias), GPT-2 (MHA, learned positions, no GQA),
# Gemma 2 (a sliding-window layer, then a full one; logit softcap; query_pre_attn_scalar scaling).
KINDS = ("llama", "mistral", "qwen2", "gpt2", "gemma2")
BACKENDS = backend_params(("ref", "cpu"))


@functools.lru_cache(maxsize=None)
def _models(kind: str, **overrides):
    """(the paged model, the eager reference): two instances with the same weights."""
    register_paged_attention()
    paged = tiny_model(kind, fresh=True, **overrides)
    paged.set_attn_implementation(PAGED_ATTENTION_NAME)
    reference = tiny_model(kind, fresh=True, **overrides)
    reference.set_attn_implementation("eager")
    return paged, reference


def _new_cache(model, block_size: int = 4, num_blocks: int = 64) -> PagedKVCache:
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = PagedKVCache(config.num_hidden_layers, num_blocks, block_size, kv_heads, head_dim)
    for tensor in (*cache.key_caches, *cache.value_caches):
        tensor.fill_(float("nan"))  # never-written slots must not leak into any result
    return cache


class Reference:
    """Each sequence run alone through the eager model with its own DynamicCache."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model, self.make_cache, self.caches = model, lambda: DynamicCache(config=model.config), {}

    def fork(self, parent, child):
        import copy

        self.caches[child] = copy.deepcopy(self.caches[parent])

    def step(self, seq_id, tokens: torch.Tensor) -> torch.Tensor:
        cache = self.caches.setdefault(seq_id, self.make_cache())
        with torch.no_grad():
            return self.model(tokens[None], past_key_values=cache, use_cache=True).logits[0]


class Runner:
    """Packed paged forwards, each checked against the reference per sequence."""

    def __init__(self, kind: str, block_size: int = 4, backend: str | None = None, **overrides):
        self.paged, reference = _models(kind, **overrides)
        self.reference = Reference(reference)
        self.cache = _new_cache(self.paged, block_size)
        self.backend = backend

    def step(self, work: list[tuple[object, torch.Tensor]]) -> dict:
        """One packed forward over ``[(seq_id, new tokens)]``; returns each sequence's logits and checks them."""
        for seq_id, _ in work:
            if seq_id not in self.cache.allocator:
                self.cache.add_sequence(seq_id)
        batch = PagedBatch.prepare(self.cache, [s for s, _ in work], [len(t) for _, t in work], backend=self.backend)
        with torch.no_grad():
            logits = paged_forward(self.paged, torch.cat([t for _, t in work]), batch)
        assert logits.shape[0] == batch.num_tokens and torch.isfinite(logits).all()
        out = {}
        for i, (seq_id, tokens) in enumerate(work):
            got = logits[int(batch.cu_seqlens_q[i]):int(batch.cu_seqlens_q[i + 1])]
            torch.testing.assert_close(got, self.reference.step(seq_id, tokens), atol=ATOL, rtol=RTOL,
                                       msg=lambda m, s=seq_id: f"sequence {s!r}: {m}")
            out[seq_id] = got
        return out

    def fork(self, parent, child):
        self.cache.fork(parent, child)
        self.reference.fork(parent, child)


def _prompt(length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, 150, (length,), generator=generator)


def _next(logits: torch.Tensor) -> torch.Tensor:
    return logits[-1:].argmax(-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_packed_prefill_then_decode_equals_per_sequence_eager(kind, backend):
    runner = Runner(kind, backend=backend)
    prompts = {"a": _prompt(7, 1), "b": _prompt(2, 2), "c": _prompt(11, 3)}
    out = runner.step(list(prompts.items()))  # one call: three prefills of different lengths
    for _ in range(3):  # three packed greedy decode steps
        out = runner.step([(s, _next(out[s])) for s in prompts])
    assert runner.cache.allocator.length("c") == 14
    runner.cache.allocator.check()


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_chunks_and_decode_tokens_mixed_in_one_call(kind):
    runner = Runner(kind)
    a, b, c = _prompt(6, 4), _prompt(9, 5), _prompt(3, 6)
    out = runner.step([("a", a)])
    out = runner.step([("a", _next(out["a"])), ("b", b[:5])])  # a decodes while b's first chunk prefills
    out = runner.step([("b", b[5:]), ("c", c), ("a", _next(out["a"]))])  # b's last chunk, c's prefill, a decodes
    out = runner.step([("c", _next(out["c"])), ("b", _next(out["b"])), ("a", _next(out["a"]))])
    runner.step([("b", _next(out["b"])), ("a", _next(out["a"]))])  # c idle this step


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt2"])
def test_block_boundary_lengths(kind, block_size):
    runner = Runner(kind, block_size=block_size)
    lengths = [n for n in (block_size - 1, block_size, block_size + 1) if n > 0]
    prompts = {f"s{n}": _prompt(n, n) for n in lengths}
    out = runner.step(list(prompts.items()))
    for _ in range(2):  # the first decode token crosses into a new block for the block_size-long prompt
        out = runner.step([(s, _next(out[s])) for s in prompts])
    for seq_id, prompt in prompts.items():
        assert len(runner.cache.allocator.blocks(seq_id)) == -(-(len(prompt) + 2) // block_size)


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt2"])
def test_forked_sequence_shares_prefix_blocks_and_decodes_as_an_unshared_one(kind):
    runner = Runner(kind, block_size=4)
    prompt = _prompt(10, 7)  # two full blocks and a half-filled third
    runner.step([("parent", prompt), ("unshared", prompt)])
    runner.fork("parent", "child")
    allocator = runner.cache.allocator
    shared = allocator.blocks("parent")
    assert allocator.blocks("child") == shared and all(allocator.ref_count(b) == 2 for b in shared)
    used = allocator.num_used_blocks
    tokens = {"parent": _prompt(1, 8), "child": _prompt(1, 8), "unshared": _prompt(1, 8)}
    for step in range(4):
        out = runner.step(list(tokens.items()))
        torch.testing.assert_close(out["child"], out["unshared"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(out["parent"], out["unshared"], atol=ATOL, rtol=RTOL)
        if step == 0:  # the shared half-filled block was copied on write (for the first of the two to grow, the
            # parent); the full ones stay shared
            parent, child = allocator.blocks("parent"), allocator.blocks("child")
            assert parent[:2] == child[:2] == shared[:2] and all(allocator.ref_count(b) == 2 for b in shared[:2])
            assert parent[2] != child[2] and shared[2] in (parent[2], child[2])
            assert allocator.num_used_blocks == used + 1
        tokens = {s: _next(out[s]) for s in tokens}
    # The branches diverge: the child's own tokens do not disturb the parent's shared prefix, and vice versa.
    out = runner.step([("parent", _prompt(2, 9)), ("child", _prompt(3, 10))])
    runner.step([("parent", _next(out["parent"])), ("child", _next(out["child"]))])
    assert allocator.blocks("child")[:2] == shared[:2]
    allocator.check()


def test_gpt2_layer_scaled_attention():
    """GPT-2's scale_attn_by_inverse_layer_idx (4.57 passes no scaling to the attention function)."""
    runner = Runner("gpt2", scale_attn_by_inverse_layer_idx=True)
    out = runner.step([("a", _prompt(5, 11)), ("b", _prompt(3, 12))])
    runner.step([("a", _next(out["a"])), ("b", _next(out["b"]))])


@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_backend(backend):
    runner = Runner("llama", backend=backend)
    out = runner.step([("a", _prompt(5, 13)), ("b", _prompt(2, 14))])
    runner.step([("a", _next(out["a"])), ("b", _next(out["b"]))])


def test_registration_is_idempotent_and_builds_no_mask(monkeypatch):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert register_paged_attention() == register_paged_attention() == PAGED_ATTENTION_NAME
    assert AttentionInterface._global_mapping[PAGED_ATTENTION_NAME] is paged_attention_forward
    assert PAGED_ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping  # transformers skips the mask
    seen = []

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        seen.append(attention_mask)
        return paged_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, PAGED_ATTENTION_NAME, spy)
    for kind in ("llama", "mistral", "gpt2"):
        Runner(kind).step([("a", _prompt(4, 15)), ("b", _prompt(3, 16))])
    assert len(seen) == 6 and all(mask is None for mask in seen)


def test_errors():
    paged, reference = _models("llama")
    with pytest.raises(ValueError, match="paged_batch"):
        with torch.no_grad():
            paged(_prompt(3, 0)[None], use_cache=False)
    cache = _new_cache(paged)
    cache.add_sequence("a")
    batch = PagedBatch.prepare(cache, ["a"], [3])
    with pytest.raises(ValueError, match="attn_implementation"):
        paged_forward(reference, _prompt(3, 0), batch)
    with pytest.raises(ValueError, match="3"):
        paged_forward(paged, _prompt(4, 0), batch)
    with torch.no_grad(), active_paged_batch(batch):  # the context carrier alone works too
        logits = paged(_prompt(3, 0)[None], position_ids=batch.position_ids[None], use_cache=False).logits[0]
    assert torch.isfinite(logits).all()
