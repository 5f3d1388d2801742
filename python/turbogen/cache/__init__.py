"""``turbogen.cache``: the KV caches ``generate`` runs a model with.

- :mod:`~turbogen.cache.static`: :class:`StaticKVCache` (``cache_implementation="static"``), preallocated and
  written in place by position, so a decode step over it can be compiled or captured in a CUDA graph;
- :mod:`~turbogen.cache.factory`: :func:`make_cache`, which builds the cache transformers 4.57's ``generate``
  builds for a ``cache_implementation`` (transformers' ``DynamicCache`` by default; its ``StaticCache``,
  ``QuantizedCache`` and offloaded variants for the other names; :class:`StaticKVCache` for ``"static"``);
- :mod:`~turbogen.cache.paged`: the paged KV cache: :class:`BlockAllocator` (reference-counted blocks, forks,
  copy on write, preemption) and :class:`PagedKVCache` (per-layer ``[num_blocks, block_size, kv_heads,
  head_dim]`` caches, block tables, slot mappings) for ``turbogen.ops.write_kv`` and ``turbogen.ops.paged_attention``.
"""

from .factory import CACHE_IMPLEMENTATIONS, OFFLOADED_CACHE_IMPLEMENTATIONS, make_cache, quantized_backend_available
from .paged import BlockAllocator, OutOfBlocks, PagedKVCache
from .static import StaticKVCache, StaticKVLayer

__all__ = ["BlockAllocator", "CACHE_IMPLEMENTATIONS", "OFFLOADED_CACHE_IMPLEMENTATIONS", "OutOfBlocks", "PagedKVCache",
           "StaticKVCache", "StaticKVLayer", "make_cache", "quantized_backend_available"]
