"""turbogen.cache.paged: the block allocator (reference counts, forks, copy on write, preemption; fuzzed with the
invariants checked after every operation) and PagedKVCache (slot mappings, block tables, copy on write of the
bytes on every layer, and attention through it equal to attention over each sequence's own dense keys)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from turbogen import ops
from turbogen.cache import BlockAllocator, OutOfBlocks, PagedKVCache


def test_add_grow_free_reuses_blocks():
    a = BlockAllocator(4, 4)
    assert a.add("x", 5) == [0, 1] and a.length("x") == 5
    assert a.slots("x", 0) == [0, 1, 2, 3, 4]
    assert a.grow("x", 3) == [] and a.blocks("x") == [0, 1] and a.length("x") == 8
    assert a.grow("x", 1) == [] and a.blocks("x") == [0, 1, 2]
    assert a.slot("x", 8) == 8
    a.free("x")
    a.check()
    assert a.num_free_blocks == 4 and "x" not in a


def test_fork_shares_blocks_and_copies_a_shared_open_last_block_on_write():
    a = BlockAllocator(6, 4)
    a.add("p", 6)                       # blocks [0, 1], block 1 half full
    a.fork("p", "c")
    assert a.blocks("c") == [0, 1] and a.ref_count(0) == a.ref_count(1) == 2
    assert a.blocks_needed("c", 1) == 1  # the copy of block 1
    copies = a.grow("c", 1)
    assert copies == [(1, 2)] and a.blocks("c") == [0, 2] and a.ref_count(1) == 1 and a.ref_count(2) == 1
    assert a.grow("p", 1) == []         # block 1 is the parent's alone now: written in place
    a.check()


def test_a_shared_full_last_block_needs_no_copy():
    a = BlockAllocator(6, 4)
    a.add("p", 8)
    a.fork("p", "c")
    assert a.grow("c", 1) == [] and a.blocks("c") == [0, 1, 2] and a.ref_count(1) == 2
    a.check()


def test_failed_operations_change_nothing():
    a = BlockAllocator(3, 2)
    a.add("x", 4)
    a.fork("x", "y")
    a.grow("x", 1)                      # x: [0, 1, 2]
    before = (a.blocks("x"), a.blocks("y"), a.num_free_blocks)
    with pytest.raises(OutOfBlocks):
        a.grow("y", 3)
    with pytest.raises(OutOfBlocks):
        a.add("z", 1)
    with pytest.raises(KeyError, match="unknown sequence"):
        a.grow("nope", 1)
    with pytest.raises(ValueError, match="already exists"):
        a.fork("x", "y")
    with pytest.raises(ValueError, match="new_tokens"):
        a.grow("x", -1)
    assert (a.blocks("x"), a.blocks("y"), a.num_free_blocks) == before
    a.check()
    a.free("x")
    with pytest.raises(KeyError):
        a.free("x")                      # no double free
    a.check()


def test_preempt_returns_the_length_and_frees():
    a = BlockAllocator(4, 4)
    a.add("x", 7)
    assert a.preempt("x") == 7 and a.num_free_blocks == 4
    a.check()


def test_truncate_releases_blocks_and_keeps_copy_on_write():
    a = BlockAllocator(6, 4)
    a.add("p", 9)
    a.fork("p", "c")
    a.truncate("c", 6)                  # c: [0, 1], block 2 back to p alone, block 1 shared and now open for c
    assert a.blocks("c") == [0, 1] and a.ref_count(2) == 1
    assert a.grow("c", 1) == [(1, 3)]
    a.check()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="block_size"):
        BlockAllocator(4, 0)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(-1, 4)


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_invariants(seed):
    """Random add / grow / fork / free / preempt / truncate, the invariants checked after each; at the end everything
    freed returns every block."""
    rng = random.Random(seed)
    a = BlockAllocator(num_blocks=rng.choice([8, 16, 33]), block_size=rng.choice([1, 2, 4, 16]))
    next_id = 0
    for _ in range(400):
        live = a.sequences
        op = rng.choice(["add", "grow", "grow", "fork", "free", "preempt", "truncate"])
        try:
            if op == "add" or not live:
                a.add(next_id, rng.randint(0, 3 * a.block_size))
                next_id += 1
            elif op == "grow":
                seq = rng.choice(live)
                shared_before = a.blocks(seq)[-1:] and a.ref_count(a.blocks(seq)[-1]) > 1
                length = a.length(seq)
                copies = a.grow(seq, rng.randint(0, 2 * a.block_size))
                assert len(copies) <= 1
                if copies:
                    assert shared_before and length % a.block_size != 0
            elif op == "fork":
                a.fork(rng.choice(live), next_id)
                next_id += 1
            elif op == "free":
                a.free(rng.choice(live))
            elif op == "preempt":
                seq = rng.choice(live)
                assert a.preempt(seq) >= 0
            else:
                seq = rng.choice(live)
                a.truncate(seq, rng.randint(0, a.length(seq)))
        except OutOfBlocks:
            pass
        a.check()
        # Slots of different sequences never collide unless they share the block.
        owners = {}
        for seq in a.sequences:
            for block in a.blocks(seq):
                owners.setdefault(block, set()).add(seq)
        assert all(len(seqs) == a.ref_count(block) for block, seqs in owners.items())
    for seq in a.sequences:
        a.free(seq)
    a.check()
    assert a.num_free_blocks == a.num_blocks


# ---- PagedKVCache -----------------------------------------------------------------------------------------

def _dense_attention(q, keys, values, q_len):
    """[q_len, heads, D] causal attention of the last q_len positions over a sequence's dense keys."""
    heads, kv_heads = q.shape[1], keys.shape[1]
    k = keys.repeat_interleave(heads // kv_heads, 1).transpose(0, 1)
    v = values.repeat_interleave(heads // kv_heads, 1).transpose(0, 1)
    length = keys.shape[0]
    mask = torch.arange(length)[None] <= torch.arange(length - q_len, length)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask)
    return out.transpose(0, 1)


def test_paged_cache_end_to_end_with_fork_and_copy_on_write():
    """Prefill two prompts, fork one (a beam), decode a few steps: every sequence's attention through the cache
    equals dense attention over its own keys, and a fork's divergent tokens never leak into its parent."""
    torch.manual_seed(0)
    layers, kv_heads, heads, head_dim = 2, 2, 4, 8
    cache = PagedKVCache(layers, num_blocks=16, block_size=4, kv_heads=kv_heads, head_dim=head_dim)
    for layer in range(layers):  # unused slots hold NaN: must never leak
        cache.key_caches[layer].fill_(float("nan"))
        cache.value_caches[layer].fill_(float("nan"))
    dense = {}  # seq -> per layer (keys, values)

    def append(seq_ids, counts, prefill):
        slots = cache.append_slots(seq_ids, counts) if not prefill else torch.cat(
            [cache.add_sequence(s, c) for s, c in zip(seq_ids, counts)])
        total = sum(counts)
        for layer in range(layers):
            k, v = torch.randn(total, kv_heads, head_dim), torch.randn(total, kv_heads, head_dim)
            cache.write(layer, k, v, slots, backend="cpu")
            start = 0
            for s, c in zip(seq_ids, counts):
                empty = torch.empty(0, kv_heads, head_dim)
                old_k, old_v = dense.setdefault(s, [(empty, empty)] * layers)[layer]
                dense[s][layer] = (torch.cat([old_k, k[start:start + c]]),
                                                               torch.cat([old_v, v[start:start + c]]))
                start += c
        cu = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.int32)
        tables, lens = cache.block_tables(seq_ids), cache.seq_lens(seq_ids)
        for layer in range(layers):
            q = torch.randn(total, heads, head_dim)
            out = cache.attend(layer, q, tables, cu, lens, backend="cpu")
            for i, (s, c) in enumerate(zip(seq_ids, counts)):
                expected = _dense_attention(q[cu[i]:cu[i + 1]], *dense[s][layer], c)
                torch.testing.assert_close(out[cu[i]:cu[i + 1]], expected, rtol=1e-5, atol=1e-5)

    append(["a", "b"], [6, 3], prefill=True)
    cache.fork("a", "a2")
    dense["a2"] = list(dense["a"])
    for _ in range(3):
        append(["a", "a2", "b"], [1, 1, 1], prefill=False)
    cache.allocator.check()
    assert cache.allocator.blocks("a")[0] == cache.allocator.blocks("a2")[0]  # the full prefix block is shared
    assert cache.allocator.blocks("a")[1] != cache.allocator.blocks("a2")[1]  # the open one was copied on write
    for s in ("a", "a2", "b"):
        cache.free(s)
    assert cache.allocator.num_free_blocks == 16


