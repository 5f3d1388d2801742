"""``turbogen.cache.static``: turbogen's static KV cache (``cache_implementation="static"``).

:class:`StaticKVCache` preallocates one key tensor and one value tensor of shape
``[layers, batch, kv_heads, max_cache_len, head_dim]`` and writes new states into them in place, by
position. Nothing is reallocated while decoding, so the storage keeps its address for the life of the
cache: what CUDA-graph capture and ``torch.compile`` need. Each layer sees ``[batch, kv_heads,
max_cache_len, head_dim]`` views of that storage, exposed the way transformers expects (``cache.layers[i]``
with ``.keys``/``.values``), and the class subclasses transformers' ``Cache`` when transformers is
installed, so its models (v4.57 and v5) take it as ``past_key_values``. ``"dynamic"`` (transformers'
``DynamicCache``) stays the default, as in transformers; :func:`~turbogen.cache.make_cache` builds either.

How a transformers model uses it, and what a decode loop must pass:

- ``cache_position`` (``int64``, ascending, one entry per new token): the positions the new keys and values
  are written to. transformers v4.57 models hand it to ``update``; without it (transformers v5 models
  call ``update(key, value, layer_idx)``) the new tokens are appended at the current length.
- ``attention_mask``: the same 2-D ``[batch, tokens]`` padding mask as with a ``DynamicCache`` (left padding
  included). Attention always runs over all ``max_cache_len`` slots; transformers pads the mask with
  zeros up to that length, and slots past the current position are excluded by causality, so a
  fixed-shape ``[batch, max_cache_len]`` buffer (1 for every column not yet written) is equally correct
  and keeps a captured step's input shapes constant.
- ``position_ids`` as for the dynamic cache (``attention_mask.cumsum(-1) - 1`` under left padding).
- ``batch_size`` counts rows, i.e. ``batch * max(num_beams, num_return_sequences)``, and ``max_cache_len``
  must be at least ``max_length - 1`` (the last generated token is never fed back).

With those, a model computes the same outputs at every real (non-padding) position as with a
``DynamicCache`` and greedy search picks the same tokens. Rows of padding tokens attend to nothing real,
so their outputs are not meaningful with either cache and may differ between the two.

Bounds: a write past ``max_cache_len`` raises ``ValueError`` wherever that can be decided without a
device-to-host copy, i.e. when the positions live on the CPU and the code runs eagerly. Positions on an
accelerator are not read back on the hot path; size such a cache from the generation length.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from ._shape import positive_int, shape_from_config

try:  # transformers is optional (the ``hf`` extra); without it the cache works on its own.
    from transformers.cache_utils import Cache as _TransformersCache
    from transformers.cache_utils import CacheLayerMixin as _TransformersCacheLayer
except ImportError:  # pragma: no cover - exercised only without transformers
    _TransformersCache = _TransformersCacheLayer = object

__all__ = ["StaticKVCache", "StaticKVLayer"]


class StaticKVLayer(_TransformersCacheLayer):
    """One layer of a :class:`StaticKVCache`: views into the cache's storage, never tensors of its own.

    It implements transformers' cache-layer interface (v4.57's and v5's ``CacheLayerMixin``), so code that
    walks ``cache.layers`` finds ``keys``/``values`` of shape ``[batch, kv_heads, max_cache_len, head_dim]``,
    ``is_compileable``, ``max_cache_len`` and so on. Build it through :class:`StaticKVCache`.
    """

    is_compileable = True
    is_sliding = False
    is_croppable = True

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor, arange: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        # 0-dim int64 view of the cache's per-layer lengths: one past the last position written. It lives on
        # the cache's device so that a captured or compiled step can advance it without reaching the host.
        self._length = length
        # arange(max_cache_len), shared by all layers: positions of an append are a slice of it plus the length.
        self._arange = arange
        self.batch_size, self.num_heads, self.max_cache_len, self.head_dim = keys.shape
        self.max_batch_size = self.batch_size
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keys={tuple(self.keys.shape)}, dtype={self.dtype}, device={self.device})"

    # --- writing -------------------------------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: Optional[dict[str, Any]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``key_states``/``value_states`` (``[batch, kv_heads, new_tokens, head_dim]``) at
        ``cache_kwargs["cache_position"]``, or after the current length when no position is given, and return
        this layer's full ``keys``/``values`` (``max_cache_len`` slots; the mask hides those not yet written).

        Raises:
            TypeError: the states' dtype is not the cache's, or ``cache_position`` is not an int64 tensor.
            ValueError: a shape or device does not match the cache, or a write would go past ``max_cache_len``.
        """
        new_tokens = self._check_states(key_states, value_states)
        positions = cache_kwargs.get("cache_position") if cache_kwargs is not None else None
        if positions is None:
            positions = self._arange[:new_tokens] + self._length
        else:
            self._check_positions(positions, new_tokens)
        self._check_capacity(positions)
        if new_tokens == 0:
            return self.keys, self.values
        positions = positions.to(self.device, non_blocking=True)
        self.keys.index_copy_(2, positions, key_states)
        self.values.index_copy_(2, positions, value_states)
        self._length.copy_(positions[-1] + 1)
        return self.keys, self.values

    def lazy_initialization(self, key_states: torch.Tensor, value_states: Optional[torch.Tensor] = None) -> None:
        """The storage exists from construction on, so this only checks that states shaped like
        ``key_states`` (transformers' ``early_initialization`` passes a zero-length one) would fit."""
        self._check_states(key_states, key_states if value_states is None else value_states)

    def _check_states(self, key_states: torch.Tensor, value_states: torch.Tensor) -> int:
        """The number of new tokens, after checking the states against the storage."""
        for name, states in (("key_states", key_states), ("value_states", value_states)):
            if not isinstance(states, torch.Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor, got {type(states).__name__}")
            if states.dim() != 4:
                raise ValueError(f"`{name}` must be 4-D [batch, kv_heads, new_tokens, head_dim], "
                                 f"got shape {tuple(states.shape)}")
            if states.dtype != self.dtype:
                raise TypeError(f"`{name}` has dtype {states.dtype} but the cache stores {self.dtype}")
            if states.device != self.device:
                raise ValueError(f"`{name}` is on {states.device} but the cache is on {self.device}")
        if key_states.shape != value_states.shape:
            raise ValueError(f"`key_states` {tuple(key_states.shape)} and `value_states` {tuple(value_states.shape)} "
                             "must have the same shape")
        batch, heads, new_tokens, head_dim = key_states.shape
        if (batch, heads, head_dim) != (self.batch_size, self.num_heads, self.head_dim):
            raise ValueError(f"states of shape {tuple(key_states.shape)} do not fit this cache: expected "
                             f"[batch_size={self.batch_size}, num_kv_heads={self.num_heads}, new_tokens, "
                             f"head_dim={self.head_dim}]")
        if new_tokens > self.max_cache_len:
            raise ValueError(f"cannot write {new_tokens} new tokens into a cache with max_cache_len="
                             f"{self.max_cache_len}; build it with a larger max_cache_len")
        return new_tokens

    @staticmethod
    def _check_positions(positions: Any, new_tokens: int) -> None:
        if not isinstance(positions, torch.Tensor) or positions.dtype != torch.int64:
            raise TypeError("`cache_position` must be an int64 tensor, got "
                            f"{getattr(positions, 'dtype', type(positions).__name__)}")
        if positions.shape != (new_tokens,):
            raise ValueError(f"`cache_position` must have shape ({new_tokens},), one position per new token, "
                             f"got {tuple(positions.shape)}")

    def _check_capacity(self, positions: torch.Tensor) -> None:
        # Reading the positions is free only for CPU tensors in eager code; on an accelerator it would stall the
        # host once per layer and step, and inside a compiled graph it would break the graph.
        if positions.numel() == 0 or positions.device.type != "cpu" or torch.compiler.is_compiling():
            return
        first, last = (int(bound) for bound in torch.aminmax(positions))
        if first < 0 or last >= self.max_cache_len:
            raise ValueError(f"cache overflow: this write covers positions {first}..{last} but max_cache_len is "
                             f"{self.max_cache_len}; build the cache with max_cache_len >= {last + 1}")

    # --- reading -------------------------------------------------------------------------------------------

    def get_seq_length(self) -> int:
        """Tokens cached so far: one past the last position written (a host read of a device scalar)."""
        return int(self._length)

    def get_mask_sizes(self, query: Union[torch.Tensor, int]) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` for transformers' mask builders: attention always spans the whole
        preallocated length from slot 0. ``query`` is the ``cache_position`` (v4.57) or the query length (v5)."""
        return self.max_cache_len, 0

    def get_max_cache_shape(self) -> int:
        """``max_cache_len`` (transformers v4.57's name)."""
        return self.max_cache_len

    def get_max_length(self) -> int:
        """``max_cache_len`` (transformers v5's name)."""
        return self.max_cache_len

    # --- in-place edits ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Zero this layer's keys, values and length, in place."""
        self.keys.zero_()
        self.values.zero_()
        self._length.zero_()

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens (a negative value drops that many from the end), as transformers
        v4.57's ``crop``; the dropped slots (from the kept length to the current one) are zeroed so the layer is
        as if they had never been written. Only those are touched, so a crop costs what it drops, not the whole
        cache (slots past the current length are zero unless a write went back before the length, and a query
        never sees a slot before it is written)."""
        current = self.get_seq_length()
        keep = current + max_length if max_length < 0 else max_length
        if keep >= current:
            return
        keep = max(keep, 0)
        self.keys[:, :, keep:current].zero_()
        self.values[:, :, keep:current].zero_()
        self._length.fill_(keep)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Row ``i`` becomes old row ``beam_idx[i]``, in place; only the rows that move are copied when
        ``beam_idx`` is on the host (see :func:`reorder_rows_`; ``StaticKVCache.reorder_cache`` does all layers at once)."""
        reorder_rows_((self.keys, self.values), 0, _check_row_index(beam_idx, self.batch_size))


class StaticKVCache(_TransformersCache):
    """A preallocated KV cache written in place by position: ``cache_implementation="static"``.

    Keys and values live in two tensors of shape ``[num_layers, batch_size, num_kv_heads, max_cache_len,
    head_dim]`` (:attr:`key_cache`, :attr:`value_cache`); ``cache.layers[i]`` holds views of layer ``i``.
    See the module docstring for what a model or a decode loop must pass so that outputs equal the
    ``DynamicCache``'s.

    Args:
        config: a transformers ``PretrainedConfig`` to take the shape from (its decoder text config for
            multimodal models): ``num_hidden_layers``/``n_layer``, ``num_key_value_heads`` (else
            ``num_attention_heads``/``n_head``), ``head_dim`` (else ``hidden_size``/``n_embd`` divided by
            the number of attention heads). ``None`` to give the shape explicitly.
        batch_size: rows of the batch (``batch * num_beams`` for beam search).
        max_cache_len: tokens each row can hold.
        num_layers, num_kv_heads, head_dim: the shape; when given they override the config's values (e.g. the
            heads of one tensor-parallel shard), and they are required without a config.
        dtype: floating dtype of the stored states; must be the dtype of the model's keys and values.
        device: where the storage lives.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a size is not a positive integer, or the shape cannot be found in ``config``.
    """

    def __init__(self, config: Any = None, *, batch_size: int, max_cache_len: int, num_layers: Optional[int] = None,
                 num_kv_heads: Optional[int] = None, head_dim: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu"):
        shape = shape_from_config(config) if config is not None else {}
        for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if value is not None:
                shape[name] = value
            if shape.get(name) is None:
                raise ValueError(f"`{name}` is required: pass it, or a `config` that defines it")
        sizes = {name: positive_int(value, name) for name, value in (
            ("num_layers", shape["num_layers"]), ("batch_size", batch_size), ("num_kv_heads", shape["num_kv_heads"]),
            ("max_cache_len", max_cache_len), ("head_dim", shape["head_dim"]))}
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}")
        device = torch.device(device)

        storage_shape = (sizes["num_layers"], sizes["batch_size"], sizes["num_kv_heads"], sizes["max_cache_len"],
                         sizes["head_dim"])
        self._keys = torch.zeros(storage_shape, dtype=dtype, device=device)
        self._values = torch.zeros(storage_shape, dtype=dtype, device=device)
        self._lengths = torch.zeros(sizes["num_layers"], dtype=torch.int64, device=device)
        arange = torch.arange(sizes["max_cache_len"], device=device)
        # Set here rather than by `Cache.__init__` (the base class is `object` without transformers): the attributes
        # transformers' `Cache` methods read, i.e. a fixed list of layers, none added lazily, no offloading.
        self.layers = [StaticKVLayer(self._keys[i], self._values[i], self._lengths[i], arange)
                       for i in range(sizes["num_layers"])]
        self.layer_class_to_replicate = None
        self.offloading = False
        if not torch.compiler.is_compiling():
            # Tell dynamo these addresses never change, so compiled steps and CUDA graphs use (and mutate) them in
            # place instead of copying them in at every call.
            views = [tensor for layer in self.layers for tensor in (layer.keys, layer.values, layer._length)]
            for tensor in (self._keys, self._values, self._lengths, arange, *views):
                torch._dynamo.mark_static_address(tensor)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={tuple(self._keys.shape)}, dtype={self.dtype}, "
                f"device={self.device})")

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        """``(keys, values)`` per layer, as transformers' caches iterate."""
        return ((layer.keys, layer.values) for layer in self.layers)

    def __getitem__(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, values)`` of one layer, each ``[batch, kv_heads, max_cache_len, head_dim]``."""
        layer = self._layer(layer_idx)
        return layer.keys, layer.values

    def _layer(self, layer_idx: int) -> StaticKVLayer:
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < len(self.layers):
            raise ValueError(f"`layer_idx` must be an int in [0, {len(self.layers)}), got {layer_idx!r}")
        return self.layers[layer_idx]

    # --- shape -----------------------------------------------------------------------------------------------

    @property
    def key_cache(self) -> torch.Tensor:
        """All keys, ``[num_layers, batch_size, num_kv_heads, max_cache_len, head_dim]``; ``key_cache[i]`` is
        layer ``i``'s view."""
        return self._keys

    @property
    def value_cache(self) -> torch.Tensor:
        """All values, shaped like :attr:`key_cache`."""
        return self._values

    @property
    def num_layers(self) -> int:
        return self._keys.shape[0]

    @property
    def batch_size(self) -> int:
        return self._keys.shape[1]

    @property
    def max_batch_size(self) -> int:
        """:attr:`batch_size` (transformers v4.57's name)."""
        return self.batch_size

    @property
    def max_cache_len(self) -> int:
        return self._keys.shape[3]

    @property
    def num_kv_heads(self) -> int:
        return self._keys.shape[2]

    @property
    def head_dim(self) -> int:
        return self._keys.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self._keys.dtype

    @property
    def device(self) -> torch.device:
        return self._keys.device

    @property
    def is_compileable(self) -> bool:
        """True: fixed shapes and addresses. transformers also reads this to build explicit masks over all
        ``max_cache_len`` slots instead of assuming keys end at the query (which would attend to empty slots)."""
        return True

    @property
    def is_initialized(self) -> bool:
        return True

    @property
    def is_sliding(self) -> list[bool]:
        """Every layer keeps all positions; a sliding-window model still gets correct results because its mask,
        not the cache, limits what each query sees."""
        return [False] * len(self.layers)

    @property
    def is_croppable(self) -> bool:
        return True

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        """``max_cache_len`` (transformers v4.57's name)."""
        return self._layer(layer_idx).get_max_cache_shape()

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        """``max_cache_len`` (transformers v5's name)."""
        return self.max_cache_len if layer_idx is None else self._layer(layer_idx).get_max_length()

    def early_initialization(self, batch_size: int, num_heads: Union[int, list[int]], head_dim: Union[int, list[int]],
                             dtype: torch.dtype, device: Union[str, torch.device]) -> None:
        """transformers' ahead-of-time initialisation (``torch.export`` recipes call it). The storage exists from
        construction on, so this only checks that states of that shape, dtype and device fit every layer.
        ``num_heads`` and ``head_dim`` may be per-layer lists, as transformers v5 allows.

        Raises:
            TypeError, ValueError: as :meth:`StaticKVLayer.update` would for such states.
        """
        per_layer = {}
        for name, value in (("num_heads", num_heads), ("head_dim", head_dim)):
            values = list(value) if isinstance(value, (list, tuple)) else [value] * len(self.layers)
            if len(values) != len(self.layers):
                raise ValueError(f"`{name}` lists {len(values)} layers but the cache has {len(self.layers)}")
            per_layer[name] = values
        device = torch.device(device)
        for layer, heads, dim in zip(self.layers, per_layer["num_heads"], per_layer["head_dim"]):
            layer.lazy_initialization(torch.zeros((batch_size, heads, 0, dim), dtype=dtype, device=device))

    # --- the calls models make ---------------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: Optional[dict[str, Any]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer ``layer_idx``'s new states; see :meth:`StaticKVLayer.update`."""
        return self._layer(layer_idx).update(key_states, value_states, cache_kwargs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached in layer ``layer_idx``: one past the last position written. This reads a device
        scalar on the host; a compiled step should take positions from ``cache_position`` instead."""
        return self._layer(layer_idx).get_seq_length()

    def get_query_offset(self, layer_idx: int = 0) -> torch.Tensor:
        """Position of the first new query token (transformers v5's mask builders call this), as a 0-dim device
        tensor: a snapshot of the length, so no host read and no graph break."""
        return self._layer(layer_idx)._length.clone()

    def get_mask_sizes(self, query: Union[torch.Tensor, int], layer_idx: int = 0) -> tuple[int, int]:
        """``(max_cache_len, 0)``: see :meth:`StaticKVLayer.get_mask_sizes`."""
        return self._layer(layer_idx).get_mask_sizes(query)

    # --- in-place edits ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the cache in place (zeroed storage, length 0), keeping every tensor's address."""
        self._keys.zero_()
        self._values.zero_()
        self._lengths.zero_()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search's reorder: row ``i`` of every layer becomes old row ``beam_idx[i]``.

        In place, so addresses do not change: with ``beam_idx`` on the host only the rows that move are copied
        (nothing for the identity), one gather and one index copy per storage tensor for all layers; on an
        accelerator every row is gathered, with no host synchronisation (see :func:`reorder_rows_`).
        ``beam_idx`` is a 1-D integer tensor of ``batch_size`` indices in ``[0, batch_size)``.
        """
        reorder_rows_((self._keys, self._values), 1, _check_row_index(beam_idx, self.batch_size))

    #: In-place spelling of :meth:`reorder_cache`.
    reorder_ = reorder_cache

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens of every layer; see :meth:`StaticKVLayer.crop`. A negative value
        drops that many tokens from the end, which is also what transformers v5's ``crop(tokens_to_remove)``
        means (v5 refuses positive values), so callers of either version get what they ask for."""
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            raise TypeError(f"`max_length` must be an int, got {type(max_length).__name__}")
        for layer in self.layers:
            layer.crop(max_length)

    def truncate_(self, length: int, current: int) -> None:
        """Forget every layer's positions from ``length`` on, knowing the current length ``current`` (what
        :meth:`crop` reads on the host, once per layer): slots ``length ... current - 1`` are zeroed in both storage
        tensors at once and every length set to ``length``, with no host read (a runner that tracks the length
        itself crops a device-resident cache this way without synchronising).

        Raises:
            ValueError: not ``0 <= length <= current <= max_cache_len``.
        """
        if not 0 <= length <= current <= self.max_cache_len:
            raise ValueError(f"`length` and `current` must satisfy 0 <= length <= current <= max_cache_len="
                             f"{self.max_cache_len}, got length={length}, current={current}")
        self._keys[:, :, :, length:current].zero_()
        self._values[:, :, :, length:current].zero_()
        self._lengths.fill_(length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError(f"a StaticKVCache has a fixed batch size ({self.batch_size}); build one with "
                                  "the expanded batch_size instead of repeating rows")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError(f"a StaticKVCache has a fixed batch size ({self.batch_size}); use "
                                  "reorder_cache to permute or duplicate rows")


# ----------------------------------------------------------------------------------------------------------
# Row selection (beam reordering)
# ----------------------------------------------------------------------------------------------------------


def _check_row_index(index: Any, rows: int) -> torch.Tensor:
    """``index`` (a permutation or selection of ``rows`` rows), checked where that is free; left where it is, so
    that the moved rows of a host index can be found without a synchronisation."""
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError("`beam_idx` must be an int64 or int32 tensor, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if index.shape != (rows,):
        raise ValueError(f"`beam_idx` must have shape ({rows},), one source row per cache row, "
                         f"got {tuple(index.shape)}")
    if index.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = (int(bound) for bound in torch.aminmax(index))
        if low < 0 or high >= rows:
            raise ValueError(f"`beam_idx` values must be in [0, {rows}), got {low}..{high}")
    return index


def moved_rows(index: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """For a row reorder ``index`` (new row ``i`` is old row ``index[i]``): ``(rows, sources)``, the rows whose
    source is another row and those sources, found on the host when ``index`` is there (free); None when
    ``index`` lives on an accelerator or is being compiled, where finding them would synchronise (the caller
    then gathers every row)."""
    if index.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    rows = torch.nonzero(index != torch.arange(index.shape[0], dtype=index.dtype)).squeeze(1)
    return rows, index.index_select(0, rows).long()


def reorder_rows_(tensors: Any, dim: int, index: torch.Tensor) -> None:
    """``tensor[..., i, ...] = old tensor[..., index[i], ...]`` along ``dim`` (0 or 1) for each of ``tensors``,
    written back into each tensor's own storage (addresses do not change).

    With ``index`` on the host only the rows that move are copied (none for the identity): their sources are
    gathered into a temporary first, so swaps and duplications read the old rows, then written with one
    ``index_copy_`` (3x fewer microseconds than a copy per row for a beam search's few moved rows); when most rows
    move, every row is gathered and copied back. Otherwise (an accelerator, or compiling) every row is gathered
    into a temporary and copied back in one go, with no host synchronisation. Along ``dim`` 1 each leading slice
    is done on its own (a gather along a later dimension takes a slow path on the CPU).
    """
    moved = moved_rows(index)
    for tensor in tensors:
        if moved is None:
            tensor.copy_(tensor.index_select(dim, index.to(tensor.device, non_blocking=True)))
            continue
        rows, sources = moved
        if rows.numel() == 0:
            continue
        parts = tensor.unbind(0) if dim > 0 else (tensor,)
        if 2 * rows.numel() > index.shape[0]:
            full = index.to(tensor.device).long()
            for part in parts:
                part.copy_(part.index_select(0, full))
            continue
        rows, sources = rows.to(tensor.device), sources.to(tensor.device)
        for part in parts:
            part.index_copy_(0, rows, part.index_select(0, sources))
