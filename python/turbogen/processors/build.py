"""``build_logits_processor``: the list of processors ``generate`` applies for a generation config,
in transformers v4.57's order (``GenerationMixin._get_logits_processor``), plus turbogen's
presence/frequency penalty; and :func:`sampler_filter_params`, the sampling filters of a config that
a fused sampler (``turbogen.ops.Sampler``) can apply in place of the trailing warpers."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .._transformers_compat import TRANSFORMERS_PROCESSORS_MODULE, is_type_or_transformers_twin
from .base import ArgumentTypeError, LogitsProcessorList, token_id_tensor
from .constraints import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    PrefixConstrainedLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
from .guidance import UnbatchedClassifierFreeGuidanceLogitsProcessor
from .penalties import (
    EncoderNoRepeatNGramLogitsProcessor,
    EncoderRepetitionPenaltyLogitsProcessor,
    ExponentialDecayLengthPenalty,
    NoRepeatNGramLogitsProcessor,
    PresenceFrequencyPenaltyLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)
from .warpers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from .synthid import SynthIDTextWatermarkLogitsProcessor
from .watermark import WatermarkLogitsProcessor

logger = logging.getLogger(__name__)

# transformers' processors live here; one of them stands in for the turbogen class of the same name.
_WATERMARK_OPTIONS = ("greenlist_ratio", "bias", "hashing_key", "seeding_scheme", "context_width")
_SYNTHID_OPTIONS = ("ngram_len", "keys", "context_history_size", "sampling_table_seed", "sampling_table_size",
                    "skip_first_ngram_calls", "debug_mode")
_SYNTHID_ONLY_OPTIONS = ("ngram_len", "keys")


@dataclass(frozen=True)
class SamplingParams:
    """The parameters of a fused temperature -> top-k -> top-p -> min-p sampling step.

    The defaults switch a stage off: ``temperature=1.0``, ``top_k=0`` (keep all; a ``top_k`` at or
    above the vocabulary size also keeps all), ``top_p=1.0``, ``min_p=0.0``. With every stage
    applied in this order with transformers' rules and ``min_tokens_to_keep=1``, the result equals
    the replaced warpers (``top_p=1.0`` differs only on tokens whose probability is exactly 0).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0


def _option(config, name: str, default=None):
    """A generation option; the config is duck-typed, and an option it lacks counts as unset."""
    return getattr(config, name, default)


def _eos_token_ids(config, device) -> Optional[torch.Tensor]:
    """The EOS ids as a 1-D tensor, or None: transformers' ``_eos_token_tensor`` when the config has
    been through ``generate``'s special-token preparation, else its ``eos_token_id``."""
    if hasattr(config, "_eos_token_tensor"):
        eos = config._eos_token_tensor
    else:
        eos = _option(config, "eos_token_id")
    if eos is None:
        return None
    return token_id_tensor(eos, "eos_token_id", device)


def _is_batch_of_ids(encoder_input_ids) -> bool:
    return isinstance(encoder_input_ids, torch.Tensor) and encoder_input_ids.dim() == 2


def _is_set_and_not(value, neutral) -> bool:
    return value is not None and value != neutral


def is_same_processor_kind(custom, default) -> bool:
    """Whether a user-supplied processor replaces a default one in :func:`merge_processor_lists`:
    the same class, or transformers' class of the same name standing in for turbogen's."""
    return is_type_or_transformers_twin(custom, type(default), TRANSFORMERS_PROCESSORS_MODULE)


def merge_processor_lists(default_list: LogitsProcessorList, custom_list) -> LogitsProcessorList:
    """Merge user-supplied processors into the ones built from the config, as transformers v4.57's
    ``GenerationMixin._merge_criteria_processor_list`` does.

    Each default is replaced, in place, by the first custom processor of the same kind
    (:func:`is_same_processor_kind`), with a logged warning; the custom processors not used that
    way are appended at the end, in their order. (transformers raised an error on such duplicates
    up to v4.49; v4.57 lets the custom one win.) An empty ``custom_list`` returns ``default_list``.
    """
    if not custom_list:
        return default_list
    merged = LogitsProcessorList()
    for default in default_list:
        custom = next((candidate for candidate in custom_list if is_same_processor_kind(candidate, default)), None)
        if custom is None:
            merged.append(default)
            continue
        logger.warning(
            "A custom logits processor of type %s has been passed to `generate`, but one was also created from "
            "the generation config; the custom one takes precedence.", type(custom).__name__,
        )
        merged.append(custom)
    for custom in custom_list:
        if custom not in merged:
            merged.append(custom)
    return merged


def _model_vocab_size(model) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("`model` (with a `config` giving the vocabulary size) is required for `watermarking_config`")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text_config.vocab_size


