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

transformers 4.45 (the oracle of contrastive search and the other strategies 4.57 moved to the Hub) is supported
too; the helpers in the last section absorb what differs there: ``_supports_default_dynamic_cache`` is an
instance method, ``DynamicCache`` takes no config and keeps ``key_cache``/``value_cache`` lists, the mixin's
``_reorder_cache`` only raises, ``num_logits_to_keep``, ``torch_dtype``, the repetition penalty has no
``prompt_ignore_length``, the Llama family overrides ``prepare_inputs_for_generation`` with the standard preparation,
a generate-made ``DynamicCache`` is returned as legacy tuples by default, and beam search returns
``beam_indices`` as wide as the sequences and pads a hypothesis that ended early.

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
    "cache_batch_repeat_interleave",
    "cache_batch_select_indices",
    "beam_indices_as_installed",
    "beam_sequences_as_installed",
    "can_crop_cache",
    "is_transformers_type",
    "is_type_or_transformers_twin",
    "crop_cache",
    "dynamic_cache_from_legacy",
    "full_static_cache_layers",
    "from_pretrained_dtype",
    "generation_config_attributes",
    "is_dynamic_cache",
    "is_encoder_decoder_model",
    "is_transformers_4_45",
    "legacy_cache",
    "returns_legacy_cache",
    "logits_to_keep_name",
    "passes_4d_masks_through",
    "model_reorder_cache",
    "new_dynamic_cache",
    "position_ids_from_attention_mask",
    "prompt_ignore_length",
    "prepare_inputs",
    "prepares_own_inputs",
    "replace_dynamic_cache_tensors",
    "start_prepared_inputs",
    "supports_default_dynamic_cache",
    "transformers_major_version",
    "transformers_version",
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
        inputs = model.prepare_inputs_for_generation(input_ids, **model_kwargs)
        # transformers' loops add these after the preparation: 4.45's own preparations (GPT-2's) drop them.
        for flag in ("output_attentions", "output_hidden_states"):
            if model_kwargs.get(flag):
                inputs[flag] = True
        return inputs
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

    version = transformers_version()
    if version is not None and version < (4, 56):
        return DynamicCache.from_legacy_cache(tuple(legacy))  # 4.45: DynamicCache(num_hidden_layers)
    return DynamicCache(tuple(legacy))


def legacy_cache(cache: Any) -> Any:
    """``cache`` as a tuple of ``(keys, values)`` per layer if it is a transformers ``DynamicCache`` (what 4.57's
    ``to_legacy_cache`` returns), else ``cache`` unchanged (4.57 converts no other cache)."""
    from transformers import DynamicCache

    if not isinstance(cache, DynamicCache):
        return cache
    if not hasattr(cache, "layers"):  # 4.45: key_cache / value_cache lists
        return tuple((cache.key_cache[i], cache.value_cache[i]) for i in range(len(cache.key_cache)))
    return tuple((layer.keys, layer.values) for layer in cache.layers)


# ----------------------------------------------------------------------------------------------------------
# transformers 4.45 (the oracle of contrastive search, diverse/constrained beam search and DoLa)
# ----------------------------------------------------------------------------------------------------------


def transformers_version() -> tuple[int, ...] | None:
    """``(major, minor)`` of the transformers already imported, or ``None`` when it is not imported."""
    module = sys.modules.get("transformers")
    version = getattr(module, "__version__", None)
    if version is None:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_transformers_4_45() -> bool:
    """Whether the imported transformers is 4.45.x."""
    return transformers_version() == (4, 45)


def passes_4d_masks_through(model: Any) -> bool:
    """Whether ``model`` hands a 4-D additive attention mask (``[rows, 1, queries, keys]``: 0 where a query sees a
    key, the dtype's lowest value elsewhere) to every attention layer as given: its module builds masks with
    ``masking_utils.create_causal_mask``, which returns a 4-D mask unchanged (transformers >= 4.57), and its
    attention implementation adds the mask to the scores (``eager``, ``sdpa``)."""
    version = transformers_version()
    if version is None or version < (4, 57):
        return False
    module = sys.modules.get(type(model).__module__)
    config = getattr(model, "config", None)
    return (getattr(module, "create_causal_mask", None) is not None
            and getattr(config, "_attn_implementation", None) in ("eager", "sdpa"))


