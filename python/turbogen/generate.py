"""``turbogen.generate``: transformers v4.57's ``generate()`` for decoder-only causal LMs, built for speed.

What is reproduced exactly (same tokens as transformers for greedy search and beam search, same scores):
the resolution of the generation config (call arguments over a given config over the model's defaults over
global defaults, with the rule that model defaults only fill values the user left at the global default),
input and attention-mask preparation, ``max_length``/``max_new_tokens``/``min_length``/``min_new_tokens``,
logits processors, stopping criteria, padding of finished rows, beam search with its early-stopping rules,
and the model calls themselves (same inputs, positions, cache and ``logits_to_keep``, hence the same
numbers). Multinomial sampling uses turbogen's counter-based sampler instead of ``torch.multinomial`` (same
distribution, reproducible draws: see "Sampling" below).

How the loop is organised (after gpt-fast): :func:`prefill` runs the prompt and picks the first token,
:func:`decode_one_token` feeds one token and picks the next, :func:`decode_n_tokens` repeats that until
the stopping criteria end generation. Per step there is no Python loop over rows, no reallocation of the
output (tokens are written by position into a ``[rows, max_length]`` buffer), no recomputation of positions
or masks (precomputed tables, sliced), one cache update by the model, and at most one host read of the
"all rows finished" flag. Where the model runs on an accelerator and nothing user-supplied could observe it,
that flag is read one step late so the host never waits on the device while it could queue work; the
rare extra step is then discarded, leaving results identical. Only the last position's logits are computed
when the model supports ``logits_to_keep``.

KV cache: transformers' ``DynamicCache`` by default; ``cache_implementation="static"`` builds turbogen's
:class:`~turbogen.cache.StaticKVCache` for ``batch * max(num_beams, num_return_sequences)`` rows and
``max_length - 1`` positions (the last token is never fed back), written in place by ``cache_position``; other
names raise ``ValueError``. Results are those of the dynamic cache. The static cache exists for
``torch.compile`` and CUDA graphs: run eagerly, transformers' models rebuild an explicit mask over every
cache slot at each step, which costs more than the dynamic cache's growth.

Sampling: every sequence has its own 64-bit seed, ``seed + row`` where ``seed`` is
``generation_config.seed`` or, if that is ``None``, one number drawn from torch's global RNG per call
(so ``torch.manual_seed`` makes runs reproducible). The draw at step ``t`` uses offset ``t``
(:func:`turbogen.ops.sample`, DESIGN.md's determinism contract). When the processors end with the
temperature/top-k/top-p/min-p warpers and the scores are not requested, those are fused into the sampler.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import re
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import torch

from . import _transformers_compat as _compat
from . import beam_search as _beam
from .config import GenerationConfig, GenerationMode, as_generation_config
from .outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from .stopping import StoppingPlan, build_stopping_criteria

logger = logging.getLogger(__name__)

__all__ = ["FINISH_CHECK_LAG", "compute_transition_scores", "generate"]

# Arguments of transformers' generate() that are not generation parameters nor model inputs.
_UNSUPPORTED_GENERATE_ARGUMENTS = {
    "assistant_model": "assisted generation",
    "assistant_tokenizer": "assisted generation",
    "custom_generate": "custom generation methods",
}
_UNSUPPORTED_MODES = {
    GenerationMode.ASSISTED_GENERATION: "assisted generation (`assistant_model`, `prompt_lookup_num_tokens`, "
    "`assistant_early_exit`)",
    GenerationMode.CONTRASTIVE_SEARCH: "contrastive search (`penalty_alpha` > 0 with `top_k` > 1)",
    GenerationMode.GROUP_BEAM_SEARCH: "group (diverse) beam search (`num_beam_groups` > 1)",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "constrained beam search (`constraints`, `force_words_ids`)",
    GenerationMode.DOLA_GENERATION: "DoLa decoding (`dola_layers`)",
}
# The "all rows finished" flag is read this many steps late, per device type (see the module docstring).
# Reading it is free on the CPU; elsewhere a one-step lag keeps the device busy while the host waits.
FINISH_CHECK_LAG = collections.defaultdict(lambda: 1, {"cpu": 0})


def generate(
    model: Any,
    inputs: Optional[Union[torch.Tensor, Sequence[Sequence[int]]]] = None,
    generation_config: Any = None,
    logits_processor: Optional[Sequence[Any]] = None,
    stopping_criteria: Optional[Sequence[Any]] = None,
    prefix_allowed_tokens_fn: Optional[Callable[[int, torch.Tensor], list[int]]] = None,
    streamer: Any = None,
    tokenizer: Any = None,
    **kwargs: Any,
):
    """Generate token sequences with a decoder-only causal LM, like transformers' ``model.generate``.

    Args:
        model: a transformers causal LM (Llama, GPT-2, Qwen2, Mistral, ...), or any module with the same
            ``forward`` keyword interface and a ``config``.
        inputs: the prompt, ``LongTensor [batch, length]`` (left-padded when rows differ in length), or a list
            of token-id lists, which are left-padded with ``pad_token_id``. ``None``: ``input_ids=`` from
            ``kwargs``, else a single ``bos_token_id``.
        generation_config: a :class:`turbogen.GenerationConfig`, a ``transformers.GenerationConfig`` or a dict;
            ``None`` uses the model's ``generation_config``. Model-specific defaults fill every parameter
            left at its global default. These are transformers 4.57's rules, also with transformers 5 installed:
            a 5.x config's unset (``None``) parameters count as left at their global defaults.
        logits_processor: extra processors, merged with those the config defines (a custom processor of the
            same type as a built-in one replaces it).
        stopping_criteria: extra stopping criteria, merged the same way.
        prefix_allowed_tokens_fn: ``fn(batch_id, input_ids) -> allowed token ids`` constraining every step.
        streamer: receives the prompt, then each new token (``put``), then ``end()``; greedy and sampling only.
        tokenizer: needed for ``stop_strings``.
        **kwargs: generation parameters overriding the config (``max_new_tokens=...``, ``do_sample=...``) and
            model inputs (``input_ids``, ``attention_mask``, ``past_key_values``, ``negative_prompt_ids``,
            ``negative_prompt_attention_mask``, any other ``forward`` argument), plus ``use_model_defaults``.

    Returns:
        ``LongTensor [batch * num_return_sequences, length]`` (prompt included), or with
        ``return_dict_in_generate=True`` a :class:`~turbogen.outputs.GenerateDecoderOnlyOutput` (greedy,
        sampling) or :class:`~turbogen.outputs.GenerateBeamDecoderOnlyOutput` (beam methods).

    Raises:
        ValueError: for invalid or conflicting arguments, naming them, and for decoding methods turbogen
            does not implement (assisted, contrastive, group beam, constrained beam, DoLa).
    """
    with torch.no_grad():
        return _generate(model, inputs, generation_config, logits_processor, stopping_criteria,
                         prefix_allowed_tokens_fn, streamer, tokenizer, kwargs)


def _generate(model, inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
              streamer, tokenizer, kwargs):
    kwargs = dict(kwargs)
    negative_prompt_ids = kwargs.pop("negative_prompt_ids", None)
    negative_prompt_attention_mask = kwargs.pop("negative_prompt_attention_mask", None)
    use_model_defaults = kwargs.pop("use_model_defaults", None)
    _reject_unsupported_arguments(model, kwargs)

    config, model_kwargs = _resolve_generation_config(model, generation_config, use_model_defaults, kwargs)
    _reject_unsupported_parameters(config, model_kwargs)
    mode = config.get_generation_mode()
    if mode in _UNSUPPORTED_MODES:
        raise ValueError(f"turbogen.generate does not support {_UNSUPPORTED_MODES[mode]}.")
    is_beam = mode in (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE)
    if is_beam and streamer is not None:
        raise ValueError("`streamer` cannot be used with beam search: set `num_beams=1`.")
    if is_beam and config.low_memory:
        raise ValueError("`low_memory=True` (sequential beam search) is not supported.")
    for name in ("token_healing", "prefill_chunk_size"):
        if getattr(config, name):
            raise ValueError(f"`{name}` is not supported by turbogen.generate.")
    _check_model_kwargs(model, model_kwargs)

    tokens = _special_tokens(config, has_attention_mask=model_kwargs.get("attention_mask") is not None)
    input_ids, model_kwargs = _prompt_ids(model, inputs, tokens, model_kwargs)
    device = input_ids.device
    tokens = tokens.to(device)
    _warn_if_right_padded(input_ids, tokens.pad)
    prompt_ids = input_ids
    if model_kwargs.get("attention_mask") is None and _accepts(model, "attention_mask"):
        model_kwargs["attention_mask"] = _infer_attention_mask(input_ids, tokens)

    expand = max(config.num_beams, config.num_return_sequences)
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        model_kwargs = {key: value.repeat_interleave(expand, dim=0) if _is_batch_tensor(key, value) else value
                        for key, value in model_kwargs.items()}
    if streamer is not None:
        streamer.put(input_ids.cpu())

    prompt_length = input_ids.shape[1]
    _resolve_lengths(model, config, kwargs, prompt_length)

    processors = _build_processors(model, config, prompt_ids, prompt_length, prefix_allowed_tokens_fn,
                                   logits_processor, model_kwargs, negative_prompt_ids,
                                   negative_prompt_attention_mask)
    criteria = build_stopping_criteria(
        config, eos_token_ids=tokens.eos, tokenizer=tokenizer,
        max_position_embeddings=getattr(_text_config(model), "max_position_embeddings", None),
        custom=stopping_criteria)
    plan = StoppingPlan(criteria)
    if plan.max_length is None:
        raise ValueError("`max_length` must be set: generation needs a length limit.")
    # A custom MaxLengthCriteria may replace the config's limit; the buffers must hold whichever applies
    # (and at least one new token, which is always generated).
    capacity = max(plan.max_length, input_ids.shape[1] + 1)
    cache = _prepare_cache(model, config, model_kwargs, rows=input_ids.shape[0], capacity=capacity)

    record = _Record(config)
    forward = _make_forward(model, input_ids, model_kwargs, cache, config.use_cache, capacity, record)
    if is_beam:
        result = _run_beam_search(forward, input_ids, config, capacity, tokens, processors, plan, record)
    else:
        user_code_per_step = bool(logits_processor) or prefix_allowed_tokens_fn is not None or streamer is not None
        result = _run_greedy_or_sample(forward, input_ids, config, capacity, tokens, processors, plan, record,
                                       streamer, deferrable=plan.rows_are_pure and not user_code_per_step)
    if config.return_legacy_cache is True and isinstance(result, (GenerateDecoderOnlyOutput,
                                                                     GenerateBeamDecoderOnlyOutput)):
        result.past_key_values = _compat.legacy_cache(result.past_key_values)
    return result


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def _reject_unsupported_arguments(model: Any, kwargs: dict) -> None:
    for name, feature in _UNSUPPORTED_GENERATE_ARGUMENTS.items():
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"`{name}` is not supported: turbogen.generate does not implement {feature}.")
    kwargs.pop("trust_remote_code", None)
    if kwargs.pop("synced_gpus", None):
        raise ValueError("`synced_gpus=True` is not supported: turbogen.generate runs on a single process.")
    if kwargs.get("inputs_embeds") is not None:
        raise ValueError("`inputs_embeds` is not supported: pass token ids (`inputs` or `input_ids`).")
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError("turbogen.generate supports decoder-only models; this `model` is an encoder-decoder.")


def _reject_unsupported_parameters(config: GenerationConfig, model_kwargs: dict) -> None:
    """Generation parameters of transformers 5 that turbogen does not implement raise instead of being ignored,
    whether set in the config (kept there as extra attributes) or passed as arguments."""
    for name, feature in _compat.UNSUPPORTED_TRANSFORMERS_5_PARAMETERS.items():
        if getattr(config, name, None) not in (None, False) or model_kwargs.get(name) not in (None, False):
            raise ValueError(f"`{name}` is not supported: turbogen.generate does not implement {feature} "
                             "(a transformers 5 parameter).")
        model_kwargs.pop(name, None)


def _version_tuple(version: Optional[str]) -> tuple[int, ...]:
    """``"4.57.6"`` -> ``(4, 57, 6)``; the leading numeric components only."""
    return tuple(int(part) for part in re.findall(r"\d+", (version or "0").split("+")[0])[:3])


def _resolve_generation_config(model: Any, generation_config: Any, use_model_defaults: Optional[bool],
                               kwargs: dict) -> tuple[GenerationConfig, dict]:
    """The effective config and the leftover model kwargs, with transformers v4.57's precedence:
    call kwargs > the given config's non-default values > the model's generation config > global defaults.

    Model defaults fill a given config only for models saved by transformers >= 4.50 (or with
    ``use_model_defaults=True``); older ones only lend their special tokens, as in transformers. Its
    deprecated fallback of reading generation parameters from the model's main config is not reproduced.
    """
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


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _forward_parameters(model: Any) -> dict:
    return dict(inspect.signature(model.forward).parameters)


def _accepts(model: Any, name: str) -> bool:
    return name in _forward_parameters(model)


def _check_model_kwargs(model: Any, model_kwargs: dict) -> None:
    """Unknown keyword arguments (typos of generation parameters included) raise, as in transformers."""
    accepted = set(_forward_parameters(model))
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


@dataclasses.dataclass
class _SpecialTokens:
    """The special token ids as tensors, once resolved (``eos`` is 1-D; ``pad`` defaults to ``eos[0]``)."""

    bos: Optional[torch.Tensor]
    eos: Optional[torch.Tensor]
    pad: Optional[torch.Tensor]

    def to(self, device: torch.device) -> "_SpecialTokens":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return _SpecialTokens(move(self.bos), move(self.eos), move(self.pad))


def _token_tensor(value: Any, name: str) -> Optional[torch.Tensor]:
    if value is None:
        return None
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point() or tensor.numel() == 0:
        raise ValueError(f"`{name}` must be an integer token id (or a list of them), got {value!r}")
    return tensor.long()


def _special_tokens(config: GenerationConfig, has_attention_mask: bool) -> _SpecialTokens:
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
    return _SpecialTokens(bos, eos, pad)


def _prompt_ids(model: Any, inputs: Any, tokens: _SpecialTokens, model_kwargs: dict) -> tuple[torch.Tensor, dict]:
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
    vocab_size = getattr(_text_config(model), "vocab_size", None)
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


def _infer_attention_mask(input_ids: torch.Tensor, tokens: _SpecialTokens) -> torch.Tensor:
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


def _resolve_lengths(model: Any, config: GenerationConfig, call_kwargs: dict, prompt_length: int) -> None:
    """Fix ``max_length``/``min_length`` as transformers v4.57 does, and check them."""
    default_max_length = call_kwargs.get("max_length") is None and config.max_length is not None
    default_min_length = call_kwargs.get("min_length") is None and config.min_length is not None
    if config.max_new_tokens is not None:
        if not default_max_length and config.max_length is not None:
            logger.warning("Both `max_new_tokens` (=%s) and `max_length` (=%s) are set; `max_new_tokens` takes "
                           "precedence.", config.max_new_tokens, config.max_length)
        config.max_length = config.max_new_tokens + prompt_length
    elif default_max_length and config.max_length == GenerationConfig().max_length:
        config.max_length = config.max_length + prompt_length
        max_positions = getattr(_text_config(model), "max_position_embeddings", None)
        if max_positions is not None:
            config.max_length = min(config.max_length, max_positions)
    if config.min_new_tokens is not None:
        if not default_min_length:
            logger.warning("Both `min_new_tokens` (=%s) and `min_length` (=%s) are set; `min_new_tokens` takes "
                           "precedence.", config.min_new_tokens, config.min_length)
        config.min_length = config.min_new_tokens + prompt_length

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


# ----------------------------------------------------------------------------------------------------------
# Cache, processors
# ----------------------------------------------------------------------------------------------------------


def _prepare_cache(model: Any, config: GenerationConfig, model_kwargs: dict, rows: int, capacity: int) -> Any:
    """The KV cache for this call: the user's ``past_key_values``, else a fresh one per ``cache_implementation``
    (:func:`turbogen.cache.make_cache`: transformers' ``DynamicCache`` by default, turbogen's static cache for
    ``"static"``), or ``None`` when ``use_cache=False`` or the model manages its own cache."""
    user_cache = model_kwargs.pop("past_key_values", None)
    if user_cache is not None:
        if config.cache_implementation is not None:
            raise ValueError("Both `cache_implementation` and `past_key_values` were given: pass only one.")
        if isinstance(user_cache, tuple):
            user_cache = _compat.dynamic_cache_from_legacy(user_cache)
        return user_cache
    if config.use_cache is False:
        return None
    supports_dynamic = getattr(type(model), "_supports_default_dynamic_cache", None)
    if supports_dynamic is not None and not supports_dynamic():
        return None
    from .cache import make_cache

    # The last generated token is never fed back, hence one position less than the longest sequence.
    return make_cache(config.cache_implementation, model, batch_size=rows, max_cache_len=capacity - 1)


def _build_processors(model, config, prompt_ids, prompt_length, prefix_allowed_tokens_fn, logits_processor,
                      model_kwargs, negative_prompt_ids, negative_prompt_attention_mask):
    from .processors import build_logits_processor

    return build_logits_processor(
        config,
        prompt_length,
        encoder_input_ids=prompt_ids,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        logits_processor=logits_processor,
        device=prompt_ids.device,
        model_kwargs=model_kwargs,
        negative_prompt_ids=negative_prompt_ids,
        negative_prompt_attention_mask=negative_prompt_attention_mask,
        model=model,
    )


# ----------------------------------------------------------------------------------------------------------
# Optional per-step outputs
# ----------------------------------------------------------------------------------------------------------


class _Record:
    """Collects what ``return_dict_in_generate`` asks for, step by step (nothing when it is off)."""

    def __init__(self, config: GenerationConfig):
        wanted = bool(config.return_dict_in_generate)
        self.wants_scores = wanted and bool(config.output_scores)
        self.wants_logits = wanted and bool(config.output_logits)
        self.wants_attentions = wanted and bool(config.output_attentions)
        self.wants_hidden_states = wanted and bool(config.output_hidden_states)
        self.collected_scores: Optional[tuple] = () if self.wants_scores else None
        self.collected_logits: Optional[tuple] = () if self.wants_logits else None
        self.attentions: Optional[tuple] = () if self.wants_attentions else None
        self.hidden_states: Optional[tuple] = () if self.wants_hidden_states else None

    def scores(self, scores: torch.Tensor) -> None:
        if self.wants_scores:
            self.collected_scores += (scores,)

    def logits(self, logits: torch.Tensor) -> None:
        if self.wants_logits:
            self.collected_logits += (logits,)

    def model_outputs(self, outputs: Any) -> None:
        if self.wants_attentions:
            self.attentions += (outputs.attentions,)
        if self.wants_hidden_states:
            self.hidden_states += (outputs.hidden_states,)

    def keep_steps(self, steps: int) -> None:
        """Forget everything recorded after the first ``steps`` steps."""
        for name in ("collected_scores", "collected_logits", "attentions", "hidden_states"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, values[:steps])


# ----------------------------------------------------------------------------------------------------------
# Model calls
# ----------------------------------------------------------------------------------------------------------


def _last_logits(outputs: Any) -> torch.Tensor:
    """The last position's logits, float32 ``[rows, vocab]`` with contiguous rows.

    When the model computed only that position (``logits_to_keep=1``) in float32, this is a view: it keeps
    nothing larger alive and saves a copy of ``rows * vocab`` floats per step. Otherwise it is a copy (as in
    transformers), so that the possibly prompt-long logits of the model output can be freed.
    """
    logits = outputs.logits
    last = logits[:, -1, :]
    if logits.shape[1] == 1 and logits.dtype == torch.float32 and last.is_contiguous():
        return last
    return last.to(copy=True, dtype=torch.float32)


class _DirectForward:
    """Calls the model exactly as transformers' generic ``prepare_inputs_for_generation`` would, from
    tables built once: the attention mask is a ``[rows, max_length]`` buffer (prompt mask, then ones) sliced
    per step, positions are ``cumsum(mask) - 1`` (1 on padding) precomputed for every step, and the cache
    position is a slice of one ``arange``.

    Interface shared with :class:`_ModelPreparedForward`: ``prefill(input_ids)`` and
    ``decode(tokens, length)`` return the next-token logits (float32 ``[rows, vocab]``) and record optional
    outputs; ``reorder_cache(index)`` follows beam reordering; ``crop(length)`` forgets cached positions
    from ``length`` on; ``past_key_values`` is the cache.
    """

    def __init__(self, model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                 max_length: int, record: _Record):
        self.model = model
        self.past_key_values = cache
        self.use_cache = bool(use_cache)
        self.record = record
        parameters = _forward_parameters(model)
        rows, prompt_length = input_ids.shape
        device = input_ids.device
        kwargs = dict(model_kwargs)
        prompt_mask = kwargs.pop("attention_mask", None)
        token_type_ids = kwargs.pop("token_type_ids", None)
        if kwargs.pop("position_ids", None) is not None:
            raise ValueError("`position_ids` cannot be passed: generate derives them from `attention_mask`.")
        self._constant_kwargs = {"use_cache": self.use_cache, **kwargs}
        if "logits_to_keep" in parameters and "logits_to_keep" not in kwargs:
            self._constant_kwargs["logits_to_keep"] = 1

        self._mask = None
        if prompt_mask is not None:
            self._mask = torch.ones(rows, max_length, dtype=prompt_mask.dtype, device=device)
            self._mask[:, :prompt_length] = prompt_mask
        self._positions = None  # [rows, max_length]
        self._positions_by_step = None  # [max_length, rows, 1]: contiguous per-step slices
        if "position_ids" in parameters and self._mask is not None:
            positions = _compat.position_ids_from_attention_mask(self._mask)
            self._positions = positions
            self._positions_by_step = positions.t().contiguous().unsqueeze(-1)
        if self._mask is not None and _mask_is_redundant(prompt_mask, cache):
            self._mask = None
        self._token_types = None
        if token_type_ids is not None:
            self._token_types = torch.cat(
                [token_type_ids, token_type_ids[:, -1:].expand(rows, max_length - prompt_length)], dim=1)
        self._cache_positions = torch.arange(max_length, device=device) if "cache_position" in parameters else None
        # Without a cache every step re-runs the whole sequence, which this copy tracks.
        self._all_ids = None if self.use_cache else input_ids

    def _call(self, input_ids: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Run the model on positions ``[start, end)`` of the sequences, ``input_ids`` holding exactly those."""
        kwargs = dict(self._constant_kwargs)
        if self._mask is not None:
            kwargs["attention_mask"] = self._mask[:, :end]
        if self._positions is not None:
            kwargs["position_ids"] = (self._positions_by_step[start] if end - start == 1
                                      else self._positions[:, start:end].contiguous())
        if self._token_types is not None:
            kwargs["token_type_ids"] = self._token_types[:, start:end]
        if self._cache_positions is not None:
            kwargs["cache_position"] = self._cache_positions[start:end]
        if self.past_key_values is not None:
            kwargs["past_key_values"] = self.past_key_values
        outputs = self.model(input_ids=input_ids, return_dict=True, **kwargs)
        if self.use_cache:  # the model may have created the cache itself
            self.past_key_values = getattr(outputs, "past_key_values", self.past_key_values)
        self.record.model_outputs(outputs)
        return _last_logits(outputs)

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        cached = 0 if self.past_key_values is None else int(self.past_key_values.get_seq_length())
        if cached >= input_ids.shape[1]:
            raise ValueError(f"`past_key_values` already holds {cached} positions, as many as the prompt's "
                             f"{input_ids.shape[1]}: nothing is left to feed the model.")
        return self._call(input_ids[:, cached:], cached, input_ids.shape[1])

    def decode(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        if self._all_ids is not None:
            self._all_ids = torch.cat([self._all_ids, tokens[:, None]], dim=1)
            return self._call(self._all_ids, 0, length)
        return self._call(tokens[:, None], length - 1, length)

    def reorder_cache(self, index: torch.Tensor) -> None:
        if self.past_key_values is not None:
            _reorder(self.model, self, index)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids.index_select(0, index)

    @property
    def can_crop(self) -> bool:
        return self.past_key_values is None or _compat.can_crop_cache(self.past_key_values)

    def crop(self, length: int) -> None:
        if self.past_key_values is not None:
            _compat.crop_cache(self.past_key_values, length)
        elif self._all_ids is not None:
            self._all_ids = self._all_ids[:, :length]


def _mask_is_redundant(prompt_mask: torch.Tensor, cache: Any) -> bool:
    """Whether the attention mask can be left out of every model call: the prompt has no padding and the cache
    is a plain ``DynamicCache``, whose keys are exactly the sequence so far. transformers then builds the same
    attention without a mask, and skips checking the mask for padding at every step (``mask.all()``, about
    0.2 ms per step for a small model on a CPU). Not for other caches: a static cache's unwritten positions
    are hidden by the mask alone."""
    from transformers import DynamicCache

    return type(cache) is DynamicCache and bool(prompt_mask.all())


def _reorder(model: Any, holder: Any, index: torch.Tensor) -> None:
    """Reorder ``holder.past_key_values`` rows by ``index`` (the model's own hook first, as transformers)."""
    if hasattr(model, "_reorder_cache"):
        holder.past_key_values = model._reorder_cache(holder.past_key_values, index)
    else:
        holder.past_key_values.reorder_cache(index)


class _ModelPreparedForward:
    """For models that override ``prepare_inputs_for_generation`` (their inputs may differ from the generic
    ones): every step goes through the model's own ``prepare_inputs_for_generation`` and
    ``_update_model_kwargs_for_generation``, exactly as transformers' loop does. Same interface as
    :class:`_DirectForward`; cropping is not supported."""

    can_crop = False

    def __init__(self, model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: Any, use_cache: bool,
                 record: _Record):
        self.model = model
        self.record = record
        self._ids = input_ids
        self._kwargs = dict(model_kwargs)
        self._kwargs["use_cache"] = bool(use_cache)
        if cache is not None:
            self._kwargs["past_key_values"] = cache
        if "logits_to_keep" in _forward_parameters(model) and "logits_to_keep" not in self._kwargs:
            self._kwargs["logits_to_keep"] = 1
        self._cached_at_prefill = 0 if cache is None else int(cache.get_seq_length())
        _compat.start_prepared_inputs(self._kwargs, input_ids, self._cached_at_prefill,
                                      accepts_position_ids=_accepts(model, "position_ids"))

    @property
    def past_key_values(self) -> Any:
        return self._kwargs.get("past_key_values")

    @past_key_values.setter
    def past_key_values(self, value: Any) -> None:
        self._kwargs["past_key_values"] = value

    def _step(self, prefill_cached_length: Optional[int] = None) -> torch.Tensor:
        inputs = _compat.prepare_inputs(self.model, self._ids, self._kwargs, prefill_cached_length)
        outputs = self.model(**inputs, return_dict=True)
        self._kwargs = self.model._update_model_kwargs_for_generation(outputs, self._kwargs)
        self.record.model_outputs(outputs)
        return _last_logits(outputs)

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._step(prefill_cached_length=self._cached_at_prefill)

    def decode(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        self._ids = torch.cat([self._ids, tokens[:, None]], dim=1)
        return self._step()

    def reorder_cache(self, index: torch.Tensor) -> None:
        self._ids = self._ids.index_select(0, index)
        if self.past_key_values is not None:
            _reorder(self.model, self, index)


def _make_forward(model, input_ids, model_kwargs, cache, use_cache, capacity, record):
    """The model adapter: direct calls for models using transformers' generic input preparation, else
    the model's own ``prepare_inputs_for_generation``."""
    from transformers.generation.utils import GenerationMixin

    own_preparation = getattr(type(model), "prepare_inputs_for_generation", None)
    if own_preparation is not None and own_preparation is not GenerationMixin.prepare_inputs_for_generation:
        return _ModelPreparedForward(model, input_ids, model_kwargs, cache, use_cache, record)
    return _DirectForward(model, input_ids, model_kwargs, cache, use_cache, capacity, record)


# ----------------------------------------------------------------------------------------------------------
# Greedy search and multinomial sampling
# ----------------------------------------------------------------------------------------------------------


def _sampling_seeds(config: GenerationConfig, rows: int, device: torch.device) -> torch.Tensor:
    """``int64 [rows]``: ``seed + row`` (mod 2**64), ``seed`` from the config or drawn from torch's global RNG."""
    from .ref.sampling import row_seeds

    seed = config.seed
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, ()))
    return row_seeds(seed, rows, device)