def test_paged_cache_append_is_all_or_nothing():
    cache = PagedKVCache(1, num_blocks=2, block_size=2, kv_heads=1, head_dim=4)
    cache.add_sequence("x", 2)
    cache.add_sequence("y", 1)
    with pytest.raises(OutOfBlocks):
        cache.append_slots(["x", "y"], [1, 2])
    assert cache.allocator.length("x") == 2 and cache.allocator.length("y") == 1
    assert cache.block_tables(["x", "y"], max_blocks_per_seq=3).tolist() == [[0, 0, 0], [1, 0, 0]]
    assert cache.seq_lens(["x", "y"]).tolist() == [2, 1]
    assert cache.bytes_per_token == 2 * 1 * 1 * 4 * 4
    cache.free("y")
    assert cache.append_slots(["x"], [1]).tolist() == [2]
    with pytest.raises(ValueError, match="max_blocks_per_seq"):
        cache.block_tables(["x"], max_blocks_per_seq=1)


def test_dense_helper_matches_math():
    q, k, v = torch.randn(2, 2, 4), torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    out = _dense_attention(q, k, v, 2)
    scores = torch.einsum("qd,kd->qk", q[1, 0:1], k[:, 0]) / math.sqrt(4)
    assert out.shape == (2, 2, 4) and torch.allclose(out[1, 0], torch.softmax(scores, -1) @ v[:, 0], atol=1e-6)
