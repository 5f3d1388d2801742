"""``turbogen.ops.paged_attention``: attention of packed ragged queries over a paged KV cache.

The function computed is :func:`turbogen.ref.paged.paged_attention`'s (gather through the block tables, then
masked dense attention: the oracle). The kernels never gather: the cpu kernel (csrc/cpu/paged_attention.cpp)
streams each sequence's blocks with an online softmax, threads over (sequence, kv head, query tile); the Triton
kernel (kernels/paged_attention.py) and the CUDA kernel (csrc/cuda/paged_attention.cu) run one program per
(query token, head or kv head) over the blocks of its sequence.
"""

from __future__ import annotations

import math

import torch

from .. import _ext
from ._interop import accepts_dlpack
from ._native import _fill
from ._registry import OpSpec, declare
from ._validate import FLOAT_DTYPES, _skip_value_checks

_INT_DTYPES = (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)


@accepts_dlpack
def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, *,
                    scale: float | None = None, sliding_window: int | None = None, softcap: float | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """Causal attention of many sequences' new tokens (decode tokens and prefill chunks mixed) over a paged cache.

    Sequence ``s``'s queries are ``query[cu_seqlens_q[s]:cu_seqlens_q[s + 1]]``: the last ``q_len`` of its
    ``seq_lens[s]`` positions, whose keys and values (its new ones included: write them first with
    :func:`turbogen.ops.write_kv`) are in the caches at the slots its block table names (token ``j`` at
    ``key_cache[block_tables[s, j // block_size], j % block_size]``). Query ``i`` of the sequence sits at position
    ``p = seq_lens[s] - q_len + i`` and attends to keys ``0..p`` (causal), and with ``sliding_window = w`` only to
    the last ``w`` of them (``j > p - w``, transformers' sliding-window mask). Query head ``h`` reads kv head
    ``h // (heads // kv_heads)`` (GQA; MQA with one kv head). Scores are ``(q . k) * scale``, with ``softcap = c``
    then ``tanh(score / c) * c`` (before masking, as transformers' Gemma 2); softmax and the sum of values are
    float32. Slots a query does not attend to are never read into its result (they may hold anything, NaN
    included), nor are block-table entries past a sequence's length.

    Args:
        query: ``[total_q, heads, head_dim]`` float32, float16 or bfloat16, heads a multiple of kv_heads.
        key_cache, value_cache: ``[num_blocks, block_size, kv_heads, head_dim]``, contiguous, the query's dtype
            and device.
        block_tables: integer ``[num_seqs, max_blocks_per_seq]`` (int32 is used as is): each entry a sequence
            reads (its first ``ceil(seq_lens[s] / block_size)``) in ``[0, num_blocks)``; the rest may be anything.
        cu_seqlens_q: integer ``[num_seqs + 1]``, from 0 up to ``total_q``, non-decreasing (a sequence may have no
            queries).
        seq_lens: integer ``[num_seqs]``: each at least its sequence's query count, at most
            ``max_blocks_per_seq * block_size``.
        scale: the score scale, ``1 / sqrt(head_dim)`` by default.
        sliding_window: None (no window) or an int >= 1.
        softcap: None (no cap) or a float > 0.
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``, else by device).

    Returns:
        ``[total_q, heads, head_dim]`` in the query's dtype.

    The index values (cu_seqlens_q, seq_lens, block-table entries) are checked here, a ValueError naming the
    argument, wherever that needs no device synchronisation (CPU tensors, outside ``torch.compile``); the cpu
    kernel checks them again, and the CUDA and Triton kernels never read outside the caches whatever they hold.
    """
    inputs = _checked(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, sliding_window,
                      softcap, check_values=True)
    return PAGED_ATTENTION(*inputs, backend=backend)


