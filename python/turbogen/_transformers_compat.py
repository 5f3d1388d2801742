"""What differs between the transformers releases turbogen works with (4.57 and 5.x), in one place.

transformers 4.57 is turbogen's behavioural spec. transformers 5 changed some of the interfaces turbogen
uses; each function here absorbs one such change, so that the rest of the package keeps a single code path
with 4.57's meaning:

- ``GenerationConfig``: in 5.x every parameter defaults to ``None``, meaning "not set"; ``generate()`` then
  takes it from the model's generation config, else from global defaults (the same values as 4.57's
  defaults, ``None`` standing for ``False`` where 4.57 has no global default). 4.57 stores its defaults
  and treats ``None`` as a value (``top_k=None`` disables top-k). :func:`generation_config_attributes`
  reads either as 4.57 values.
- The loop of a model that prepares its own inputs (``prepare_inputs_for_generation``): 4.57's generate
  tracks a ``cache_position`` kwarg, which selects the new tokens and which ``_update_model_kwargs_for_generation``
  advances, and lets ``prepare_inputs_for_generation`` derive ``position_ids`` from the attention mask. 5.x
  dropped ``cache_position``: generate passes ``position_ids`` (advanced by ``_update_model_kwargs_for_generation``)
  and tells ``prepare_inputs_for_generation`` how many tokens are new (``next_sequence_length``) and whether
  this is the prefill (``is_first_iteration``). :func:`start_prepared_inputs` and :func:`prepare_inputs`
  follow whichever protocol is installed.
- New parameters: 5.x added generation parameters turbogen does not implement; those that change what
  ``generate()`` computes are listed in :data:`UNSUPPORTED_TRANSFORMERS_5_PARAMETERS`, and ``generate()``
  refuses them rather than ignoring them.
- The legacy cache format (a tuple of ``(keys, values)`` per layer): 4.57 converts with
  ``DynamicCache.from_legacy_cache`` / ``to_legacy_cache``, 5.x removed both. :func:`dynamic_cache_from_legacy`
  and :func:`legacy_cache` convert in either.
- ``Cache.crop``: 4.57 takes the length to keep (or, if negative, how many positions to drop); 5.x takes
  only the negative form and raises for a positive one. :func:`crop_cache` uses the form both accept.
- ``StaticCache``'s full-attention layers (``StaticLayer``): 4.57 writes at ``cache_position`` and counts the
  cached length as the non-zero slots of row 0, but its layers have no ``crop``; 5.x writes at its own
  ``cumulative_length`` (ignoring ``cache_position``) and marks the layers not croppable. Both are cropped
  the same way by zeroing the dropped slots (and, in 5.x, setting ``cumulative_length``):
  :func:`can_crop_cache`, :func:`crop_cache` and :func:`full_static_cache_layers`.

Importing this module does not import transformers: the version is read from ``sys.modules`` (an object can
only come from transformers if transformers was imported already), and the two functions that build or
inspect transformers caches import it when called.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

import torch

__all__ = [
    "TRANSFORMERS_PROCESSORS_MODULE",
    "UNSUPPORTED_TRANSFORMERS_5_PARAMETERS",
    "can_crop_cache",
    "is_transformers_type",
    "is_type_or_transformers_twin",
    "crop_cache",
    "dynamic_cache_from_legacy",
    "full_static_cache_layers",
    "generation_config_attributes",
    "legacy_cache",
    "position_ids_from_attention_mask",
    "prepare_inputs",
    "start_prepared_inputs",
    "transformers_major_version",
]

#: Where transformers' logits processors live (its class of a name stands in for turbogen's of that name).
TRANSFORMERS_PROCESSORS_MODULE = "transformers.generation.logits_process"


def is_transformers_type(instance: Any, module: str, *names: str) -> bool:
    """Whether ``instance``'s type is exactly one of transformers' classes ``names`` defined in ``module`` (not a
    subclass, which may store or compute something else). Compared by name: transformers need not be imported."""
    kind = type(instance)
    return kind.__module__ == module and kind.__name__ in names


def is_type_or_transformers_twin(instance: Any, cls: type, module: str) -> bool:
    """Whether ``instance``'s type is ``cls`` itself or transformers' class of the same name in ``module``."""
    return type(instance) is cls or is_transformers_type(instance, module, cls.__name__)

# Runtime bookkeeping transformers 5 keeps on a GenerationConfig instance, never a parameter.
_V5_RUNTIME_ATTRIBUTES = ("_mask_length",)

#: Generation parameters transformers 5 added that change the output of its ``generate()`` and that turbogen
#: does not implement, with the feature each one turns on. (5.x's other additions, ``max_cache_len`` and
#: ``continuous_batching_config``, only size caches or configure another API, so they are ignored.)
UNSUPPORTED_TRANSFORMERS_5_PARAMETERS = {
    "top_h": "top-H sampling",
    "use_mtp": "multi-token-prediction drafting",
    "speculation_type": "speculative decoding",
    "assistant_ensemble_weight": "assisted generation",
}


def transformers_major_version() -> int | None:
    """The major version of the transformers already imported, or ``None`` when it is not imported."""
    module = sys.modules.get("transformers")
    version = getattr(module, "__version__", None)
    if version is None:
        return None
    match = re.match(r"\d+", version)
    return int(match.group()) if match else None


def _is_transformers_5() -> bool:
    major = transformers_major_version()
    return major is not None and major >= 5


def generation_config_attributes(config: Any) -> dict[str, Any]:
    """The attributes of a ``transformers.GenerationConfig`` as transformers 4.57 values (extras included).

    Under transformers 5 a parameter left at ``None`` is unset; it is left out, so that turbogen's default
    (4.57's, which 5.x's resolution ends at too) applies. Under 4.57 every attribute is kept as is.
    """
    attributes = dict(vars(config))
    if _is_transformers_5():
        attributes = {key: value for key, value in attributes.items()
                      if value is not None and key not in _V5_RUNTIME_ATTRIBUTES}
    return attributes


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``int64`` positions of a left-padded batch, by transformers 4.57's rule: ``cumsum(mask) - 1``, and 1 at
    padding. (5.x puts 0 at padding; either way, only the meaningless outputs at padding positions change.)"""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)