def is_encoder_decoder_model(model: Any) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def is_dynamic_cache(cache: Any) -> bool:
    """Whether ``cache`` is exactly transformers' ``DynamicCache`` (each version's; not a subclass)."""
    return is_transformers_type(cache, _CACHE_MODULE, "DynamicCache")


def _cache_tensor_lists(cache: Any) -> list[tuple[Any, str]]:
    """``(holder, attribute)`` of every key and value tensor of a ``DynamicCache``: 4.45 keeps them in the lists
    ``key_cache`` / ``value_cache``, 4.57 and 5.x in ``layers[i].keys`` / ``.values``."""
    if hasattr(cache, "layers"):
        return [(layer, name) for layer in cache.layers for name in ("keys", "values")]
    return [(cache, name) for name in ("key_cache", "value_cache")]


def cache_batch_repeat_interleave(cache: Any, repeats: int) -> None:
    """Repeat every row of ``cache`` ``repeats`` times in place (``DynamicCache.batch_repeat_interleave``, which
    4.45, 4.57 and 5.x all have; done by hand where a version lacks it)."""
    method = getattr(cache, "batch_repeat_interleave", None)
    if callable(method):
        method(repeats)
        return
    _apply_to_cache_rows(cache, lambda tensor: tensor.repeat_interleave(repeats, dim=0))


def cache_batch_select_indices(cache: Any, indices: torch.Tensor) -> None:
    """Keep only the rows ``indices`` of ``cache``, in place (``DynamicCache.batch_select_indices``)."""
    method = getattr(cache, "batch_select_indices", None)
    if callable(method):
        method(indices)
        return
    _apply_to_cache_rows(cache, lambda tensor: tensor[indices, ...])


def replace_dynamic_cache_tensors(cache: Any, function) -> None:
    """Replace every non-empty key and value tensor of a transformers ``DynamicCache`` by ``function(tensor)``
    (4.45's ``key_cache`` / ``value_cache`` lists; 4.57's and 5.x's layers). Under 4.45 the count of positions
    seen (``_seen_tokens``, which 4.45's own ``crop`` sets too) follows the new length."""
    _apply_to_cache_rows(cache, function)
    if not hasattr(cache, "layers") and hasattr(cache, "_seen_tokens"):
        cache._seen_tokens = int(cache.get_seq_length())


def _apply_to_cache_rows(cache: Any, function) -> None:
    for holder, name in _cache_tensor_lists(cache):
        value = getattr(holder, name, None)
        if isinstance(value, list):
            setattr(holder, name, [function(t) if isinstance(t, torch.Tensor) and t.numel() else t for t in value])
        elif isinstance(value, torch.Tensor) and value.numel():
            setattr(holder, name, function(value))


def supports_default_dynamic_cache(model: Any) -> Optional[bool]:
    """Whether transformers' ``generate`` gives ``model`` a ``DynamicCache`` by default, or ``None`` when the model
    does not say (``_supports_default_dynamic_cache`` missing). 4.57 and 5.x define it as a classmethod; 4.45 as an
    instance method (calling it on the class raises ``TypeError``), so it is called on the instance, which
    both accept. (Under 4.45 it is false for models such as GPT-2 that only return legacy tuples.)"""
    method = getattr(model, "_supports_default_dynamic_cache", None)
    if method is None:
        return None
    return bool(method())


def new_dynamic_cache(decoder_config: Any = None, offloading: bool = False) -> Any:
    """A fresh transformers ``DynamicCache`` as the installed version's ``generate`` builds it by default.

    4.57 and 5.x take the model's config (sliding-window layers become sliding layers) and ``offloading``;
    4.45's ``DynamicCache()`` takes neither (every layer full, as 4.45's generate builds it) and offloads with a
    separate class, ``OffloadedCache``. ``decoder_config=None``: every layer full in every version."""
    import transformers

    if transformers_version() is not None and transformers_version() < (4, 56):
        return transformers.OffloadedCache() if offloading else transformers.DynamicCache()
    if decoder_config is None:
        return transformers.DynamicCache(offloading=offloading) if offloading else transformers.DynamicCache()
    return transformers.DynamicCache(config=decoder_config, offloading=offloading)