def _watermark_processor(watermarking_config, model, device):
    """The watermarking processor for a ``watermarking_config``, as transformers' ``construct_processor``
    builds it but with turbogen's classes: a green-list config (turbogen's, transformers', a dict, or any
    object with the options of ``WatermarkingConfig``) gives ``WatermarkLogitsProcessor``; a SynthID config
    (turbogen's, transformers', a dict with ``ngram_len`` or ``keys``, or any object with its options) gives
    ``SynthIDTextWatermarkLogitsProcessor``. Any other config with a ``construct_processor`` builds its own."""
    device = device if device is not None else "cpu"
    if isinstance(watermarking_config, dict):
        if any(name in watermarking_config for name in _SYNTHID_ONLY_OPTIONS):
            options, known = dict(watermarking_config), _SYNTHID_OPTIONS
        else:
            options, known = dict(watermarking_config), _WATERMARK_OPTIONS
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"`watermarking_config` has unknown keys {unknown}; known: {list(known)}")
    elif all(hasattr(watermarking_config, name) for name in _SYNTHID_ONLY_OPTIONS):
        options = {name: getattr(watermarking_config, name) for name in _SYNTHID_OPTIONS
                   if hasattr(watermarking_config, name)}
    elif hasattr(watermarking_config, "seeding_scheme"):
        options = {name: getattr(watermarking_config, name) for name in _WATERMARK_OPTIONS
                   if hasattr(watermarking_config, name)}
    elif hasattr(watermarking_config, "construct_processor"):
        return watermarking_config.construct_processor(_model_vocab_size(model), device)
    else:
        raise ArgumentTypeError(
            f"`watermarking_config` has to be a dict or a watermarking config object, but is "
            f"{type(watermarking_config).__name__}"
        )
    if any(name in options for name in _SYNTHID_ONLY_OPTIONS):
        # SynthID needs no vocabulary size: the g-values cover whatever vocabulary the scores have.
        return SynthIDTextWatermarkLogitsProcessor(device=device, **options)
    return WatermarkLogitsProcessor(_model_vocab_size(model), device, **options)


def _num_beams(config) -> int:
    return _option(config, "num_beams", 1) or 1


def _sampling_min_tokens_to_keep(config, eos_token_ids: Optional[torch.Tensor]) -> int:
    """Beam methods keep one token more than there are EOS tokens, so a non-EOS continuation survives."""
    if _num_beams(config) <= 1:
        return 1
    return eos_token_ids.shape[0] + 1 if eos_token_ids is not None else 2


def _typical_p_is_active(config) -> bool:
    typical_p = _option(config, "typical_p")
    return typical_p is not None and typical_p < 1.0


def _cutoff_is_active(config, name: str) -> bool:
    cutoff = _option(config, name)
    return cutoff is not None and 0.0 < cutoff < 1.0


def sampler_filter_params(generation_config) -> Optional[SamplingParams]:
    """The temperature / top-k / top-p / min-p filters of ``generation_config`` as a sampler applies them, or
    ``None`` when a sampler cannot stand in for those warpers.

    It can when the config samples without beams (so every warper keeps ``min_tokens_to_keep=1``) and nothing
    :func:`build_logits_processor` appends must run after them (typical, epsilon or eta warpers, the
    watermark, ``renormalize_logits``): then applying the processors built with
    ``sampler_applies_filters=True`` and sampling with these parameters draws from exactly the distribution
    of the full list. A filter the config leaves unset or neutral is off (its default here).
    """
    config = generation_config
    if not _option(config, "do_sample") or _num_beams(config) > 1:
        return None
    if (_typical_p_is_active(config) or _cutoff_is_active(config, "epsilon_cutoff")
            or _cutoff_is_active(config, "eta_cutoff") or _option(config, "watermarking_config") is not None
            or _option(config, "renormalize_logits") is True):
        return None
    filters = {}
    if _is_set_and_not(_option(config, "temperature"), 1.0):
        filters["temperature"] = float(config.temperature)
    if _is_set_and_not(_option(config, "top_k"), 0):
        filters["top_k"] = int(config.top_k)
    top_p = _option(config, "top_p")
    if top_p is not None and top_p < 1.0:
        filters["top_p"] = float(top_p)
    if _option(config, "min_p") is not None:
        filters["min_p"] = float(config.min_p)
    return SamplingParams(**filters)


