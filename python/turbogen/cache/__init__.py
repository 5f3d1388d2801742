"""``turbogen.cache``: the KV caches ``generate`` runs a model with.

- :mod:`~turbogen.cache.static`: :class:`StaticKVCache` (``cache_implementation="static"``), preallocated and
  written in place by position, so a decode step over it can be compiled or captured in a CUDA graph;
- :mod:`~turbogen.cache.factory`: :func:`make_cache`, which builds the cache for a ``cache_implementation``
  (transformers' ``DynamicCache`` by default, as in transformers).
"""

from .factory import CACHE_IMPLEMENTATIONS, make_cache
from .static import StaticKVCache, StaticKVLayer

__all__ = ["CACHE_IMPLEMENTATIONS", "StaticKVCache", "StaticKVLayer", "make_cache"]