def check_paged_indices(block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, *,
                        total_q: int, num_blocks: int, block_size: int) -> None:
    """Check once the index values that :func:`paged_attention` checks on every call (a ValueError naming the
    argument): for a caller that runs many calls over one set of indices (a model's layers in one forward), then
    calls :func:`paged_attention_checked_indices`. The tensors must be int32, contiguous, on the CPU."""
    for name, tensor, dims in (("block_tables", block_tables, 2), ("cu_seqlens_q", cu_seqlens_q, 1),
                               ("seq_lens", seq_lens, 1)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int32 or tensor.dim() != dims:
            raise TypeError(f"{name} must be a {dims}-D int32 tensor")
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise ValueError(f"{name} must be a contiguous CPU tensor")
    num_seqs = block_tables.shape[0]
    if tuple(cu_seqlens_q.shape) != (num_seqs + 1,) or tuple(seq_lens.shape) != (num_seqs,):
        raise ValueError(f"cu_seqlens_q and seq_lens must have shapes [{num_seqs + 1}] and [{num_seqs}] (block_tables "
                         f"has {num_seqs} rows), got {tuple(cu_seqlens_q.shape)} and {tuple(seq_lens.shape)}")
    _check_values(block_tables, cu_seqlens_q, seq_lens, block_tables, cu_seqlens_q, seq_lens, total_q, num_blocks,
                  block_size)


def paged_attention_checked_indices(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                    block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                                    *, scale: float | None = None, sliding_window: int | None = None,
                                    softcap: float | None = None, backend: str | None = None) -> torch.Tensor:
    """:func:`paged_attention` over index tensors whose values :func:`check_paged_indices` checked (for these
    caches' ``num_blocks`` and ``block_size`` and this query's ``total_q``): every other argument is checked as
    :func:`paged_attention` checks it, the index values are not checked again here (the cpu kernel still does,
    so no value can make it read outside the caches; the CUDA and Triton kernels never do)."""
    inputs = _checked(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, sliding_window,
                      softcap, check_values=False)
    return PAGED_ATTENTION(*inputs, backend=backend)


def _check_tensor(name: str, tensor, dims: int, dtypes, device=None) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {tensor.dtype}")
    if device is not None and tensor.device != device:
        raise ValueError(f"{name} must be on the query's device {device}, got {tensor.device}")


def _checked(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, sliding_window, softcap,
             check_values: bool):
    _check_tensor("query", query, 3, FLOAT_DTYPES)
    device = query.device
    _check_tensor("key_cache", key_cache, 4, FLOAT_DTYPES, device)
    _check_tensor("value_cache", value_cache, 4, FLOAT_DTYPES, device)
    _check_tensor("block_tables", block_tables, 2, _INT_DTYPES, device)
    _check_tensor("cu_seqlens_q", cu_seqlens_q, 1, _INT_DTYPES, device)
    _check_tensor("seq_lens", seq_lens, 1, _INT_DTYPES, device)
    total_q, heads, head_dim = query.shape
    num_blocks, block_size, kv_heads, cache_head_dim = key_cache.shape
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache must have key_cache's shape {tuple(key_cache.shape)}, "
                         f"got {tuple(value_cache.shape)}")
    if key_cache.dtype != query.dtype or value_cache.dtype != query.dtype:
        raise TypeError(f"key_cache and value_cache must have the query's dtype {query.dtype}, got "
                        f"{key_cache.dtype} and {value_cache.dtype}")
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("key_cache and value_cache must be contiguous")
    if block_size < 1 or kv_heads < 1:
        raise ValueError(f"key_cache must have block_size >= 1 and kv_heads >= 1, got shape {tuple(key_cache.shape)}")
    if cache_head_dim != head_dim or head_dim < 1:
        raise ValueError(f"query's head_dim ({head_dim}) must equal the caches' ({cache_head_dim}) and be >= 1")
    if heads < 1 or heads % kv_heads:
        raise ValueError(f"query's heads ({heads}) must be a positive multiple of the caches' kv_heads ({kv_heads})")
    num_seqs, max_blocks = block_tables.shape
    if tuple(cu_seqlens_q.shape) != (num_seqs + 1,):
        raise ValueError(f"cu_seqlens_q must have shape [num_seqs + 1] = [{num_seqs + 1}] (block_tables has "
                         f"{num_seqs} rows), got {tuple(cu_seqlens_q.shape)}")
    if tuple(seq_lens.shape) != (num_seqs,):
        raise ValueError(f"seq_lens must have shape [num_seqs] = [{num_seqs}], got {tuple(seq_lens.shape)}")
    if max_blocks * block_size >= 2 ** 31:
        raise ValueError(f"max_blocks_per_seq * block_size must be < 2**31, got {max_blocks * block_size}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if sliding_window is None:
        sliding_window = 0
    elif isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
        raise ValueError(f"sliding_window must be None or an int >= 1, got {sliding_window!r}")
    if softcap is None:
        softcap = 0.0
    elif (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap)
          or softcap <= 0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    tables = block_tables.to(torch.int32).contiguous()
    cu = cu_seqlens_q.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    if check_values and device.type == "cpu" and not _skip_value_checks(device):
        _check_values(tables, cu, lens, block_tables, cu_seqlens_q, seq_lens, total_q, num_blocks, block_size)
    return (query.contiguous(), key_cache, value_cache, tables, cu, lens, float(scale), int(sliding_window),
            float(softcap))


def _check_values(tables, cu, lens, block_tables, cu_seqlens_q, seq_lens, total_q, num_blocks, block_size) -> None:
    """The index values (CPU tensors): what turbogen.ref.paged and the kernels assume."""
    num_seqs, max_blocks = tables.shape
    # Values beyond int32 would have wrapped in the conversion: compare the originals.
    if int(cu_seqlens_q[0]) != 0 or int(cu_seqlens_q[-1]) != total_q:
        raise ValueError(f"cu_seqlens_q must start at 0 and end at total_q = {total_q}, got "
                         f"{int(cu_seqlens_q[0])} and {int(cu_seqlens_q[-1])}")
    q_lens = cu_seqlens_q[1:].to(torch.int64) - cu_seqlens_q[:-1].to(torch.int64)
    if num_seqs and bool((q_lens < 0).any()):
        raise ValueError("cu_seqlens_q must be non-decreasing")
    lengths = seq_lens.to(torch.int64)
    if num_seqs and bool((lengths < q_lens).any()):
        s = int((lengths < q_lens).nonzero()[0])
        raise ValueError(f"seq_lens[{s}] = {int(lengths[s])} is smaller than the sequence's {int(q_lens[s])} queries")
    if num_seqs and bool((lengths > max_blocks * block_size).any()):
        s = int((lengths > max_blocks * block_size).nonzero()[0])
        raise ValueError(f"seq_lens[{s}] = {int(lengths[s])} exceeds max_blocks_per_seq * block_size = "
                         f"{max_blocks * block_size}")
    if num_seqs and max_blocks:
        used = torch.arange(max_blocks).unsqueeze(0) < ((lengths + block_size - 1) // block_size).unsqueeze(1)
        entries = block_tables.to(torch.int64)
        bad = used & ((entries < 0) | (entries >= num_blocks))
        if bool(bad.any()):
            s, b = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"block_tables[{s}, {b}] = {int(entries[s, b])} is out of range [0, num_blocks = "
                             f"{num_blocks})")


# --- the op declaration ---------------------------------------------------------------------------

def _allocate_outputs(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                      sliding_window: int, softcap: float) -> torch.Tensor:
    """``[total_q, heads, head_dim]`` in the query's dtype (contiguous). The inputs are validated: query
    contiguous, caches contiguous of its dtype, int32 contiguous block_tables / cu_seqlens_q / seq_lens,
    ``sliding_window`` 0 for none, ``softcap`` 0.0 for none."""
    return torch.empty_like(query, memory_format=torch.contiguous_format)


def _launch_native(backend: str, query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale,
                   sliding_window, softcap, out) -> None:
    total_q, heads, head_dim = query.shape
    if total_q == 0:  # nothing to write, and empty tensors have no address
        return
    num_blocks, block_size, kv_heads, _ = key_cache.shape
    num_seqs, max_blocks = block_tables.shape
    extension = _ext.extension()
    args = _fill(extension.PagedAttentionArgs(),
                 query=query.data_ptr(), key_cache=key_cache.data_ptr() if key_cache.numel() else 0,
                 value_cache=value_cache.data_ptr() if value_cache.numel() else 0,
                 block_tables=block_tables.data_ptr() if block_tables.numel() else 0,
                 cu_seqlens_q=cu_seqlens_q.data_ptr(), seq_lens=seq_lens.data_ptr() if num_seqs else 0,
                 out=out.data_ptr(), total_q=total_q, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                 num_blocks=num_blocks, block_size=block_size, num_seqs=num_seqs, max_blocks_per_seq=max_blocks,
                 dtype=_ext.dtype_code(query.dtype), scale=scale, sliding_window=sliding_window, softcap=softcap)
    if backend == "cpu":
        extension.launch_paged_attention_cpu(args)
    else:
        extension.launch_paged_attention_cuda(args, _ext.cuda_stream_handle(query.device))


def _launch_cpu(*inputs_and_outputs) -> None:
    _launch_native("cpu", *inputs_and_outputs)


def _launch_cuda(*inputs_and_outputs) -> None:
    _launch_native("cuda", *inputs_and_outputs)


def _launch_triton(*inputs_and_outputs) -> None:
    from ..kernels import paged_attention as kernels  # lazy: TRITON_INTERPRET must be set first on CPU

    kernels.launch_paged_attention(*inputs_and_outputs)


PAGED_ATTENTION = declare(OpSpec(
    name="paged_attention",
    reference="paged_attention",
    allocate_outputs=_allocate_outputs,
    launchers={"cpu": _launch_cpu, "triton": _launch_triton, "cuda": _launch_cuda},
))
