"""``ModelRunner``: the decode loops' only way to call the model.

A runner wraps a transformers causal LM over a given KV cache and owns every model keyword argument
(attention mask, positions, cache positions, token types, ``logits_to_keep``...): the loops hand it token
ids and get float32 next-token logits back. It tracks how many positions of the sequences it has fed
(``fed_length``: the cache's length when there is a cache), so each call only needs the new tokens.

Two implementations:

* :class:`DirectRunner` calls the model exactly as transformers' generic ``prepare_inputs_for_generation``
  would, from tables built once (mask, positions, cache positions), sliced per step;
* :class:`PreparedRunner`, for models that override ``prepare_inputs_for_generation``, goes through the
  model's own preparation and ``_update_model_kwargs_for_generation`` at every step, as transformers does.

:func:`make_runner` picks one for a model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol, Union, runtime_checkable

import torch

from .. import _transformers_compat as _compat
from ..cache.paged import PagedKVCache
from ..cache.static import StaticKVCache, reorder_rows_
from ..errors import UnsupportedByTurbogen
from .prepare import accepts, forward_parameters, is_encoder_decoder
from .record import Record

__all__ = ["DirectRunner", "ModelRunner", "PreparedRunner", "StockDecoderStep", "StockEncoderDecoderRunner",
           "installed_stock_decoder_step", "make_runner"]


@runtime_checkable
class ModelRunner(Protocol):
    """What the decode loops need from a model over a cache.

    ``fed_length`` is the number of sequence positions fed so far (after :meth:`prefill`, the prompt's length;
    during decoding, the sequence length minus one, as the last chosen token is fed by the next call); after a
    per-row :meth:`crop`, the longest row's. A runner whose rows can have lengths of their own (after a per-row
    :meth:`crop`: :class:`DirectRunner`) also has ``fed_lengths``, ``[rows]`` int64, and feeds each row at its
    own positions. Logits are float32 with contiguous rows; every call records the model's optional outputs.
    """

    fed_length: int
    #: Whether :meth:`crop` can always restore an earlier length (sliding-window caches cannot).
    can_crop: bool
    #: The KV cache (``None`` without one); the model may replace it on its first call.
    past_key_values: Any

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed the prompt ``[rows, prompt_length]`` (what the cache does not hold yet); ``[rows, vocab]``
        logits of its last position."""

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``[rows]``) at position ``fed_length`` (row ``r``: ``fed_lengths[r]``);
        ``[rows, vocab]`` logits."""

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``k + 1`` tokens per row (``[rows, k + 1]``) at positions ``fed_length ... fed_length + k`` (row
        ``r``: from ``fed_lengths[r]`` on); ``[rows, k + 1, vocab]`` logits, position ``i`` predicting the token
        after ``tokens[:, i]``."""

    def reorder(self, index: torch.Tensor) -> None:
        """Make row ``r`` what row ``index[r]`` was (beam search)."""

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        """Forget every fed position from ``lengths`` on: an int, or ``[rows]`` int64 (per-row lengths, each at
        most the row's fed length; a runner whose cache cannot hold rows of different lengths raises
        ``ValueError`` unless they agree)."""


def make_runner(model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                max_length: int, record: Record) -> ModelRunner:
    """The runner for ``model``: :class:`DirectRunner` for decoder-only models using transformers' generic input
    preparation, else (a model's own preparation, or an encoder-decoder) :class:`PreparedRunner`. ``input_ids`` is the prompt, ``max_length`` the longest
    sequence the runner will be fed (prompt included).

    Besides model inputs, ``model_kwargs`` may hold ``inputs_embeds`` (fed in place of the prompt's ids at the
    prefill: see :class:`DirectRunner`) and ``prefill_chunk_size`` (a generation option, not a model input:
    the prefill runs in chunks of that many positions); :class:`PreparedRunner` refuses both with
    :class:`~turbogen.errors.UnsupportedByTurbogen`.

    A :class:`~turbogen.cache.paged.PagedKVCache` (``cache_implementation="paged"``) gets a
    :class:`~turbogen.generation.paged_runner.PagedRunner` (packed forwards over the paged cache), which refuses
    what it cannot run."""
    if isinstance(cache, PagedKVCache):
        from .paged_runner import PagedRunner

        return PagedRunner(model, input_ids, model_kwargs, cache, use_cache, max_length, record)
    if is_encoder_decoder(model):
        # The decoder's inputs (decoder ids, masks, encoder outputs, the two-part cache) follow transformers'
        # own preparation; the encoder ran once in `prepare_call`.
        if StockEncoderDecoderRunner.applies(model, model_kwargs, cache, use_cache):
            return StockEncoderDecoderRunner(model, input_ids, model_kwargs, cache, use_cache, record)
        return PreparedRunner(model, input_ids, model_kwargs, cache, use_cache, record)
    if type(cache) is StaticKVCache and _compat.is_transformers_4_45():
        # 4.45's models size the causal mask for their own StaticCache only (see cache.factory.make_cache).
        raise UnsupportedByTurbogen("turbogen's StaticKVCache is not supported with transformers 4.45; use "
                                    "transformers >= 4.57 for it", reason="a static cache with transformers 4.45")
    if _compat.prepares_own_inputs(model):  # (4.45: Llama-family overrides count as the standard preparation)
        for name in ("inputs_embeds", "prefill_chunk_size"):
            if model_kwargs.get(name) is not None:
                raise UnsupportedByTurbogen(
                    f"`{name}` is not supported for models with their own `prepare_inputs_for_generation` "
                    f"({type(model).__name__}).", reason=f"{name} with a model's own input preparation")
        return PreparedRunner(model, input_ids, model_kwargs, cache, use_cache, record)
    return DirectRunner(model, input_ids, model_kwargs, cache, use_cache, max_length, record)


def _last_logits(outputs: Any, positions: int = 1) -> torch.Tensor:
    """The last ``positions`` positions' logits, float32 with contiguous rows: ``[rows, vocab]`` for one
    position, else ``[rows, positions, vocab]``.

    When the model computed only that position (``logits_to_keep=1``) in float32, this is a view: it keeps
    nothing larger alive and saves a copy of ``rows * vocab`` floats per step. Otherwise it is a copy (as in
    transformers), so that the possibly prompt-long logits of the model output can be freed.
    """
    logits = outputs.logits
    if positions != 1:
        return logits[:, -positions:, :].to(copy=True, dtype=torch.float32)
    last = logits[:, -1, :]
    if logits.shape[1] == 1 and logits.dtype == torch.float32 and last.is_contiguous():
        return last
    return last.to(copy=True, dtype=torch.float32)


def _crop_lengths(lengths: Union[int, torch.Tensor], fed: list[int]) -> list[int]:
    """``lengths`` (an int, a 0-d tensor or ``[rows]`` integers) as one int per row, checked against the rows'
    fed lengths ``fed``: ``0 <= lengths[r] <= fed[r]``. One host read of a tensor (the rows are few)."""
    rows = len(fed)
    if isinstance(lengths, bool) or not isinstance(lengths, (int, torch.Tensor)):
        raise ValueError(f"`lengths` must be an int or an int64 tensor of shape [{rows}], got {type(lengths).__name__}")
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"`lengths` must hold integers, got dtype {lengths.dtype}")
        if lengths.shape not in ((), (rows,)):
            raise ValueError(f"`lengths` must be an int or a tensor of shape [{rows}], "
                             f"got shape {tuple(lengths.shape)}")
        values = lengths.tolist()
        lengths = values if isinstance(values, list) else [values] * rows
    else:
        lengths = [lengths] * rows
    for row, (length, limit) in enumerate(zip(lengths, fed)):
        if not 0 <= length <= limit:
            raise ValueError(f"`lengths` must be in [0, fed length] per row: row {row} has fed {limit} positions, "
                             f"got {length}")
    return lengths


