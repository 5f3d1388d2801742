"""``turbogen.cache.paged``: the paged KV cache (issue 10): a block allocator with reference counts, per-sequence
block tables, and per-layer key/value caches of shape ``[num_blocks, block_size, kv_heads, head_dim]``.

Token ``j`` of a sequence lives in slot ``blocks[j // block_size] * block_size + j % block_size``: row ``slot`` of
the ``[num_blocks * block_size, kv_heads, head_dim]`` view of every layer's caches. :func:`turbogen.ops.write_kv`
writes new tokens into their slots and :func:`turbogen.ops.paged_attention` reads through the block tables.

:class:`BlockAllocator` owns the blocks and the sequences' block lists, and nothing else (no tensors):

- ``add`` a sequence (with slots for its first tokens), ``grow`` it, ``free`` it, ``preempt`` it (free its blocks
  and forget it, returning its length so that the caller can recompute it later);
- ``fork`` a sequence: the child shares every block of the parent (a shared prompt prefix, a beam), each block's
  reference count counting the sequences that hold it. Blocks other than a sequence's last are full and never
  written again, so sharing them is safe; a shared, partly filled last block is copied on write: the ``grow``
  that would write into it first moves the growing sequence to a fresh block and returns the ``(src, dst)``
  block copy the caller must perform on every layer before writing (:class:`PagedKVCache` does it);
- every operation checks that it can complete before it changes anything (:class:`OutOfBlocks` when the free
  blocks do not suffice; ``KeyError`` / ``ValueError`` for unknown or duplicate ids), so a failed call leaves
  the allocator as it was; :meth:`BlockAllocator.check` verifies the invariants (reference counts equal the
  references from the block lists, the free list is exactly the unreferenced blocks, no block is lost).

:class:`PagedKVCache` holds the per-layer caches and an allocator, and turns sequences into the kernels' inputs:
``slot_mapping`` for new tokens, ``block_tables`` (int32 ``[num_seqs, max_blocks_per_seq]``, unused entries 0) and
``seq_lens`` (int32).
"""

from __future__ import annotations

import array
import collections
from typing import Hashable, Iterable, Sequence

import torch

from .. import ops
from ..ops.paged_attention import paged_attention_checked_indices

__all__ = ["BlockAllocator", "OutOfBlocks", "PagedKVCache", "index_tensor"]

_ARRAY_CODES = {torch.int32: "i", torch.int64: "q"}


