"""``GenerationConfig``: the parameters of a ``generate()`` call, mirroring transformers v4.57.

The class reproduces ``transformers.GenerationConfig`` (v4.57): the same parameters with the same
defaults, the same validation outcomes (what raises, what only warns), the same
``generation_config.json`` format, and the same loading/saving API, so that a file written by
either library loads in the other with equal values. On top of that it carries the parameters
inference pipelines need and transformers lacks: ``seed``, ``presence_penalty`` and
``frequency_penalty`` (see ``TURBOGEN_PARAMETERS``).

transformers is an optional dependency: this module never imports it. ``as_generation_config``
converts a ``transformers.GenerationConfig`` (v4.57 or v5) by values when one is given (transformers
is then already imported by whoever built it).

Differences from transformers, all deliberate:

- Problems that transformers logs as warnings (``logger.warning_once`` plus an info-level detail
  message) are reported here as one ``UserWarning`` via ``warnings.warn`` whose message lists
  every flagged field with its explanation.
- ``to_dict()`` returns plain, JSON-ready data (``watermarking_config`` as a dict rather than a
  ``WatermarkingConfig`` object); the JSON written is the same.
- Loading is local only (there is no network): ``from_pretrained`` takes a directory or a JSON
  file path, and Hub download options raise a ``TypeError`` instead of being silently ignored.
- Value types transformers would only trip over while comparing (``max_new_tokens="5"``) raise a
  ``TypeError`` naming the field rather than Python's bare comparison error.
- Only ``WatermarkingConfig`` watermarking is supported (not SynthID text watermarking).
- ``save_pretrained`` returns the path it wrote; there is no ``push_to_hub``.
- No ``_original_object_hash`` is recorded (transformers uses it to detect edits of a config
  derived from a model config, for a deprecated code path of its ``generate``).

Kept as transformers behaves, although its docstrings say otherwise: ``from_pretrained`` and
``from_dict`` keep overrides that are not parameters as attributes (so ``unused_kwargs`` is empty
unless ``_from_model_config`` is set), and ``return_legacy_cache`` defaults to ``None``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from copy import deepcopy
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "CompileConfig",
    "GENERATION_CONFIG_NAME",
    "GenerationConfig",
    "GenerationMode",
    "MIRRORED_TRANSFORMERS_VERSION",
    "PARAMETER_GROUPS",
    "TURBOGEN_PARAMETERS",
    "WatermarkingConfig",
    "as_generation_config",
]

GENERATION_CONFIG_NAME = "generation_config.json"

# The transformers release whose generation_config.json format and semantics this module
# reproduces. It is written as `transformers_version` in the files we save (transformers stamps
# its own version the same way); transformers reads it back to decide, among other things,
# whether a model's generation defaults predate v4.50.
MIRRORED_TRANSFORMERS_VERSION = "4.57.6"

STATIC_CACHE_IMPLEMENTATIONS = ("static", "offloaded_static")
DYNAMIC_CACHE_IMPLEMENTATIONS = ("dynamic", "dynamic_full", "offloaded", "quantized")
# Redundant names transformers still accepts for backward compatibility.
DEPRECATED_STATIC_CACHE_IMPLEMENTATIONS = (
    "sliding_window",
    "hybrid",
    "hybrid_chunked",
    "offloaded_hybrid",
    "offloaded_hybrid_chunked",
)
ALL_CACHE_IMPLEMENTATIONS = (
    STATIC_CACHE_IMPLEMENTATIONS + DEPRECATED_STATIC_CACHE_IMPLEMENTATIONS + DYNAMIC_CACHE_IMPLEMENTATIONS
)

# Bounds of the OpenAI-style additive penalties, as vLLM enforces them.
ADDITIVE_PENALTY_RANGE = (-2.0, 2.0)
# Seeds are 64-bit unsigned Philox keys (DESIGN.md, "the determinism contract").
SEED_UPPER_BOUND = 2**64


class GenerationMode(str, enum.Enum):
    """The decoding method a configuration selects; the values are transformers' strings."""

    # Non-beam methods
    CONTRASTIVE_SEARCH = "contrastive_search"
    GREEDY_SEARCH = "greedy_search"
    SAMPLE = "sample"
    ASSISTED_GENERATION = "assisted_generation"
    DOLA_GENERATION = "dola_generation"
    # Beam methods
    BEAM_SEARCH = "beam_search"
    BEAM_SAMPLE = "beam_sample"
    CONSTRAINED_BEAM_SEARCH = "constrained_beam_search"
    GROUP_BEAM_SEARCH = "group_beam_search"