def model_reorder_cache(model: Any) -> Optional[Any]:
    """The model's own ``_reorder_cache(cache, beam_idx)`` hook, or ``None`` when it has none of its own.

    4.45's ``GenerationMixin`` defines a ``_reorder_cache`` that raises ``NotImplementedError`` (models with a
    ``Cache`` rely on ``Cache.reorder_cache``; models with legacy tuples, such as GPT-2, override it); that base
    method counts as none. 4.57 and 5.x define none in the mixin."""
    method = getattr(type(model), "_reorder_cache", None)
    if method is None:
        return None
    generation_utils = sys.modules.get("transformers.generation.utils")
    mixin = getattr(generation_utils, "GenerationMixin", None)
    if mixin is not None and getattr(mixin, "_reorder_cache", None) is method:
        return None
    return getattr(model, "_reorder_cache")


def prompt_ignore_length(processor: Any) -> Any:
    """A repetition penalty's ``prompt_ignore_length`` (turbogen's, or transformers' since 4.56); ``None`` for
    transformers 4.45's ``RepetitionPenaltyLogitsProcessor``, which has no such attribute (it penalises every token
    of the sequence, as ``None`` does)."""
    return getattr(processor, "prompt_ignore_length", None)


def logits_to_keep_name(parameters: Any) -> Optional[str]:
    """The name under which a model's ``forward`` (its parameter names ``parameters``) takes how many trailing
    positions to compute logits for: ``logits_to_keep`` (4.57, 5.x), ``num_logits_to_keep`` (4.45, where generate
    passes 1 too), or ``None``."""
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in parameters:
            return name
    return None


def returns_legacy_cache(return_legacy_cache: Any, user_cache_given: bool, cache: Any) -> bool:
    """Whether ``generate`` returns ``cache`` (the output's ``past_key_values``) as legacy tuples.

    4.57 and 5.x: only when ``return_legacy_cache=True``. 4.45: unless ``return_legacy_cache=False``, also by
    default when the user passed no cache and ``cache`` is exactly a ``DynamicCache`` (its deprecation-period
    rule, ``GenerationMixin.generate``'s end)."""
    if return_legacy_cache is True:
        return True
    if not is_transformers_4_45() or return_legacy_cache is False:
        return False
    return not user_cache_given and is_dynamic_cache(cache)


def from_pretrained_dtype(dtype: Any) -> dict:
    """The keyword ``from_pretrained`` takes the weights' dtype under: ``dtype`` (4.56+, 5.x), ``torch_dtype``
    (4.45, which passes an unknown ``dtype`` on to the model's config: a ``torch.dtype`` there breaks saving it as
    JSON and reaches the model's ``__init__``)."""
    version = transformers_version()
    if version is not None and version < (4, 56):
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def beam_indices_as_installed(beam_indices: Optional[torch.Tensor], sequence_length: int,
                              scores_recorded: bool = True) -> Optional[torch.Tensor]:
    """Beam search's ``beam_indices`` (``[rows, generated steps]``, -1 past a row's end: 4.57's and 5.x's layout)
    as the installed transformers returns them: 4.45's ``BeamSearchScorer.finalize`` makes them as wide as the
    sequences (prompt included), the extra columns -1, and 4.45 returns them only when the scores are recorded
    (``output_scores``, ``scores_recorded``)."""
    if beam_indices is None or not is_transformers_4_45():
        return beam_indices
    if not scores_recorded:
        return None
    if beam_indices.shape[-1] >= sequence_length:
        return beam_indices
    padding = beam_indices.new_full((*beam_indices.shape[:-1], sequence_length - beam_indices.shape[-1]), -1)
    return torch.cat([beam_indices, padding], dim=-1)


#: Causal LMs whose 4.45 ``prepare_inputs_for_generation`` override is the standard decoder-only preparation
#: (positions from the mask, ``cache_position``, ``num_logits_to_keep``), which 4.57 serves with the mixin's
#: generic method; GPT-2 is not among them: under 4.45 it returns legacy tuples, which turbogen's direct runner
#: does not keep.
_STANDARD_4_45_PREPARATION = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})


def prepares_own_inputs(model: Any) -> bool:
    """Whether ``model`` prepares its own inputs for generation, i.e. its class overrides
    ``GenerationMixin.prepare_inputs_for_generation`` with a preparation turbogen must follow step by step.
    Under 4.45, where every model overrides it, the standard overrides of :data:`_STANDARD_4_45_PREPARATION` do not
    count (turbogen's own preparation computes the same inputs)."""
    from transformers.generation.utils import GenerationMixin

    own = getattr(type(model), "prepare_inputs_for_generation", None)
    if own is None or own is GenerationMixin.prepare_inputs_for_generation:
        return False
    if is_transformers_4_45() and type(model).__name__ in _STANDARD_4_45_PREPARATION:
        defined_by = getattr(own, "__qualname__", "").split(".")[0]
        return defined_by != type(model).__name__
    return True