#: transformers' cache classes whose layers hold plain ``keys`` / ``values`` tensors ``[rows, heads, length,
#: head_dim]`` that may be reordered in place, and the layer classes that do so.
_IN_PLACE_CACHES = ("DynamicCache", "StaticCache")
_IN_PLACE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer", "StaticLayer", "StaticSlidingWindowLayer")
_TRANSFORMERS_CACHE_MODULE = "transformers.cache_utils"


def _is_transformers(instance: Any, names: tuple) -> bool:
    """``instance`` is exactly one of transformers' cache classes ``names`` (a subclass may store rows differently)."""
    return _compat.is_transformers_type(instance, _TRANSFORMERS_CACHE_MODULE, *names)


def _layer_tensors(cache: Any) -> Optional[list]:
    """The key and value tensors of every layer of ``cache`` to reorder in place (uninitialised layers hold
    none), or None when ``cache`` is not a cache this runner reorders itself."""
    if _is_transformers(cache, ("EncoderDecoderCache",)):
        parts = [_layer_tensors(cache.self_attention_cache), _layer_tensors(cache.cross_attention_cache)]
        return None if None in parts else parts[0] + parts[1]
    layers = getattr(cache, "layers", None)
    if not _is_transformers(cache, _IN_PLACE_CACHES) or layers is None:
        return None
    if not all(_is_transformers(layer, _IN_PLACE_LAYERS) for layer in layers):
        return None
    tensors = []
    for layer in layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.numel():
                tensors.append(tensor)
    # In-place writes need tensors that own their rows: no expanded (stride 0) dimension, no storage shared
    # between two tensors (layers sharing their keys would be reordered twice). Else the cache's own reorder.
    storages = [tensor.untyped_storage().data_ptr() for tensor in tensors]
    expanded = any(stride == 0 and size > 1 for tensor in tensors for stride, size in zip(tensor.stride(), tensor.shape))
    return None if expanded or len(set(storages)) != len(storages) else tensors


def _reorder_cache(model: Any, cache: Any, index: torch.Tensor) -> Any:
    """``cache`` with its rows reordered by ``index`` (the model's own hook first, as transformers).

    In place, keeping the cache object: turbogen's static cache reorders itself in place; for transformers'
    ``DynamicCache`` / ``StaticCache`` (and an ``EncoderDecoderCache`` of them) each layer's keys and values
    are gathered in place, and with ``index`` on the host only the rows that move are copied (none for the
    identity). Any other cache uses its own ``reorder_cache``.
    """
    own_hook = _compat.model_reorder_cache(model)  # 4.45's mixin has a base hook that only raises
    if own_hook is not None:
        return own_hook(cache, index)
    tensors = _layer_tensors(cache)
    if tensors is None:
        cache.reorder_cache(index)
        return cache
    if index.dim() != 1 or any(tensor.shape[0] != index.shape[0] for tensor in tensors):
        raise ValueError(f"`index` must hold one source row per cache row, got shape {tuple(index.shape)}")
    reorder_rows_(tensors, 0, index)
    return cache


def _mask_is_redundant(prompt_mask: torch.Tensor, cache: Any) -> bool:
    """Whether the attention mask can be left out of every model call: the prompt has no padding and the cache
    is a plain ``DynamicCache``, whose keys are exactly the sequence so far. transformers then builds the same
    attention without a mask, and skips checking the mask for padding at every step (``mask.all()``, about
    0.2 ms per step for a small model on a CPU). Not for other caches: a static cache's unwritten positions
    are hidden by the mask alone."""
    from transformers import DynamicCache

    return type(cache) is DynamicCache and bool(prompt_mask.all())


def _slot_storage(cache: Any) -> Optional[tuple[str, list]]:
    """How :class:`DirectRunner` moves the positions of ``cache`` within rows (compaction, see there):
    ``("static", [(tensor, dim), ...])`` for a cache of fixed capacity written in place (turbogen's
    :class:`~turbogen.cache.StaticKVCache`: its two storage tensors; transformers' ``StaticCache`` of
    full-attention layers: every layer's keys and values), ``("dynamic", layers)`` for transformers'
    ``DynamicCache`` of full-attention ``DynamicLayer`` layers (their tensors are replaced; under transformers 4.45,
    whose ``DynamicCache`` keeps every layer full in two lists, ``layers`` is ``[cache]``), or None for any other
    cache (per-row lengths are then refused)."""
    if type(cache) is StaticKVCache:
        return "static", [(cache.key_cache, 3), (cache.value_cache, 3)]
    static_layers = _compat.full_static_cache_layers(cache)
    if static_layers is not None:
        return "static", [(tensor, 2) for layer in static_layers
                          for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
                          if isinstance(tensor, torch.Tensor) and tensor.dim() == 4]
    if _is_transformers(cache, ("DynamicCache",)) and not getattr(cache, "offloading", False):
        if not hasattr(cache, "layers"):  # transformers 4.45
            return "dynamic", [cache]
        layers = list(cache.layers)
        if all(_is_transformers(layer, ("DynamicLayer",)) for layer in layers):
            return "dynamic", layers
    return None


def _slot_capacity(cache: Any) -> Optional[int]:
    """The positions per row a fixed-capacity cache holds (None: it grows)."""
    if type(cache) is StaticKVCache:
        return cache.max_cache_len
    static_layers = _compat.full_static_cache_layers(cache)
    if static_layers is not None:
        return min(int(layer.max_cache_len) for layer in static_layers)
    return None


def _gather_slots(tensor: torch.Tensor, dim: int, index: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor``'s first ``length`` slots along ``dim`` (the rows' dimension is ``dim - 2``, heads in between,
    a feature dimension after), row ``r``'s slot ``j`` taken from its slot ``index[r, j]``."""
    shape = list(tensor.shape)
    shape[dim] = index.shape[1]
    view = [1] * tensor.dim()
    view[dim - 2], view[dim] = index.shape
    source = tensor.narrow(dim, 0, length)
    return source.gather(dim, index.reshape(view).expand(shape))