class _TokenChooser:
    """Picks the next token of every row from the model's logits: processors, then argmax or a draw.

    When sampling without keeping the scores, a trailing temperature/top-k/top-p/min-p run of warpers is
    handed to the sampler instead of being applied (the same distribution, computed in one pass).
    """

    def __init__(self, processors: Any, do_sample: bool, keep_scores: bool, seeds: Optional[torch.Tensor]):
        self.processors = processors
        self.sampler_options: dict = {}
        self._sample = None
        if do_sample:
            from .ops import Sampler
            from .processors import split_fusable_sampling_tail

            head, fused = split_fusable_sampling_tail(processors) if not keep_scores else (processors, None)
            if fused is not None:
                self.processors = head
                self.sampler_options = dataclasses.asdict(fused)
            self._sample = Sampler(seeds.shape[0], seeds.device, seed=seeds, **self.sampler_options)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.processors(input_ids, logits) if self.processors else logits
        if self._sample is None:
            return scores, torch.argmax(scores, dim=-1)
        return scores, self._sample(scores, step)


class _FinishWatcher:
    """Learns on the host when every row has finished, reading the device flag ``lag`` steps late.

    With ``lag == 0`` the flag of a step is read right away (one host sync per step). With ``lag >= 1``
    each step's flag is copied to pinned host memory asynchronously and read ``lag`` steps later, when it is
    (nearly always) already there, so the host keeps queueing device work; the caller then discards the
    steps it ran past the end. On CUDA the ``lag + 1`` host slots and events are allocated once.
    """

    def __init__(self, lag: int, device: torch.device):
        self.lag = lag
        self._pending: collections.deque = collections.deque()
        self._slots = None
        if lag > 0 and device.type == "cuda":
            self._slots = [(torch.empty((), dtype=torch.bool, pin_memory=True), torch.cuda.Event())
                           for _ in range(lag + 1)]

    def push(self, step: int, unfinished: torch.Tensor) -> Optional[int]:
        """Register ``unfinished`` after ``step``; returns the earliest step after which every row had
        finished, once it is known."""
        any_unfinished = unfinished.any()
        if self.lag == 0:
            return None if bool(any_unfinished) else step
        if self._slots is None:  # reading is cheap here; the lag only changes when it happens
            self._pending.append((step, any_unfinished, None))
        else:
            # At most `lag` flags are pending, so the slot of step - lag - 1 is free again.
            host, event = self._slots[step % len(self._slots)]
            host.copy_(any_unfinished, non_blocking=True)
            event.record()
            self._pending.append((step, host, event))
        return self._read(keep=self.lag)

    def flush(self) -> Optional[int]:
        """Read every pending flag (generation is ending for another reason); same result as ``push``."""
        return self._read(keep=0)

    def _read(self, keep: int) -> Optional[int]:
        while len(self._pending) > keep:
            flagged_step, flag, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            if not bool(flag):
                self._pending.clear()
                return flagged_step
        return None