def beam_sequences_as_installed(sequences: torch.Tensor, beam_indices: Optional[torch.Tensor], prompt_length: int,
                                pad_token: Optional[torch.Tensor], eos_tokens: Optional[torch.Tensor]) -> torch.Tensor:
    """Beam search's returned ``sequences`` (4.57's layout: a hypothesis that ended early is followed by its EOS
    token repeated) as the installed transformers returns them: 4.45's ``BeamSearchScorer.finalize`` writes the
    first EOS id after the hypothesis and the pad token after that. ``beam_indices``: ``[rows, steps]``, -1 past
    a row's end (its count of non-negative entries is the row's generated length, EOS included)."""
    if not is_transformers_4_45() or beam_indices is None or pad_token is None or eos_tokens is None:
        return sequences
    eos = eos_tokens.reshape(-1)
    if eos.numel() == 0:
        return sequences
    lengths = prompt_length + (beam_indices[:, : sequences.shape[1] - prompt_length] >= 0).sum(dim=1)
    width = sequences.shape[1]
    if bool((lengths >= width).all()):
        return sequences
    sequences = sequences.clone()
    columns = torch.arange(width, device=sequences.device)
    last = (lengths - 1).to(sequences.device)
    # Only hypotheses that ended on an EOS id (a row ending at the length limit keeps its tokens).
    ended = (lengths < width).to(sequences.device) & torch.isin(
        sequences.gather(1, last[:, None].clamp(min=0))[:, 0], eos.to(sequences.device))
    sequences = torch.where(ended[:, None] & (columns[None, :] > last[:, None]),
                            pad_token.to(sequences.device, sequences.dtype), sequences)
    eos_at_end = ended[:, None] & (columns[None, :] == last[:, None])
    return torch.where(eos_at_end, eos[0].to(sequences.device, sequences.dtype), sequences)


def updates_own_model_kwargs(model: Any) -> bool:
    """Whether ``model``'s class overrides ``GenerationMixin._update_model_kwargs_for_generation`` (what it keeps
    between decoding steps may then differ from the generic update's)."""
    from transformers.generation.utils import GenerationMixin

    own = getattr(type(model), "_update_model_kwargs_for_generation", None)
    return own is not None and own is not GenerationMixin._update_model_kwargs_for_generation


def is_remote_code_model(model: Any) -> bool:
    """Whether ``model`` runs code from the Hub (transformers 5.x's ``is_remote_code()``; never under 4.x, which has
    no such method): 5.x's generic preparation then adds a ``cache_position`` for such models."""
    method = getattr(model, "is_remote_code", None)
    return bool(method()) if callable(method) else False


def inputs_dropped_after_prefill() -> tuple:
    """The model keywords that transformers 5.x's generic ``prepare_inputs_for_generation`` forwards only on the
    first call of a generation when a cache is used (``pixel_values``, ``input_features``...); none under 4.x."""
    from transformers.generation import utils

    return tuple(getattr(utils, "MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL", ()))


def is_whisper_preparation_v5(model: Any) -> bool:
    """Whether ``model``'s ``prepare_inputs_for_generation`` is transformers 5.x's ``WhisperForConditionalGeneration``
    one, which adds ``decoder_position_ids`` from a ``decoder_attention_mask`` (when it has one and no positions)
    and is otherwise the generic preparation."""
    own = getattr(type(model), "prepare_inputs_for_generation", None)
    return (_is_transformers_5() and getattr(own, "__module__", None) == "transformers.models.whisper.modeling_whisper"
            and getattr(own, "__qualname__", None) == "WhisperForConditionalGeneration.prepare_inputs_for_generation")


def move_inputs_to_device(inputs: dict, device: torch.device) -> dict:
    """``inputs`` with their tensors on ``device``, as transformers 5.x's generic preparation moves them when the
    model's input is elsewhere: nested in dicts, lists and tuples too where the installed version does so
    (``transformers.pytorch_utils.move_to_device``), else the top-level tensors."""
    try:
        from transformers.pytorch_utils import move_to_device
    except ImportError:
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
    return move_to_device(inputs, device)