# ---------------------------------------------------------------------------------------------
# Nested value types
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WatermarkingConfig:
    """Green-list watermarking (Kirchenbauer et al. 2023, arXiv:2306.04634); transformers' fields.

    Args:
        greenlist_ratio: fraction of the vocabulary put on the "green" list at each step, in [0, 1].
        bias: added to the logits of green tokens.
        hashing_key: key of the hash that seeds the green-list selection (default: the
            millionth prime).
        seeding_scheme: ``"lefthash"`` (the green list depends on the previous tokens) or
            ``"selfhash"`` (it also depends on the candidate token itself; slower).
        context_width: how many previous tokens seed the green list; at least 1.
    """

    greenlist_ratio: float = 0.25
    bias: float = 2.0
    hashing_key: int = 15485863
    seeding_scheme: str = "lefthash"
    context_width: int = 1

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any], **kwargs: Any) -> WatermarkingConfig:
        """Builds a config from ``config_dict``; ``kwargs`` naming a field override it, others are ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise TypeError(
                f"watermarking_config has unknown keys {unknown}; WatermarkingConfig fields are {sorted(known)}"
            )
        config = cls(**config_dict)
        config.update(**kwargs)
        return config

    def validate(self) -> None:
        """Raises ``ValueError`` (``TypeError`` for non-numbers) naming the first invalid field."""
        if self.seeding_scheme not in ("selfhash", "lefthash"):
            raise ValueError(
                f"`watermarking_config.seeding_scheme` must be 'selfhash' or 'lefthash', got {self.seeding_scheme!r}"
            )
        _require_number("watermarking_config.greenlist_ratio", self.greenlist_ratio)
        if not 0.0 <= self.greenlist_ratio <= 1.0:
            raise ValueError(
                f"`watermarking_config.greenlist_ratio` must be in [0, 1], got {self.greenlist_ratio!r}"
            )
        _require_number("watermarking_config.context_width", self.context_width)
        if not self.context_width >= 1:
            raise ValueError(
                f"`watermarking_config.context_width` must be a positive integer, got {self.context_width!r}"
            )

    def update(self, **kwargs: Any) -> None:
        """Sets the given fields; keys that are not fields are ignored (as in transformers)."""
        for key, value in kwargs.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        with open(json_file_path, "w", encoding="utf-8") as writer:
            writer.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def __iter__(self):
        yield from self.to_dict().items()


@dataclasses.dataclass
class CompileConfig:
    """How ``generate`` calls ``torch.compile`` on the forward pass when it compiles automatically.

    Args:
        fullgraph: require the whole forward to be one graph (graph breaks become errors).
        dynamic: whether to use dynamic-shape graphs (``None``: let torch decide).
        backend: ``torch.compile`` backend.
        mode: ``torch.compile`` mode.
        options: extra backend options.

    Not serialized: like transformers, ``GenerationConfig.to_dict()`` leaves it out.
    """

    fullgraph: bool = False
    dynamic: bool | None = None
    backend: str | Callable = "inductor"
    mode: str = "reduce-overhead"
    options: dict | None = None
    # Lets generate() compile on devices where it normally would not (e.g. CPU); for testing.
    _compile_all_devices = None

    def to_dict(self) -> dict[str, Any]:
        return deepcopy({field.name: getattr(self, field.name) for field in dataclasses.fields(self)})


# ---------------------------------------------------------------------------------------------
# Parameter tables: every parameter with its default, grouped as in the transformers docs.
# All defaults are immutable, so they can be shared between instances.
# ---------------------------------------------------------------------------------------------

_LENGTH = {
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "early_stopping": False,
    "max_time": None,
    "stop_strings": None,
}
_STRATEGY = {
    "do_sample": False,
    "num_beams": 1,
}
# Strategies documented in v4.45 that v4.57 moved to Hub `custom_generate` repositories; v4.57
# still stores them (and `get_generation_mode` still reads them) but no longer validates them.
_LEGACY_STRATEGY = {
    "penalty_alpha": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "constraints": None,
    "force_words_ids": None,
    "dola_layers": None,
    "low_memory": None,
}
_CACHE = {
    "use_cache": True,
    "cache_implementation": None,
    "cache_config": None,
    "return_legacy_cache": None,
    "prefill_chunk_size": None,
}
_LOGITS = {
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "renormalize_logits": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "token_healing": False,
    "guidance_scale": None,
    "watermarking_config": None,
}
_OUTPUTS = {
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "output_logits": None,
    "return_dict_in_generate": False,
}
_SPECIAL_TOKENS = {
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
_ENCODER_DECODER = {
    "encoder_no_repeat_ngram_size": 0,
    "decoder_start_token_id": None,
}
_ASSISTED = {
    "is_assistant": False,
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
    "prompt_lookup_num_tokens": None,
    "max_matching_ngram_size": None,
    "assistant_early_exit": None,
    "assistant_lookbehind": 10,
    "target_lookbehind": 10,
}
_COMPILATION = {
    "compile_config": None,
    "disable_compile": False,
}
_TURBOGEN = {
    "seed": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}

PARAMETER_GROUPS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "length": MappingProxyType(_LENGTH),
    "strategy": MappingProxyType(_STRATEGY),
    "legacy_strategy": MappingProxyType(_LEGACY_STRATEGY),
    "cache": MappingProxyType(_CACHE),
    "logits": MappingProxyType(_LOGITS),
    "outputs": MappingProxyType(_OUTPUTS),
    "special_tokens": MappingProxyType(_SPECIAL_TOKENS),
    "encoder_decoder": MappingProxyType(_ENCODER_DECODER),
    "assisted": MappingProxyType(_ASSISTED),
    "compilation": MappingProxyType(_COMPILATION),
    "turbogen": MappingProxyType(_TURBOGEN),
})
"""Every generation parameter and its default, by group. The "turbogen" group is not in transformers."""

TURBOGEN_PARAMETERS: tuple[str, ...] = tuple(_TURBOGEN)

# Bookkeeping fields: stored, but ignored by `==`, `hash` and `repr`.
_METADATA_DEFAULTS = {
    "_from_model_config": False,
    "_commit_hash": None,
    "transformers_version": MIRRORED_TRANSFORMERS_VERSION,
}
_METADATA_FIELDS = ("_from_model_config", "_commit_hash", "_original_object_hash", "transformers_version")
_NOT_SERIALIZED = ("_commit_hash", "_original_object_hash", "compile_config")

_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    **{name: default for group in PARAMETER_GROUPS.values() for name, default in group.items()},
    **_METADATA_DEFAULTS,
})

# Validation tables.
# Flags that only matter when sampling, with the value that makes each one a no-op
# (`None` means any value set is flagged).
_SAMPLING_ONLY_FLAGS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "top_k": 50,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}
_CACHE_ONLY_FLAGS = ("cache_implementation", "cache_config", "return_legacy_cache")
# `generate()` arguments that people sometimes put in the config by mistake.
_GENERATE_ONLY_ARGUMENTS = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "use_model_defaults",
)
# transformers' `from_pretrained` download options, which have no meaning for local files.
_HUB_DOWNLOAD_OPTIONS = (
    "cache_dir",
    "force_download",
    "proxies",
    "resume_download",
    "token",
    "use_auth_token",
    "revision",
)


class GenerationConfig:
    """Parameters of a ``generate()`` call; the same parameters and defaults as transformers v4.57.

    ``GenerationConfig(**kwargs)`` takes any of the parameters below. A keyword that is not a
    parameter is kept as an extra attribute (model-specific keys in ``generation_config.json``,
    as transformers does), except when ``_from_model_config=True``, where extras are dropped.
    The result is validated (see ``validate``): inconsistent values raise ``ValueError``,
    suspicious ones emit a ``UserWarning``.

    The decoding method follows from the parameters (``get_generation_mode``): greedy search
    (``num_beams=1, do_sample=False``), multinomial sampling (``num_beams=1, do_sample=True``),
    beam search (``num_beams>1, do_sample=False``), beam sampling (``num_beams>1, do_sample=True``);
    assisted decoding when ``generate`` gets an assistant model or ``prompt_lookup_num_tokens`` is set.

    Length of the output:
        max_length (int, 20): maximum total length, prompt included; ``max_new_tokens`` overrides it.
        max_new_tokens (int, None): maximum number of generated tokens, prompt excluded; must be > 0.
        min_length (int, 0): minimum total length, prompt included; ``min_new_tokens`` overrides it.
        min_new_tokens (int, None): minimum number of generated tokens, prompt excluded.
        early_stopping (bool or "never", False): beam-search stopping rule. ``True`` stops once
            ``num_beams`` hypotheses are finished; ``False`` stops when a heuristic says better
            hypotheses are very unlikely; ``"never"`` stops only when none can exist (canonical
            beam search).
        max_time (float, None): time budget in seconds; the step running when it expires completes.
        stop_strings (str or list[str], None): strings whose appearance in the output ends generation.

    Generation strategy:
        do_sample (bool, False): sample the next token; otherwise pick the most likely one.
        num_beams (int, 1): number of beams; 1 means no beam search.

    Strategies of transformers v4.45 (v4.57 moved them to Hub ``custom_generate`` code and keeps
    the fields only for compatibility):
        penalty_alpha (float, None): contrastive search's degeneration penalty; contrastive search
            runs when ``penalty_alpha > 0`` and ``top_k > 1``.
        num_beam_groups (int, 1): number of groups of beams for diverse beam search.
        diversity_penalty (float, 0.0): subtracted from a beam's score when it picks a token that
            another group picked at the same step (diverse beam search only).
        constraints (list[Constraint], None): constraints the output must satisfy (constrained beam search).
        force_words_ids (list[list[int]] or list[list[list[int]]], None): token ids that must
            appear in the output; a list of lists of lists gives alternatives (disjunctive constraints).
        dola_layers (str or list[int], None): layers contrasted by DoLa decoding: ``"low"``,
            ``"high"`` or a list of layer indices.
        low_memory (bool, None): run beam/contrastive search sequentially over the beams to cut
            peak memory.

    Cache:
        use_cache (bool, True): reuse the past keys/values of attention to speed up decoding.
        cache_implementation (str, None): cache class to build in ``generate``: ``"dynamic"``,
            ``"dynamic_full"``, ``"static"``, ``"offloaded"``, ``"offloaded_static"``,
            ``"quantized"`` (or one of the deprecated aliases transformers still accepts);
            ``None`` uses the model's default cache.
        cache_config (dict, None): keyword arguments for the cache class.
        return_legacy_cache (bool, None): return the cache in the legacy tuple format when the
            default dynamic cache is used.
        prefill_chunk_size (int, None): prefill the prompt in chunks of this many tokens to lower
            peak memory.

    Logits manipulation:
        temperature (float, 1.0): the logits are divided by it before sampling.
        top_k (int, 50): keep only the ``top_k`` most likely tokens.
        top_p (float, 1.0): keep the smallest set of most likely tokens whose probabilities add up
            to at least ``top_p``.
        min_p (float, None): drop tokens whose probability is below ``min_p`` times the largest
            probability; in [0, 1] (0.01-0.2 is typical).
        typical_p (float, 1.0): locally typical sampling (arXiv:2202.00666): keep the smallest set
            of the most typical tokens whose probabilities add up to at least ``typical_p``.
        epsilon_cutoff (float, 0.0): keep only tokens with probability above it (arXiv:2210.15191;
            3e-4 to 9e-4 suggested).
        eta_cutoff (float, 0.0): eta sampling (arXiv:2210.15191): keep a token if its probability
            exceeds ``eta_cutoff`` or ``sqrt(eta_cutoff) * exp(-entropy)``.
        repetition_penalty (float, 1.0): multiplicative penalty on tokens already present
            (arXiv:1909.05858); 1.0 disables it.
        encoder_repetition_penalty (float, 1.0): favours tokens of the encoder input; 1.0 disables it.
        length_penalty (float, 1.0): beam scores are divided by ``length ** length_penalty``;
            > 0 favours longer sequences, < 0 shorter ones.
        no_repeat_ngram_size (int, 0): if > 0, no n-gram of this size occurs twice.
        bad_words_ids (list[list[int]], None): token sequences that must not be generated.
        renormalize_logits (bool, False): log-softmax the scores again after all processors.
        forced_bos_token_id (int, None): token forced first after ``decoder_start_token_id``.
        forced_eos_token_id (int or list[int], None): token(s) forced last when ``max_length`` is reached.
        remove_invalid_values (bool, False): replace nan/inf scores so generation does not crash (slower).
        exponential_decay_length_penalty (tuple[int, float], None): ``(start_index, decay_factor)``:
            after ``start_index`` generated tokens, the EOS score grows by ``decay_factor ** steps``.
        suppress_tokens (list[int], None): tokens whose scores are set to -inf at every step.
        begin_suppress_tokens (list[int], None): tokens whose scores are set to -inf at the first step.
        sequence_bias (dict[tuple[int], float], None): bias added to the score of a token that
            completes the given sequence.
        token_healing (bool, False): rewrite the prompt's last tokens into their best extensions.
        guidance_scale (float, None): classifier-free guidance scale; guidance is on when > 1.
        watermarking_config (WatermarkingConfig or dict, None): watermark the output; a dict is
            converted to ``WatermarkingConfig``.

    Outputs of ``generate``:
        num_return_sequences (int, 1): sequences returned per input.
        output_attentions (bool, False): return the attention weights.
        output_hidden_states (bool, False): return the hidden states.
        output_scores (bool, False): return the processed scores.
        output_logits (bool, None): return the raw logits.
        return_dict_in_generate (bool, False): return an output object instead of the sequences
            alone; needed for the cache and the ``output_*`` results.

    Special tokens:
        pad_token_id (int, None): padding token.
        bos_token_id (int, None): beginning-of-sequence token.
        eos_token_id (int or list[int], None): end-of-sequence token(s).

    Encoder-decoder models:
        encoder_no_repeat_ngram_size (int, 0): if > 0, n-grams of this size from the encoder input
            do not occur in the decoder output.
        decoder_start_token_id (int or list[int], None): first decoder token, or one per batch row.

    Assisted generation:
        is_assistant (bool, False): this model is an assistant (draft) model.
        num_assistant_tokens (int, 20): draft tokens proposed per iteration.
        num_assistant_tokens_schedule (str, "constant"): how ``num_assistant_tokens`` changes:
            ``"heuristic"`` (+2 when all drafts are accepted, -1 otherwise, kept across calls),
            ``"heuristic_transient"`` (the same, reset after each call) or ``"constant"``.
        assistant_confidence_threshold (float, 0.4): the assistant stops drafting when its
            confidence in a token falls below this (arXiv:2405.04304).
        prompt_lookup_num_tokens (int, None): draft this many tokens by prompt lookup.
        max_matching_ngram_size (int, None): longest n-gram matched in the prompt (2 when unset).
        assistant_early_exit (int, None): draft with the model's own first layers (early exit).
        assistant_lookbehind (int, 10): assistant tokens re-encoded when the assistant has a
            different tokenizer.
        target_lookbehind (int, 10): target tokens re-encoded when the assistant has a different tokenizer.

    Compilation:
        compile_config (CompileConfig, None): how ``generate`` compiles the forward pass.
        disable_compile (bool, False): never compile the forward pass automatically.

    turbogen additions (not in transformers):
        seed (int, None): base seed of the sampling noise, an integer in [0, 2**64); every
            sequence gets its own seed derived from it, making sampling reproducible and batch
            invariant. ``None`` lets ``generate`` choose a seed.
        presence_penalty (float, 0.0): subtracted once from the logit of every token that already
            occurs in the generated text (OpenAI/vLLM semantics); in [-2, 2].
        frequency_penalty (float, 0.0): subtracted from the logit of every generated token, times
            the number of times it occurs (OpenAI/vLLM semantics); in [-2, 2].

    Metadata (ignored by ``==``): ``transformers_version``, ``_from_model_config``, ``_commit_hash``.
    """

    extra_output_flags = ("output_attentions", "output_hidden_states", "output_scores", "output_logits")

    def __init__(self, **kwargs: Any) -> None:
        for name, default in _DEFAULTS.items():
            self._set_parameter(name, kwargs.pop(name, default))
        # Extras are dropped for configs built from a model config, which holds many
        # non-generation keys.
        if not self._from_model_config:
            for name, value in kwargs.items():
                self._set_extra(name, value)
        self.validate()

    # -- attribute assignment ------------------------------------------------------------------

    def _set_parameter(self, name: str, value: Any) -> None:
        if name == "watermarking_config":
            value = _coerce_watermarking_config(value)
        elif name == "compile_config":
            value = _coerce_compile_config(value)
        setattr(self, name, value)

    def _set_extra(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            raise ValueError(
                f"`{name}` cannot be a generation parameter: it names a GenerationConfig method or attribute"
            )
        setattr(self, name, value)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Sets the given parameters (and extra attributes already present), then validates.

        Returns:
            The key/value pairs that matched nothing and were not applied.
        """
        unused = {}
        for key, value in kwargs.items():
            if key in _DEFAULTS:
                self._set_parameter(key, value)
            elif key in self.__dict__:
                setattr(self, key, value)
            else:
                unused[key] = value
        self.validate()
        return unused

    def copy(self) -> GenerationConfig:
        """A deep copy: nothing (lists, dicts, nested configs) is shared with this instance."""
        return deepcopy(self)

    # -- validation ----------------------------------------------------------------------------

    def validate(self, strict: bool = False) -> None:
        """Checks the values, with transformers v4.57's rules plus range checks of the turbogen additions.

        Raises ``ValueError`` (``TypeError`` for a value of the wrong type) when:
          - ``early_stopping`` is not ``True``, ``False`` or ``"never"``;
          - ``max_new_tokens <= 0``;
          - ``cache_implementation`` is not a known cache;
          - ``compile_config`` is not a ``CompileConfig``;
          - ``watermarking_config`` is not a valid ``WatermarkingConfig``;
          - ``num_return_sequences != 1`` with greedy search (``num_beams == 1``, ``do_sample is False``),
            or ``num_return_sequences > num_beams`` with beam search;
          - a ``generate()``-only argument (``streamer``, ``logits_processor``, ...) was stored in the config;
          - ``seed`` is not ``None`` or an integer in [0, 2**64);
          - ``presence_penalty`` or ``frequency_penalty`` is outside [-2, 2].

        Warns (``UserWarning``, one per call, listing every flagged field) when:
          - ``pad_token_id`` is negative;
          - a sampling-only flag (``temperature``, ``top_p``, ``min_p``, ``typical_p``, ``top_k``,
            ``epsilon_cutoff``, ``eta_cutoff``) is set while ``do_sample is False``;
          - a beam-only flag (``early_stopping``, ``length_penalty``) is set while ``num_beams == 1``;
          - a cache flag (``cache_implementation``, ``cache_config``, ``return_legacy_cache``) is
            set while ``use_cache is False``;
          - an ``output_*`` flag is ``True`` while ``return_dict_in_generate`` is not.

        Args:
            strict: raise ``ValueError`` for the warned problems too (``save_pretrained`` does).
        """
        self._check_values()
        issues = self._find_ignored_or_suspicious_flags()
        if not issues:
            return
        details = "\n".join(f"- `{name}`: {description}" for name, description in issues.items())
        if strict:
            raise ValueError(f"GenerationConfig is invalid:\n{details}")
        _warn(
            "GenerationConfig has flags that will be ignored or may cause errors "
            f"(validate(strict=True) makes this an error):\n{details}"
        )

    def _check_values(self) -> None:
        """The hard errors of ``validate``."""
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"`early_stopping` must be True, False or 'never', got {self.early_stopping!r}")
        if self.max_new_tokens is not None:
            _require_number("max_new_tokens", self.max_new_tokens)
            if self.max_new_tokens <= 0:
                raise ValueError(f"`max_new_tokens` must be greater than 0, got {self.max_new_tokens!r}")
        if self.cache_implementation is not None and self.cache_implementation not in ALL_CACHE_IMPLEMENTATIONS:
            raise ValueError(
                f"`cache_implementation` must be one of {ALL_CACHE_IMPLEMENTATIONS} or None, "
                f"got {self.cache_implementation!r}"
            )
        if self.compile_config is not None and not isinstance(self.compile_config, CompileConfig):
            raise ValueError(
                f"`compile_config` must be a CompileConfig, got {type(self.compile_config).__name__}"
            )
        if self.watermarking_config is not None:
            if not isinstance(self.watermarking_config, WatermarkingConfig):
                raise ValueError(
                    "`watermarking_config` must be a WatermarkingConfig or a dict of its fields, "
                    f"got {type(self.watermarking_config).__name__}"
                )
            self.watermarking_config.validate()

        if self.num_return_sequences != 1:
            if self.num_beams == 1:
                if self.do_sample is False:
                    raise ValueError(
                        "`num_return_sequences` must be 1 with greedy search (num_beams=1, do_sample=False), "
                        f"got {self.num_return_sequences!r}"
                    )
            else:
                _require_number("num_return_sequences", self.num_return_sequences)
                _require_number("num_beams", self.num_beams)
                if self.num_return_sequences > self.num_beams:
                    raise ValueError(
                        f"`num_return_sequences` ({self.num_return_sequences}) must not exceed "
                        f"`num_beams` ({self.num_beams})"
                    )

        for argument in _GENERATE_ONLY_ARGUMENTS:
            if argument in self.__dict__:
                raise ValueError(
                    f"`{argument}` is an argument of generate(), not a GenerationConfig parameter: "
                    "pass it to generate() directly"
                )

        self._check_turbogen_parameters()

    def _check_turbogen_parameters(self) -> None:
        if self.seed is not None:
            if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool):
                raise TypeError(f"`seed` must be an int or None, got {type(self.seed).__name__}")
            if not 0 <= self.seed < SEED_UPPER_BOUND:
                raise ValueError(f"`seed` must be in [0, 2**64), got {self.seed}")
        low, high = ADDITIVE_PENALTY_RANGE
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _require_number(name, value)
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"`{name}` must be in [{low:g}, {high:g}], got {value!r}")

    def _find_ignored_or_suspicious_flags(self) -> dict[str, str]:
        """The warned problems of ``validate``, as {field: explanation}.

        The boolean flags are tested by identity (``do_sample is False``, ``early_stopping is not
        False``) exactly as transformers does, so ``do_sample=0`` silences the sampling checks and
        ``early_stopping=0`` is flagged; keep it that way for identical outcomes.
        """
        issues = {}
        if self.pad_token_id is not None:
            _require_number("pad_token_id", self.pad_token_id)
            if self.pad_token_id < 0:
                issues["pad_token_id"] = (
                    f"is negative ({self.pad_token_id}); batched generation with padding will fail. "
                    "Set a valid `pad_token_id`."
                )
        if self.do_sample is False:
            for name, neutral in _SAMPLING_ONLY_FLAGS.items():
                value = getattr(self, name)
                if value is not None and value != neutral:
                    issues[name] = (
                        f"is {value!r} but `do_sample` is False, and it only affects sampling. "
                        f"Set `do_sample=True` or unset `{name}`."
                    )
        if self.num_beams == 1:
            beam_only = {
                "early_stopping": self.early_stopping is not False,
                "length_penalty": self.length_penalty is not None and self.length_penalty != 1.0,
            }
            for name, is_set in beam_only.items():
                if is_set:
                    issues[name] = (
                        f"is {getattr(self, name)!r} but `num_beams` is 1, and it only affects beam search. "
                        f"Set `num_beams>1` or unset `{name}`."
                    )
        if self.use_cache is False:
            for name in _CACHE_ONLY_FLAGS:
                value = getattr(self, name)
                if value is not None:
                    issues[name] = f"is {value!r} but `use_cache` is False, so it has no effect."
        if self.return_dict_in_generate is not True:
            for name in self.extra_output_flags:
                if getattr(self, name) is True:
                    issues[name] = (
                        "is True but `return_dict_in_generate` is not, so it is ignored. "
                        "Set `return_dict_in_generate=True`."
                    )
        return issues

    def get_generation_mode(self, assistant_model: Any = None) -> GenerationMode:
        """The decoding method these parameters select (transformers v4.57's rules).

        Args:
            assistant_model: the assistant model that will be passed to ``generate``, if any;
                only whether it is ``None`` matters.

        Assisted generation and DoLa extend only greedy search and sampling; when their
        parameters are combined with another method a ``UserWarning`` says they will be ignored.
        """
        if self.constraints is not None or self.force_words_ids is not None:
            mode = GenerationMode.CONSTRAINED_BEAM_SEARCH
        elif self.num_beams == 1:
            if self.do_sample is False:
                contrastive = (self.top_k is not None and self.top_k > 1
                               and self.penalty_alpha is not None and self.penalty_alpha > 0)
                mode = GenerationMode.CONTRASTIVE_SEARCH if contrastive else GenerationMode.GREEDY_SEARCH
            else:
                mode = GenerationMode.SAMPLE
        elif self.num_beam_groups > 1:
            mode = GenerationMode.GROUP_BEAM_SEARCH
        elif self.do_sample is True:
            mode = GenerationMode.BEAM_SAMPLE
        else:
            mode = GenerationMode.BEAM_SEARCH

        extendable = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)
        assisted = (assistant_model is not None or self.prompt_lookup_num_tokens is not None
                    or self.assistant_early_exit is not None)
        if assisted:
            if mode in extendable:
                mode = GenerationMode.ASSISTED_GENERATION
            else:
                _warn(
                    f"Assisted generation (an assistant model, `prompt_lookup_num_tokens` or `assistant_early_exit`) "
                    f"only extends greedy search and sampling, but the parameters select {mode.value}: "
                    "the assisted-generation settings will be ignored."
                )
        if self.dola_layers is not None:
            if mode in extendable:
                mode = GenerationMode.DOLA_GENERATION
            else:
                _warn(
                    f"DoLa decoding (`dola_layers`) only extends greedy search and sampling, but the parameters "
                    f"select {mode.value}: `dola_layers` will be ignored."
                )
        return mode

    # -- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All attributes as JSON-ready data (deep copies), minus ``compile_config`` and ``_commit_hash``.

        ``transformers_version`` is stamped with ``MIRRORED_TRANSFORMERS_VERSION``, the format written.
        """
        output = {key: deepcopy(value) for key, value in self.__dict__.items() if key not in _NOT_SERIALIZED}
        if isinstance(output.get("watermarking_config"), WatermarkingConfig):
            output["watermarking_config"] = output["watermarking_config"].to_dict()
        output["transformers_version"] = MIRRORED_TRANSFORMERS_VERSION
        self.dict_dtype_to_str(output)
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """``to_dict()`` restricted to the values that differ from ``GenerationConfig()``'s.

        Extra attributes and ``transformers_version`` are always included.
        """
        defaults = _default_config_dict()
        return {
            key: value
            for key, value in self.to_dict().items()
            if key not in defaults or key == "transformers_version" or value != defaults[key]
        }

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        """The configuration as JSON (keys sorted, 2-space indent), as transformers writes it.

        Args:
            use_diff: only the values that differ from the defaults (``to_diff_dict``).
            ignore_metadata: leave out ``transformers_version`` and the ``_``-prefixed bookkeeping fields.

        Dict keys become strings (a ``sequence_bias`` key ``(1, 2)`` is written ``"(1, 2)"``).
        """
        config_dict = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            for field in _METADATA_FIELDS:
                config_dict.pop(field, None)
        return json.dumps(_json_ready(config_dict), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Writes ``to_json_string(use_diff)`` to ``json_file_path``."""
        with open(json_file_path, "w", encoding="utf-8") as writer:
            writer.write(self.to_json_string(use_diff=use_diff))

    @staticmethod
    def dict_dtype_to_str(config_dict: dict[str, Any]) -> None:
        """In place, in ``config_dict`` and its nested dicts: a ``dtype`` value such as
        ``torch.float16`` becomes its short name ``"float16"``, so it can be written as JSON."""
        dtype = config_dict.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            config_dict["dtype"] = str(dtype).rpartition(".")[2]
        for value in config_dict.values():
            if isinstance(value, dict):
                GenerationConfig.dict_dtype_to_str(value)

    def save_pretrained(
        self, save_directory: str | os.PathLike, config_file_name: str | os.PathLike | None = None
    ) -> Path:
        """Writes the configuration (only non-default values) to ``save_directory/config_file_name``.

        The directory is created if needed. The configuration is validated with ``strict=True``
        first, so a configuration that would warn is refused (``ValueError``), as in transformers.

        Args:
            save_directory: the directory to write into.
            config_file_name: the file name; defaults to ``"generation_config.json"``.

        Returns:
            The path of the written file.
        """
        try:
            self.validate(strict=True)
        except ValueError as error:
            raise ValueError(f"{error}\nFix these issues to save the configuration.") from error
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_directory {str(directory)!r} is a file, not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (config_file_name if config_file_name is not None else GENERATION_CONFIG_NAME)
        self.to_json_file(path, use_diff=True)
        return path

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, config_dict: Mapping[str, Any], **kwargs: Any
    ) -> GenerationConfig | tuple[GenerationConfig, dict]:
        """Builds a configuration from ``config_dict``, with ``kwargs`` taking precedence.

        As in transformers, every key of ``config_dict`` and ``kwargs`` is applied: keys that are
        not parameters become extra attributes (unless ``_from_model_config`` is true).

        Args:
            config_dict: parameters, e.g. the content of a ``generation_config.json``.
            return_unused_kwargs: if true, return ``(config, unused)`` where ``unused`` holds the
                ``kwargs`` that were not applied (only possible with ``_from_model_config``).
        """
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"config_dict must be a mapping, got {type(config_dict).__name__}")
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        # Telemetry flags of transformers' loaders: accepted and discarded.
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        if "_commit_hash" in kwargs and "_commit_hash" in config_dict:
            kwargs["_commit_hash"] = config_dict["_commit_hash"]
        config = cls(**{**config_dict, **kwargs})
        if not return_unused_kwargs:
            return config
        return config, {key: value for key, value in kwargs.items() if key not in config.__dict__}

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name: str | os.PathLike,
        config_file_name: str | os.PathLike | None = None,
        return_unused_kwargs: bool = False,
        *,
        subfolder: str | os.PathLike = "",
        **kwargs: Any,
    ) -> GenerationConfig | tuple[GenerationConfig, dict]:
        """Loads a ``generation_config.json`` from a local model directory or a JSON file path.

        Args:
            pretrained_model_name: a directory holding ``config_file_name``, or the path of a
                JSON file. Hub model ids are not downloaded (there is no network): download the
                model first and pass its directory.
            config_file_name: file name inside the directory; defaults to ``"generation_config.json"``.
                Not allowed when ``pretrained_model_name`` is a file.
            return_unused_kwargs: also return the overrides that were not applied (see ``from_dict``).
            subfolder: a subdirectory of ``pretrained_model_name`` to read from.
            **kwargs: parameter overrides, applied over the file's values (``from_dict``).
                ``local_files_only`` is accepted and ignored (loading is always local); the other
                Hub download options of transformers (``revision``, ``token``, ``cache_dir``, ...)
                raise ``TypeError``.

        Raises:
            FileNotFoundError: the path does not exist or the directory has no such file.
            ValueError: the file is not a JSON object, or the values are invalid.
        """
        hub_options = sorted(set(kwargs) & set(_HUB_DOWNLOAD_OPTIONS))
        if hub_options:
            raise TypeError(
                f"{hub_options} are Hugging Face Hub download options; turbogen loads generation configs "
                "from local files only"
            )
        kwargs.pop("local_files_only", None)
        location = Path(pretrained_model_name) / subfolder
        if location.is_file():
            if config_file_name is not None:
                raise ValueError(
                    f"config_file_name={str(config_file_name)!r} was given but pretrained_model_name "
                    f"{str(pretrained_model_name)!r} is already a file"
                )
            config_path = location
        elif location.is_dir():
            config_path = location / (config_file_name if config_file_name is not None else GENERATION_CONFIG_NAME)
            if not config_path.is_file():
                raise FileNotFoundError(f"{str(location)!r} has no {config_path.name} file")
        else:
            raise FileNotFoundError(
                f"{str(location)!r} is neither a local directory nor a JSON file. turbogen does not download "
                "from the Hugging Face Hub: download the model first and pass its local directory."
            )
        config_dict = _read_json_object(config_path)
        return cls.from_dict(config_dict, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """Builds a configuration from the generation parameters held by a model configuration.

        Args:
            model_config: a ``transformers.PretrainedConfig`` (anything with ``to_dict()``) or a
                mapping. Keys that are not generation parameters are dropped, and so are ``None``
                values (the defaults apply). For composite models, parameters still at their
                default are taken from the decoder's configuration (``get_text_config(decoder=True)``).
                If an ``output_*`` flag ends up true, ``return_dict_in_generate`` is set too.
        """
        if isinstance(model_config, Mapping):
            config_dict = dict(model_config)
        elif callable(getattr(model_config, "to_dict", None)):
            config_dict = model_config.to_dict()
        else:
            raise TypeError(
                f"model_config must be a PretrainedConfig-like object with to_dict() or a mapping, "
                f"got {type(model_config).__name__}"
            )
        config_dict.pop("_from_model_config", None)
        config_dict = {key: value for key, value in config_dict.items() if value is not None}
        generation_config = cls.from_dict(config_dict, _from_model_config=True)

        get_text_config = getattr(model_config, "get_text_config", None)
        decoder_config = get_text_config(decoder=True) if callable(get_text_config) else model_config
        if decoder_config is not model_config:
            defaults = GenerationConfig()
            decoder_dict = decoder_config.to_dict()
            for name in generation_config.to_dict():
                is_unset = getattr(generation_config, name) == getattr(defaults, name, None)
                if name in decoder_dict and is_unset:
                    setattr(generation_config, name, decoder_dict[name])

        if generation_config.return_dict_in_generate is False and any(
            getattr(generation_config, flag, False) for flag in generation_config.extra_output_flags
        ):
            generation_config.return_dict_in_generate = True
        return generation_config

    @classmethod
    def _from_attributes(cls, attributes: Mapping[str, Any]) -> GenerationConfig:
        """Rebuilds a configuration from another object's attributes, extras included."""
        attributes = {key: value for key, value in attributes.items() if key != "_original_object_hash"}
        from_model_config = attributes.pop("_from_model_config", False)
        config = cls(**attributes)
        config._from_model_config = from_model_config
        return config

    # -- comparison and display ----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        return (self.to_json_string(use_diff=False, ignore_metadata=True)
                == other.to_json_string(use_diff=False, ignore_metadata=True))

    def __hash__(self) -> int:
        return hash(self.to_json_string(ignore_metadata=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(ignore_metadata=True)}"


def as_generation_config(obj: Any = None) -> GenerationConfig:
    """Normalises what a caller may pass as a generation config into a ``GenerationConfig``.

    Args:
        obj: ``None`` (the defaults), a mapping of parameters, a ``GenerationConfig`` (returned
            as is, not copied), or a ``transformers.GenerationConfig`` (converted by values:
            every attribute, extras included; its watermarking and compile configs become ours).
            transformers 5 leaves unset parameters at ``None``; those take our defaults, which
            are the global defaults 5.x itself resolves them to.
    """
    if obj is None:
        return GenerationConfig()
    if isinstance(obj, GenerationConfig):
        return obj
    if isinstance(obj, Mapping):
        return GenerationConfig.from_dict(obj)
    transformers_class = _transformers_class("GenerationConfig")
    if transformers_class is not None and isinstance(obj, transformers_class):
        # Imported here: the compatibility layer needs torch, which this module never imports itself.
        from ._transformers_compat import generation_config_attributes

        return GenerationConfig._from_attributes(generation_config_attributes(obj))
    raise TypeError(
        "generation config must be None, a dict, a turbogen GenerationConfig or a "
        f"transformers.GenerationConfig, got {type(obj).__module__}.{type(obj).__qualname__}"
    )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _transformers_class(name: str) -> type | None:
    """transformers' class of that name in its generation config module, if transformers is loaded.

    An object can only be an instance of a transformers class if transformers was imported, so
    looking in ``sys.modules`` answers isinstance questions without importing it.
    """
    module = sys.modules.get("transformers.generation.configuration_utils")
    return getattr(module, name, None)


def _coerce_watermarking_config(value: Any) -> Any:
    """A dict or a transformers ``WatermarkingConfig`` becomes ours; other values are left to ``validate``."""
    if isinstance(value, Mapping):
        return WatermarkingConfig.from_dict(value)
    transformers_class = _transformers_class("WatermarkingConfig")
    if transformers_class is not None and isinstance(value, transformers_class):
        return WatermarkingConfig.from_dict(value.to_dict())
    return value


def _coerce_compile_config(value: Any) -> Any:
    """A transformers ``CompileConfig`` becomes ours; other values are left to ``validate``."""
    transformers_class = _transformers_class("CompileConfig")
    if transformers_class is not None and isinstance(value, transformers_class):
        converted = CompileConfig(**value.to_dict())
        if "_compile_all_devices" in vars(value):
            converted._compile_all_devices = value._compile_all_devices
        return converted
    return value


def _require_number(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} ({value!r})")


def _json_ready(obj: Any) -> Any:
    """Dict keys to strings and nested dataclasses to dicts, recursively."""
    if isinstance(obj, dict):
        return {str(key): _json_ready(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(item) for item in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _json_ready(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    return obj


@functools.lru_cache(maxsize=1)
def _default_config_dict() -> dict[str, Any]:
    """``GenerationConfig().to_dict()``, computed once; callers must not mutate it."""
    return GenerationConfig().to_dict()


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a valid JSON file: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, found {type(content).__name__}")
    return content


def _warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this module."""
    frame, stacklevel = sys._getframe(1), 2  # stacklevel 2 designates _warn's caller
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
