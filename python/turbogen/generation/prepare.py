"""Call preparation for :func:`turbogen.generate`: everything decided before the first model call.

transformers v4.57's rules, reproduced exactly: the resolution of the generation config (call arguments
over a given config over the model's defaults over global defaults, where model defaults only fill values
the user left at the global default), special tokens, the prompt and its attention mask, the expansion of
rows for beams and returned sequences, ``max_length``/``min_length`` and their ``*_new_tokens`` forms,
the logits processors, the stopping criteria and the KV cache. For an encoder-decoder model, also the
encoder's single run and the decoder's prompt (which is then the ``input_ids`` every later stage sees).

One name per quantity: ``max_length`` is the longest sequence (prompt included) the call can produce,
the width of every per-row buffer; the cache holds ``max_length - 1`` positions because the last
generated token is never fed back.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

from .. import _transformers_compat as _compat
from ..config import GenerationConfig, GenerationMode, as_generation_config
from ..errors import UnsupportedByTurbogen
from ..processors.build import SamplingParams, build_logits_processor, sampler_filter_params
from ..stopping import StoppingPlan, build_stopping_criteria

logger = logging.getLogger(__name__)

# Arguments of transformers' generate() that are not generation parameters nor model inputs, and that turbogen
# refuses (none today: `custom_generate` is served by turbogen.generate before the call is prepared).
_UNSUPPORTED_GENERATE_ARGUMENTS: dict[str, str] = {}

@dataclasses.dataclass
class SpecialTokens:
    """The special token ids as tensors, once resolved (``eos`` is 1-D; ``pad`` defaults to ``eos[0]``)."""

    bos: Optional[torch.Tensor]
    eos: Optional[torch.Tensor]
    pad: Optional[torch.Tensor]

    def to(self, device: torch.device) -> "SpecialTokens":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SpecialTokens(move(self.bos), move(self.eos), move(self.pad))


@dataclasses.dataclass
class PreparedCall:
    """Everything :func:`prepare_call` resolved; the decode loops read it and never see the raw arguments.

    Attributes:
        config: the effective generation config (lengths resolved).
        is_beam: beam search or beam sampling (else greedy search or multinomial sampling).
        input_ids: the prompt, ``[rows, prompt_length]``, each row repeated ``max(num_beams,
            num_return_sequences)`` times; ``[rows, 0]`` for a prompt given only as ``inputs_embeds``.
        model_kwargs: the model inputs besides ``input_ids`` and the cache (``inputs_embeds`` included), rows
            expanded likewise; plus ``prefill_chunk_size`` for greedy search and sampling when it is set.
        tokens: the special tokens, on the prompt's device.
        processors: the logits processors, without the sampling filters when ``sampler_filters`` is set.
        sampler_filters: the temperature / top-k / top-p / min-p the sampler applies in place of the warpers,
            or ``None`` when the processors apply them (or nothing samples).
        stopping: the stopping criteria, split for cheap evaluation.
        max_length: the longest sequence the call can produce, prompt included (the config's limit, or a
            custom ``MaxLengthCriteria``'s, and at least one new token).
        cache: the KV cache, or ``None``.
        encoder_outputs: an encoder-decoder's encoder output (rows expanded like ``input_ids``, which are then
            the decoder's prompt), else ``None``.
        speculation: how assisted generation drafts (:class:`SpeculationPlan`), or ``None`` without it.
        synced_gpus: every rank of the torch.distributed group steps until all have finished
            (:mod:`turbogen.generation.synced_gpus`).
    """

    config: GenerationConfig
    is_beam: bool
    input_ids: torch.Tensor
    model_kwargs: dict
    tokens: SpecialTokens
    processors: Any
    sampler_filters: Optional[SamplingParams]
    stopping: StoppingPlan
    max_length: int
    cache: Any
    encoder_outputs: Any = None
    speculation: Optional["SpeculationPlan"] = None
    synced_gpus: bool = False

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]


def prepare_call(model: Any, inputs: Any, generation_config: Any, logits_processor: Optional[Sequence[Any]],
                 stopping_criteria: Optional[Sequence[Any]],
                 prefix_allowed_tokens_fn: Optional[Callable[[int, torch.Tensor], list[int]]], streamer: Any,
                 tokenizer: Any, kwargs: dict, *, sampler_may_filter: bool = True) -> PreparedCall:
    """Resolve a ``generate`` call (its arguments as :func:`turbogen.generate` documents them) in
    transformers v4.57's order, raising ``ValueError`` for invalid or conflicting arguments and
    :class:`~turbogen.errors.UnsupportedByTurbogen` for what turbogen does not implement. ``streamer`` is
    only checked here: ``generate`` sends it the prompt once nothing can be refused any more."""
    kwargs = dict(kwargs)
    negative_prompt_ids = kwargs.pop("negative_prompt_ids", None)
    negative_prompt_attention_mask = kwargs.pop("negative_prompt_attention_mask", None)
    use_model_defaults = kwargs.pop("use_model_defaults", None)
    assistant_model = kwargs.pop("assistant_model", None)
    assistant_tokenizer = kwargs.pop("assistant_tokenizer", None)
    synced_gpus = bool(kwargs.pop("synced_gpus", None))  # None: off (turbogen does not detect ZeRO-3 / FSDP)
    _reject_unsupported_arguments(model, kwargs)

    config, model_kwargs = resolve_generation_config(model, generation_config, use_model_defaults, kwargs)
    _reject_unsupported_parameters(config, model_kwargs)
    mode = config.get_generation_mode(assistant_model)
    speculation = None
    if mode == GenerationMode.ASSISTED_GENERATION:
        speculation = plan_speculation(model, config, model_kwargs, assistant_model, assistant_tokenizer, tokenizer)
    is_beam = mode in (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE)
    if is_beam and streamer is not None:
        raise UnsupportedByTurbogen("`streamer` cannot be used with beam search: set `num_beams=1`.",
                                    reason="streamer with beam search")
    if is_beam and config.low_memory:
        raise UnsupportedByTurbogen("`low_memory=True` (sequential beam search) is not supported.",
                                    reason="low_memory beam search")
    if config.token_healing and is_encoder_decoder(model):
        raise UnsupportedByTurbogen("`token_healing` is not supported for encoder-decoder models by turbogen.generate.",
                                    reason="token_healing with an encoder-decoder model")
    _check_model_kwargs(model, model_kwargs)

    tokens = _special_tokens(config, has_attention_mask=model_kwargs.get("attention_mask") is not None)
    encoder_decoder = is_encoder_decoder(model)
    embeds = None if encoder_decoder else model_kwargs.get("inputs_embeds")
    encoder_ids = None
    if encoder_decoder:
        input_ids, encoder_ids, model_kwargs = _prepare_encoder_decoder(model, inputs, tokens, config,
                                                                        model_kwargs)
    elif embeds is not None:
        input_ids, model_kwargs = _embeds_prompt(model, inputs, tokens, model_kwargs)
        # As in transformers: only a cache tells the first step (embeddings) from the next ones (ids).
        config.use_cache = True
    else:
        model_kwargs.pop("inputs_embeds", None)
        input_ids, model_kwargs = _prompt_ids(model, inputs, tokens, model_kwargs)
    tokens = tokens.to(input_ids.device)
    if embeds is None and not encoder_decoder:  # transformers does not look for right padding in embeddings
        _warn_if_right_padded(input_ids, tokens.pad)
    # What the encoder-side processors (`encoder_repetition_penalty`, `encoder_no_repeat_ngram_size`) read.
    prompt_ids = encoder_ids if encoder_decoder else input_ids
    _check_seed_count(config, prompts=input_ids.shape[0])
    if (not encoder_decoder and model_kwargs.get("attention_mask") is None
            and accepts(model, "attention_mask")):
        model_kwargs["attention_mask"] = (
            _infer_attention_mask(input_ids, tokens) if input_ids.shape[1] else
            torch.ones(embeds.shape[:2], dtype=torch.long, device=input_ids.device))

    expand = max(config.num_beams, config.num_return_sequences)
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        model_kwargs = {key: value.repeat_interleave(expand, dim=0) if _is_batch_tensor(key, value) else value
                        for key, value in model_kwargs.items()}
        if model_kwargs.get("encoder_outputs") is not None:
            model_kwargs["encoder_outputs"] = _expand_encoder_outputs(model_kwargs["encoder_outputs"], expand)

    if config.token_healing:  # transformers 4.57 heals the expanded prompt (its mask unchanged)
        if embeds is not None:
            raise UnsupportedByTurbogen("`token_healing` with `inputs_embeds` is not supported by turbogen.generate.",
                                        reason="token_healing with inputs_embeds")
        from .token_healing import heal_tokens

        input_ids = heal_tokens(model, input_ids, tokenizer, model_kwargs.get("attention_mask"))
    prompt_length = input_ids.shape[1]
    _resolve_lengths(model, config, kwargs, prompt_length,
                     embeds_length=None if embeds is None else embeds.shape[1])

    # The sampler applies the config's filters itself unless the filtered scores are recorded (they are the
    # warpers' output, which `output_scores` returns) or something must run after them.
    records_scores = bool(config.return_dict_in_generate and config.output_scores)
    # (`sampler_may_filter=False`: the processors are handed to a custom decoding loop, they must be whole.)
    sampler_filters = None if records_scores or not sampler_may_filter else sampler_filter_params(config)
    processors = build_logits_processor(
        config,
        prompt_length,
        encoder_input_ids=prompt_ids,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        logits_processor=logits_processor,
        device=input_ids.device,
        model_kwargs=model_kwargs,
        negative_prompt_ids=negative_prompt_ids,
        negative_prompt_attention_mask=negative_prompt_attention_mask,
        model=model,
        sampler_applies_filters=sampler_filters is not None,
    )
    criteria = build_stopping_criteria(
        config, eos_token_ids=tokens.eos, tokenizer=tokenizer,
        max_position_embeddings=getattr(text_config(model), "max_position_embeddings", None),
        custom=stopping_criteria)
    stopping = StoppingPlan(criteria)
    if stopping.max_length is None:
        raise ValueError("`max_length` must be set: generation needs a length limit.")
    # A custom MaxLengthCriteria may replace the config's limit; the buffers must hold whichever applies
    # (and at least one new token, which is always generated).
    max_length = max(stopping.max_length, prompt_length + 1)
    # Embeddings without ids put their positions ahead of the sequence's, in the cache too.
    embedded_only = 0 if embeds is None else embeds.shape[1] - prompt_length
    if encoder_decoder:
        cache = _prepare_encoder_decoder_cache(model, config, model_kwargs, max_length)
    elif speculation is not None:
        cache = _speculation_cache(model, config, model_kwargs, rows=input_ids.shape[0],
                                   max_length=max_length + speculation.headroom)
    elif embedded_only == 0 and _compiles_over_fresh_static_cache(config, model_kwargs, input_ids.device):
        # A compiled run: the model's shared cache of the capacity bucket (its addresses are in the graphs).
        from .compiled import capacity_bucket, shared_static_cache

        cache = shared_static_cache(model, input_ids.shape[0], capacity_bucket(max_length))
    else:
        cache = _prepare_cache(model, config, model_kwargs, rows=input_ids.shape[0],
                               max_length=max_length + embedded_only)
    if config.prefill_chunk_size is not None and not is_beam and encoder_decoder:
        raise UnsupportedByTurbogen("`prefill_chunk_size` is not supported for encoder-decoder models.",
                                    reason="prefill_chunk_size with an encoder-decoder model")
    if config.prefill_chunk_size is not None and not is_beam:  # transformers' beam search ignores it
        _check_prefill_chunking(config, cache, model_kwargs)
        model_kwargs["prefill_chunk_size"] = config.prefill_chunk_size
    return PreparedCall(config=config, is_beam=is_beam, input_ids=input_ids, model_kwargs=model_kwargs,
                        tokens=tokens, processors=processors, sampler_filters=sampler_filters, stopping=stopping,
                        max_length=max_length, cache=cache,
                        encoder_outputs=model_kwargs.get("encoder_outputs"), speculation=speculation,
                        synced_gpus=synced_gpus)



# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def _reject_unsupported_arguments(model: Any, kwargs: dict) -> None:
    for name, feature in _UNSUPPORTED_GENERATE_ARGUMENTS.items():
        if kwargs.pop(name, None) is not None:
            raise UnsupportedByTurbogen(f"`{name}` is not supported: turbogen.generate does not implement "
                                        f"{feature}.", reason=name)
    kwargs.pop("trust_remote_code", None)
    if is_encoder_decoder(model) and kwargs.get("decoder_inputs_embeds") is not None:
        # transformers 4.57 forwards them beside the decoder ids it always builds, and the model refuses both.
        raise ValueError("`decoder_inputs_embeds` cannot be used with generate() on an encoder-decoder model: "
                         "the decoder is fed token ids (give `decoder_input_ids`); transformers 4.57 fails the same "
                         "way")


def _reject_unsupported_parameters(config: GenerationConfig, model_kwargs: dict) -> None:
    """Generation parameters of transformers 5 that turbogen does not implement raise instead of being ignored,
    whether set in the config (kept there as extra attributes) or passed as arguments."""
    for name, feature in _compat.UNSUPPORTED_TRANSFORMERS_5_PARAMETERS.items():
        if getattr(config, name, None) not in (None, False) or model_kwargs.get(name) not in (None, False):
            raise UnsupportedByTurbogen(f"`{name}` is not supported: turbogen.generate does not implement "
                                        f"{feature} (a transformers 5 parameter).", reason=name)
        model_kwargs.pop(name, None)


def _check_seed_count(config: GenerationConfig, prompts: int) -> None:
    """A list ``seed`` holds one seed per prompt (turbogen's per-row seeds)."""
    if isinstance(config.seed, (list, tuple)) and len(config.seed) != prompts:
        raise ValueError(f"`seed` is a list of {len(config.seed)} seeds for a batch of {prompts} prompts: give "
                         "one seed per prompt, or one int for the whole batch")


def _version_tuple(version: Optional[str]) -> tuple[int, ...]:
    """``"4.57.6"`` -> ``(4, 57, 6)``; the leading numeric components only."""
    return tuple(int(part) for part in re.findall(r"\d+", (version or "0").split("+")[0])[:3])


def resolve_generation_config(model: Any, generation_config: Any, use_model_defaults: Optional[bool],
                               kwargs: dict) -> tuple[GenerationConfig, dict]:
    """The effective config and the leftover model kwargs, with transformers v4.57's precedence:
    call kwargs > the given config's non-default values > the model's generation config > global defaults.

    Model defaults fill a given config only for models saved by transformers >= 4.50 (or with
    ``use_model_defaults=True``); older ones only lend their special tokens, as in transformers.

    transformers v4.57's deprecated rule for generation parameters set on ``model.config`` after loading is
    followed (see :func:`_generation_config_from_edited_model_config`): with no ``generation_config`` given,
    such edits apply, with a ``UserWarning``, and ``model.generation_config`` is replaced by the config rebuilt
    from ``model.config``, as transformers' ``generate`` does. (transformers 5 raises instead; turbogen keeps
    4.57's behaviour under either.)
    """
    if generation_config is None:
        rebuilt = _generation_config_from_edited_model_config(model)
        if rebuilt is not None:
            warnings.warn(
                "You have modified the pretrained model configuration to control generation: generation "
                "parameters set on `model.config` apply and replace `model.generation_config`. This strategy is "
                "deprecated (transformers 5 refuses it); set them on `model.generation_config` or pass them to "
                "generate() instead.",
                UserWarning,
                stacklevel=3,
            )
            model.generation_config = rebuilt
    model_config = getattr(model, "generation_config", None)
    model_defaults = as_generation_config(model_config) if model_config is not None else GenerationConfig()
    if generation_config is None:
        config = model_defaults.copy()
        if config.cache_implementation == "hybrid":  # transformers drops this legacy model default
            config.cache_implementation = None
    else:
        config = as_generation_config(generation_config).copy()
        model_version = _version_tuple(getattr(model_config, "transformers_version", None))
        if use_model_defaults is True or (use_model_defaults is None and model_version >= (4, 50)):
            global_defaults = GenerationConfig()
            for key, model_value in vars(model_defaults).items():
                if key.startswith("_") or key == "transformers_version":
                    continue
                if key == "cache_implementation" and model_value == "hybrid":
                    continue
                global_value = getattr(global_defaults, key, None)
                if getattr(config, key, None) == global_value and model_value != global_value:
                    setattr(config, key, model_value)
            if config.temperature == 0.0:
                config.do_sample = False
        else:
            for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
                if getattr(config, key) is None:
                    setattr(config, key, getattr(model_defaults, key))
    model_kwargs = config.update(**kwargs)
    for flag in ("output_attentions", "output_hidden_states"):
        if getattr(config, flag):
            model_kwargs[flag] = True
    return config, model_kwargs


def _generation_config_from_edited_model_config(model: Any) -> Any:
    """The generation config transformers v4.57 switches to when generation parameters were set on the model's
    main config after loading, else ``None``.

    That holds when all of these do: ``model.generation_config`` was derived from ``model.config``
    (``_from_model_config``) and is unchanged since (its ``_original_object_hash`` still matches); ``model.config``
    holds generation parameters (4.57's ``_get_non_default_generation_parameters``, or 5.x's
    ``_get_generation_parameters``); and the config rebuilt from ``model.config`` (``from_model_config`` of the
    generation config's own class) differs from ``model.generation_config``. Models without these transformers
    attributes never qualify.
    """
    current = getattr(model, "generation_config", None)
    main_config = getattr(model, "config", None)
    if current is None or main_config is None or not getattr(current, "_from_model_config", False):
        return None
    original_hash = getattr(current, "_original_object_hash", None)
    if original_hash is None or original_hash != hash(current):
        return None  # edited (or built) by hand since it was derived: that config is the user's choice
    find_parameters = (getattr(main_config, "_get_non_default_generation_parameters", None)
                       or getattr(main_config, "_get_generation_parameters", None))
    from_model_config = getattr(type(current), "from_model_config", None)
    if find_parameters is None or from_model_config is None or not find_parameters():
        return None
    rebuilt = from_model_config(main_config)
    return rebuilt if rebuilt != current else None


def text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def forward_parameters(model: Any) -> dict:
    return dict(inspect.signature(model.forward).parameters)


def accepts(model: Any, name: str) -> bool:
    return name in forward_parameters(model)


def _check_model_kwargs(model: Any, model_kwargs: dict) -> None:
    """Unknown keyword arguments (typos of generation parameters included) raise, as in transformers."""
    accepted = set(forward_parameters(model))
    prepare = getattr(model, "prepare_inputs_for_generation", None)
    if prepare is not None:
        accepted |= set(inspect.signature(prepare).parameters)
    try:
        from transformers.utils.generic import TransformersKwargs

        accepted |= set(TransformersKwargs.__optional_keys__)
    except ImportError:  # not a transformers model: its forward signature is all there is
        pass
    accepted |= {"input_ids", "attention_mask", "past_key_values", "use_cache"}
    unknown = [key for key, value in model_kwargs.items() if value is not None and key not in accepted]
    if unknown:
        raise ValueError(
            f"generate() got arguments that are neither generation parameters nor inputs of the model: {unknown} "
            "(check for typos)"
        )


def _token_tensor(value: Any, name: str) -> Optional[torch.Tensor]:
    if value is None:
        return None
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point() or tensor.numel() == 0:
        raise ValueError(f"`{name}` must be an integer token id (or a list of them), got {value!r}")
    return tensor.long()


def _special_tokens(config: GenerationConfig, has_attention_mask: bool) -> SpecialTokens:
    bos = _token_tensor(config.bos_token_id, "bos_token_id")
    eos = _token_tensor(config.eos_token_id, "eos_token_id")
    pad = _token_tensor(config.pad_token_id, "pad_token_id")
    if eos is not None:
        eos = eos.reshape(-1)
    if pad is None and eos is not None:
        if not has_attention_mask:
            logger.warning("Neither an attention mask nor `pad_token_id` was given; results may be unreliable "
                           "for padded inputs. Pass `attention_mask`.")
        pad = eos[0]
        logger.warning("Setting `pad_token_id` to `eos_token_id`:%d for open-end generation.", int(pad))
    return SpecialTokens(bos, eos, pad)


def _prompt_ids(model: Any, inputs: Any, tokens: SpecialTokens, model_kwargs: dict) -> tuple[torch.Tensor, dict]:
    """The prompt as a validated ``[batch, length]`` LongTensor (and the kwargs without ``input_ids``)."""
    kwarg_ids = model_kwargs.pop("input_ids", None)
    if inputs is not None and kwarg_ids is not None:
        raise ValueError("Both `inputs` and `input_ids` were given: pass the prompt only once.")
    ids = inputs if inputs is not None else kwarg_ids
    name = "inputs" if inputs is not None else "input_ids"
    if ids is None:
        if tokens.bos is None:
            raise ValueError("`bos_token_id` has to be defined when no `input_ids` are provided.")
        batch = next((v.shape[0] for v in model_kwargs.values() if isinstance(v, torch.Tensor)), 1)
        device = _model_device(model)
        return torch.full((batch, 1), int(tokens.bos), dtype=torch.long, device=device), model_kwargs
    if not isinstance(ids, torch.Tensor):
        ids, mask = _pad_token_lists(ids, tokens.pad, name, _model_device(model))
        if model_kwargs.get("attention_mask") is None:
            model_kwargs["attention_mask"] = mask
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape [batch, length], got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer token ids, got dtype {ids.dtype}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(ids.shape)}): give at least one token per row.")
    vocab_size = getattr(text_config(model), "vocab_size", None)
    low, high = torch.stack(torch.aminmax(ids)).tolist()  # one host sync for both bounds
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise ValueError(f"`{name}` holds token ids outside [0, {vocab_size}): min {low}, max {high}")
    mask = model_kwargs.get("attention_mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"`attention_mask` must be a tensor of the prompt's shape {tuple(ids.shape)}, got {shape}")
        if mask.device != ids.device:
            raise ValueError(f"`attention_mask` is on {mask.device} but `{name}` on {ids.device}")
    return ids.long(), model_kwargs


def _embeds_prompt(model: Any, inputs: Any, tokens: SpecialTokens, model_kwargs: dict) -> tuple[torch.Tensor, dict]:
    """The prompt ids of a call with ``inputs_embeds`` (``[batch, E, hidden]``, kept in ``model_kwargs``): the
    given ids, which must be the ``E`` embedded ones, else ``[batch, 0]`` (the output then holds only the new
    tokens, as in transformers). An ``attention_mask`` covers the ``E`` positions."""
    embeds = model_kwargs["inputs_embeds"]
    prepare = getattr(model, "prepare_inputs_for_generation", None)
    if prepare is None or "inputs_embeds" not in inspect.signature(prepare).parameters:
        raise ValueError(f"You passed `inputs_embeds` to generate(), but {type(model).__name__} does not forward "
                         "them in `prepare_inputs_for_generation`.")
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or not embeds.is_floating_point():
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"`inputs_embeds` must be a floating-point tensor [batch, length, hidden], got {shape}")
    if embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise ValueError(f"`inputs_embeds` is empty (shape {tuple(embeds.shape)}): give at least one position.")
    if inputs is not None or model_kwargs.get("input_ids") is not None:
        input_ids, model_kwargs = _prompt_ids(model, inputs, tokens, model_kwargs)
        if input_ids.shape != embeds.shape[:2]:
            raise UnsupportedByTurbogen(
                f"`inputs_embeds` {tuple(embeds.shape[:2])} and the prompt ids {tuple(input_ids.shape)} cover "
                "different positions: with both, the ids must be the embedded ones.",
                reason="inputs_embeds with input_ids of another shape")
        return input_ids, model_kwargs
    model_kwargs.pop("input_ids", None)
    mask = model_kwargs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != embeds.shape[:2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`attention_mask` must be a tensor of shape {tuple(embeds.shape[:2])} (that of "
                         f"`inputs_embeds` without its hidden size), got {shape}")
    return torch.empty(embeds.shape[0], 0, dtype=torch.long, device=embeds.device), model_kwargs


def _check_prefill_chunking(config: GenerationConfig, cache: Any, model_kwargs: dict) -> None:
    """``prefill_chunk_size`` needs a positive size and a cache (transformers' rules); with ``inputs_embeds``, or
    a cache that already holds positions, transformers' chunking does not do what its unchunked prefill does, so
    turbogen refuses both."""
    size = config.prefill_chunk_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`prefill_chunk_size` must be a positive int, got {size!r}")
    if cache is None:
        raise ValueError("Cannot use prefill chunking without a cache: `prefill_chunk_size` needs `use_cache=True`.")
    if model_kwargs.get("inputs_embeds") is not None:
        raise UnsupportedByTurbogen("`prefill_chunk_size` with `inputs_embeds` is not supported.",
                                    reason="prefill_chunk_size with inputs_embeds")
    # transformers 4.57 chunks from position 0 even when the cache already holds the prompt's start.
    if int(cache.get_seq_length()) > 0:
        raise UnsupportedByTurbogen("`prefill_chunk_size` with a `past_key_values` that already holds "
                                    "positions is not supported.",
                                    reason="prefill_chunk_size with a filled past_key_values")


def _pad_token_lists(rows: Any, pad: Optional[torch.Tensor], name: str, device: torch.device):
    """Left-pad a list of token-id lists into ``(input_ids, attention_mask)``."""
    try:
        rows = [[int(token) for token in row] for row in rows]
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a LongTensor or a list of token-id lists") from error
    if not rows or not all(rows):
        raise ValueError(f"`{name}` is empty: give at least one token per row.")
    width = max(len(row) for row in rows)
    if any(len(row) != width for row in rows) and pad is None:
        raise ValueError(f"The rows of `{name}` differ in length and need padding, but no `pad_token_id` "
                         "(nor `eos_token_id`) is set.")
    fill = 0 if pad is None else int(pad)
    ids = torch.tensor([[fill] * (width - len(row)) + row for row in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long,
                        device=device)
    return ids, mask


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _warn_if_right_padded(input_ids: torch.Tensor, pad: Optional[torch.Tensor]) -> None:
    if pad is not None and input_ids.shape[0] > 1 and bool((input_ids[:, -1] == pad).any()):
        logger.warning("Right-padding was detected in a decoder-only batch; results will be wrong. "
                       "Pad on the left (`padding_side='left'`).")


def _infer_attention_mask(input_ids: torch.Tensor, tokens: SpecialTokens) -> torch.Tensor:
    """transformers' rule: mask the pad tokens if the pad id occurs and differs from every EOS id."""
    if tokens.pad is None:
        return torch.ones_like(input_ids)
    is_pad = input_ids == tokens.pad
    pad_is_eos = tokens.eos is not None and bool(torch.isin(tokens.eos, tokens.pad).any())
    if bool(is_pad.any()) and not pad_is_eos:
        return (~is_pad).long()
    return torch.ones_like(input_ids)


def _is_batch_tensor(key: str, value: Any) -> bool:
    return isinstance(value, torch.Tensor) and key != "cache_position" and value.dim() > 0


def _resolve_lengths(model: Any, config: GenerationConfig, call_kwargs: dict, prompt_length: int,
                     embeds_length: Optional[int] = None) -> None:
    """Fix ``max_length``/``min_length`` as transformers v4.57 does, and check them. ``embeds_length``: the
    positions of ``inputs_embeds``; when they are not the prompt's ids' (embeddings only), ``max_length`` and
    ``min_length`` count them and are corrected to count new tokens (``*_new_tokens`` already do)."""
    embeds_only = embeds_length is not None and embeds_length != prompt_length
    default_max_length = call_kwargs.get("max_length") is None and config.max_length is not None
    default_min_length = call_kwargs.get("min_length") is None and config.min_length is not None
    if config.max_new_tokens is not None:
        if not default_max_length and config.max_length is not None:
            logger.warning("Both `max_new_tokens` (=%s) and `max_length` (=%s) are set; `max_new_tokens` takes "
                           "precedence.", config.max_new_tokens, config.max_length)
        config.max_length = config.max_new_tokens + prompt_length
    elif embeds_only:
        config.max_length -= embeds_length
    elif default_max_length and config.max_length == GenerationConfig().max_length:
        config.max_length = config.max_length + prompt_length
        max_positions = getattr(text_config(model), "max_position_embeddings", None)
        if max_positions is not None:
            config.max_length = min(config.max_length, max_positions)
    if config.min_new_tokens is not None:
        if not default_min_length:
            logger.warning("Both `min_new_tokens` (=%s) and `min_length` (=%s) are set; `min_new_tokens` takes "
                           "precedence.", config.min_new_tokens, config.min_length)
        config.min_length = config.min_new_tokens + prompt_length
    elif embeds_only:
        config.min_length = max(config.min_length - embeds_length, 0)

    # As in transformers, this runs after the resolution above, so it only fires when the default 20 survived.
    if default_max_length and config.max_new_tokens is None and config.max_length == 20:
        warnings.warn("Using the model-agnostic default `max_length` (=20 new tokens) to control the generation "
                      "length; set `max_new_tokens` instead.", UserWarning, stacklevel=4)
    if prompt_length >= config.max_length:
        raise ValueError(f"Input length of input_ids is {prompt_length}, but `max_length` is set to "
                         f"{config.max_length}: increase `max_length` or, better, set `max_new_tokens`.")
    if config.min_length is not None and config.min_length > config.max_length:
        warnings.warn(f"Unfeasible length constraints: `min_length` ({config.min_length}) is larger than the "
                      f"maximum possible length ({config.max_length}).", UserWarning, stacklevel=4)
    if config.min_new_tokens is not None and config.min_new_tokens + prompt_length > config.max_length:
        warnings.warn(f"Unfeasible length constraints: `min_new_tokens` ({config.min_new_tokens}) plus the prompt "
                      f"length ({prompt_length}) is larger than the maximum possible length ({config.max_length}).",
                      UserWarning, stacklevel=4)


def _compiles_over_fresh_static_cache(config: GenerationConfig, model_kwargs: dict, device: torch.device) -> bool:
    """Whether this call compiles over a static cache ``generate`` builds (then the capacity is bucketed and the
    cache kept on the model: :mod:`turbogen.generation.compiled`)."""
    from .compiled import compile_decision

    return (model_kwargs.get("past_key_values") is None and config.use_cache is not False
            and compile_decision(config, None, device) is not None)


def _prepare_cache(model: Any, config: GenerationConfig, model_kwargs: dict, rows: int, max_length: int) -> Any:
    """The KV cache for this call: the user's ``past_key_values``, else a fresh one per ``cache_implementation``
    and ``cache_config`` (:func:`turbogen.cache.make_cache`: the cache transformers 4.57 builds for that name,
    turbogen's static cache for ``"static"``; ``rows`` rows and ``max_length - 1`` positions, as transformers),
    or ``None`` when ``use_cache=False`` or the model manages its own cache."""
    user_cache = model_kwargs.pop("past_key_values", None)
    if user_cache is not None:
        if config.cache_implementation is not None:
            raise ValueError("Both `cache_implementation` and `past_key_values` were given: pass only one.")
        if isinstance(user_cache, tuple):
            user_cache = _compat.dynamic_cache_from_legacy(user_cache)
        return user_cache
    if config.use_cache is False:  # every cache_implementation, "paged" included, is then ignored (a warning)
        return None
    if config.cache_implementation == "paged":
        _refuse_for_paged_cache(config)
    # 4.45 defines it as an instance method (False for models returning only legacy tuples, e.g. GPT-2).
    if _compat.supports_default_dynamic_cache(model) is False:
        return None
    from ..cache import make_cache

    # The last generated token is never fed back, hence one position less than the longest sequence.
    return make_cache(config.cache_implementation, model, batch_size=rows, max_cache_len=max_length - 1,
                      cache_config=config.cache_config)


def _refuse_for_paged_cache(config: GenerationConfig) -> None:
    """What ``cache_implementation="paged"`` (turbogen's paged KV cache, run by
    :class:`~turbogen.generation.paged_runner.PagedRunner`: greedy search, sampling, beam search) cannot serve,
    refused before the cache is built; the runner refuses the rest (model kinds, recorded attentions, inputs)."""
    def refuse(what: str, reason: str) -> None:
        raise UnsupportedByTurbogen(f'cache_implementation="paged" does not support {what}.',
                                    reason=f"cache_implementation='paged' with {reason}")

    if config.get_generation_mode() == GenerationMode.CONTRASTIVE_SEARCH:
        refuse("contrastive search", "contrastive search")
    if config.prefill_chunk_size is not None:
        refuse("`prefill_chunk_size`", "prefill_chunk_size")


# ----------------------------------------------------------------------------------------------------------
# Encoder-decoder models
# ----------------------------------------------------------------------------------------------------------


def is_encoder_decoder(model: Any) -> bool:
    """Whether ``model`` is an encoder-decoder (``model.config.is_encoder_decoder``)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def encoder_input_name(model: Any) -> str:
    """The name of the tensor an encoder-decoder's encoder reads, as transformers 4.57 picks it: the encoder's
    ``main_input_name`` where the model has an ``encoder`` reading another name than the model's own
    (SpeechEncoderDecoderModel), else the model's ``main_input_name`` (``input_ids`` for T5 / BART,
    ``input_features`` for Whisper, ``pixel_values`` for a vision encoder-decoder)."""
    own = getattr(model, "main_input_name", "input_ids")
    encoder = getattr(model, "encoder", None)
    return getattr(encoder, "main_input_name", own) if encoder is not None else own


def _prepare_encoder_decoder(model: Any, inputs: Any, tokens: SpecialTokens, config: GenerationConfig,
                             model_kwargs: dict) -> tuple[torch.Tensor, Optional[torch.Tensor], dict]:
    """transformers v4.57's encoder-decoder preparation, steps in its order:

    1. The encoder's input: ``inputs`` or the keyword named :func:`encoder_input_name` (not both). For an
       encoder reading ``input_ids``: the token ids (a ``bos_token_id`` column when none are given), or
       ``inputs_embeds`` in their place (not both); for another encoder (``input_features``,
       ``pixel_values``...) that tensor, required unless ``encoder_outputs`` are given. The batch size is its
       first dimension (the encoder outputs' when they are given).
    2. Its attention mask, unless given or ``encoder_outputs`` are given, when the model's ``forward`` takes
       one: token ids' is inferred from padding (as for a decoder-only prompt); any other input's is ones
       over its first two dimensions (4.57's default; the encoder and decoder calls receive it).
    3. One encoder run on that input (with the model kwargs meant for the encoder), unless ``encoder_outputs``
       are given.
    4. The decoder's prompt: ``decoder_input_ids`` (or, for an encoder not reading ``input_ids``, an
       ``input_ids`` keyword), with ``decoder_start_token_id`` (else ``bos_token_id``; an int or one per row)
       put in front unless some row already starts with it (``decoder_attention_mask`` then grows a leading
       1; never for Whisper and Donut models, as 4.57), else that start token alone.

    Returns ``(decoder_input_ids, encoder_input_ids or None, model_kwargs)`` (``encoder_input_ids``: the
    encoder's token ids, which the encoder-side processors read; ``None`` for other inputs), ``model_kwargs``
    holding ``encoder_outputs`` and the encoder's ``attention_mask`` for every decoder call (rows not yet
    expanded), without the encoder's input."""
    model_kwargs = dict(model_kwargs)
    if model_kwargs.get("past_key_values") is not None:
        raise UnsupportedByTurbogen("`past_key_values` is not supported for encoder-decoder models.",
                                    reason="past_key_values with an encoder-decoder model")
    name = encoder_input_name(model)
    embeds = model_kwargs.pop("inputs_embeds", None) if name == "input_ids" else None
    if embeds is not None:
        if inputs is not None or model_kwargs.get("input_ids") is not None:
            raise ValueError("You passed `inputs_embeds` and `input_ids` to generate(): the encoder reads one of "
                             "them, pick one.")
        inputs, name = embeds, "inputs_embeds"
    elif name != "input_ids":
        given = model_kwargs.pop(name, None)
        if inputs is not None and given is not None:
            raise ValueError(f"Both `inputs` and `{name}` were given: pass the encoder's input only once.")
        inputs = inputs if inputs is not None else given
    encoder_outputs = model_kwargs.pop("encoder_outputs", None)
    encoder_ids = None
    if encoder_outputs is not None:
        encoder_outputs = _as_encoder_output(encoder_outputs)
        batch = encoder_outputs["last_hidden_state"].shape[0]
        device = encoder_outputs["last_hidden_state"].device
        if name == "input_ids" and (inputs is not None or model_kwargs.get("input_ids") is not None):
            encoder_ids, model_kwargs = _prompt_ids(model, inputs, tokens, model_kwargs)
            if encoder_ids.shape[0] != batch:
                raise ValueError(f"`encoder_outputs` hold {batch} rows but the encoder's input ids "
                                 f"{encoder_ids.shape[0]}")
    else:
        if name == "input_ids":
            encoder_input, model_kwargs = _prompt_ids(model, inputs, tokens, model_kwargs)
            encoder_ids = encoder_input
        else:
            encoder_input = _encoder_tensor(inputs, name)
        batch, device = encoder_input.shape[0], encoder_input.device
        if model_kwargs.get("attention_mask") is None and accepts(model, "attention_mask"):
            default_mask = _default_encoder_mask(name, encoder_input, model_kwargs, tokens.to(device))
            if default_mask is not None:
                model_kwargs["attention_mask"] = default_mask
        encoder_outputs = _run_encoder(model, name, encoder_input, config, model_kwargs)
    if encoder_ids is None and ((config.encoder_no_repeat_ngram_size or 0) > 0
                                or config.encoder_repetition_penalty not in (None, 1.0)):
        raise UnsupportedByTurbogen("`encoder_no_repeat_ngram_size` and `encoder_repetition_penalty` need the "
                                    "encoder's input token ids (give them as `input_ids`, also with "
                                    "`encoder_outputs`).",
                                    reason="encoder processors without encoder input ids")
    model_kwargs["encoder_outputs"] = encoder_outputs
    if name != "input_ids" and "decoder_input_ids" not in model_kwargs and "input_ids" in model_kwargs:
        model_kwargs["decoder_input_ids"] = model_kwargs.pop("input_ids")  # 4.57 reads them as the decoder's
    decoder_ids = _decoder_prompt(config, tokens, model_kwargs, batch, device,
                                  add_start=not _keeps_decoder_ids_as_given(model))
    return decoder_ids, encoder_ids, model_kwargs


def _encoder_tensor(value: Any, name: str) -> torch.Tensor:
    """The encoder input ``name`` (not token ids), checked: a tensor with a batch dimension of at least one row."""
    if value is None:
        raise ValueError(f"generate() needs the encoder's input `{name}` (or `encoder_outputs`).")
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] == 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"`{name}` must be a tensor [batch, ...] with at least one row, got {shape}")
    return value