class DirectRunner:
    """Calls the model exactly as transformers' generic ``prepare_inputs_for_generation`` would, from
    tables built once: the attention mask is a ``[rows, width]`` buffer (prompt mask, then ones) sliced
    per call, positions are ``cumsum(mask) - 1`` (1 on padding) precomputed for every position, and the cache
    position is a slice of one ``arange``. Without a cache (``use_cache=False``) every call re-runs the whole
    sequence, which the runner keeps.

    transformers 4.57's input rules, reproduced:

    * ``inputs_embeds`` (``[rows, E, hidden]``): the prefill feeds them in place of the prompt's ids (the
      prompt is then empty, or the ``E`` ids they embed); the model's positions run ``E - prompt_length`` ahead
      of the sequence's (``fed_length``, :meth:`crop` and the returned sequences count sequence positions only).
      As in transformers, with ``E == 1`` every decoding step feeds the embeddings again instead of the token.
      A cache is required.
    * user ``position_ids`` (``[rows or 1, E]``): used for the prompt; transformers 4.57 does not extend them,
      so every decoding step gets the last prompt position again. A cache is required.
    * ``prefill_chunk_size``: the prompt but its last position is fed in chunks of that many positions, whose
      position ids are the cache positions (the attention mask notwithstanding) and whose outputs are not
      recorded; the last position is then fed as a decoding step would. A cache is required; with a
      ``past_key_values`` already holding positions it is refused.

    Per-row lengths (speculative decoding at batch > 1: each row keeps its own number of drafts).
    ``crop(lengths)`` with a ``[rows]`` tensor of different values makes the rows *ragged*; then
    ``fed_lengths[r]`` is row ``r``'s length, ``fed_length`` the longest, and :meth:`decode` / :meth:`verify`
    feed row ``r``'s tokens at its positions ``fed_lengths[r]...``. How:

    * the cache keeps one common length for all rows (its *slots*); a per-row crop does not move anything in
      it: the forgotten slots of each row become *holes*, zeros of the attention mask (as padding is), and the
      cache is only cut after the last slot any row keeps. New tokens of every row are written at the common
      next slots; their position ids are the row's count of unmasked slots before them (what transformers
      derives from a mask: ``cumsum(mask) - 1``), so a row's tokens get the positions and the attention they
      would get alone. The mask and position tables are updated from the first free slot on at each crop
      (``[rows, width]`` integers, nothing of the cache), so a decoding step reads them as before. Which slots
      each row holds is kept on the host as runs ``[start, end)``, so a crop reads nothing back from the device
      but its ``lengths`` (a no-op crop, every row keeping all it was fed, touches nothing).
    * a per-row crop always passes the mask from then on (the unpadded ``DynamicCache``'s mask-free calls
      would attend to the holes). While rows share one length nothing of this runs: a decoding step costs
      what it did before per-row lengths existed (one more attribute test).
    * *compaction*: holes take slots; when the next call would not fit a cache of fixed capacity (turbogen's
      :class:`~turbogen.cache.StaticKVCache`, transformers' ``StaticCache``), or a growing cache
      (``DynamicCache``, no cache) would hold more than twice the longest row's slots and more than the
      ``max_length`` the runner was built for, one per-row gather moves every row's kept slots to the front
      (keys, values, mask, positions, token types alike), rows shorter than the longest keeping holes at their
      end. It copies the cache once per that many fed slots, never at every step. The tables grow (doubling)
      when holes need more slots than they have.
    * when no hole is left (every row cropped to one length past its holes, or evened by a compaction), the
      runner is back to common lengths, on the same fast path as before any per-row crop.

    Per-row crops need a cache whose slots the runner can move (``DynamicCache``, turbogen's static cache,
    transformers' ``StaticCache`` of full-attention layers, or none) and a model taking ``position_ids``;
    otherwise, as for sliding-window caches (:attr:`can_crop` False), :meth:`crop` raises ``ValueError``
    unless all rows agree. Crops to one common length never use any of this while no hole exists.
    """

    def __init__(self, model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                 max_length: int, record: Record):
        self.model = model
        self.past_key_values = cache
        self.use_cache = bool(use_cache)
        self.record = record
        self.max_length = max_length
        self.fed_length = 0
        parameters = forward_parameters(model)
        rows, prompt_length = input_ids.shape
        self.rows = rows
        device = input_ids.device
        self._device = device
        kwargs = dict(model_kwargs)
        prompt_mask = kwargs.pop("attention_mask", None)
        token_type_ids = kwargs.pop("token_type_ids", None)
        user_positions = kwargs.pop("position_ids", None)
        self._embeds = kwargs.pop("inputs_embeds", None)
        self._chunk_size = kwargs.pop("prefill_chunk_size", None)
        # Model positions run this far ahead of sequence positions (the embedded prompt has no ids).
        self._offset = 0 if self._embeds is None else self._embeds.shape[1] - prompt_length
        if self._offset < 0:
            raise ValueError(f"`inputs_embeds` covers {self._embeds.shape[1]} positions, fewer than the "
                             f"{prompt_length} of `input_ids`")
        model_prompt_length = prompt_length + self._offset
        self._model_prompt_length = model_prompt_length
        width = max_length + self._offset  # model positions
        self._width = width
        # The last slot `_call` may feed: `width` while rows share one length; the tables' width when ragged.
        self._limit = width
        self._table_width = width
        if cache is None and (self._embeds is not None or user_positions is not None or self._chunk_size):
            which = ("`inputs_embeds`" if self._embeds is not None
                     else "`position_ids`" if user_positions is not None else "`prefill_chunk_size`")
            raise ValueError(f"{which} needs a KV cache (`use_cache=True`)")
        self._constant_kwargs = {"use_cache": self.use_cache, **kwargs}
        # Only the positions whose logits are used are computed, when the model allows choosing them.
        # (transformers 4.45 names it `num_logits_to_keep`.)
        self._logits_to_keep = _compat.logits_to_keep_name(parameters)
        self._keeps_logits = self._logits_to_keep is not None and self._logits_to_keep not in kwargs
        if self._keeps_logits:
            self._constant_kwargs[self._logits_to_keep] = 1

        self._mask = None
        self._mask_dtype = torch.int64 if prompt_mask is None else prompt_mask.dtype
        # Ragged feeds pass their causal mask in 4-D where the model takes it as given (`_ragged_attention_mask`).
        self._ragged_masks_4d = _compat.passes_4d_masks_through(model) and not has_sliding_window(model)
        self._score_dtype = getattr(model, "dtype", torch.float32)
        if prompt_mask is not None:
            self._mask = torch.ones(rows, width, dtype=prompt_mask.dtype, device=device)
            self._mask[:, :model_prompt_length] = prompt_mask
        self._positions = None  # [rows, width]
        self._positions_by_step = None  # [width, rows, 1]: contiguous per-step slices
        self._accepts_positions = "position_ids" in parameters
        # Positions after the prompt: the last user position (transformers 4.57 reuses it), else None when they
        # follow the mask.
        self._future_position = None
        positions = None
        if user_positions is not None:
            positions = self._user_position_table(user_positions, rows, model_prompt_length, width)
            self._future_position = positions[:, -1:].clone()
        elif self._accepts_positions and self._mask is not None:
            positions = _compat.position_ids_from_attention_mask(self._mask)
        if positions is not None:
            self._set_positions(positions)
        # What the tables are while rows share one length, restored when a ragged batch evens out.
        self._shared_mask_is_none = self._mask is None or _mask_is_redundant(prompt_mask, cache)
        self._shared_positions_are_none = self._positions is None
        if self._mask is not None and _mask_is_redundant(prompt_mask, cache):
            self._mask = None
        self._token_types = None
        if token_type_ids is not None:
            self._token_types = torch.cat(
                [token_type_ids, token_type_ids[:, -1:].expand(rows, width - token_type_ids.shape[1])], dim=1)
        self._cache_positions = torch.arange(width, device=device) if "cache_position" in parameters else None
        # Without a cache every call re-runs the whole sequence, which this copy tracks.
        self._all_ids = None if self.use_cache else input_ids
        # The compiled model call of one-token decoding steps and its fixed-shape inputs (see `compile_decode`).
        self._compiled_model = None
        self._compiled_mask: Optional[torch.Tensor] = None
        self._compiled_positions: Optional[torch.Tensor] = None
        self._compiled_ids: Optional[torch.Tensor] = None
        # Per-row lengths (see the class docstring), None while the rows share `fed_length`: the rows' sequence
        # lengths, each row's runs of slots holding its positions (`[start, end)` in order, the gaps are holes;
        # host lists, so a crop needs no device read), `arange(table width)`, and the slots in use (model
        # positions; `fed_length + _offset` while rows share one length).
        self._row_lengths: Optional[list[int]] = None
        self._runs: Optional[list[list[list[int]]]] = None
        self._slot_numbers: Optional[torch.Tensor] = None
        self._slots = 0
        self._capacity: Optional[int] = None  # of the cache's rows, when fixed (set when the rows become ragged)

    @property
    def compiles_decode(self) -> bool:
        """Whether one-token decoding steps run through a compiled model call (:meth:`compile_decode`)."""
        return self._compiled_model is not None

    def compile_decode(self, compiled_model: Any) -> bool:
        """Run every one-token decoding step through ``compiled_model(model, input_ids, kwargs)`` (a compiled
        model call: :func:`turbogen.generation.compiled.shared_model_call`) with fixed-shape inputs: the mask
        as wide as the cache (ones past the prompt), the ``[rows, 1]`` token ids and positions and the ``[1]``
        cache position of the step, copied into buffers of their own. Only over turbogen's
        :class:`~turbogen.cache.StaticKVCache`, with common row lengths, without embeddings or token types;
        returns whether it applies (else every call stays eager)."""
        cache = self.past_key_values
        if (type(cache) is not StaticKVCache or not self.use_cache or self._embeds is not None
                or self._token_types is not None or self._offset):
            return False
        capacity = cache.max_cache_len
        # Contiguous buffers of their own (strides are part of a graph's guards, and the tables' depend on
        # max_length): the mask with ones past the table, the step's positions copied in at each step.
        if self._mask is not None:
            width = min(capacity, self._mask.shape[1])
            self._compiled_mask = self._mask.new_ones(self.rows, capacity)
            self._compiled_mask[:, :width] = self._mask[:, :width]
        if self._positions is not None:
            self._compiled_positions = torch.empty(self.rows, 1, dtype=torch.int64, device=self._device)
        self._compiled_ids = torch.empty(self.rows, 1, dtype=torch.int64, device=self._device)
        self._compiled_model = compiled_model
        return True

    @staticmethod
    def _user_position_table(positions: Any, rows: int, prompt_length: int, width: int) -> torch.Tensor:
        """``[rows, width]`` positions from the user's prompt ``position_ids``: transformers 4.57 slices the
        last positions of the given tensor at every step and never extends it, so each decoding step reuses
        the last prompt position."""
        if not isinstance(positions, torch.Tensor) or positions.dim() != 2:
            shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise ValueError(f"`position_ids` must be a tensor [batch, prompt_length], got {shape}")
        if positions.shape[1] != prompt_length or positions.shape[0] not in (1, rows):
            raise ValueError(f"`position_ids` must have shape [batch, {prompt_length}] (one position per prompt "
                             f"position), got {tuple(positions.shape)}")
        positions = positions.long().expand(rows, prompt_length)
        return torch.cat([positions, positions[:, -1:].expand(rows, width - prompt_length)], dim=1).contiguous()

    def _set_positions(self, positions: torch.Tensor) -> None:
        self._positions = positions
        self._positions_by_step = positions.t().contiguous().unsqueeze(-1)

    @property
    def fed_lengths(self) -> torch.Tensor:
        """``[rows]`` int64 (on the inputs' device): the positions fed per row; all ``fed_length`` until a
        per-row :meth:`crop`."""
        if self._row_lengths is None:
            return torch.full((self.rows,), self.fed_length, dtype=torch.int64, device=self._device)
        return torch.tensor(self._row_lengths, dtype=torch.int64, device=self._device)

    def _call(self, input_ids: Optional[torch.Tensor], start: int, end: int, logits_positions: int = 1, *,
              inputs_embeds: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
              record: bool = True) -> torch.Tensor:
        """Run the model on model positions ``[start, end)`` (sequence positions plus the embeddings' offset;
        cache slots when the rows are ragged), ``input_ids`` (or ``inputs_embeds``) holding exactly those; the
        logits of the last ``logits_positions`` positions. ``position_ids`` replaces the table's;
        ``record=False`` keeps the outputs unrecorded."""
        if end > self._limit:
            raise ValueError(f"cannot feed position {end - 1 - self._offset}: this runner was built for "
                             f"sequences of at most {self.max_length} tokens")
        kwargs = dict(self._constant_kwargs)
        if self._keeps_logits and logits_positions != 1:
            kwargs[self._logits_to_keep] = logits_positions
        compiled = (self._compiled_model if end - start == 1 and self._row_lengths is None and position_ids is None
                    and inputs_embeds is None else None)
        if self._mask is not None and compiled is not None:
            # A compiled call gets the fixed-shape [rows, capacity] mask (ones past the end: see StaticKVCache).
            kwargs["attention_mask"] = self._compiled_mask
        elif self._mask is not None and self._row_lengths is not None and self._ragged_masks_4d:
            kwargs["attention_mask"] = self._ragged_attention_mask(start, end)
        elif self._mask is not None:
            kwargs["attention_mask"] = self._mask[:, :end]
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        elif self._positions is not None and compiled is not None:
            kwargs["position_ids"] = self._compiled_positions.copy_(self._positions_by_step[start])
        elif self._positions is not None:
            kwargs["position_ids"] = (self._positions_by_step[start] if end - start == 1
                                      else self._positions[:, start:end].contiguous())
        if self._token_types is not None:
            kwargs["token_type_ids"] = self._token_types[:, start:end]
        if self._cache_positions is not None:
            kwargs["cache_position"] = self._cache_positions[start:end]
        if self.past_key_values is not None:
            kwargs["past_key_values"] = self.past_key_values
        if inputs_embeds is not None:
            outputs = self.model(inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        elif compiled is not None:
            outputs = compiled(self.model, self._compiled_ids.copy_(input_ids), kwargs)
        else:
            outputs = self.model(input_ids=input_ids, return_dict=True, **kwargs)
        if self.use_cache:  # the model may have created the cache itself
            self.past_key_values = getattr(outputs, "past_key_values", self.past_key_values)
        if record:
            self.record.model_outputs(outputs)
        if self._row_lengths is None:
            self.fed_length = end - self._offset
        else:
            self._slots = end
        return _last_logits(outputs, logits_positions)

    def _ragged_attention_mask(self, start: int, end: int) -> torch.Tensor:
        """The ``[rows, 1, end - start, keys]`` additive mask of feeding slots ``[start, end)`` to ragged rows: the
        query in slot ``start + i`` sees the slots up to its own that hold its row's tokens (the mask table's ones;
        cropped drafts left zeros). transformers derives the same mask from the 2-D table, but for several
        queries over a table with holes it goes through a vmap costing about as much as the forward on CPUs (12 ms
        a call for 8 rows x 11 queries of the embedded model), and it returns a 4-D mask as it is given."""
        causal = self._slot_numbers[None, :end] <= self._slot_numbers[start:end, None]  # [queries, end]
        visible = self._mask[:, None, None, :end].bool() & causal
        dtype = self._score_dtype if self._score_dtype.is_floating_point else torch.float32
        mask = torch.zeros(visible.shape, dtype=dtype, device=self._device).masked_fill_(~visible,
                                                                                      torch.finfo(dtype).min)
        # A fixed-capacity cache hands the attention all its slots: the unwritten ones are masked too.
        keys = max(self._capacity or end, end)
        return torch.nn.functional.pad(mask, (0, keys - end), value=torch.finfo(dtype).min) if keys > end else mask

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        end = input_ids.shape[1] + self._offset  # model positions
        cached = 0 if self.past_key_values is None else int(self.past_key_values.get_seq_length())
        if cached >= end:
            raise ValueError(f"`past_key_values` already holds {cached} positions, as many as the prompt's "
                             f"{end}: nothing is left to feed the model.")
        # transformers feeds the embeddings when the prompt has no ids, else only when nothing is cached.
        if self._embeds is not None and (input_ids.shape[1] == 0 or cached == 0):
            return self._call(None, cached, end, inputs_embeds=self._embeds[:, cached:])
        if self._chunk_size:  # prepare_call refused a cache that already held positions
            self._prefill_chunks(input_ids[:, :-1])
            cached = end - 1
        return self._call(input_ids[:, cached - self._offset:], cached, end)

    def _prefill_chunks(self, input_ids: torch.Tensor) -> None:
        """Fill the cache with ``input_ids`` (model positions ``0 ...``), ``prefill_chunk_size`` positions per
        call, unrecorded; as in transformers, the position ids of a chunk are its cache positions."""
        length = input_ids.shape[1]
        for start in range(0, length, int(self._chunk_size)):
            end = min(start + int(self._chunk_size), length)
            positions = None
            if self._accepts_positions:
                positions = torch.arange(start, end, device=input_ids.device).unsqueeze(0)
            self._call(input_ids[:, start:end], start, end, position_ids=positions, record=False)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._embeds is not None and self._embeds.shape[1] == 1:
            # transformers 4.57 keeps feeding one-position embeddings, which match the one new position.
            return self._feed(None, inputs_embeds=self._embeds)
        return self._feed(tokens[:, None])

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"`tokens` must have shape [rows, k + 1], got {tuple(tokens.shape)}")
        logits = self._feed(tokens, logits_positions=tokens.shape[1])
        return logits if tokens.shape[1] != 1 else logits[:, None, :]

    def _feed(self, tokens: Optional[torch.Tensor], logits_positions: int = 1,
              inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Feed ``tokens`` (``[rows, n]``), or the one-position ``inputs_embeds``, after every row's fed ones."""
        if self._row_lengths is not None:
            return self._feed_ragged(tokens, logits_positions, inputs_embeds)
        start = self.fed_length + self._offset
        if inputs_embeds is not None:
            return self._call(None, start, start + 1, inputs_embeds=inputs_embeds)
        end = start + tokens.shape[1]
        if self._all_ids is not None:
            self._all_ids = torch.cat([self._all_ids, tokens], dim=1)
            return self._call(self._all_ids, 0, end, logits_positions)
        return self._call(tokens, start, end, logits_positions)

    def _feed_ragged(self, tokens: Optional[torch.Tensor], logits_positions: int,
                     inputs_embeds: Optional[torch.Tensor]) -> torch.Tensor:
        """:meth:`_feed` for ragged rows: the new positions go to the next common slots (after a compaction
        when they would not fit), each row's position ids continuing its own."""
        count = 1 if tokens is None else tokens.shape[1]
        if self.fed_length + count + self._offset > self._width:
            raise ValueError(f"cannot feed position {self.fed_length + count - 1}: this runner was built for "
                             f"sequences of at most {self.max_length} tokens")
        self._make_room(count)
        if self._row_lengths is None:  # the compaction evened the rows out
            return self._feed(tokens, logits_positions, inputs_embeds)
        start = self._slots
        end = start + count
        if inputs_embeds is not None:
            logits = self._call(None, start, end, inputs_embeds=inputs_embeds)
        elif self._all_ids is not None:
            self._all_ids = torch.cat([self._all_ids, tokens], dim=1)
            logits = self._call(self._all_ids, 0, end, logits_positions)
        else:
            logits = self._call(tokens, start, end, logits_positions)
        self._row_lengths = [length + count for length in self._row_lengths]
        self.fed_length += count
        for runs in self._runs:
            if runs and runs[-1][1] == start:
                runs[-1][1] = end
            else:
                runs.append([start, end])
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        if self.past_key_values is not None:
            self.past_key_values = _reorder_cache(self.model, self.past_key_values, index)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids.index_select(0, index)
        if self._row_lengths is not None:  # the tables differ per row only when ragged
            table_index = index.to(self._device)
            self._mask = self._mask.index_select(0, table_index)
            self._set_positions(self._positions.index_select(0, table_index))
            if self._token_types is not None:
                self._token_types = self._token_types.index_select(0, table_index)
            if self._future_position is not None:
                self._future_position = self._future_position.index_select(0, table_index)
            sources = index.tolist()
            self._row_lengths = [self._row_lengths[source] for source in sources]
            self._runs = [[list(run) for run in self._runs[source]] for source in sources]
            self.fed_length = max(self._row_lengths)

    @property
    def can_crop(self) -> bool:
        return self.past_key_values is None or _compat.can_crop_cache(self.past_key_values)

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        """Forget every fed position from ``lengths`` on: an int, or a ``[rows]`` integer tensor (row ``r`` keeps
        its first ``lengths[r]`` positions; the rows may then differ, see the class docstring).

        Raises:
            ValueError: ``lengths`` is not an int or ``[rows]`` integers, or exceeds a row's fed length or is
                negative; the cache cannot be cropped (sliding-window layers); rows would differ and the cache
                or the model cannot hold per-row lengths.
        """
        fed = self._row_lengths if self._row_lengths is not None else [self.fed_length] * self.rows
        lengths = _crop_lengths(lengths, fed)
        if self.past_key_values is not None and not self.can_crop:
            raise ValueError("this cache cannot be cropped (a sliding-window layer forgets what leaves its "
                             "window)")
        if lengths == fed:  # every row keeps all it was fed (every draft accepted)
            return
        if self._row_lengths is None and min(lengths) == max(lengths):
            self._crop_common(lengths[0])
        else:
            self._crop_rows(lengths)

    def _crop_common(self, length: int) -> None:
        """Crop every row to ``length`` while no row has holes: the cache is cut there."""
        if length == self.fed_length:
            return
        if self.past_key_values is not None:
            _compat.crop_cache(self.past_key_values, length + self._offset)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids[:, :length]
        self.fed_length = length
        if length + self._offset < self._model_prompt_length:
            # Back into the prompt: the next positions are new tokens, not the prompt's padding or positions.
            self._slots = length + self._offset
            self._refresh_free_slots()

    # --- per-row lengths (see the class docstring) -----------------------------------------------------------

    def _refusal_of_rows(self) -> Optional[str]:
        """Why this runner cannot give its rows lengths of their own, or None."""
        cache = self.past_key_values
        if cache is not None and _slot_storage(cache) is None:
            return (f"this runner cannot crop the rows of a {type(cache).__name__} to different lengths (per-row "
                    "lengths need a DynamicCache, turbogen's StaticKVCache or transformers' StaticCache of "
                    "full-attention layers); crop to one common length")
        if self._positions is None and not self._accepts_positions:
            return (f"{type(self.model).__name__} takes no `position_ids`, which per-row lengths need; crop to one "
                    "common length")
        return None

    def _become_ragged(self) -> None:
        """Enter per-row mode: the mask and position tables exist, every slot in use holds its row's position."""
        refusal = self._refusal_of_rows()
        if refusal is not None:
            raise ValueError(f"`lengths` differ across rows: {refusal}")
        width = self._table_width
        if self._mask is None:
            self._mask = torch.ones(self.rows, width, dtype=self._mask_dtype, device=self._device)
        if self._positions is None:
            self._set_positions(_compat.position_ids_from_attention_mask(self._mask))
        self._slot_numbers = torch.arange(width, device=self._device)
        self._slots = self.fed_length + self._offset
        self._row_lengths = [self.fed_length] * self.rows
        self._runs = [[[0, self._slots]] if self._slots else [] for _ in range(self.rows)]
        self._limit = width
        self._capacity = None if self.past_key_values is None else _slot_capacity(self.past_key_values)

    def _crop_rows(self, lengths: list[int]) -> None:
        """Row ``r`` keeps its first ``lengths[r]`` positions (checked): its later slots become holes, and the
        cache is cut after the last slot any row keeps."""
        if self._row_lengths is None:
            self._become_ragged()
        slots = self._slots
        # Row r keeps its runs up to its keep-th slot; every slot from the one after on is (now) a hole.
        cuts = []
        for runs, length in zip(self._runs, lengths):
            keep = length + self._offset
            for run_index, (start, end) in enumerate(runs):
                if end - start >= keep:
                    del runs[run_index + 1:]
                    if keep:
                        runs[run_index][1] = start + keep
                    else:
                        del runs[run_index:]
                    break
                keep -= end - start
            cuts.append(runs[-1][1] if runs else 0)
        if min(cuts) < slots:
            cut = torch.tensor(cuts, device=self._device)
            self._mask[:, :slots].masked_fill_(self._slot_numbers[:slots] >= cut[:, None], 0)
        used = max(cuts)
        if used < slots:
            self._cut_slots(used, slots)
        self._row_lengths = list(lengths)
        self.fed_length = max(lengths)
        self._refresh_free_slots()
        self._even_out()

    def _cut_slots(self, used: int, slots: int) -> None:
        """Forget the cache's slots from ``used`` on (no row keeps any of them)."""
        if self.past_key_values is not None:
            if type(self.past_key_values) is StaticKVCache:
                self.past_key_values.truncate_(used, slots)
            else:
                _compat.crop_cache(self.past_key_values, used, current=slots)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids[:, :used]
        self._slots = used

    def _refresh_free_slots(self) -> None:
        """The tables from the first free slot on: ones in the mask (held), each row's next positions (its
        count of unmasked slots so far, on; or the last user position), the last token type."""
        slots, width = self._slots, self._table_width
        if self._mask is not None:
            self._mask[:, slots:] = 1
        if self._positions is not None:
            if self._future_position is not None:
                self._positions[:, slots:] = self._future_position
            else:
                count = (self._mask[:, :slots] != 0).sum(1, keepdim=True) if self._mask is not None else slots
                self._positions[:, slots:] = torch.arange(width - slots, device=self._device) + count
            self._positions_by_step[slots:] = self._positions[:, slots:].t().unsqueeze(-1)
        if self._token_types is not None:
            self._token_types[:, slots:] = self._token_types[:, -1:].clone()

    def _even_out(self) -> None:
        """Back to common lengths when no row has a hole left: every row's length is the slots in use (a row holds
        as many slots as its length, all of them before the slots in use end)."""
        if any(length + self._offset != self._slots for length in self._row_lengths):
            return
        self.fed_length = self._slots - self._offset
        self._row_lengths = self._runs = self._slot_numbers = None
        self._limit = self._width
        if self._shared_mask_is_none:
            self._mask = None
        if self._shared_positions_are_none:
            self._positions = self._positions_by_step = None

    def _make_room(self, count: int) -> None:
        """Make ``count`` more slots usable for ragged rows: compact (see the class docstring) when a
        fixed-capacity cache would overflow, or a growing one would hold over twice the longest row's slots
        and more than the width it was built for; grow the tables when they are too narrow."""
        need = self._slots + count
        longest = self.fed_length + self._offset + count
        capacity = self._capacity
        if need > (capacity if capacity is not None else max(2 * longest, self._width)):
            self._compact()
            if self._row_lengths is None:
                return
            need = self._slots + count
        if capacity is not None and need > capacity:
            raise ValueError(f"cannot feed {count} more positions: the cache holds {capacity} per row and its "
                             f"longest row needs {need}")
        if need > self._table_width:
            self._grow_tables(need)

    def _compact(self) -> None:
        """Move every row's kept slots to the front, in order, in the cache and the tables (one gather each);
        the rows shorter than the longest keep holes at their end."""
        slots = self._slots
        length = self.fed_length + self._offset  # the longest row's slots
        # Each row's kept slots in order, then slot 0 for the holes at its end (a written slot: gathering it reads
        # real data, which transformers 4.57's static layers count as cached).
        index = []
        for runs in self._runs:
            row = [slot for start, end in runs for slot in range(start, end)]
            index.append(row + [0] * (length - len(row)))
        index = torch.tensor(index, dtype=torch.int64, device=self._device).reshape(self.rows, length)
        held = (torch.arange(length, device=self._device)
                < torch.tensor(self._row_lengths, device=self._device)[:, None] + self._offset)
        cache = self.past_key_values
        storage = None if cache is None else _slot_storage(cache)
        if storage is not None and storage[0] == "static":
            for tensor, dim in storage[1]:
                tensor.narrow(dim, 0, length).copy_(_gather_slots(tensor, dim, index.to(tensor.device), slots))
            self._cut_slots(length, slots)
        elif storage is not None:  # a DynamicCache: its tensors are replaced (4.45's lists or the layers')
            _compat.replace_dynamic_cache_tensors(cache, lambda tensor: _gather_slots(
                tensor, 2, index.to(tensor.device), slots) if tensor.dim() == 4 else tensor)
        if self._all_ids is not None:
            self._all_ids = self._all_ids.gather(1, index.to(self._all_ids.device))
        self._mask[:, :length] = self._mask[:, :slots].gather(1, index).masked_fill_(~held, 0)
        self._runs = [[[0, row_length + self._offset]] if row_length + self._offset else []
                      for row_length in self._row_lengths]
        self._positions[:, :length] = self._positions[:, :slots].gather(1, index)
        self._positions_by_step[:length] = self._positions[:, :length].t().unsqueeze(-1)
        if self._token_types is not None:
            self._token_types[:, :length] = self._token_types[:, :slots].gather(1, index)
        self._slots = length
        self._refresh_free_slots()
        self._even_out()

    def _grow_tables(self, need: int) -> None:
        """Widen the mask, position, token-type and slot tables to at least ``need`` slots (doubling)."""
        old = self._table_width
        width = max(2 * old, need)
        extra = width - old

        def widen(table: torch.Tensor) -> torch.Tensor:
            return torch.cat([table, table[:, -1:].expand(table.shape[0], extra)], dim=1)

        self._mask = widen(self._mask)
        self._slot_numbers = torch.arange(width, device=self._device)
        self._positions = widen(self._positions)
        self._positions_by_step = torch.cat(
            [self._positions_by_step, self._positions_by_step.new_zeros(extra, self.rows, 1)], dim=0)
        if self._token_types is not None:
            self._token_types = widen(self._token_types)
        if self._cache_positions is not None:
            self._cache_positions = torch.arange(width, device=self._cache_positions.device)
        self._table_width = self._limit = width
        self._refresh_free_slots()


def has_sliding_window(model: Any) -> bool:
    """Whether some attention layer of ``model`` only sees a window of recent positions."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return any("sliding" in str(kind) or "chunked" in str(kind) for kind in layer_types)
    return (getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
            is not False)


class PreparedRunner:
    """For models that override ``prepare_inputs_for_generation`` (their inputs may differ from the generic
    ones): every call goes through the model's own ``prepare_inputs_for_generation`` and
    ``_update_model_kwargs_for_generation``, exactly as transformers' loop does. One token per row per call:
    :meth:`verify` and :meth:`crop` raise ``ValueError``."""

    can_crop = False

    def __init__(self, model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                 record: Record):
        self.model = model
        self.record = record
        self._ids = input_ids
        self._kwargs = dict(model_kwargs)
        self._kwargs["use_cache"] = bool(use_cache)
        if cache is not None:
            self._kwargs["past_key_values"] = cache
        keep = _compat.logits_to_keep_name(forward_parameters(model))  # 4.45: num_logits_to_keep
        if keep is not None and keep not in self._kwargs:
            self._kwargs[keep] = 1
        self._cached_at_prefill = 0 if cache is None else int(cache.get_seq_length())
        self.fed_length = self._cached_at_prefill
        self._encoder_decoder = is_encoder_decoder(model)
        self._cross_rows = _CrossAttentionRows()
        # An encoder-decoder's `attention_mask` is the encoder's: no positions derive from it.
        _compat.start_prepared_inputs(self._kwargs, input_ids, self._cached_at_prefill,
                                      accepts_position_ids=accepts(model, "position_ids")
                                      and not self._encoder_decoder)

    @property
    def past_key_values(self) -> Any:
        return self._kwargs.get("past_key_values")

    @past_key_values.setter
    def past_key_values(self, value: Any) -> None:
        self._kwargs["past_key_values"] = value

    def _step(self, prefill_cached_length: Optional[int] = None) -> torch.Tensor:
        inputs = _compat.prepare_inputs(self.model, self._ids, self._kwargs, prefill_cached_length)
        outputs = self.model(**inputs, return_dict=True)
        self._kwargs = self.model._update_model_kwargs_for_generation(
            outputs, self._kwargs, is_encoder_decoder=self._encoder_decoder)
        self.record.model_outputs(outputs)
        self.fed_length = self._ids.shape[1]
        return _last_logits(outputs)

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._step(prefill_cached_length=self._cached_at_prefill)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self._ids = torch.cat([self._ids, tokens[:, None]], dim=1)
        return self._step()

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        raise ValueError("verify (several tokens per row in one call) is not supported for models with their own "
                         "`prepare_inputs_for_generation`, which prepares one new token per step")

    def reorder(self, index: torch.Tensor) -> None:
        self._ids = self._ids.index_select(0, index)
        self._reorder_cache(index)

    def _reorder_cache(self, index: torch.Tensor) -> None:
        if self.past_key_values is None:
            return
        if self._encoder_decoder and _reorder_self_attention_only(self.model, self.past_key_values, index,
                                                                   self._cross_rows):
            return
        self.past_key_values = _reorder_cache(self.model, self.past_key_values, index)

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        raise ValueError("this runner cannot crop: the model's own input preparation tracks the cache itself")


class _CrossAttentionRows:
    """Which rows of an ``EncoderDecoderCache``'s cross-attention part hold bit-identical keys and values.

    Beam search keeps ``num_beams`` rows per input, all attending to the same encoder output, and reorders rows
    only among one input's beams; the cross-attention cache, written once by the first decoder call and never
    again, then holds the same bits in all of them, so gathering it changes nothing. Whether it does is checked,
    not assumed: once, the rows are split into runs of consecutive rows whose cross-attention keys and values are
    bitwise equal (``groups``); a reorder whose every row takes its source from its own run can skip them."""

    def __init__(self):
        self.groups: Optional[torch.Tensor] = None
        # The cross-attention cache and its layers' (keys, values) when `_tensors` was computed from them.
        self._held: Optional[tuple] = None
        self._tensors: Optional[list] = None

    def tensors(self, cross_cache: Any) -> Optional[list]:
        """:func:`_layer_tensors` of ``cross_cache``, computed again only when it or its layers' key and value
        tensors are other objects than at the last call (the cross-attention cache is written once, by the first
        decoder call: beam search's later steps skip the checks); ``groups`` are then computed again too."""
        layers = getattr(cross_cache, "layers", None)
        if layers is None:
            return _layer_tensors(cross_cache)
        held = (cross_cache, *(item for layer in layers
                               for item in (getattr(layer, "keys", None), getattr(layer, "values", None))))
        if self._held is None or len(held) != len(self._held) or any(
                new is not old for new, old in zip(held, self._held)):
            self._tensors, self._held, self.groups = _layer_tensors(cross_cache), held, None
        return self._tensors

    def unchanged_by(self, cross_tensors: list, index: torch.Tensor) -> bool:
        """Whether reordering ``cross_tensors`` (every layer's cross-attention keys and values, rows first) by
        ``index`` leaves their bits unchanged."""
        if not cross_tensors:
            return False
        rows = cross_tensors[0].shape[0]
        if self.groups is None or self.groups.shape[0] != rows:
            self.groups = _equal_row_runs(cross_tensors)
        groups = self.groups.to(index.device)
        return bool(torch.equal(groups.index_select(0, index), groups))


_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _equal_row_runs(tensors: list) -> torch.Tensor:
    """``[rows]`` int64: a run number per row, equal for consecutive rows whose data is bitwise equal in every one of
    ``tensors`` (compared as integers of the same width, so that -0.0 and 0.0, or two NaNs, are told apart as
    their bits are)."""
    rows = tensors[0].shape[0]
    same_as_previous = torch.ones(max(rows - 1, 0), dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        bits = tensor.view(_SAME_SIZE_INTEGER[tensor.element_size()]) if tensor.is_floating_point() else tensor
        same_as_previous &= (bits[1:] == bits[:-1]).reshape(rows - 1, -1).all(dim=1).to(same_as_previous.device)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64, device=same_as_previous.device),
                        (~same_as_previous).long()])
    return starts.cumsum(0).cpu()


