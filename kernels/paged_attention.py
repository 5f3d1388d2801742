"""Triton ``turbogen.ops.write_kv`` and ``turbogen.ops.paged_attention``; the functions computed are
turbogen.ref.paged's.

- ``_write_kv_kernel``: one program per token, copying its ``[kv_heads * head_dim]`` row of keys and of values into
  its slot; a slot outside ``[0, num_slots)`` (the -1 padding) is skipped.
- ``_paged_attention_kernel``: one program per (query token, kv head), holding the queries of the kv head's GQA
  group (``[G, head_dim]``, float32, pre-scaled), streaming the keys the token sees (``[lo, position]``) in chunks
  of ``BLOCK_N`` positions through its sequence's block table, with an online softmax in float32. A position
  whose block-table entry is outside ``[0, num_blocks)``, or past the table, is masked and never loaded, so the
  kernel never reads outside the caches whatever the index tensors hold; masked lanes load 0, so NaN in unused
  slots cannot reach the result. The launcher computes each token's sequence and position with torch ops on the
  device (no host synchronisation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import interpreting
from .sampling import _exp

BLOCK_N = 32               # key positions per step on a GPU
INTERPRETER_BLOCK_N = 64   # the interpreter pays per step, not per element


@triton.jit
def _tanh(x, ACCURATE: tl.constexpr):
    # libdevice's tanhf on a GPU; the interpreter has no libdevice: 1 - 2 / (exp(2x) + 1), exact at +-inf.
    if ACCURATE:
        return libdevice.tanh(x)
    else:
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _write_kv_kernel(key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_ptr, row, num_slots,
                     ROW_BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    offs = tl.arange(0, ROW_BLOCK)
    mask = (offs < row) & (slot >= 0) & (slot < num_slots)
    k = tl.load(key_ptr + t * row + offs, mask=mask)
    v = tl.load(value_ptr + t * row + offs, mask=mask)
    tl.store(key_cache_ptr + slot * row + offs, k, mask=mask)
    tl.store(value_cache_ptr + slot * row + offs, v, mask=mask)


@triton.jit(do_not_specialize=["window"])
def _paged_attention_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, seq_ptr, pos_ptr, out_ptr,
                            heads, kv_heads, group, head_dim, num_blocks, block_size, max_blocks,
                            scale, window, softcap,
                            HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, G: tl.constexpr,
                            D: tl.constexpr, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    seq = tl.load(seq_ptr + t).to(tl.int64)
    p = tl.load(pos_ptr + t).to(tl.int64)
    g = tl.arange(0, G)
    d = tl.arange(0, D)
    g_mask = g < group
    d_mask = d < head_dim
    head = kvh * group + g
    io_offsets = (t * heads + head)[:, None] * head_dim + d[None, :]
    io_mask = g_mask[:, None] & d_mask[None, :]
    q = tl.load(q_ptr + io_offsets, mask=io_mask, other=0.0).to(tl.float32) * scale

    m = tl.full([G], float("-inf"), tl.float32)
    l = tl.zeros([G], tl.float32)
    acc = tl.zeros([G, D], tl.float32)
    lo = p * 0
    if HAS_WINDOW:
        lo = tl.maximum(p - window + 1, 0)
    for start in range(lo, p + 1, BLOCK):
        j = start + tl.arange(0, BLOCK)
        b = j // block_size
        valid = (j <= p) & (b < max_blocks)
        block = tl.load(tables_ptr + seq * max_blocks + b, mask=valid, other=-1).to(tl.int64)
        valid = valid & (block >= 0) & (block < num_blocks)
        row = (block * block_size + j % block_size) * kv_heads + kvh
        kv_offsets = row[:, None] * head_dim + d[None, :]
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)          # [BLOCK, D]
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)                                   # [G, BLOCK]
        if HAS_SOFTCAP:
            s = _tanh(s / softcap, ACCURATE) * softcap
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        weights = _exp(s - m_safe[:, None], ACCURATE)                                       # masked: exp(-inf) = 0
        alpha = _exp(m - m_safe, ACCURATE)
        l = l * alpha + tl.sum(weights, axis=1)
        v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0).to(tl.float32)          # [BLOCK, D]
        acc = acc * alpha[:, None] + tl.sum(weights[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    out = acc / tl.where(l > 0.0, l, 1.0)[:, None]
    tl.store(out_ptr + io_offsets, out.to(out_ptr.dtype.element_ty), mask=io_mask)


def launch_write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    slots: torch.Tensor) -> None:
    """Launch over validated inputs (python/turbogen/ops/write_kv.py): key and value contiguous in the caches'
    dtype, int64 contiguous slots."""
    tokens, kv_heads, head_dim = key.shape
    if tokens == 0:
        return
    num_blocks, block_size = key_cache.shape[:2]
    row = kv_heads * head_dim
    _write_kv_kernel[(tokens,)](key, value, key_cache, value_cache, slots, row, num_blocks * block_size,
                                ROW_BLOCK=triton.next_power_of_2(row))


def token_positions(cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, total_q: int) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """int32 ``[total_q]`` sequence and position of every packed query token, by torch ops on the device."""
    num_seqs = seq_lens.shape[0]
    tokens = torch.arange(total_q, dtype=torch.int64, device=cu_seqlens_q.device)
    cu = cu_seqlens_q.to(torch.int64)
    seq = torch.searchsorted(cu[1:].contiguous(), tokens, right=True).clamp_(max=max(num_seqs - 1, 0))
    position = seq_lens.to(torch.int64)[seq] - cu[seq + 1] + tokens
    return seq.to(torch.int32), position.to(torch.int32)


def launch_paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                           scale: float, sliding_window: int, softcap: float, out: torch.Tensor) -> None:
    """Launch over validated inputs (python/turbogen/ops/paged_attention.py's ``_allocate_outputs`` lists them),
    writing ``out`` ``[total_q, heads, head_dim]``."""
    total_q, heads, head_dim = query.shape
    if total_q == 0:
        return
    num_blocks, block_size, kv_heads, _ = key_cache.shape
    num_seqs, max_blocks = block_tables.shape
    group = heads // kv_heads
    seq, position = token_positions(cu_seqlens_q, seq_lens, total_q)
    interpreted = interpreting()
    tables = block_tables if block_tables.numel() else torch.zeros(1, dtype=torch.int32, device=query.device)
    _paged_attention_kernel[(total_q, kv_heads)](
        query, key_cache, value_cache, tables, seq, position, out,
        heads, kv_heads, group, head_dim, num_blocks, block_size, max_blocks,
        float(scale), int(sliding_window), float(softcap) if softcap > 0 else 1.0,
        HAS_WINDOW=sliding_window > 0, HAS_SOFTCAP=softcap > 0, G=triton.next_power_of_2(group),
        D=triton.next_power_of_2(head_dim), BLOCK=INTERPRETER_BLOCK_N if interpreted else BLOCK_N,
        ACCURATE=not interpreted)