def _default_encoder_mask(name: str, encoder_input: torch.Tensor, model_kwargs: dict,
                          tokens: SpecialTokens) -> Optional[torch.Tensor]:
    """transformers 4.57's attention mask when none is given: inferred from padding for token ids (an
    ``input_ids`` keyword, the decoder's, takes the encoder input's place there, as in 4.57), else ones over
    the input's first two dimensions. Under transformers 5.x, which gives an encoder-decoder no default mask,
    None instead of the ones (the same attention, and the model calls 5.x makes); token ids' inferred mask is
    kept (4.57's behaviour: with padding, 5.x's outputs differ)."""
    ids = model_kwargs.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] > 0:
        encoder_input = ids
    if encoder_input.dim() == 2 and encoder_input.dtype in (torch.int32, torch.int64):
        return _infer_attention_mask(encoder_input, tokens)
    if _compat._is_transformers_5():
        return None
    return torch.ones(encoder_input.shape[:2], dtype=torch.long, device=encoder_input.device)


def _keeps_decoder_ids_as_given(model: Any) -> bool:
    """transformers 4.57 never puts the start token in front of the given decoder ids of Whisper and Donut models
    (their prompts hold task tokens in its place)."""
    config = model.config
    if "donut" in type(model).__name__.lower() or getattr(config, "model_type", None) == "whisper":
        return True
    encoder = getattr(config, "encoder", None)
    return (getattr(config, "model_type", None) == "vision-encoder-decoder"
            and "donut" in str(getattr(encoder, "model_type", "")).lower())


