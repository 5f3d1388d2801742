"""Reference paged KV cache ops: the executable spec of ``turbogen.ops.write_kv`` and ``turbogen.ops.paged_attention``.

Cache layout (docs/design.md, issue 10): ``key_cache`` and ``value_cache`` of shape ``[num_blocks, block_size,
kv_heads, head_dim]``; token ``j`` of sequence ``s`` lives in slot ``block_tables[s, j // block_size] *
block_size + j % block_size``, i.e. row ``slot`` of the ``[num_blocks * block_size, kv_heads, head_dim]`` view.

``paged_attention``: the queries of all sequences are packed, ``query[cu_seqlens_q[s]:cu_seqlens_q[s + 1]]``
being sequence ``s``'s; they are the *last* ``q_len = cu_seqlens_q[s + 1] - cu_seqlens_q[s]`` positions of its
``seq_lens[s]`` keys, so query ``i`` of the sequence sits at position ``p = seq_lens[s] - q_len + i`` and attends
to the keys ``j`` with ``j <= p`` (causal) and, with a sliding window ``w``, ``j > p - w`` (the last ``w`` keys, as
transformers' ``sliding_window_overlay``). Query head ``h`` reads kv head ``h // (heads // kv_heads)`` (GQA/MQA).
Scores are ``q . k * scale``; with a softcap ``c``, ``tanh(score / c) * c`` before masking (transformers' Gemma 2
eager attention). Softmax and the weighted sum of values are computed in float32; the output has the query's
dtype.

This reference gathers every sequence's keys through its block table into a dense ``[tokens, max_blocks *
block_size, kv_heads, head_dim]`` copy and runs masked dense attention: plain torch with static shapes and no
host synchronisation (the oracle, not a fast path). Keys outside a query's range are masked with ``where``
(never added), so NaN in unused cache slots or behind unused block-table entries never reaches the result.
"""

from __future__ import annotations

import torch


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Writes ``key[t]`` and ``value[t]`` into row ``slot_mapping[t]`` of the flat caches, in place; slot -1 (or any
    slot outside the caches, as the kernels do) skips.

    Args:
        key, value: ``[tokens, kv_heads, head_dim]`` (converted to the caches' dtype).
        key_cache, value_cache: ``[num_blocks, block_size, kv_heads, head_dim]``, contiguous.
        slot_mapping: int64 ``[tokens]``: ``block * block_size + offset``, or -1 (padding: nothing written).
    """
    num_blocks, block_size, kv_heads, head_dim = key_cache.shape
    total_slots = num_blocks * block_size
    if slot_mapping.shape[0] == 0:
        return
    slots = slot_mapping.to(torch.int64)
    keep = (slots >= 0) & (slots < total_slots)
    # The token that writes each slot (-1: none; of two tokens with one slot, the later), found through a scratch
    # slot that takes the skipped tokens: every shape is fixed, so torch.compile traces this without data-dependent
    # shapes. It rewrites the whole cache (slots nobody writes keep their values): the oracle's way, not a kernel's.
    writer = torch.full((total_slots + 1,), -1, dtype=torch.int64, device=slots.device)
    tokens = torch.arange(slots.shape[0], dtype=torch.int64, device=slots.device)
    writer.scatter_reduce_(0, torch.where(keep, slots, total_slots), tokens, reduce="amax")
    writer = writer[:total_slots]
    written = (writer >= 0)[:, None, None]
    for cache, new in ((key_cache, key), (value_cache, value)):
        flat = cache.view(total_slots, kv_heads, head_dim)
        flat.copy_(torch.where(written, new.to(cache.dtype)[writer.clamp(min=0)], flat))


def token_sequences(cu_seqlens_q: torch.Tensor, total_q: int) -> torch.Tensor:
    """int64 ``[total_q]``: the sequence each packed query token belongs to."""
    tokens = torch.arange(total_q, dtype=torch.int64, device=cu_seqlens_q.device)
    return torch.searchsorted(cu_seqlens_q.to(torch.int64)[1:].contiguous(), tokens, right=True)


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                    scale: float, sliding_window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """Attention of packed ragged queries over a paged cache (module docstring).

    Args:
        query: ``[total_q, heads, head_dim]``, heads a multiple of kv_heads.
        key_cache, value_cache: ``[num_blocks, block_size, kv_heads, head_dim]``.
        block_tables: int ``[num_seqs, max_blocks_per_seq]``; entries past a sequence's length are not read.
        cu_seqlens_q: int ``[num_seqs + 1]``, non-decreasing from 0 to total_q.
        seq_lens: int ``[num_seqs]``, ``seq_lens[s] >= q_len(s)`` and ``<= max_blocks_per_seq * block_size``.
        scale: the score scale.
        sliding_window: 0 for none, else the number of most recent keys (the query's own included) attended to.
        softcap: 0 for none, else ``c > 0``.

    Returns:
        ``[total_q, heads, head_dim]`` in ``query``'s dtype.
    """
    total_q, heads, head_dim = query.shape
    num_blocks, block_size, kv_heads, _ = key_cache.shape
    max_blocks = block_tables.shape[1]
    group = heads // kv_heads
    device = query.device
    length = max_blocks * block_size

    seq = token_sequences(cu_seqlens_q, total_q)                                   # [T]
    cu = cu_seqlens_q.to(torch.int64)
    lens = seq_lens.to(torch.int64)
    position = lens[seq] - cu[seq + 1] + torch.arange(total_q, dtype=torch.int64, device=device)  # [T]
    j = torch.arange(length, dtype=torch.int64, device=device)                      # [L]
    valid = j.unsqueeze(0) <= position.unsqueeze(1)                                  # [T, L]
    if sliding_window > 0:
        valid = valid & (j.unsqueeze(0) > (position - sliding_window).unsqueeze(1))

    # Slot of every key of every sequence; entries not read may be anything: clamped, then masked.
    blocks = block_tables.to(torch.int64).clamp(0, max(num_blocks - 1, 0))          # [S, MB]
    slots = (blocks.unsqueeze(-1) * block_size + torch.arange(block_size, device=device)).reshape(-1, length)
    token_slots = slots[seq]                                                         # [T, L]
    flat_k = key_cache.reshape(num_blocks * block_size, kv_heads, head_dim)
    flat_v = value_cache.reshape(num_blocks * block_size, kv_heads, head_dim)
    keys = flat_k[token_slots].to(torch.float32)                                     # [T, L, KVH, D]
    values = flat_v[token_slots].to(torch.float32)
    values = torch.where(valid[:, :, None, None], values, 0.0)

    q = query.to(torch.float32).reshape(total_q, kv_heads, group, head_dim)
    scores = torch.einsum("tkgd,tlkd->tkgl", q, keys) * scale                       # [T, KVH, G, L]
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    scores = torch.where(valid[:, None, None, :], scores, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.where(valid[:, None, None, :], weights, 0.0)  # a row without keys (never valid input): zeros
    out = torch.einsum("tkgl,tlkd->tkgd", weights, values)
    return out.reshape(total_q, heads, head_dim).to(query.dtype)


__all__ = ["paged_attention", "token_sequences", "write_kv"]