def _reorder_self_attention_only(model: Any, cache: Any, index: torch.Tensor,
                                 cross_rows: "_CrossAttentionRows") -> bool:
    """Reorder ``cache`` (an ``EncoderDecoderCache`` that :func:`_reorder_cache` would gather in place) by
    ``index`` without gathering its cross-attention part, when ``cross_rows`` shows that gathering it would change
    no bit. Returns whether it did; ``False``: nothing was done (the caller reorders the whole cache)."""
    if _compat.model_reorder_cache(model) is not None or not _is_transformers(cache, ("EncoderDecoderCache",)):
        return False
    self_tensors = _layer_tensors(cache.self_attention_cache)
    cross_tensors = cross_rows.tensors(cache.cross_attention_cache)
    if self_tensors is None or cross_tensors is None or index.dim() != 1:
        return False
    if any(tensor.shape[0] != index.shape[0] for tensor in self_tensors + cross_tensors):
        return False
    if not cross_rows.unchanged_by(cross_tensors, index):
        return False
    reorder_rows_(self_tensors, 0, index)
    return True


@dataclasses.dataclass(frozen=True)
class StockDecoderStep:
    """What one major version of transformers' generic ``prepare_inputs_for_generation`` passes an
    encoder-decoder's decoding step, for :class:`StockEncoderDecoderRunner` (one row per version below).

    Attributes:
        per_step_inputs: model keywords from which the preparation computes per-step inputs (positions, masks,
            grown token types): calls with any of them take the general runner.
        not_forwarded: the preparation's named parameters and the keywords it pops or never forwards.
        passes_cache_position: whether the step gets ``cache_position`` (``[fed_length]``).
        serves_compileable_caches: whether the plain inputs serve a compileable cache (5.x builds a 4D decoder
            mask per step for one).
        serves_hub_code: whether the plain inputs serve a model run from Hub code (5.x adds a ``cache_position``).
        whisper_is_generic: whether Whisper's override counts as the generic preparation (5.x's only adds
            ``decoder_position_ids`` derived from a ``decoder_attention_mask``, which this runner never has).
        later_steps_drop_encoder_inputs: whether the encoder-side inputs (``input_features``, ``pixel_values``...)
            reach the first call only.
        moves_inputs_to_model_device: whether every tensor moves to the model's device when the new tokens are
            elsewhere.
    """

    per_step_inputs: tuple[str, ...]
    not_forwarded: tuple[str, ...]
    passes_cache_position: bool
    serves_compileable_caches: bool
    serves_hub_code: bool
    whisper_is_generic: bool
    later_steps_drop_encoder_inputs: bool
    moves_inputs_to_model_device: bool