def _as_encoder_output(encoder_outputs: Any) -> Any:
    """User ``encoder_outputs`` as a ``ModelOutput`` (a tuple is ``(last_hidden_state, hidden_states,
    attentions)``, as the models read one)."""
    from transformers.modeling_outputs import BaseModelOutput

    if isinstance(encoder_outputs, (tuple, list)) and not hasattr(encoder_outputs, "keys"):
        fields = ("last_hidden_state", "hidden_states", "attentions")
        encoder_outputs = BaseModelOutput(**dict(zip(fields, encoder_outputs)))
    if not hasattr(encoder_outputs, "keys") or not isinstance(encoder_outputs.get("last_hidden_state"),
                                                               torch.Tensor):
        raise ValueError("`encoder_outputs` must be the encoder's output (a ModelOutput with a "
                         f"`last_hidden_state` tensor), got {type(encoder_outputs).__name__}")
    return encoder_outputs


def _run_encoder(model: Any, name: str, encoder_input: torch.Tensor, config: GenerationConfig,
                 model_kwargs: dict) -> Any:
    """One encoder pass over ``encoder_input`` (passed as ``name``) with the model kwargs meant for it (none named
    ``decoder_*``, ``cross_attn*`` or ``use_cache``; only those its ``forward`` takes unless it takes
    ``**kwargs``)."""
    encoder = model.get_encoder()
    parameters = inspect.signature(encoder.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    arguments = {key: value for key, value in model_kwargs.items()
                 if not key.startswith(("decoder_", "cross_attn", "use_cache"))
                 and (takes_any or key in parameters)}
    arguments["output_attentions"] = config.output_attentions
    arguments["output_hidden_states"] = config.output_hidden_states
    arguments["return_dict"] = True
    arguments[name] = encoder_input
    return encoder(**arguments)


def _decoder_prompt(config: GenerationConfig, tokens: SpecialTokens, model_kwargs: dict, batch: int,
                    device: torch.device, add_start: bool = True) -> torch.Tensor:
    """The decoder's prompt (see :func:`_prepare_encoder_decoder`); pops ``decoder_input_ids`` from
    ``model_kwargs`` and updates ``decoder_attention_mask`` there when the start token is put in front (never
    without ``add_start``)."""
    start = _token_tensor(config.decoder_start_token_id, "decoder_start_token_id")
    if start is None:
        start = tokens.bos
    if start is None:
        raise ValueError("`decoder_start_token_id` or `bos_token_id` has to be defined for encoder-decoder "
                         "generation.")
    start = start.to(device)
    if start.dim() == 1:
        if start.shape[0] != batch:
            raise ValueError(f"`decoder_start_token_id` is a list of {start.shape[0]} ids for a batch of {batch}: "
                             "give one per row, or one int")
        start = start.view(-1, 1)
    elif start.dim() == 0:
        start = start.expand(batch, 1)
    else:
        raise ValueError(f"`decoder_start_token_id` must be an int or a list of ints, got shape "
                         f"{tuple(start.shape)}")
    decoder_ids = model_kwargs.pop("decoder_input_ids", None)
    if decoder_ids is None:
        return start.contiguous()
    if not isinstance(decoder_ids, torch.Tensor) or decoder_ids.dim() != 2 or decoder_ids.shape[0] != batch:
        shape = tuple(decoder_ids.shape) if isinstance(decoder_ids, torch.Tensor) else type(decoder_ids).__name__
        raise ValueError(f"`decoder_input_ids` must be a LongTensor [batch={batch}, length], got {shape}")
    if decoder_ids.shape[1] == 0 or decoder_ids.dtype.is_floating_point or decoder_ids.dtype == torch.bool:
        raise ValueError(f"`decoder_input_ids` must hold integer token ids, at least one per row; got dtype "
                         f"{decoder_ids.dtype}, shape {tuple(decoder_ids.shape)}")
    decoder_ids = decoder_ids.long()
    mask = model_kwargs.get("decoder_attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != decoder_ids.shape):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`decoder_attention_mask` must be a tensor of the shape of `decoder_input_ids` "
                         f"{tuple(decoder_ids.shape)}, got {shape}")
    # transformers' rule: the start token is put in front only when no row starts with it.
    if add_start and bool((decoder_ids[:, 0] != start[:, 0]).all()):
        decoder_ids = torch.cat([start.to(decoder_ids.dtype), decoder_ids], dim=-1)
        if mask is not None:
            model_kwargs["decoder_attention_mask"] = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=-1)
    return decoder_ids