def index_tensor(values: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)`` for a flat list of ints (int32 or int64), through a
    packed ``array`` (several times faster than converting the list element by element: the per-step metadata of
    a paged forward is thousands of them)."""
    if not values:
        return torch.empty(0, dtype=dtype, device=device)
    tensor = torch.frombuffer(array.array(_ARRAY_CODES[dtype], values), dtype=dtype)
    return tensor if torch.device(device).type == "cpu" else tensor.to(device)


class OutOfBlocks(RuntimeError):
    """The free blocks cannot satisfy a request; the allocator is unchanged."""


def _blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class BlockAllocator:
    """Blocks ``0 .. num_blocks - 1`` of ``block_size`` slots, shared between sequences by reference counts.

    Args:
        num_blocks: blocks in the cache (>= 0).
        block_size: slots per block (>= 1).
    """

    def __init__(self, num_blocks: int, block_size: int):
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._ref_counts = [0] * num_blocks
        # Lowest ids first (deterministic); freed blocks go to the back.
        self._free: collections.deque[int] = collections.deque(range(num_blocks))
        self._blocks: dict[Hashable, list[int]] = {}
        self._lengths: dict[Hashable, int] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"free={self.num_free_blocks}, sequences={len(self._blocks)})")

    # --- queries -------------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._blocks

    @property
    def sequences(self) -> list[Hashable]:
        """The ids of the sequences held, in the order they were added."""
        return list(self._blocks)

    def blocks(self, seq_id: Hashable) -> list[int]:
        """The sequence's block list (a copy)."""
        return list(self._require(seq_id))

    def length(self, seq_id: Hashable) -> int:
        """The sequence's number of tokens (slots reserved)."""
        self._require(seq_id)
        return self._lengths[seq_id]

    def ref_count(self, block: int) -> int:
        return self._ref_counts[block]

    def slot(self, seq_id: Hashable, position: int) -> int:
        """The slot of the sequence's token ``position`` (``0 <= position < length``)."""
        blocks = self._require(seq_id)
        if not 0 <= position < self._lengths[seq_id]:
            raise IndexError(f"position {position} is outside sequence {seq_id!r} of length {self._lengths[seq_id]}")
        return blocks[position // self.block_size] * self.block_size + position % self.block_size

    def slots(self, seq_id: Hashable, start: int, end: int | None = None) -> list[int]:
        """The slots of the sequence's tokens ``start .. end - 1`` (``end``: its length by default)."""
        blocks = self._require(seq_id)
        end = self._lengths[seq_id] if end is None else end
        if not 0 <= start <= end <= self._lengths[seq_id]:
            raise IndexError(f"[{start}, {end}) is outside sequence {seq_id!r} of length {self._lengths[seq_id]}")
        size = self.block_size
        return [blocks[j // size] * size + j % size for j in range(start, end)]

    def blocks_needed(self, seq_id: Hashable, new_tokens: int) -> int:
        """Free blocks that ``grow(seq_id, new_tokens)`` takes (a copy-on-write block included)."""
        blocks = self._require(seq_id)
        length = self._lengths[seq_id]
        needed = _blocks_for(length + new_tokens, self.block_size) - len(blocks)
        if new_tokens > 0 and self._last_block_is_shared_and_open(seq_id):
            needed += 1
        return needed

    def can_grow(self, seq_id: Hashable, new_tokens: int) -> bool:
        return self.blocks_needed(seq_id, new_tokens) <= len(self._free)

    def can_add(self, num_tokens: int) -> bool:
        return _blocks_for(num_tokens, self.block_size) <= len(self._free)

    # --- changes -------------------------------------------------------------------------------------------

    def add(self, seq_id: Hashable, num_tokens: int = 0) -> list[int]:
        """A new sequence with slots for ``num_tokens`` tokens; returns its blocks."""
        if seq_id in self._blocks:
            raise ValueError(f"sequence {seq_id!r} already exists")
        _check_count(num_tokens, "num_tokens")
        needed = _blocks_for(num_tokens, self.block_size)
        if needed > len(self._free):
            raise OutOfBlocks(f"sequence {seq_id!r} needs {needed} blocks, {len(self._free)} are free")
        self._blocks[seq_id] = self._take(needed)
        self._lengths[seq_id] = num_tokens
        return list(self._blocks[seq_id])

    def grow(self, seq_id: Hashable, new_tokens: int) -> list[tuple[int, int]]:
        """Reserve slots for ``new_tokens`` more tokens of the sequence.

        Returns the block copies ``[(src, dst)]`` to perform before writing the new tokens: one when the
        sequence's last block is partly filled and shared with another sequence (copy on write), else none.
        """
        blocks = self._require(seq_id)
        _check_count(new_tokens, "new_tokens")
        if new_tokens == 0:
            return []
        needed = self.blocks_needed(seq_id, new_tokens)
        if needed > len(self._free):
            raise OutOfBlocks(f"sequence {seq_id!r} needs {needed} more blocks to grow by {new_tokens} tokens, "
                              f"{len(self._free)} are free")
        return self._grow_checked(seq_id, blocks, new_tokens)

    def _grow_checked(self, seq_id: Hashable, blocks: list, new_tokens: int) -> list[tuple[int, int]]:
        """:meth:`grow` once the free blocks were found to suffice (``blocks``: the sequence's block list)."""
        copies = []
        if self._last_block_is_shared_and_open(seq_id):
            src = blocks[-1]
            dst = self._take(1)[0]
            self._ref_counts[src] -= 1
            blocks[-1] = dst
            copies.append((src, dst))
        length = self._lengths[seq_id] + new_tokens
        blocks.extend(self._take(_blocks_for(length, self.block_size) - len(blocks)))
        self._lengths[seq_id] = length
        return copies

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """A new sequence ``child`` sharing every block of ``parent`` (same length); no block is copied."""
        blocks = self._require(parent)
        if child in self._blocks:
            raise ValueError(f"sequence {child!r} already exists")
        for block in blocks:
            self._ref_counts[block] += 1
        self._blocks[child] = list(blocks)
        self._lengths[child] = self._lengths[parent]

    def free(self, seq_id: Hashable) -> None:
        """Release the sequence: each of its blocks loses a reference and returns to the free list at zero."""
        blocks = self._require(seq_id)
        for block in reversed(blocks):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free.append(block)
        del self._blocks[seq_id]
        del self._lengths[seq_id]

    def preempt(self, seq_id: Hashable) -> int:
        """Release the sequence to make room (it will be recomputed): as :meth:`free`, returning its length."""
        length = self.length(seq_id)
        self.free(seq_id)
        return length

    def truncate(self, seq_id: Hashable, length: int) -> None:
        """Shorten the sequence to ``length`` tokens (rejected speculative tokens), releasing blocks it no longer
        needs. A shared last block stays shared: the next ``grow`` copies it on write."""
        blocks = self._require(seq_id)
        _check_count(length, "length")
        if length > self._lengths[seq_id]:
            raise ValueError(f"length {length} exceeds sequence {seq_id!r}'s {self._lengths[seq_id]} tokens")
        keep = _blocks_for(length, self.block_size)
        for block in reversed(blocks[keep:]):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free.append(block)
        del blocks[keep:]
        self._lengths[seq_id] = length

    # --- invariants ----------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise AssertionError unless: every block's reference count equals the references to it from the block
        lists; the free list holds each unreferenced block exactly once and nothing else; every sequence holds
        exactly the blocks its length needs."""
        references = [0] * self.num_blocks
        for seq_id, blocks in self._blocks.items():
            length = self._lengths[seq_id]
            assert len(blocks) == _blocks_for(length, self.block_size), \
                f"sequence {seq_id!r}: {len(blocks)} blocks for {length} tokens"
            for block in blocks:
                assert 0 <= block < self.num_blocks, f"sequence {seq_id!r} holds block {block}"
                references[block] += 1
        assert references == self._ref_counts, "reference counts differ from the block lists' references"
        free = list(self._free)
        assert len(set(free)) == len(free), "a block is on the free list twice"
        assert set(free) == {b for b in range(self.num_blocks) if references[b] == 0}, \
            "the free list is not exactly the unreferenced blocks"

    # --- internals -----------------------------------------------------------------------------------------

    def _require(self, seq_id: Hashable) -> list[int]:
        try:
            return self._blocks[seq_id]
        except KeyError:
            raise KeyError(f"unknown sequence {seq_id!r}") from None

    def _last_block_is_shared_and_open(self, seq_id: Hashable) -> bool:
        blocks = self._blocks[seq_id]
        return bool(blocks) and self._lengths[seq_id] % self.block_size != 0 and self._ref_counts[blocks[-1]] > 1

    def _take(self, count: int) -> list[int]:
        taken = [self._free.popleft() for _ in range(count)]
        for block in taken:
            self._ref_counts[block] = 1
        return taken


def _check_count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


class PagedKVCache:
    """Per-layer paged key/value caches and the allocator of their blocks.

    Args:
        num_layers: layers (one key and one value cache each).
        num_blocks, block_size: the allocator's blocks.
        kv_heads, head_dim: the model's key/value heads and head size.
        dtype, device: of the caches.
        max_blocks_per_seq: the width of :meth:`block_tables` (a fixed shape for compiled steps); by default the
            longest requested sequence's block count.

    Attributes:
        key_caches, value_caches: lists of ``[num_blocks, block_size, kv_heads, head_dim]`` tensors.
        allocator: the :class:`BlockAllocator`.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 max_blocks_per_seq: int | None = None):
        for name, value in (("num_layers", num_layers), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.num_blocks, self.block_size = num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)
        self.max_blocks_per_seq = max_blocks_per_seq
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.key_caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.value_caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layers={self.num_layers}, blocks={self.num_blocks}x{self.block_size}, "
                f"kv_heads={self.kv_heads}, head_dim={self.head_dim}, dtype={self.dtype}, "
                f"free_blocks={self.allocator.num_free_blocks})")

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token takes across all layers (keys and values)."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    # --- sequences -----------------------------------------------------------------------------------------

    def add_sequence(self, seq_id: Hashable, num_tokens: int = 0) -> torch.Tensor:
        """A new sequence with slots for ``num_tokens`` tokens; returns their int64 slot mapping."""
        self.allocator.add(seq_id, num_tokens)
        return self._slot_tensor(self.allocator.slots(seq_id, 0, num_tokens))

    def append_slots(self, seq_ids: Sequence[Hashable], counts: Sequence[int] | int = 1) -> torch.Tensor:
        """Grow each sequence by its count (all of them by ``counts`` when an int) and return the int64 slot
        mapping of the new tokens, sequence after sequence (what :func:`turbogen.ops.write_kv` takes). Any
        copy-on-write block copies are performed on every layer first. When the blocks do not suffice for all of
        them, :class:`OutOfBlocks` is raised and nothing changes."""
        seq_ids = list(seq_ids)
        counts = [counts] * len(seq_ids) if isinstance(counts, int) else list(counts)
        if len(counts) != len(seq_ids):
            raise ValueError(f"counts must have one entry per sequence ({len(seq_ids)}), got {len(counts)}")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError("seq_ids must be distinct")
        for count in counts:
            _check_count(count, "counts")
        allocator = self.allocator
        needed = sum(allocator.blocks_needed(seq_id, count) for seq_id, count in zip(seq_ids, counts))
        if needed > allocator.num_free_blocks:
            raise OutOfBlocks(f"growing {len(seq_ids)} sequences needs {needed} blocks, "
                              f"{allocator.num_free_blocks} are free")
        # The blocks suffice for all of them (counted above): grow each without counting again.
        slots, copies = [], []
        size = allocator.block_size
        lengths = allocator._lengths
        for seq_id, count in zip(seq_ids, counts):
            start = lengths[seq_id]
            blocks = allocator._blocks[seq_id]
            if count:
                copies += allocator._grow_checked(seq_id, blocks, count)
            # The same slots as allocator.slots(seq_id, start, start + count).
            slots += [blocks[j // size] * size + j % size for j in range(start, start + count)]
        self.copy_blocks(copies)
        return self._slot_tensor(slots)

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """``child`` shares ``parent``'s blocks (no bytes copied; copy on write happens at the next append)."""
        self.allocator.fork(parent, child)

    def free(self, seq_id: Hashable) -> None:
        self.allocator.free(seq_id)

    def preempt(self, seq_id: Hashable) -> int:
        return self.allocator.preempt(seq_id)

    def truncate(self, seq_id: Hashable, length: int) -> None:
        self.allocator.truncate(seq_id, length)

    def copy_blocks(self, copies: Iterable[tuple[int, int]]) -> None:
        """Copy block ``src`` onto block ``dst`` in every layer's caches, for each ``(src, dst)``."""
        copies = list(copies)
        if not copies:
            return
        src = torch.tensor([c[0] for c in copies], dtype=torch.int64, device=self.device)
        dst = torch.tensor([c[1] for c in copies], dtype=torch.int64, device=self.device)
        for cache in (*self.key_caches, *self.value_caches):
            cache[dst] = cache[src]

    # --- kernel inputs -------------------------------------------------------------------------------------

    def block_tables(self, seq_ids: Sequence[Hashable], max_blocks_per_seq: int | None = None) -> torch.Tensor:
        """int32 ``[len(seq_ids), max_blocks_per_seq]``: each sequence's blocks, then zeros (never read)."""
        allocator = self.allocator
        rows = [allocator._require(seq_id) for seq_id in seq_ids]  # read only
        longest = max((len(r) for r in rows), default=0)
        width = max_blocks_per_seq or self.max_blocks_per_seq or longest
        if longest > width:
            raise ValueError(f"a sequence holds {longest} blocks, more than max_blocks_per_seq = {width}")
        # One flat list, one tensor (a tensor per row, or nested lists, cost more than the whole table).
        flat: list = []
        for row in rows:
            flat += row
            flat += [0] * (width - len(row))
        return index_tensor(flat, torch.int32, self.device).reshape(len(rows), width)

    def seq_lens(self, seq_ids: Sequence[Hashable]) -> torch.Tensor:
        """int32 ``[len(seq_ids)]``: each sequence's length."""
        lengths = self.allocator._lengths
        for seq_id in seq_ids:
            self.allocator._require(seq_id)
        return index_tensor([lengths[s] for s in seq_ids], torch.int32, self.device)

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
              backend: str | None = None) -> None:
        """``turbogen.ops.write_kv`` into ``layer``'s caches."""
        ops.write_kv(key, value, self.key_caches[layer], self.value_caches[layer], slot_mapping, backend=backend)

    def attend(self, layer: int, query: torch.Tensor, block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor,
               seq_lens: torch.Tensor, *, indices_checked: bool = False, **kwargs) -> torch.Tensor:
        """``turbogen.ops.paged_attention`` over ``layer``'s caches (``kwargs``: scale, sliding_window, softcap,
        backend); ``indices_checked``: the index values were checked once for these caches
        (``turbogen.ops.paged_attention.check_paged_indices``), so they are not checked again here."""
        attend = paged_attention_checked_indices if indices_checked else ops.paged_attention
        return attend(query, self.key_caches[layer], self.value_caches[layer], block_tables, cu_seqlens_q, seq_lens,
                      **kwargs)

    def _slot_tensor(self, slots: list[int]) -> torch.Tensor:
        return index_tensor(slots, torch.int64, self.device)