@dataclasses.dataclass
class _DecodeState:
    """Mutable state of a greedy/sampling run: the token buffer and per-row flags live on the device."""

    sequences: torch.Tensor  # [rows, max_length]
    length: int
    unfinished: torch.Tensor  # bool [rows]
    step: int = 0
    finished: bool = False


@dataclasses.dataclass
class _DecodeSetup:
    """What the decode verbs need besides the state."""

    forward: Any
    choose: _TokenChooser
    stopping: StoppingPlan
    record: _Record
    pad_token: Optional[torch.Tensor]
    streamer: Any
    watcher: _FinishWatcher
    prompt_length: int


def _accept_logits(setup: _DecodeSetup, state: _DecodeState, logits: torch.Tensor) -> torch.Tensor:
    """Choose, append and judge the next token of every row from ``logits``; returns the tokens."""
    input_ids = state.sequences[:, : state.length]
    setup.record.logits(logits)
    scores, tokens = setup.choose(input_ids, logits, state.step)
    setup.record.scores(scores)
    if setup.stopping.pads_finished_rows:
        tokens = torch.where(state.unfinished, tokens, setup.pad_token)
    state.sequences[:, state.length] = tokens
    state.length += 1
    if setup.streamer is not None:
        setup.streamer.put(tokens.cpu())
    done = setup.stopping.rows_done(state.sequences[:, : state.length], setup.record.collected_scores)
    if done is not None:
        state.unfinished = state.unfinished & ~done
        finished_step = setup.watcher.push(state.step, state.unfinished)
        if finished_step is not None:
            _discard_steps_after(setup, state, finished_step)
            state.finished = True
    state.step += 1
    if not state.finished and setup.stopping.stops_all(state.length):
        finished_step = setup.watcher.flush()
        if finished_step is not None:
            _discard_steps_after(setup, state, finished_step)
        state.finished = True
    return tokens