def _expand_encoder_outputs(encoder_outputs: Any, expand: int) -> Any:
    """A copy of ``encoder_outputs`` whose tensor fields have each row repeated ``expand`` times (tuples of
    tensors, such as the encoder's per-layer attentions, are left as they are, as transformers does)."""
    fields = {key: value.repeat_interleave(expand, dim=0) if isinstance(value, torch.Tensor) else value
              for key, value in encoder_outputs.items()}
    return type(encoder_outputs)(**fields)


def _prepare_encoder_decoder_cache(model: Any, config: GenerationConfig, model_kwargs: dict, max_length: int) -> Any:
    """The cache of an encoder-decoder call, as transformers v4.57 builds it: an ``EncoderDecoderCache`` of a
    self-attention and a cross-attention cache (the latter filled once, by the first decoder call).
    ``cache_implementation`` ``None`` / ``"dynamic"``: two ``DynamicCache``; ``"static"``: two transformers
    ``StaticCache``, of ``max_length - 1`` positions and of the encoder's length. ``None`` with
    ``use_cache=False``. Other kinds are not supported."""
    if _compat.is_transformers_4_45():  # its T5/BART-style models keep legacy tuple caches only
        raise UnsupportedByTurbogen("encoder-decoder generation is not supported with transformers 4.45; use "
                                    "transformers >= 4.57 for it",
                                    reason="an encoder-decoder model with transformers 4.45")
    if config.use_cache is False:
        return None
    if config.cache_implementation not in (None, "dynamic", "static"):
        raise UnsupportedByTurbogen(f"cache_implementation={config.cache_implementation!r} is not supported for "
                                    "encoder-decoder models (only 'dynamic' and 'static').",
                                    reason=f"cache_implementation={config.cache_implementation!r} with an "
                                           "encoder-decoder model")
    from transformers import DynamicCache, EncoderDecoderCache, StaticCache

    decoder_config = text_config(model)
    if config.cache_implementation == "static":
        encoder_length = model_kwargs["encoder_outputs"]["last_hidden_state"].shape[1]
        return EncoderDecoderCache(StaticCache(config=decoder_config, max_cache_len=max_length - 1),
                                   StaticCache(config=decoder_config, max_cache_len=encoder_length))
    return EncoderDecoderCache(DynamicCache(config=decoder_config), DynamicCache(config=decoder_config))