def start_prepared_inputs(model_kwargs: dict, input_ids: torch.Tensor, cached_length: int,
                          accepts_position_ids: bool) -> None:
    """Add to ``model_kwargs``, in place, what the installed transformers' generate sets up before its first
    ``prepare_inputs_for_generation`` call on ``input_ids`` (the whole sequence, whose first ``cached_length``
    positions are already in the cache): 4.57's ``cache_position``, or 5.x's ``position_ids`` when the model
    takes them and an attention mask defines them."""
    if not _is_transformers_5():
        model_kwargs["cache_position"] = torch.arange(cached_length, input_ids.shape[1], device=input_ids.device)
        return
    attention_mask = model_kwargs.get("attention_mask")
    if accepts_position_ids and model_kwargs.get("position_ids") is None and attention_mask is not None:
        model_kwargs["position_ids"] = position_ids_from_attention_mask(attention_mask)


def prepare_inputs(model: Any, input_ids: torch.Tensor, model_kwargs: dict,
                   prefill_cached_length: Optional[int] = None) -> dict:
    """``model.prepare_inputs_for_generation`` called as the installed transformers' decoding loops call it.

    Args:
        input_ids: every token so far.
        model_kwargs: as set up by :func:`start_prepared_inputs`, then updated by the model's
            ``_update_model_kwargs_for_generation`` after each call.
        prefill_cached_length: for the prefill, how many leading positions the cache already holds;
            ``None`` for a decoding step (one new token).
    """
    if not _is_transformers_5():
        return model.prepare_inputs_for_generation(input_ids, **model_kwargs)
    has_cache = model_kwargs.get("past_key_values") is not None
    if prefill_cached_length is not None:
        new_tokens = input_ids.shape[1] - prefill_cached_length if has_cache else None
        return model.prepare_inputs_for_generation(input_ids, next_sequence_length=new_tokens,
                                                   is_first_iteration=True, **model_kwargs)
    new_tokens = 1 if model_kwargs.get("use_cache", True) else None
    return model.prepare_inputs_for_generation(input_ids, next_sequence_length=new_tokens, **model_kwargs)


_CACHE_MODULE = "transformers.cache_utils"


def full_static_cache_layers(cache: Any) -> Optional[list]:
    """The layers of ``cache`` if it is exactly transformers' ``StaticCache`` with only full-attention
    ``StaticLayer`` layers and no offloading (layers hold ``keys`` / ``values`` ``[rows, heads, max_cache_len,
    head_dim]`` once initialised, written in place), else None."""
    if not is_transformers_type(cache, _CACHE_MODULE, "StaticCache") or getattr(cache, "offloading", False):
        return None
    layers = list(getattr(cache, "layers", ()))
    if not layers or not all(is_transformers_type(layer, _CACHE_MODULE, "StaticLayer") for layer in layers):
        return None
    return layers


def can_crop_cache(cache: Any) -> bool:
    """Whether :func:`crop_cache` can always restore ``cache`` to an earlier length. Sliding-window layers
    forget what leaves their window, so in both versions their ``crop`` fails once the window is full.
    transformers' ``StaticCache`` of full-attention layers can (see :func:`crop_cache`), although 4.57's layers
    have no ``crop`` and 5.x's say they are not croppable."""
    if full_static_cache_layers(cache) is not None:
        return True
    return (hasattr(cache, "crop") and getattr(cache, "is_croppable", True)
            and not any(getattr(cache, "is_sliding", ())))


def crop_cache(cache: Any, length: int, current: Optional[int] = None) -> None:
    """Forget every cached position from ``length`` on (nothing happens if the cache is not that long).
    ``current``: the cache's length when the caller knows it (saves a host read).

    transformers' ``StaticCache`` of full-attention layers is cropped here: the slots ``length ... current - 1``
    are zeroed, so that 4.57 (which counts the non-zero slots of row 0 as the length) sees the new length, and
    5.x's ``cumulative_length`` (where its next write goes) is set to ``length``."""
    static_layers = full_static_cache_layers(cache)
    current = int(cache.get_seq_length()) if current is None else current
    if current <= length:
        return
    if static_layers is None:
        cache.crop(length - current)
        return
    for layer in static_layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor) and tensor.dim() == 4:
                tensor[:, :, length:current].zero_()
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
            layer.cumulative_length.fill_(length)


def dynamic_cache_from_legacy(legacy: Any) -> Any:
    """A transformers ``DynamicCache`` holding ``legacy``, a tuple of ``(keys, values)`` per layer. Both versions'
    ``DynamicCache`` take those pairs as their first argument (4.57's ``from_legacy_cache`` does just that)."""
    from transformers import DynamicCache

    return DynamicCache(tuple(legacy))


def legacy_cache(cache: Any) -> Any:
    """``cache`` as a tuple of ``(keys, values)`` per layer if it is a transformers ``DynamicCache`` (what 4.57's
    ``to_legacy_cache`` returns), else ``cache`` unchanged (4.57 converts no other cache)."""
    from transformers import DynamicCache

    if not isinstance(cache, DynamicCache):
        return cache
    return tuple((layer.keys, layer.values) for layer in cache.layers)