def build_logits_processor(
    generation_config,
    input_ids_seq_length: int,
    encoder_input_ids: Optional[torch.LongTensor] = None,
    prefix_allowed_tokens_fn: Optional[Callable[[int, torch.Tensor], "list[int]"]] = None,
    logits_processor=None,
    device=None,
    model_kwargs: Optional[dict[str, Any]] = None,
    negative_prompt_ids: Optional[torch.Tensor] = None,
    negative_prompt_attention_mask: Optional[torch.Tensor] = None,
    model=None,
    sampler_applies_filters: bool = False,
) -> LogitsProcessorList:
    """The processors ``generate`` applies for ``generation_config``, exactly as transformers v4.57's
    ``GenerationMixin._get_logits_processor`` builds them, with turbogen's classes.

    Order (each only when its option is set to a non-neutral value):

    1. ``UnbatchedClassifierFreeGuidanceLogitsProcessor`` (``guidance_scale != 1``; calls ``model``
       on ``negative_prompt_ids``), ``SequenceBiasLogitsProcessor``,
       ``EncoderRepetitionPenaltyLogitsProcessor``, ``RepetitionPenaltyLogitsProcessor``, then
       turbogen's ``PresenceFrequencyPenaltyLogitsProcessor`` (``presence_penalty`` or
       ``frequency_penalty`` non-zero; counts only tokens after the first
       ``input_ids_seq_length``), ``NoRepeatNGramLogitsProcessor``,
       ``EncoderNoRepeatNGramLogitsProcessor``, ``NoBadWordsLogitsProcessor``,
       ``MinLengthLogitsProcessor``, ``MinNewTokensLengthLogitsProcessor``,
       ``PrefixConstrainedLogitsProcessor``, ``ForcedBOSTokenLogitsProcessor``,
       ``ForcedEOSTokenLogitsProcessor``, ``InfNanRemoveLogitsProcessor``,
       ``ExponentialDecayLengthPenalty``, ``SuppressTokensLogitsProcessor``,
       ``SuppressTokensAtBeginLogitsProcessor``;
    2. the user's ``logits_processor`` merged in (:func:`merge_processor_lists`: one of the same
       kind replaces the default in place, the others go at the end of this part);
    3. with ``do_sample``: ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``,
       ``MinPLogitsWarper``, ``TypicalLogitsWarper``, ``EpsilonLogitsWarper``, ``EtaLogitsWarper``
       (keeping ``len(eos) + 1`` tokens with beams, else 1);
    4. the watermark (``watermarking_config``: green list, vocabulary size from ``model.config``, or
       SynthID Text), then
       ``LogitNormalization`` (``renormalize_logits``).

    With ``sampler_applies_filters=True`` the temperature, top-k, top-p and min-p warpers of step 3
    are validated (constructed, raising as they would) but left out: the caller's sampler applies
    :func:`sampler_filter_params` of the config instead, which must not be ``None``.

    ``generation_config`` is duck-typed: a transformers ``GenerationConfig`` or turbogen's, or any
    object with those attribute names; a missing attribute counts as unset. The EOS ids are the
    config's ``_eos_token_tensor`` when it has one (set by transformers' ``generate``), else its
    ``eos_token_id``. transformers' own processor objects in ``logits_processor`` are used as they
    are. ``model`` is required for guidance and green-list watermarking. ``model_kwargs`` is accepted for
    signature parity and unused, as in transformers 4.57.

    Deviations from transformers, where it would crash: options needing the prompt
    (``encoder_repetition_penalty``, ``encoder_no_repeat_ngram_size``) warn and are skipped when
    ``encoder_input_ids`` is None, as they already are for a non-2-D one.
    """
    config = generation_config
    if sampler_applies_filters and sampler_filter_params(config) is None:
        raise ValueError("`sampler_applies_filters=True` needs a config that samples without beams and appends "
                         "nothing after the min-p warper (see sampler_filter_params)")
    eos_token_ids = _eos_token_ids(config, device)
    processors = LogitsProcessorList()
    logits_processor = list(logits_processor) if logits_processor is not None else []

    guidance_scale = _option(config, "guidance_scale")
    if _is_set_and_not(guidance_scale, 1):
        if model is None:
            raise ValueError("`model` is required when `guidance_scale` != 1 (it computes the unconditional branch)")
        processors.append(UnbatchedClassifierFreeGuidanceLogitsProcessor(
            guidance_scale, model, unconditional_ids=negative_prompt_ids,
            unconditional_attention_mask=negative_prompt_attention_mask,
            use_cache=_option(config, "use_cache", True),
        ))
    if _option(config, "sequence_bias") is not None:
        processors.append(SequenceBiasLogitsProcessor(sequence_bias=config.sequence_bias))
    if _is_set_and_not(_option(config, "encoder_repetition_penalty"), 1.0):
        if _is_batch_of_ids(encoder_input_ids):
            processors.append(EncoderRepetitionPenaltyLogitsProcessor(
                penalty=config.encoder_repetition_penalty, encoder_input_ids=encoder_input_ids))
        else:
            warnings.warn("Passing `encoder_repetition_penalty` requires some form of `input_ids` to be passed to "
                          "`generate`, ignoring the argument.", UserWarning, stacklevel=2)
    if _is_set_and_not(_option(config, "repetition_penalty"), 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=config.repetition_penalty))
    presence_penalty = _option(config, "presence_penalty")
    frequency_penalty = _option(config, "frequency_penalty")
    if _is_set_and_not(presence_penalty, 0) or _is_set_and_not(frequency_penalty, 0):
        processors.append(PresenceFrequencyPenaltyLogitsProcessor(
            presence_penalty=presence_penalty or 0.0, frequency_penalty=frequency_penalty or 0.0,
            prompt_length=input_ids_seq_length,
        ))
    no_repeat_ngram_size = _option(config, "no_repeat_ngram_size")
    if no_repeat_ngram_size is not None and no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    encoder_no_repeat_ngram_size = _option(config, "encoder_no_repeat_ngram_size")
    if encoder_no_repeat_ngram_size is not None and encoder_no_repeat_ngram_size > 0:
        if _is_batch_of_ids(encoder_input_ids):
            processors.append(EncoderNoRepeatNGramLogitsProcessor(encoder_no_repeat_ngram_size, encoder_input_ids))
        else:
            warnings.warn("Passing `encoder_no_repeat_ngram_size` requires some form of `input_ids` to be passed to "
                          "`generate`, ignoring the argument.", UserWarning, stacklevel=2)
    if _option(config, "bad_words_ids") is not None:
        processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos_token_ids))
    min_length = _option(config, "min_length")
    if min_length is not None and eos_token_ids is not None and min_length > 0:
        processors.append(MinLengthLogitsProcessor(min_length, eos_token_ids, device=device))
    min_new_tokens = _option(config, "min_new_tokens")
    if min_new_tokens is not None and eos_token_ids is not None and min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(input_ids_seq_length, min_new_tokens, eos_token_ids,
                                                            device=device))
    if prefix_allowed_tokens_fn is not None:
        processors.append(PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn, _num_beams(config)))
    forced_bos_token_id = _option(config, "forced_bos_token_id")
    if forced_bos_token_id is not None:
        processors.append(ForcedBOSTokenLogitsProcessor(forced_bos_token_id))
    if _option(config, "forced_eos_token_id") is not None:
        processors.append(ForcedEOSTokenLogitsProcessor(config.max_length, config.forced_eos_token_id, device=device))
    if _option(config, "remove_invalid_values") is True:
        processors.append(InfNanRemoveLogitsProcessor())
    if _option(config, "exponential_decay_length_penalty") is not None:
        if eos_token_ids is None:
            raise ValueError("`exponential_decay_length_penalty` needs `eos_token_id` to be set")
        processors.append(ExponentialDecayLengthPenalty(config.exponential_decay_length_penalty, eos_token_ids,
                                                        input_ids_seq_length))
    if _option(config, "suppress_tokens") is not None:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
    if _option(config, "begin_suppress_tokens") is not None:
        # The first generated token comes one step later when a forced BOS follows a lone start token.
        begin_index = input_ids_seq_length
        if input_ids_seq_length <= 1 and forced_bos_token_id is not None:
            begin_index += 1
        processors.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin_index,
                                                               device=device))

    processors = merge_processor_lists(processors, logits_processor)

    if _option(config, "do_sample"):
        min_tokens_to_keep = _sampling_min_tokens_to_keep(config, eos_token_ids)
        filters = LogitsProcessorList()
        if _is_set_and_not(_option(config, "temperature"), 1.0):
            filters.append(TemperatureLogitsWarper(config.temperature))
        if _is_set_and_not(_option(config, "top_k"), 0):
            filters.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=min_tokens_to_keep))
        top_p = _option(config, "top_p")
        if top_p is not None and top_p < 1.0:
            filters.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=min_tokens_to_keep))
        if _option(config, "min_p") is not None:
            # After temperature, as llama.cpp applies it.
            filters.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=min_tokens_to_keep))
        if not sampler_applies_filters:
            processors.extend(filters)
        if _typical_p_is_active(config):
            processors.append(TypicalLogitsWarper(mass=config.typical_p, min_tokens_to_keep=min_tokens_to_keep))
        if _cutoff_is_active(config, "epsilon_cutoff"):
            processors.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff, min_tokens_to_keep=min_tokens_to_keep))
        if _cutoff_is_active(config, "eta_cutoff"):
            processors.append(EtaLogitsWarper(epsilon=config.eta_cutoff, min_tokens_to_keep=min_tokens_to_keep,
                                              device=device if device is not None else "cpu"))

    # The watermark sees the final distribution, so it comes after every other processor.
    if _option(config, "watermarking_config") is not None:
        processors.append(_watermark_processor(config.watermarking_config, model, device))
    # LogitNormalization is always last when present.
    if _option(config, "renormalize_logits") is True:
        processors.append(LogitNormalization())
    return processors