# ----------------------------------------------------------------------------------------------------------
# Speculative decoding (assisted generation)
# ----------------------------------------------------------------------------------------------------------

#: transformers 4.57's global defaults of the assistant settings: a call value equal to them defers to the
#: assistant model's generation config, where transformers reads these settings.
_ASSISTANT_DEFAULTS = {"num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant",
                       "assistant_confidence_threshold": 0.4}
#: The cache kinds speculation runs on (each row's cache must be cropped back after rejected drafts).
_SPECULATION_CACHES = (None, "dynamic", "dynamic_full", "static")
#: Positions a static cache holds for speculation beyond the longest sequence and the drafts' headroom.
_STATIC_CACHE_SLACK = 32


@dataclasses.dataclass
class SpeculationPlan:
    """How an assisted-generation call drafts (see :func:`plan_speculation`).

    Attributes:
        kind: ``"prompt_lookup"``, ``"assistant"``, ``"early_exit"`` or ``"universal"`` (an assistant with
            another tokenizer).
        num_tokens: drafts per step (``prompt_lookup_num_tokens``, else ``num_assistant_tokens``).
        schedule, confidence_threshold: the assistant's ``num_assistant_tokens_schedule`` and
            ``assistant_confidence_threshold``; for prompt lookup the call's schedule (turbogen's extension:
            adaptive draft counts), default ``"constant"`` as transformers.
        max_matching_ngram_size: prompt lookup's (default 2).
        early_exit: ``assistant_early_exit``.
        assistant_model, assistant_tokenizer, tokenizer: as given to ``generate``.
        assistant_config: the generation config the assistant settings come from (the assistant's; the
            model's own for early exit), where a ``"heuristic"`` schedule leaves its last value.
        draft_limit: the most drafts any step proposes; ``headroom``: positions the caches hold beyond
            ``max_length`` for them.
    """

    kind: str
    num_tokens: int
    schedule: str = "constant"
    confidence_threshold: float = 0.0
    max_matching_ngram_size: int = 2
    early_exit: Optional[int] = None
    assistant_model: Any = None
    assistant_tokenizer: Any = None
    tokenizer: Any = None
    assistant_config: Any = None
    draft_limit: int = 0

    @property
    def headroom(self) -> int:
        return self.draft_limit + 1


