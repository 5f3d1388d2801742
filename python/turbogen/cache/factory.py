"""``make_cache``: the KV cache ``generate`` builds for a ``cache_implementation``.

Every name of transformers 4.57's ``ALL_CACHE_IMPLEMENTATIONS`` builds the cache 4.57's ``generate`` builds for
it, sized alike (``batch * max(num_beams, num_return_sequences)`` rows, ``max_length - 1`` positions), with
transformers' own cache classes, except ``"static"``, which is turbogen's :class:`StaticKVCache`:

- ``None``, ``"dynamic"``: ``DynamicCache(config=...)`` (sliding-window layers where the model has them);
- ``"dynamic_full"``: ``DynamicCache()``, every layer keeping every position;
- ``"offloaded"``: ``DynamicCache(config=..., offloading=True)`` (CUDA only);
- ``"static"``: :class:`StaticKVCache`;
- ``"sliding_window"``, ``"hybrid"``, ``"hybrid_chunked"``: ``StaticCache(config=..., max_cache_len=...)``, whose
  layer kinds (full, sliding, chunked) follow the model's config, as in 4.57;
- ``"offloaded_static"``, ``"offloaded_hybrid"``, ``"offloaded_hybrid_chunked"``: the same with
  ``offloading=True`` (CUDA only);
- ``"quantized"``: ``QuantizedCache(backend=..., config=..., **cache_config)`` (needs optimum-quanto, or hqq for
  ``backend="hqq"``);
- ``"paged"`` (turbogen's, not 4.57's): :class:`~turbogen.cache.paged.PagedKVCache` (issue 10, see
  :data:`PAGED_CACHE_IMPLEMENTATION`).

transformers 5 builds the same classes with the same constructor arguments; it has no ``"dynamic_full"`` and
ignores ``"hybrid"`` (turbogen keeps 4.57's meaning of both).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch

from ..config import ALL_CACHE_IMPLEMENTATIONS
from ..errors import UnsupportedByTurbogen
from ._shape import positive_int, text_config
from .static import StaticKVCache

__all__ = ["CACHE_IMPLEMENTATIONS", "OFFLOADED_CACHE_IMPLEMENTATIONS", "PAGED_CACHE_IMPLEMENTATION", "make_cache",
           "quantized_backend_available"]

#: The ``cache_implementation`` names turbogen builds (all of transformers 4.57's); ``None`` means ``"dynamic"``.
CACHE_IMPLEMENTATIONS = (
    "dynamic", "static", "dynamic_full", "sliding_window", "hybrid", "hybrid_chunked", "offloaded",
    "offloaded_static", "offloaded_hybrid", "offloaded_hybrid_chunked", "quantized",
)
#: turbogen's paged KV cache (issue 10): :func:`make_cache` builds a :class:`~turbogen.cache.paged.PagedKVCache`
#: of ``batch_size * ceil(max_cache_len / 16)`` blocks of 16 slots, which ``generate`` runs through
#: :class:`~turbogen.generation.paged_runner.PagedRunner` (packed forwards over ``attn_implementation=
#: "turbogen_paged"``; beam reordering forks block tables). Not in :data:`CACHE_IMPLEMENTATIONS` (4.57's names).
PAGED_CACHE_IMPLEMENTATION = "paged"
#: Names whose cache moves each layer to the CPU between uses; transformers does that through CUDA streams,
#: so these need a model on a CUDA device.
OFFLOADED_CACHE_IMPLEMENTATIONS = ("offloaded", "offloaded_static", "offloaded_hybrid", "offloaded_hybrid_chunked")
# Names 4.57 maps to transformers' StaticCache, which picks each layer's kind from the config.
_TRANSFORMERS_STATIC = ("sliding_window", "hybrid", "hybrid_chunked", "offloaded_static", "offloaded_hybrid",
                        "offloaded_hybrid_chunked")
# The package each quantized-cache backend needs, and how to install it (transformers' own checks).
_QUANTIZED_BACKENDS = {"quanto": ("optimum.quanto", "optimum-quanto"), "hqq": ("hqq", "hqq")}


def _module_available(name: str) -> bool:
    """Whether ``name`` (possibly dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def quantized_backend_available(backend: str = "quanto") -> bool:
    """Whether the package a ``"quantized"`` cache of ``backend`` needs is installed (``True`` for a backend
    turbogen does not know, such as transformers 5's ``"fp8"``, which needs none: transformers judges it)."""
    module = _QUANTIZED_BACKENDS.get(str(backend).lower())
    return module is None or _module_available(module[0])


def make_cache(cache_implementation: Optional[str], model: Any, batch_size: int, max_cache_len: int,
               dtype: Optional[torch.dtype] = None, device: Union[str, torch.device, None] = None,
               cache_config: Optional[Mapping] = None) -> Any:
    """A fresh KV cache for ``model``, as transformers 4.57's ``generate`` builds one for ``cache_implementation``
    (the table in this module's docstring).

    Args:
        cache_implementation: one of :data:`CACHE_IMPLEMENTATIONS`, or ``None`` (``"dynamic"``, transformers'
            default).
        model: a transformers causal LM (its ``config`` gives the shape and the layer kinds).
        batch_size: rows (``batch * max(num_beams, num_return_sequences)``); only turbogen's static cache
            allocates them up front (transformers' caches size themselves at their first update).
        max_cache_len: positions per row of the static kinds; ``max_length - 1`` suffices for generation and is
            what transformers uses.
        dtype, device: of :class:`StaticKVCache`'s storage; default to those of the model's parameters.
            ``device`` (else the parameters') is also where an offloaded cache's model must be: CUDA.
        cache_config: ``"quantized"`` only: ``backend`` (``"quanto"`` by default, or ``"hqq"``) and the
            arguments of transformers' ``QuantizedCache`` (``nbits``, ``q_group_size``, ``residual_length``,
            ...). Not modified.

    Raises:
        ValueError: ``cache_implementation`` is not a known name, a size is not positive, or an offloaded kind
            is asked for a model that is not on a CUDA device.
        TypeError: ``batch_size`` or ``max_cache_len`` is not an ``int``, ``model`` has no ``config``, or
            ``cache_config`` is not a mapping.
        ImportError: a transformers cache without transformers installed, or ``"quantized"`` without its
            backend's package (as transformers).
    """
    name = "dynamic" if cache_implementation is None else cache_implementation
    if name == PAGED_CACHE_IMPLEMENTATION:
        # turbogen's own kind (not one of 4.57's): a PagedKVCache for generate()'s PagedRunner (issue 10).
        from ..generation.paged_runner import new_paged_cache

        dtype, device = _storage_dtype_and_device(model, dtype, device)
        return new_paged_cache(model, positive_int(batch_size, "batch_size"),
                               positive_int(max_cache_len, "max_cache_len"), dtype=dtype, device=device)
    if name not in CACHE_IMPLEMENTATIONS:
        if name in ALL_CACHE_IMPLEMENTATIONS:
            raise UnsupportedByTurbogen(f"cache_implementation={name!r} is a transformers cache that turbogen "
                                        f"does not support; use one of {CACHE_IMPLEMENTATIONS}",
                                        reason=f"cache_implementation={name!r}")
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS} (None means 'dynamic'), "
                         f"got {cache_implementation!r}")
    from .. import _transformers_compat as _compat

    if name not in ("dynamic", "dynamic_full") and _compat.is_transformers_4_45():
        # 4.45's models size their causal mask by transformers' own StaticCache only, and its cache classes take
        # other arguments: only the default cache is supported there.
        raise UnsupportedByTurbogen(f"cache_implementation={name!r} is not supported with transformers 4.45 "
                                    "(only 'dynamic'); use transformers >= 4.57 for it",
                                    reason=f"cache_implementation={name!r} with transformers 4.45")
    batch_size = positive_int(batch_size, "batch_size")
    max_cache_len = positive_int(max_cache_len, "max_cache_len")
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"`model` must have a transformers `config`, got {type(model).__name__}")
    if cache_config is not None and not isinstance(cache_config, Mapping):
        raise TypeError(f"`cache_config` must be a mapping (dict), got {type(cache_config).__name__}")
    if name == "static":
        dtype, device = _storage_dtype_and_device(model, dtype, device)
        return StaticKVCache(config, batch_size=batch_size, max_cache_len=max_cache_len, dtype=dtype, device=device)

    try:
        import transformers  # noqa: F401  (the classes below are imported where used)
    except ImportError as error:  # pragma: no cover - exercised only without transformers
        raise ImportError(f"cache_implementation={name!r} needs transformers: pip install 'turbogen[hf]'") \
            from error
    offloading = name in OFFLOADED_CACHE_IMPLEMENTATIONS
    if offloading:
        _, where = _storage_dtype_and_device(model, torch.float32, device)
        if torch.device(where).type != "cuda":
            raise ValueError(f"cache_implementation={name!r} offloads the cache through CUDA streams (as "
                             f"transformers does): it needs the model on a CUDA device, not {where}")
    decoder_config = text_config(config)
    if name in _TRANSFORMERS_STATIC:
        from transformers import StaticCache

        return StaticCache(config=decoder_config, max_cache_len=max_cache_len, offloading=offloading)
    if name == "quantized":
        return _quantized_cache(decoder_config, cache_config)
    if name == "dynamic_full":  # no config: every layer a full one, even on a sliding-window model
        return _compat.new_dynamic_cache(None, offloading=False)
    # transformers 4.45's DynamicCache takes neither `config` nor `offloading` (OffloadedCache instead).
    return _compat.new_dynamic_cache(decoder_config, offloading=offloading)


def _storage_dtype_and_device(model: Any, dtype: Optional[torch.dtype],
                              device: Union[str, torch.device, None]) -> tuple[torch.dtype, Any]:
    if dtype is None or device is None:
        parameter = next(iter(model.parameters()), None)
        if parameter is None:
            raise ValueError("`model` has no parameters to take the cache's dtype and device from; pass them")
        dtype = parameter.dtype if dtype is None else dtype
        device = parameter.device if device is None else device
    return dtype, device


def _quantized_cache(decoder_config: Any, cache_config: Optional[Mapping]) -> Any:
    """transformers' ``QuantizedCache`` as 4.57's generate builds it from ``cache_config`` (a copy: 4.57 pops
    ``backend`` from the user's dict, which turbogen does not reproduce)."""
    from transformers import QuantizedCache

    arguments = dict(cache_config or {})
    backend = arguments.pop("backend", "quanto")
    arguments.setdefault("config", decoder_config)
    if not quantized_backend_available(backend):
        module, package = _QUANTIZED_BACKENDS[str(backend).lower()]
        raise ImportError(f"cache_implementation='quantized' with backend={backend!r} needs {module}: "
                          f"pip install {package}")
    return QuantizedCache(backend=backend, **arguments)
