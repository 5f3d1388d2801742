"""``turbogen.attention``: transformers' attention interface over turbogen's paged KV cache (issue 10).

:func:`register_paged_attention` registers ``"turbogen_paged"`` (:data:`PAGED_ATTENTION_NAME`) with transformers'
``AttentionInterface``, so a stock model (Llama, Mistral, Qwen2, Gemma 2, GPT-2, ...) built or switched with
``attn_implementation="turbogen_paged"`` runs its attention through :func:`turbogen.ops.write_kv` and
:func:`turbogen.ops.paged_attention`, unmodified, under transformers 4.57 and 5.x.

How a forward carries the paged state: the model is called with its tokens packed into one row (``input_ids [1,
total_tokens]``, several sequences' prefill chunks and decode tokens side by side), their per-token
``position_ids``, ``use_cache=False`` (transformers' own cache stays unused), and one extra keyword argument,
``paged_batch=``:class:`PagedBatch` (the :class:`~turbogen.cache.paged.PagedKVCache` plus ``slot_mapping``,
``block_tables``, ``cu_seqlens_q`` and ``seq_lens``). transformers forwards unknown keyword arguments from the
model's ``forward`` down to the attention function (its ``**kwargs``); where a model's top-level forward drops them
(transformers 4.57's ``GPT2LMHeadModel``), the batch set by :func:`active_paged_batch` (a context variable;
:func:`paged_forward` sets both) is used. The attention function writes the layer's new keys and values
into ``cache.key_caches[module.layer_idx]`` / ``value_caches`` and attends through the block tables, with the
module's scaling, sliding window and softcap. :func:`paged_forward` does the call; :meth:`PagedBatch.prepare`
reserves the slots and builds the metadata.

The attention mask: both transformers 4.57 and 5.x skip building a mask for an attention implementation that is
not registered with their mask interface (``ALL_MASK_ATTENTION_FUNCTIONS``: "custom attention without equivalent
mask creation: we don't need a mask"), so no dense mask is built and the function receives ``attention_mask=None``;
causality, sequence boundaries and sliding windows are the kernel's. Nothing is registered there on purpose.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Hashable, Sequence

import torch

from .cache.paged import PagedKVCache, index_tensor
from .ops.paged_attention import check_paged_indices

__all__ = ["PAGED_ATTENTION_NAME", "PagedBatch", "active_paged_batch", "attention_configs", "paged_attention_forward",
           "paged_forward", "register_paged_attention", "switched_to_paged"]

PAGED_ATTENTION_NAME = "turbogen_paged"

# The batch of the forward in progress, for models whose top-level forward drops unknown keyword arguments
# (transformers 4.57's GPT2LMHeadModel does not pass its **kwargs on to GPT2Model).
_ACTIVE_BATCH: contextvars.ContextVar["PagedBatch | None"] = contextvars.ContextVar("turbogen_paged_batch",
                                                                                    default=None)


@contextlib.contextmanager
def active_paged_batch(batch: "PagedBatch"):
    """Within the block, :func:`paged_attention_forward` uses ``batch`` when the call carries no ``paged_batch``
    keyword argument (what :func:`paged_forward` does around its model call)."""
    token = _ACTIVE_BATCH.set(batch)
    try:
        yield batch
    finally:
        _ACTIVE_BATCH.reset(token)


@dataclasses.dataclass
class PagedBatch:
    """The paged state of one packed forward: what every attention layer reads.

    Attributes:
        cache: the paged KV cache (layer ``module.layer_idx`` of it is written and read).
        slot_mapping: int64 ``[total_tokens]``: each new token's cache slot (-1: not written).
        block_tables: int32 ``[num_seqs, max_blocks_per_seq]``.
        cu_seqlens_q: int32 ``[num_seqs + 1]``: sequence ``s``'s new tokens are packed tokens
            ``cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1``.
        seq_lens: int32 ``[num_seqs]``: each sequence's length including its new tokens.
        position_ids: int64 ``[total_tokens]``: each new token's position in its sequence (what the model's
            position embeddings take).
        seq_ids: the sequences, in packing order (informational).
        backend: the ops' backend (None: ``TURBOGEN_BACKEND``, else by device).
        indices_checked: whether the values of block_tables, cu_seqlens_q and seq_lens were checked once for the
            whole forward (:meth:`prepare` does, on the CPU): every layer's ``paged_attention`` then skips that
            check (its kernels still never read outside the caches).
    """

    cache: PagedKVCache
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seq_lens: torch.Tensor
    position_ids: torch.Tensor
    seq_ids: tuple = ()
    backend: str | None = None
    indices_checked: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @classmethod
    def prepare(cls, cache: PagedKVCache, seq_ids: Sequence[Hashable], num_new_tokens: Sequence[int] | int, *,
                max_blocks_per_seq: int | None = None, backend: str | None = None) -> "PagedBatch":
        """Reserve slots for each sequence's next tokens (``cache.append_slots``: copy-on-write block copies
        included; all or nothing on :class:`~turbogen.cache.paged.OutOfBlocks`) and build the batch's metadata.

        The sequences must exist (``cache.add_sequence(seq_id)`` a new one, ``cache.fork`` a child) and be
        distinct; the caller then runs the model on their new tokens, packed in this order."""
        seq_ids = list(seq_ids)
        counts = [num_new_tokens] * len(seq_ids) if isinstance(num_new_tokens, int) else list(num_new_tokens)
        starts = [cache.allocator.length(seq_id) for seq_id in seq_ids]
        slot_mapping = cache.append_slots(seq_ids, counts)
        device = cache.device
        positions = [p for start, count in zip(starts, counts) for p in range(start, start + count)]
        cu = [0]
        for count in counts:
            cu.append(cu[-1] + count)
        block_tables = cache.block_tables(seq_ids, max_blocks_per_seq)
        cu_seqlens_q = index_tensor(cu, torch.int32, device)
        seq_lens = cache.seq_lens(seq_ids)
        # Checked once here rather than by each layer's paged_attention (a host check per layer, on the CPU).
        checked = device.type == "cpu"
        if checked:
            check_paged_indices(block_tables, cu_seqlens_q, seq_lens, total_q=cu[-1], num_blocks=cache.num_blocks,
                                block_size=cache.block_size)
        return cls(cache=cache, slot_mapping=slot_mapping, block_tables=block_tables, cu_seqlens_q=cu_seqlens_q,
                   seq_lens=seq_lens, position_ids=index_tensor(positions, torch.int64, device),
                   seq_ids=tuple(seq_ids), backend=backend, indices_checked=checked)


def _scaling(module: torch.nn.Module, head_dim: int, scaling) -> float:
    """The score scale: what the model passes (Llama family, 5.x GPT-2), its module's ``scaling``, else GPT-2's
    4.57 flags (``scale_attn_weights``: 1/sqrt(head_dim); ``scale_attn_by_inverse_layer_idx``: / (layer + 1))."""
    if scaling is not None:
        return float(scaling)
    if getattr(module, "scaling", None) is not None:
        return float(module.scaling)
    scale = head_dim ** -0.5 if getattr(module, "scale_attn_weights", True) else 1.0
    if getattr(module, "scale_attn_by_inverse_layer_idx", False):
        scale /= float(module.layer_idx + 1)
    return scale


def paged_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            *, paged_batch: PagedBatch | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over a paged cache.

    ``query`` ``[batch, heads, q_len, head_dim]``, ``key`` / ``value`` ``[batch, kv_heads, q_len, head_dim]``
    (the packed tokens are the ``batch * q_len`` rows in order; normally ``batch`` is 1). Returns
    ``([batch, q_len, heads, head_dim], None)``. ``kwargs``: ``sliding_window`` and ``softcap`` as the model passes
    them (else the module's ``sliding_window`` / ``attn_logit_softcapping``); the rest is ignored.
    """
    if paged_batch is None:
        paged_batch = _ACTIVE_BATCH.get()
    if paged_batch is None:
        raise ValueError(f'attn_implementation="{PAGED_ATTENTION_NAME}" needs the forward keyword argument '
                         f"paged_batch=turbogen.attention.PagedBatch(...) or an active_paged_batch(...) block "
                         f"(see turbogen.attention.paged_forward)")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx: the paged cache cannot tell its layer")
    if getattr(module, "is_cross_attention", False):
        raise NotImplementedError("turbogen_paged supports causal self-attention only, not cross-attention")
    if kwargs.get("head_mask") is not None:
        raise NotImplementedError("turbogen_paged does not support head_mask")
    if module.training and dropout:
        raise NotImplementedError("turbogen_paged is for inference: attention dropout is not supported")
    if attention_mask is not None:
        raise ValueError("turbogen_paged builds its own masks from the paged metadata; got an attention_mask "
                         "(pass none, and no 4-D mask)")
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    total = batch * q_len
    if total != paged_batch.num_tokens:
        raise ValueError(f"the forward has {total} tokens but paged_batch.slot_mapping has {paged_batch.num_tokens}")
    cache = paged_batch.cache
    sliding_window = kwargs["sliding_window"] if "sliding_window" in kwargs else getattr(module, "sliding_window", None)
    softcap = kwargs["softcap"] if "softcap" in kwargs else getattr(module, "attn_logit_softcapping", None)
    sliding_window = int(sliding_window) if sliding_window else None
    softcap = float(softcap) if softcap else None
    k = key.transpose(1, 2).reshape(total, kv_heads, head_dim)
    v = value.transpose(1, 2).reshape(total, kv_heads, head_dim)
    cache.write(layer, k, v, paged_batch.slot_mapping, backend=paged_batch.backend)
    q = query.transpose(1, 2).reshape(total, heads, head_dim).to(cache.dtype)
    out = cache.attend(layer, q, paged_batch.block_tables, paged_batch.cu_seqlens_q, paged_batch.seq_lens,
                       indices_checked=paged_batch.indices_checked, scale=_scaling(module, head_dim, scaling),
                       sliding_window=sliding_window, softcap=softcap, backend=paged_batch.backend)
    return out.to(query.dtype).reshape(batch, q_len, heads, head_dim), None


