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

from typing import Any, Optional, Protocol, Union, runtime_checkable

import torch

from .. import _transformers_compat as _compat
from ..cache.static import reorder_rows_
from ..errors import UnsupportedByTurbogen
from .prepare import accepts, forward_parameters, is_encoder_decoder
from .record import Record

__all__ = ["DirectRunner", "ModelRunner", "PreparedRunner", "make_runner"]


@runtime_checkable
class ModelRunner(Protocol):
    """What the decode loops need from a model over a cache.

    ``fed_length`` is the number of sequence positions fed so far (after :meth:`prefill`, the prompt's length;
    during decoding, the sequence length minus one, as the last chosen token is fed by the next call).
    Logits are float32 with contiguous rows; every call records the model's optional outputs.
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
        """Feed one token per row (``[rows]``) at position ``fed_length``; ``[rows, vocab]`` logits."""

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``k + 1`` tokens per row (``[rows, k + 1]``) at positions ``fed_length ... fed_length + k``;
        ``[rows, k + 1, vocab]`` logits, position ``i`` predicting the token after ``tokens[:, i]``."""

    def reorder(self, index: torch.Tensor) -> None:
        """Make row ``r`` what row ``index[r]`` was (beam search)."""

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        """Forget every fed position from ``lengths`` on: an int, or ``[rows]`` int64 (per-row lengths; a
        runner whose cache cannot hold rows of different lengths raises ``ValueError`` unless they agree)."""


def make_runner(model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                max_length: int, record: Record) -> ModelRunner:
    """The runner for ``model``: :class:`DirectRunner` for decoder-only models using transformers' generic input
    preparation, else (a model's own preparation, or an encoder-decoder) :class:`PreparedRunner`. ``input_ids`` is the prompt, ``max_length`` the longest
    sequence the runner will be fed (prompt included).

    Besides model inputs, ``model_kwargs`` may hold ``inputs_embeds`` (fed in place of the prompt's ids at the
    prefill: see :class:`DirectRunner`) and ``prefill_chunk_size`` (a generation option, not a model input:
    the prefill runs in chunks of that many positions); :class:`PreparedRunner` refuses both with
    :class:`~turbogen.errors.UnsupportedByTurbogen`."""
    from transformers.generation.utils import GenerationMixin

    if is_encoder_decoder(model):
        # The decoder's inputs (decoder ids, masks, encoder outputs, the two-part cache) follow transformers'
        # own preparation step by step; the encoder ran once in `prepare_call`.
        return PreparedRunner(model, input_ids, model_kwargs, cache, use_cache, record)
    own_preparation = getattr(type(model), "prepare_inputs_for_generation", None)
    if own_preparation is not None and own_preparation is not GenerationMixin.prepare_inputs_for_generation:
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