def _discard_steps_after(setup: _DecodeSetup, state: _DecodeState, last_step: int) -> None:
    """Forget the steps run after ``last_step`` (when the finish flag was read late)."""
    keep_length = setup.prompt_length + last_step + 1
    if keep_length == state.length:
        return
    state.length = keep_length
    setup.record.keep_steps(last_step + 1)
    setup.forward.crop(keep_length - 1)


def prefill(setup: _DecodeSetup, state: _DecodeState) -> torch.Tensor:
    """Run the prompt through the model and pick the first new token of every row."""
    logits = setup.forward.prefill(state.sequences[:, : state.length])
    return _accept_logits(setup, state, logits)


def decode_one_token(setup: _DecodeSetup, state: _DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed the last tokens to the model and pick the next token of every row."""
    logits = setup.forward.decode(tokens, state.length)
    return _accept_logits(setup, state, logits)


def decode_n_tokens(setup: _DecodeSetup, state: _DecodeState, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Decode up to ``n`` more tokens, stopping early when generation is over; returns the last tokens."""
    for _ in range(n):
        if state.finished:
            break
        tokens = decode_one_token(setup, state, tokens)
    return tokens


def _run_greedy_or_sample(forward, input_ids, config, capacity, tokens, processors, plan, record, streamer,
                          deferrable):
    rows, prompt_length = input_ids.shape
    device = input_ids.device
    if plan.pads_finished_rows and tokens.pad is None:
        raise ValueError("Finished rows must be padded but neither `pad_token_id` nor `eos_token_id` is set.")
    sequences = torch.empty(rows, capacity, dtype=torch.long, device=device)
    sequences[:, :prompt_length] = input_ids
    seeds = _sampling_seeds(config, rows, device) if config.do_sample else None
    lag = FINISH_CHECK_LAG[device.type] if deferrable and forward.can_crop else 0
    setup = _DecodeSetup(
        forward=forward,
        choose=_TokenChooser(processors, config.do_sample, record.wants_scores, seeds),
        stopping=plan,
        record=record,
        pad_token=tokens.pad,
        streamer=streamer,
        watcher=_FinishWatcher(lag, device),
        prompt_length=prompt_length,
    )
    state = _DecodeState(sequences, prompt_length, torch.ones(rows, dtype=torch.bool, device=device))
    last = prefill(setup, state)
    decode_n_tokens(setup, state, last, capacity - state.length)
    if streamer is not None:
        streamer.end()
    sequences = state.sequences[:, : state.length].contiguous()
    if not config.return_dict_in_generate:
        return sequences
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=record.collected_scores,
        logits=record.collected_logits,
        attentions=record.attentions,
        hidden_states=record.hidden_states,
        past_key_values=forward.past_key_values,
    )