_STOCK_DECODER_STEP_4_57 = StockDecoderStep(
    per_step_inputs=("decoder_attention_mask", "decoder_position_ids", "token_type_ids", "position_ids",
                     "decoder_inputs_embeds", "inputs_embeds"),
    not_forwarded=("input_ids", "past_key_values", "attention_mask", "inputs_embeds", "cache_position", "labels"),
    passes_cache_position=True, serves_compileable_caches=True, serves_hub_code=True, whisper_is_generic=False,
    later_steps_drop_encoder_inputs=False, moves_inputs_to_model_device=False)

_STOCK_DECODER_STEP_5 = StockDecoderStep(
    per_step_inputs=_STOCK_DECODER_STEP_4_57.per_step_inputs + ("mm_token_type_ids", "moe_mm_token_type_ids"),
    not_forwarded=("input_ids", "next_sequence_length", "past_key_values", "attention_mask", "inputs_embeds",
                   "is_first_iteration", "labels", "decoder_attention_mask", "decoder_position_ids",
                   "token_type_ids", "mm_token_type_ids", "moe_mm_token_type_ids"),
    passes_cache_position=False, serves_compileable_caches=False, serves_hub_code=False, whisper_is_generic=True,
    later_steps_drop_encoder_inputs=True, moves_inputs_to_model_device=True)