def plan_speculation(model: Any, config: GenerationConfig, model_kwargs: dict, assistant_model: Any,
                     assistant_tokenizer: Any, tokenizer: Any) -> SpeculationPlan:
    """The drafting of an assisted-generation call, with transformers 4.57's precedence (early exit, then prompt
    lookup, then an assistant with another tokenizer, then an assistant model) and checks; ``ValueError`` for
    invalid settings, :class:`~turbogen.errors.UnsupportedByTurbogen` for what turbogen does not speculate on.

    The assistant settings (``num_assistant_tokens``, ``num_assistant_tokens_schedule``,
    ``assistant_confidence_threshold``) come from the assistant model's generation config (the model's own for
    early exit), as in transformers, unless the call sets them to something other than the global default
    (transformers ignores the call's values there; turbogen honours them).
    """
    from .candidates import DraftSchedule, check_draft_count

    def refuse(what: str, reason: str) -> None:
        raise UnsupportedByTurbogen(f"speculative decoding (assisted generation) does not support {what}.",
                                    reason=f"assisted generation with {reason}")

    if is_encoder_decoder(model):
        refuse("encoder-decoder models", "an encoder-decoder model")
    if config.use_cache is False:
        raise ValueError("assisted generate requires `use_cache=True`")
    if config.output_attentions or config.output_hidden_states:
        refuse("`output_attentions` / `output_hidden_states`", "output_attentions or output_hidden_states")
    for name in ("inputs_embeds", "position_ids"):
        if model_kwargs.get(name) is not None:
            refuse(f"`{name}`", name)
    if config.guidance_scale is not None and config.guidance_scale != 1:
        refuse("classifier-free guidance (`guidance_scale`), whose processor runs a model it cannot roll back",
               "guidance_scale")
    if config.cache_implementation not in _SPECULATION_CACHES:
        refuse(f"cache_implementation={config.cache_implementation!r} (only the dynamic and static caches, which "
               "can be cropped)", f"cache_implementation={config.cache_implementation!r}")
    _refuse_own_input_preparation(model, refuse)

    if config.assistant_early_exit is not None:
        check_draft_count(config.assistant_early_exit, "assistant_early_exit")
        plan = SpeculationPlan(kind="early_exit", num_tokens=0, early_exit=int(config.assistant_early_exit),
                               assistant_model=model, assistant_config=getattr(model, "generation_config", None))
    elif config.prompt_lookup_num_tokens is not None:
        check_draft_count(config.prompt_lookup_num_tokens, "prompt_lookup_num_tokens")
        ngram = config.max_matching_ngram_size
        if ngram is not None:
            check_draft_count(ngram, "max_matching_ngram_size")
        num = int(config.prompt_lookup_num_tokens)
        # turbogen's extension: the call's schedule adapts prompt lookup's draft counts (default: constant).
        schedule = config.num_assistant_tokens_schedule or "constant"
        DraftSchedule(1, num, schedule)  # validates it
        return SpeculationPlan(kind="prompt_lookup", num_tokens=num, max_matching_ngram_size=int(ngram or 2),
                               schedule=schedule, draft_limit=num)
    else:
        if assistant_model is None:
            raise ValueError("assisted generation needs `assistant_model`, `prompt_lookup_num_tokens` or "
                             "`assistant_early_exit`")
        if not hasattr(assistant_model, "config") or not callable(assistant_model):
            raise ValueError(f"`assistant_model` must be a causal LM, got {type(assistant_model).__name__}")
        if is_encoder_decoder(assistant_model):
            refuse("encoder-decoder assistants", "an encoder-decoder assistant")
        _refuse_own_input_preparation(assistant_model, refuse)
        doc = "(see https://huggingface.co/docs/transformers/en/generation_strategies#universal-assisted-decoding)"
        same_vocab = (getattr(text_config(model), "vocab_size", None)
                      == getattr(text_config(assistant_model), "vocab_size", None))
        if same_vocab and assistant_tokenizer is not None:
            raise ValueError("`assistant_tokenizer` is not required when the main and assistant models use the same "
                             f"tokenizer. Please omit `assistant_tokenizer` from `generate()` {doc}.")
        if not same_vocab and (tokenizer is None or assistant_tokenizer is None):
            raise ValueError("The main and assistant models have different tokenizers. Please provide `tokenizer` "
                             f"and `assistant_tokenizer` to `generate()` {doc}.")
        kind = "assistant"
        if not same_vocab:
            kind = "universal"
            try:
                from .universal import UniversalAssistantCandidates  # noqa: F401
            except ImportError:
                refuse("an assistant with another tokenizer (universal assisted generation) yet",
                       "an assistant with another tokenizer")
        plan = SpeculationPlan(kind=kind, num_tokens=0, assistant_model=assistant_model,
                               assistant_tokenizer=assistant_tokenizer, tokenizer=tokenizer,
                               assistant_config=getattr(assistant_model, "generation_config", None))
    plan.num_tokens = _assistant_setting(config, plan.assistant_config, "num_assistant_tokens")
    check_draft_count(plan.num_tokens, "num_assistant_tokens")
    plan.num_tokens = int(plan.num_tokens)
    plan.schedule = _assistant_setting(config, plan.assistant_config, "num_assistant_tokens_schedule")
    threshold = _assistant_setting(config, plan.assistant_config, "assistant_confidence_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise ValueError(f"`assistant_confidence_threshold` must be a number in [0, 1], got {threshold!r}")
    plan.confidence_threshold = float(threshold or 0.0)
    plan.draft_limit = DraftSchedule(1, plan.num_tokens, plan.schedule).limit  # validates the schedule
    return plan


def _assistant_setting(config: GenerationConfig, assistant_config: Any, name: str) -> Any:
    """The call's value of an assistant setting when it differs from the global default, else the assistant
    generation config's (transformers reads it there), else the default."""
    value = getattr(config, name, None)
    default = _ASSISTANT_DEFAULTS[name]
    if value is not None and value != default:
        return value
    stored = getattr(assistant_config, name, None) if assistant_config is not None else None
    return default if stored is None else stored


def _refuse_own_input_preparation(model: Any, refuse: Callable[[str, str], None]) -> None:
    """Speculation feeds several positions per call, which only turbogen's own input preparation does."""
    if _compat.prepares_own_inputs(model):
        refuse(f"models with their own `prepare_inputs_for_generation` ({type(model).__name__})",
               "a model's own prepare_inputs_for_generation")


def _speculation_cache(model: Any, config: GenerationConfig, model_kwargs: dict, rows: int, max_length: int) -> Any:
    """The target's cache for speculation: the user's ``past_key_values`` if it can be cropped; else a
    ``DynamicCache`` keeping every layer whole (transformers' choice for assisted generation, so that
    sliding-window models can be cropped too), or turbogen's static cache (``cache_implementation="static"``)
    of ``max_length - 1`` positions (``max_length`` includes the drafts' headroom)."""
    user_cache = model_kwargs.get("past_key_values")
    if user_cache is not None:
        cache = _prepare_cache(model, config, model_kwargs, rows, max_length)
        if not _compat.can_crop_cache(cache):
            raise UnsupportedByTurbogen("speculative decoding needs a cache it can crop; the given "
                                        f"`past_key_values` ({type(cache).__name__}) cannot be cropped.",
                                        reason="assisted generation with an uncroppable past_key_values")
        return cache
    if config.cache_implementation == "static":
        # Slack beyond the drafts' headroom: the runner compacts a full static cache's holes (rows cropped back
        # after rejected drafts), which gets frequent when the cache is barely long enough.
        return _prepare_cache(model, config, model_kwargs, rows, max_length + _STATIC_CACHE_SLACK)
    model_kwargs.pop("past_key_values", None)
    if config.use_cache is False:
        return None
    from transformers import DynamicCache

    return DynamicCache()