def register_paged_attention() -> str:
    """Register :func:`paged_attention_forward` as ``"turbogen_paged"`` with transformers' ``AttentionInterface``
    (idempotent) and return the name. No mask function is registered: transformers then builds no mask for it
    (see the module docstring)."""
    from transformers import AttentionInterface

    if AttentionInterface._global_mapping.get(PAGED_ATTENTION_NAME) is not paged_attention_forward:
        AttentionInterface.register(PAGED_ATTENTION_NAME, paged_attention_forward)
    return PAGED_ATTENTION_NAME


def paged_forward(model, input_ids: torch.Tensor, batch: PagedBatch, **kwargs) -> torch.Tensor:
    """One forward of ``model`` (with ``attn_implementation="turbogen_paged"``) over the packed new tokens of
    ``batch``'s sequences: ``input_ids`` ``[total_tokens]`` (or ``[1, total_tokens]``) in the batch's order. Writes
    their keys and values into ``batch.cache`` and returns the logits ``[total_tokens, vocab]``
    (``kwargs`` go to the model, e.g. ``logits_to_keep``)."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != PAGED_ATTENTION_NAME:
        raise ValueError(f'the model must use attn_implementation="{PAGED_ATTENTION_NAME}" (register it with '
                         f"turbogen.attention.register_paged_attention(), then model.set_attn_implementation), "
                         f"got {implementation!r}")
    ids = input_ids.reshape(1, -1)
    if ids.shape[1] != batch.num_tokens:
        raise ValueError(f"input_ids has {ids.shape[1]} tokens, the batch {batch.num_tokens}")
    with active_paged_batch(batch):
        output = model(input_ids=ids, position_ids=batch.position_ids.reshape(1, -1), use_cache=False,
                       paged_batch=batch, **kwargs)
    return output.logits[0]


def attention_configs(model: torch.nn.Module) -> list:
    """Every distinct config ``model``'s modules read ``_attn_implementation`` from (sub-configs included)."""
    configs = {id(model.config): model.config}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            configs.setdefault(id(config), config)
    return list(configs.values())


@contextlib.contextmanager
def switched_to_paged(configs: Sequence):
    """Within the block, ``configs`` (:func:`attention_configs`) select ``"turbogen_paged"``; afterwards, even when
    the block raises, what they selected before (so a model is never left switched between calls)."""
    previous = [config._attn_implementation_internal for config in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = PAGED_ATTENTION_NAME
        yield
    finally:
        for config, implementation in zip(configs, previous):
            config._attn_implementation_internal = implementation