def _common_length(lengths: Union[int, torch.Tensor], rows: int) -> int:
    """``lengths`` as one int: an int, a 0-d tensor, or ``[rows]`` values that all agree."""
    if not isinstance(lengths, torch.Tensor):
        return int(lengths)
    if lengths.dim() == 0:
        return int(lengths)
    if lengths.shape != (rows,):
        raise ValueError(f"`lengths` must be an int or a tensor of shape [{rows}], got shape {tuple(lengths.shape)}")
    low, high = torch.stack(torch.aminmax(lengths)).tolist()
    if low != high:
        raise ValueError(f"`lengths` differ across rows ({low} to {high}): this runner's cache keeps one length "
                         "for every row, so per-row cropping is not supported (crop to one common length).")
    return int(low)


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
    if hasattr(model, "_reorder_cache"):
        return model._reorder_cache(cache, index)
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
        width = max_length + self._offset  # model positions
        self._width = width
        if cache is None and (self._embeds is not None or user_positions is not None or self._chunk_size):
            which = ("`inputs_embeds`" if self._embeds is not None
                     else "`position_ids`" if user_positions is not None else "`prefill_chunk_size`")
            raise ValueError(f"{which} needs a KV cache (`use_cache=True`)")
        self._constant_kwargs = {"use_cache": self.use_cache, **kwargs}
        # Only the positions whose logits are used are computed, when the model allows choosing them.
        self._keeps_logits = "logits_to_keep" in parameters and "logits_to_keep" not in kwargs
        if self._keeps_logits:
            self._constant_kwargs["logits_to_keep"] = 1

        self._mask = None
        if prompt_mask is not None:
            self._mask = torch.ones(rows, width, dtype=prompt_mask.dtype, device=device)
            self._mask[:, :model_prompt_length] = prompt_mask
        self._positions = None  # [rows, width]
        self._positions_by_step = None  # [width, rows, 1]: contiguous per-step slices
        self._accepts_positions = "position_ids" in parameters
        positions = None
        if user_positions is not None:
            positions = self._user_position_table(user_positions, rows, model_prompt_length, width)
        elif self._accepts_positions and self._mask is not None:
            positions = _compat.position_ids_from_attention_mask(self._mask)
        if positions is not None:
            self._positions = positions
            self._positions_by_step = positions.t().contiguous().unsqueeze(-1)
        if self._mask is not None and _mask_is_redundant(prompt_mask, cache):
            self._mask = None
        self._token_types = None
        if token_type_ids is not None:
            self._token_types = torch.cat(
                [token_type_ids, token_type_ids[:, -1:].expand(rows, width - token_type_ids.shape[1])], dim=1)
        self._cache_positions = torch.arange(width, device=device) if "cache_position" in parameters else None
        # Without a cache every call re-runs the whole sequence, which this copy tracks.
        self._all_ids = None if self.use_cache else input_ids

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

    def _call(self, input_ids: Optional[torch.Tensor], start: int, end: int, logits_positions: int = 1, *,
              inputs_embeds: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
              record: bool = True) -> torch.Tensor:
        """Run the model on model positions ``[start, end)`` (sequence positions plus the embeddings' offset),
        ``input_ids`` (or ``inputs_embeds``) holding exactly those; the logits of the last ``logits_positions``
        positions. ``position_ids`` replaces the table's; ``record=False`` keeps the outputs unrecorded."""
        if end > self._width:
            raise ValueError(f"cannot feed position {end - 1 - self._offset}: this runner was built for "
                             f"sequences of at most {self.max_length} tokens")
        kwargs = dict(self._constant_kwargs)
        if self._keeps_logits and logits_positions != 1:
            kwargs["logits_to_keep"] = logits_positions
        if self._mask is not None:
            kwargs["attention_mask"] = self._mask[:, :end]
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
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
        else:
            outputs = self.model(input_ids=input_ids, return_dict=True, **kwargs)
        if self.use_cache:  # the model may have created the cache itself
            self.past_key_values = getattr(outputs, "past_key_values", self.past_key_values)
        if record:
            self.record.model_outputs(outputs)
        self.fed_length = end - self._offset
        return _last_logits(outputs, logits_positions)

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
            start = self.fed_length + self._offset
            return self._call(None, start, start + 1, inputs_embeds=self._embeds)
        return self._feed(tokens[:, None])

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"`tokens` must have shape [rows, k + 1], got {tuple(tokens.shape)}")
        logits = self._feed(tokens, logits_positions=tokens.shape[1])
        return logits if tokens.shape[1] != 1 else logits[:, None, :]

    def _feed(self, tokens: torch.Tensor, logits_positions: int = 1) -> torch.Tensor:
        start = self.fed_length + self._offset
        end = start + tokens.shape[1]
        if self._all_ids is not None:
            self._all_ids = torch.cat([self._all_ids, tokens], dim=1)
            return self._call(self._all_ids, 0, end, logits_positions)
        return self._call(tokens, start, end, logits_positions)

    def reorder(self, index: torch.Tensor) -> None:
        if self.past_key_values is not None:
            self.past_key_values = _reorder_cache(self.model, self.past_key_values, index)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids.index_select(0, index)

    @property
    def can_crop(self) -> bool:
        return self.past_key_values is None or _compat.can_crop_cache(self.past_key_values)

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        length = _common_length(lengths, self.rows)
        if self.past_key_values is not None:
            if not self.can_crop:
                raise ValueError("this cache cannot be cropped (a sliding-window layer forgets what leaves its "
                                 "window)")
            _compat.crop_cache(self.past_key_values, length + self._offset)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids[:, :length]
        self.fed_length = min(self.fed_length, length)


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
        if "logits_to_keep" in forward_parameters(model) and "logits_to_keep" not in self._kwargs:
            self._kwargs["logits_to_keep"] = 1
        self._cached_at_prefill = 0 if cache is None else int(cache.get_seq_length())
        self.fed_length = self._cached_at_prefill
        self._encoder_decoder = is_encoder_decoder(model)
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
        if self.past_key_values is not None:
            self.past_key_values = _reorder_cache(self.model, self.past_key_values, index)

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        raise ValueError("this runner cannot crop: the model's own input preparation tracks the cache itself")