def installed_stock_decoder_step() -> Optional[StockDecoderStep]:
    """The row of the installed transformers (None for 4.45, whose preparation is not reproduced)."""
    if _compat.is_transformers_4_45():
        return None
    return _STOCK_DECODER_STEP_5 if _compat._is_transformers_5() else _STOCK_DECODER_STEP_4_57


class StockEncoderDecoderRunner(PreparedRunner):
    """An encoder-decoder whose model uses the installed transformers' (4.57 or 5.x) generic
    ``prepare_inputs_for_generation``, over a cache, without the inputs from which that preparation computes
    per-step ones (:class:`StockDecoderStep`): what it passes a decoding step is then fixed, so this runner builds
    it directly instead of calling the preparation and ``_update_model_kwargs_for_generation`` at every step.

    The prefill goes through the model's own preparation (as :class:`PreparedRunner`). Each decoding step then
    calls the model with exactly what the preparation would pass: ``decoder_input_ids`` the new tokens
    ``[rows, 1]``, ``cache_position`` ``[fed_length]`` where the version passes it, the cache, the encoder's
    ``attention_mask`` when there is one, and every other model keyword (``encoder_outputs``, ``use_cache``,
    output flags...) except those the version does not forward; where the version moves tensors to the model's
    device, so does the runner. The decoder ids so far are not kept (nothing reads them)."""

    @classmethod
    def applies(cls, model: Any, model_kwargs: dict, cache: Any, use_cache: bool) -> bool:
        """Whether this runner reproduces the installed preparation for this call (else :class:`PreparedRunner`)."""
        step = installed_stock_decoder_step()
        if step is None or not use_cache or cache is None:
            return False
        if _compat.prepares_own_inputs(model) and not (step.whisper_is_generic
                                                      and _compat.is_whisper_preparation_v5(model)):
            return False
        if not step.serves_compileable_caches and getattr(cache, "is_compileable", False):
            return False
        if not step.serves_hub_code and _compat.is_remote_code_model(model):
            return False
        return (not _compat.updates_own_model_kwargs(model)
                and all(model_kwargs.get(name) is None for name in step.per_step_inputs))

    def __init__(self, model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                 record: Record):
        super().__init__(model, input_ids, model_kwargs, cache, use_cache, record)
        self._rules = installed_stock_decoder_step()
        self._model_device = getattr(model, "device", None)
        self._fixed_inputs: Optional[dict] = None
        # Cache positions, sliced one per step: `_positions[i]` is position `_positions_start + i`.
        self._positions = torch.empty(0, dtype=torch.int64)
        self._positions_start = 0

    def _not_forwarded(self) -> frozenset:
        """The model keywords the preparation does not forward to a decoding step."""
        dropped = _compat.inputs_dropped_after_prefill() if self._rules.later_steps_drop_encoder_inputs else ()
        return frozenset(self._rules.not_forwarded + tuple(dropped))

    def _decode_inputs(self) -> dict:
        """The step's model inputs other than the new tokens and the cache position (built after the prefill)."""
        if self._fixed_inputs is None:
            kwargs = self._kwargs
            inputs = {"past_key_values": kwargs.get("past_key_values")}
            if kwargs.get("attention_mask") is not None:
                inputs["attention_mask"] = kwargs["attention_mask"]
            not_forwarded = self._not_forwarded()
            inputs.update((key, value) for key, value in kwargs.items() if key not in not_forwarded)
            self._fixed_inputs = inputs
            if "cache_position" in kwargs:
                self._positions = self._positions.to(kwargs["cache_position"].device)
        return self._fixed_inputs

    def _cache_position(self) -> torch.Tensor:
        """``[fed_length]``, a slice of a table built once per ``_POSITIONS_PER_TABLE`` steps."""
        offset = self.fed_length - self._positions_start
        if not 0 <= offset < self._positions.shape[0]:
            self._positions_start, offset = self.fed_length, 0
            self._positions = torch.arange(self.fed_length, self.fed_length + self._POSITIONS_PER_TABLE,
                                           device=self._positions.device)
        return self._positions[offset:offset + 1]

    _POSITIONS_PER_TABLE = 1024

    def _step_inputs(self, tokens: torch.Tensor) -> dict:
        """The model inputs of the decoding step feeding ``tokens`` ``[rows]``."""
        inputs = self._decode_inputs()
        inputs["decoder_input_ids"] = tokens.reshape(-1, 1)
        if self._rules.passes_cache_position:
            inputs["cache_position"] = self._cache_position()
        device = self._model_device
        if (self._rules.moves_inputs_to_model_device and device is not None and device.type != "meta"
                and tokens.device != device):
            return _compat.move_inputs_to_device(inputs, device)
        return inputs

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        inputs = self._step_inputs(tokens)
        outputs = self.model(**inputs, return_dict=True)
        if getattr(outputs, "past_key_values", None) is not None:
            self._fixed_inputs["past_key_values"] = self._kwargs["past_key_values"] = outputs.past_key_values
        self.record.model_outputs(outputs)
        self.fed_length += 1
        return _last_logits(outputs)

    def reorder(self, index: torch.Tensor) -> None:
        if self._fixed_inputs is None:  # still before the first decoding step: the ids are the preparation's input
            self._ids = self._ids.index_select(0, index)
        self._reorder_cache(index)
        if self._fixed_inputs is not None and self.past_key_values is not self._fixed_inputs["past_key_values"]:
            self._fixed_inputs["past_key_values"] = self.past_key_values


