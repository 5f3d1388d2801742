"""``make_cache``: the KV cache ``generate`` builds for a ``cache_implementation``."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from ..config import ALL_CACHE_IMPLEMENTATIONS
from ._shape import positive_int, text_config
from .static import StaticKVCache

__all__ = ["CACHE_IMPLEMENTATIONS", "make_cache"]

#: The ``cache_implementation`` names turbogen builds; ``None`` means ``"dynamic"``, transformers' default.
CACHE_IMPLEMENTATIONS = ("dynamic", "static")


def make_cache(cache_implementation: Optional[str], model: Any, batch_size: int, max_cache_len: int,
               dtype: Optional[torch.dtype] = None, device: Union[str, torch.device, None] = None) -> Any:
    """A fresh KV cache for ``model``, as ``generate`` builds one for ``cache_implementation``.

    Args:
        cache_implementation: ``"dynamic"`` or ``None`` (transformers' default): a transformers
            ``DynamicCache`` built from the model's decoder config, which sizes itself as it grows;
            ``"static"``: a :class:`StaticKVCache` of ``batch_size`` rows and ``max_cache_len`` tokens.
        model: a transformers causal LM (its ``config`` gives the shape).
        batch_size: rows (``batch * num_beams`` for beam search).
        max_cache_len: tokens per row; ``max_length - 1`` suffices for generation.
        dtype, device: of the static storage; default to those of the model's parameters.

    Raises:
        ValueError: ``cache_implementation`` is not one of :data:`CACHE_IMPLEMENTATIONS`, or names a transformers
            cache turbogen does not support (``"offloaded"``, ``"quantized"``, ...), or a size is not positive.
        TypeError: ``batch_size`` or ``max_cache_len`` is not an ``int``, or ``model`` has no ``config``.
        ImportError: ``"dynamic"`` without transformers installed.
    """
    name = "dynamic" if cache_implementation is None else cache_implementation
    if name not in CACHE_IMPLEMENTATIONS:
        if name in ALL_CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation={name!r} is a transformers cache that turbogen does not "
                             f"support; use one of {CACHE_IMPLEMENTATIONS}")
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS} (None means 'dynamic'), "
                         f"got {cache_implementation!r}")
    batch_size = positive_int(batch_size, "batch_size")
    max_cache_len = positive_int(max_cache_len, "max_cache_len")
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"`model` must have a transformers `config`, got {type(model).__name__}")
    if name == "dynamic":
        try:
            from transformers import DynamicCache
        except ImportError as error:  # pragma: no cover - exercised only without transformers
            raise ImportError("cache_implementation='dynamic' needs transformers: pip install 'turbogen[hf]'") \
                from error
        return DynamicCache(config=text_config(config))
    if dtype is None or device is None:
        parameter = next(iter(model.parameters()), None)
        if parameter is None:
            raise ValueError("`model` has no parameters to take the cache's dtype and device from; pass them")
        dtype = parameter.dtype if dtype is None else dtype
        device = parameter.device if device is None else device
    return StaticKVCache(config, batch_size=batch_size, max_cache_len=max_cache_len, dtype=dtype, device=device)
