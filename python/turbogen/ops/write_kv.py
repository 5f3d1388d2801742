"""``turbogen.ops.write_kv``: scatter new keys and values into the slots of a paged KV cache, in place.

The function computed is :func:`turbogen.ref.paged.write_kv`'s. The op writes two of its inputs, the caches: it is
declared with ``mutates_args=("key_cache", "value_cache")`` (its custom op ``torch.ops.turbogen.write_kv``
marks them written, what ``torch.compile`` needs to keep the writes in order) and returns nothing.
"""

from __future__ import annotations

import torch

from .. import _ext
from ._native import _fill
from ._registry import OpSpec, declare
from ._validate import FLOAT_DTYPES


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor, *, backend: str | None = None) -> None:
    """Write ``key[t]`` and ``value[t]`` into slot ``slot_mapping[t]`` of the caches, in place.

    Slot ``s`` is position ``s % block_size`` of block ``s // block_size``: ``key_cache[s // block_size,
    s % block_size] = key[t]``. A slot of -1 skips the token (vLLM's padding). Two tokens with one slot: one of
    them wins (which one is unspecified).

    Args:
        key, value: ``[tokens, kv_heads, head_dim]`` float32, float16 or bfloat16 (converted to the caches'
            dtype), on the caches' device.
        key_cache, value_cache: ``[num_blocks, block_size, kv_heads, head_dim]``, contiguous, one shape and
            dtype; written in place.
        slot_mapping: integer ``[tokens]``, each in ``[-1, num_blocks * block_size)`` (checked where that
            needs no device synchronisation: CPU tensors, outside ``torch.compile``; the CUDA and Triton kernels
            skip a slot out of range).
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``, else by device).
    """
    key, value, slots = _checked(key, value, key_cache, value_cache, slot_mapping)
    WRITE_KV.run(WRITE_KV.select_backend(key_cache.device, backend), key, value, key_cache, value_cache, slots)


def _checked(key, value, key_cache, value_cache, slot_mapping):
    for name, tensor in (("key", key), ("value", value), ("key_cache", key_cache), ("value_cache", value_cache),
                         ("slot_mapping", slot_mapping)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if key_cache.dim() != 4:
        raise ValueError(f"key_cache must be 4-D [num_blocks, block_size, kv_heads, head_dim], "
                         f"got shape {tuple(key_cache.shape)}")
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache must have key_cache's shape {tuple(key_cache.shape)}, "
                         f"got {tuple(value_cache.shape)}")
    if key_cache.dtype not in FLOAT_DTYPES or value_cache.dtype != key_cache.dtype:
        raise TypeError(f"key_cache and value_cache must share one of float32, float16, bfloat16, got "
                        f"{key_cache.dtype} and {value_cache.dtype}")
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("key_cache and value_cache must be contiguous (they are written in place)")
    if value_cache.device != key_cache.device:
        raise ValueError(f"value_cache must be on key_cache's device {key_cache.device}, got {value_cache.device}")
    num_blocks, block_size, kv_heads, head_dim = key_cache.shape
    for name, tensor in (("key", key), ("value", value)):
        if tensor.dim() != 3 or tuple(tensor.shape[1:]) != (kv_heads, head_dim):
            raise ValueError(f"{name} must have shape [tokens, kv_heads, head_dim] = [tokens, {kv_heads}, {head_dim}], "
                             f"got {tuple(tensor.shape)}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
        if tensor.device != key_cache.device:
            raise ValueError(f"{name} must be on the caches' device {key_cache.device}, got {tensor.device}")
    tokens = key.shape[0]
    if value.shape[0] != tokens:
        raise ValueError(f"value must have key's {tokens} tokens, got {value.shape[0]}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != tokens:
        raise ValueError(f"slot_mapping must have shape [tokens] = [{tokens}], got {tuple(slot_mapping.shape)}")
    if slot_mapping.dtype.is_floating_point or slot_mapping.dtype.is_complex or slot_mapping.dtype == torch.bool:
        raise TypeError(f"slot_mapping must be an integer tensor, got {slot_mapping.dtype}")
    if slot_mapping.device != key_cache.device:
        raise ValueError(f"slot_mapping must be on the caches' device {key_cache.device}, got {slot_mapping.device}")
    slots = slot_mapping.to(torch.int64).contiguous()
    if tokens and slots.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(slots.min()), int(slots.max())
        if low < -1 or high >= num_blocks * block_size:
            bad = low if low < -1 else high
            raise ValueError(f"slot_mapping entries must be in [-1, num_blocks * block_size = "
                             f"{num_blocks * block_size}), got {bad}")
    return key.to(key_cache.dtype).contiguous(), value.to(key_cache.dtype).contiguous(), slots


# --- the op declaration ---------------------------------------------------------------------------

def _allocate_outputs(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    """Nothing: the op writes ``key_cache`` and ``value_cache`` in place. The inputs are validated: key and value
    ``[tokens, kv_heads, head_dim]`` contiguous in the caches' dtype, caches contiguous, int64 contiguous slots."""
    return None


def _launch_native(backend: str, key, value, key_cache, value_cache, slots) -> None:
    num_blocks, block_size, kv_heads, head_dim = key_cache.shape
    tokens = key.shape[0]
    if tokens == 0:  # empty tensors have no address
        return
    extension = _ext.extension()
    args = _fill(extension.WriteKVArgs(), key=key.data_ptr(), value=value.data_ptr(),
                 key_cache=key_cache.data_ptr() if key_cache.numel() else 0,
                 value_cache=value_cache.data_ptr() if value_cache.numel() else 0,
                 slot_mapping=slots.data_ptr(), tokens=tokens, kv_heads=kv_heads, head_dim=head_dim,
                 num_slots=num_blocks * block_size, dtype=_ext.dtype_code(key_cache.dtype))
    if backend == "cpu":
        extension.launch_write_kv_cpu(args)
    else:
        extension.launch_write_kv_cuda(args, _ext.cuda_stream_handle(key_cache.device))


def _launch_cpu(*inputs) -> None:
    _launch_native("cpu", *inputs)


def _launch_cuda(*inputs) -> None:
    _launch_native("cuda", *inputs)


def _launch_triton(*inputs) -> None:
    from ..kernels import paged_attention as kernels  # lazy: TRITON_INTERPRET must be set first on CPU

    kernels.launch_write_kv(*inputs)


WRITE_KV = declare(OpSpec(
    name="write_kv",
    reference="write_kv",
    allocate_outputs=_allocate_outputs,
    launchers={"cpu": _launch_cpu, "triton": _launch_triton, "cuda": _launch_cuda},
    mutates_args=("key_cache", "value_cache"),
))