# ----------------------------------------------------------------------------------------------------------
# Beam search
# ----------------------------------------------------------------------------------------------------------


def _run_beam_search(forward, input_ids, config, capacity, tokens, processors, plan, record):
    rows, prompt_length = input_ids.shape
    batch_size = rows // config.num_beams
    first_logits = forward.prefill(input_ids)
    params = _beam.BeamSearchParams(
        batch_size=batch_size,
        num_beams=config.num_beams,
        vocab_size=first_logits.shape[-1],
        max_length=capacity,
        prompt_length=prompt_length,
        length_penalty=config.length_penalty,
        early_stopping=config.early_stopping,
        num_eos_tokens=0 if tokens.eos is None else tokens.eos.shape[0],
        do_sample=config.do_sample,
    )
    # transformers' fill value for positions past a hypothesis' end (a pad id of 0 falls through to EOS).
    if tokens.eos is None:
        fill_value = -1
    else:
        fill_value = int(tokens.pad) if tokens.pad is not None and int(tokens.pad) != 0 else int(tokens.eos[0])
    seeds = _sampling_seeds(config, batch_size, input_ids.device) if config.do_sample else None
    state = _beam.BeamSearchState(input_ids, params, fill_value, seeds)
    _beam.run_beam_search(forward=forward, state=state, logits_processor=processors, stopping=plan,
                          first_logits=first_logits, record=record)
    sequences, sequence_scores, beam_indices = state.result(config.num_return_sequences)
    if not config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=sequence_scores if config.output_scores else None,
        scores=record.collected_scores,
        logits=record.collected_logits,
        beam_indices=beam_indices,
        attentions=record.attentions,
        hidden_states=record.hidden_states,
        past_key_values=forward.past_key_values,
    )


# ----------------------------------------------------------------------------------------------------------
# Transition scores
# ----------------------------------------------------------------------------------------------------------


def compute_transition_scores(
    sequences: torch.Tensor,
    scores: Sequence[torch.Tensor],
    beam_indices: Optional[torch.Tensor] = None,
    normalize_logits: bool = False,
) -> torch.Tensor:
    """The score of each generated token, as transformers' ``compute_transition_scores``.

    Args:
        sequences: ``[rows, length]`` from ``generate`` (prompt included).
        scores: the per-step scores (``output.scores``), each ``[score_rows, vocab]``.
        beam_indices: ``output.beam_indices`` for beam methods (which score row produced each token, -1 past
            the end); ``None`` for greedy search and sampling (row ``i`` always produced row ``i``'s tokens).
        normalize_logits: apply ``log_softmax`` over the vocabulary to the scores first.

    Returns:
        ``[rows, generated_length]``: the score of each generated token; 0 past a beam hypothesis' end. For
        beam search, summing a row and dividing by ``generated_length ** length_penalty`` gives its
        ``sequences_scores``.
    """
    if not scores:
        raise ValueError("`scores` is empty: generate with `output_scores=True, return_dict_in_generate=True`.")
    steps = len(scores)
    vocab_size = scores[0].shape[-1]
    if beam_indices is None:
        beam_indices = torch.arange(scores[0].shape[0], device=sequences.device).view(-1, 1).expand(-1, steps)
    # [score_rows * vocab, steps]: one column per step.
    stacked = torch.stack(tuple(scores)).reshape(steps, -1).transpose(0, 1)
    if normalize_logits:
        stacked = stacked.reshape(-1, vocab_size, steps).log_softmax(dim=1).reshape(-1, steps)
    beam_indices = beam_indices.to(sequences.device)
    past_end = beam_indices < 0
    generated = int((~past_end).sum(-1).max())
    rows_of_step = beam_indices[:, :generated].masked_fill(past_end[:, :generated], 0).long()
    token_rows = sequences[:, sequences.shape[-1] - generated :] + rows_of_step * vocab_size
    transition = stacked.gather(0, token_rows)
    return transition.masked_fill(past_end[:, :generated], 0)
