"""The generation parameters: one table entry per parameter, the single place each is written.

An entry gives a parameter's name, default, group, documented type, documentation and value
check. ``GenerationConfig`` is built from the table: ``__init__`` sets every parameter from it,
the class docstring lists it (``parameters_docstring``), and ``validate`` runs each entry's check
before the rules that relate parameters to each other (``validation.py``).

The names and defaults are transformers v4.57's ``GenerationConfig`` attributes, grouped as its
documentation groups them; the "turbogen" group holds the additions transformers lacks. Every
default is immutable, so one default object can be shared by all instances.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ._support import DOCSTRING_WIDTH, describe_argument
from .checks import Check, finite_number_in, instance_of, number, one_of, optional, positive_number, uint64_or_list
from .compile import CompileConfig, coerce_compile_config
from .watermarking import check_watermarking_config, coerce_watermarking_config

__all__ = [
    "ALL_CACHE_IMPLEMENTATIONS",
    "DEFAULTS",
    "GROUPS",
    "PARAMETERS",
    "PARAMETERS_BY_NAME",
    "PARAMETER_GROUPS",
    "TURBOGEN_PARAMETERS",
    "Parameter",
    "ParameterGroup",
    "parameters_docstring",
]

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


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """A set of related parameters: ``key`` names it in ``PARAMETER_GROUPS``, ``title`` heads its docs."""

    key: str
    title: str


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One generation parameter.

    Attributes:
        name: the attribute and keyword name.
        default: the value ``GenerationConfig()`` holds (immutable).
        group: the group it is documented under.
        kind: its type as the docstring states it, e.g. ``"int or list[int]"``.
        doc: what it does, one paragraph (wrapped when the docstring is built).
        check: raises ``TypeError``/``ValueError`` naming the parameter for an invalid value
            (see ``checks.py``); ``None`` when any value is accepted, as transformers accepts it.
        warning: for a valid but likely mistaken value, the explanation ``validate`` warns with
            (``None`` when the value is fine); runs after ``check``.
        coerce: converts the accepted alternative forms of a value (a dict for a nested config)
            when it is assigned, before any check.
    """

    name: str
    default: Any
    group: ParameterGroup
    kind: str
    doc: str
    check: Check | None = None
    warning: Callable[[Any], str | None] | None = None
    coerce: Callable[[Any], Any] | None = None


def _negative_padding_warning(pad_token_id: Any) -> str | None:
    """``pad_token_id``'s warning; its check has already made sure it is ``None`` or a number."""
    if pad_token_id is not None and pad_token_id < 0:
        return (f"is negative ({pad_token_id}); batched generation with padding will fail. "
                "Set a valid `pad_token_id`.")
    return None


LENGTH = ParameterGroup("length", "Length of the output")
STRATEGY = ParameterGroup("strategy", "Generation strategy")
# Strategies documented in v4.45 that v4.57 moved to Hub `custom_generate` repositories; v4.57
# still stores them (and `get_generation_mode` still reads them) but no longer validates them.
LEGACY_STRATEGY = ParameterGroup(
    "legacy_strategy",
    "Strategies of transformers v4.45 (v4.57 moved them to Hub ``custom_generate`` code and keeps the fields only "
    "for compatibility)",
)
CACHE = ParameterGroup("cache", "Cache")
LOGITS = ParameterGroup("logits", "Logits manipulation")
OUTPUTS = ParameterGroup("outputs", "Outputs of ``generate``")
SPECIAL_TOKENS = ParameterGroup("special_tokens", "Special tokens")
ENCODER_DECODER = ParameterGroup("encoder_decoder", "Encoder-decoder models")
ASSISTED = ParameterGroup("assisted", "Assisted generation")
COMPILATION = ParameterGroup("compilation", "Compilation")
TURBOGEN = ParameterGroup("turbogen", "turbogen additions (not in transformers)")

GROUPS: tuple[ParameterGroup, ...] = (
    LENGTH, STRATEGY, LEGACY_STRATEGY, CACHE, LOGITS, OUTPUTS, SPECIAL_TOKENS, ENCODER_DECODER, ASSISTED,
    COMPILATION, TURBOGEN,
)
"""The groups in documentation order."""

PARAMETERS: tuple[Parameter, ...] = (
    # -- length ---------------------------------------------------------------------------------
    Parameter("max_length", 20, LENGTH, "int",
              "maximum total length, prompt included; ``max_new_tokens`` overrides it."),
    Parameter("max_new_tokens", None, LENGTH, "int",
              "maximum number of generated tokens, prompt excluded; must be positive.",
              check=optional(positive_number)),
    Parameter("min_length", 0, LENGTH, "int",
              "minimum total length, prompt included; ``min_new_tokens`` overrides it."),
    Parameter("min_new_tokens", None, LENGTH, "int",
              "minimum number of generated tokens, prompt excluded."),
    Parameter("early_stopping", False, LENGTH, 'bool or "never"',
              "beam-search stopping rule. ``True`` stops once ``num_beams`` hypotheses are finished; ``False`` "
              "stops when a heuristic says better hypotheses are very unlikely; ``\"never\"`` stops only when "
              "none can exist (canonical beam search).",
              check=one_of(True, False, "never")),
    Parameter("max_time", None, LENGTH, "float",
              "time budget in seconds; the step running when it expires completes."),
    Parameter("stop_strings", None, LENGTH, "str or list[str]",
              "strings whose appearance in the output ends generation."),
    # -- strategy -------------------------------------------------------------------------------
    Parameter("do_sample", False, STRATEGY, "bool",
              "sample the next token; otherwise pick the most likely one."),
    Parameter("num_beams", 1, STRATEGY, "int",
              "number of beams; 1 means no beam search."),
    # -- legacy strategies ----------------------------------------------------------------------
    Parameter("penalty_alpha", None, LEGACY_STRATEGY, "float",
              "contrastive search's degeneration penalty; contrastive search runs when ``penalty_alpha > 0`` "
              "and ``top_k > 1``."),
    Parameter("num_beam_groups", 1, LEGACY_STRATEGY, "int",
              "number of groups of beams for diverse beam search."),
    Parameter("diversity_penalty", 0.0, LEGACY_STRATEGY, "float",
              "subtracted from a beam's score when it picks a token that another group picked at the same "
              "step (diverse beam search only)."),
    Parameter("constraints", None, LEGACY_STRATEGY, "list[Constraint]",
              "constraints the output must satisfy (constrained beam search)."),
    Parameter("force_words_ids", None, LEGACY_STRATEGY, "list[list[int]] or list[list[list[int]]]",
              "token ids that must appear in the output; a list of lists of lists gives alternatives "
              "(disjunctive constraints)."),
    Parameter("dola_layers", None, LEGACY_STRATEGY, "str or list[int]",
              "layers contrasted by DoLa decoding: ``\"low\"``, ``\"high\"`` or a list of layer indices."),
    Parameter("low_memory", None, LEGACY_STRATEGY, "bool",
              "run beam/contrastive search sequentially over the beams to cut peak memory."),
    # -- cache ----------------------------------------------------------------------------------
    Parameter("use_cache", True, CACHE, "bool",
              "reuse the past keys/values of attention to speed up decoding."),
    Parameter("cache_implementation", None, CACHE, "str",
              "cache class to build in ``generate``: ``\"dynamic\"``, ``\"dynamic_full\"``, ``\"static\"``, "
              "``\"offloaded\"``, ``\"offloaded_static\"``, ``\"quantized\"`` (or one of the deprecated aliases "
              "transformers still accepts), or turbogen's ``\"paged\"`` (a paged KV cache, block tables forked "
              "by beam search); ``None`` uses the model's default cache.",
              check=one_of(*ALL_CACHE_IMPLEMENTATIONS, "paged", None)),
    Parameter("cache_config", None, CACHE, "dict",
              "keyword arguments for the cache class."),
    Parameter("return_legacy_cache", None, CACHE, "bool",
              "return the cache in the legacy tuple format when the default dynamic cache is used."),
    Parameter("prefill_chunk_size", None, CACHE, "int",
              "prefill the prompt in chunks of this many tokens to lower peak memory."),
    # -- logits ---------------------------------------------------------------------------------
    Parameter("temperature", 1.0, LOGITS, "float",
              "the logits are divided by it before sampling."),
    Parameter("top_k", 50, LOGITS, "int",
              "keep only the ``top_k`` most likely tokens."),
    Parameter("top_p", 1.0, LOGITS, "float",
              "keep the smallest set of most likely tokens whose probabilities add up to at least ``top_p``."),
    Parameter("min_p", None, LOGITS, "float",
              "drop tokens whose probability is below ``min_p`` times the largest probability; in [0, 1] "
              "(0.01-0.2 is typical)."),
    Parameter("typical_p", 1.0, LOGITS, "float",
              "locally typical sampling (arXiv:2202.00666): keep the smallest set of the most typical tokens "
              "whose probabilities add up to at least ``typical_p``."),
    Parameter("epsilon_cutoff", 0.0, LOGITS, "float",
              "keep only tokens with probability above it (arXiv:2210.15191; 3e-4 to 9e-4 suggested)."),
    Parameter("eta_cutoff", 0.0, LOGITS, "float",
              "eta sampling (arXiv:2210.15191): keep a token if its probability exceeds ``eta_cutoff`` or "
              "``sqrt(eta_cutoff) * exp(-entropy)``."),
    Parameter("repetition_penalty", 1.0, LOGITS, "float",
              "multiplicative penalty on tokens already present (arXiv:1909.05858); 1.0 disables it."),
    Parameter("encoder_repetition_penalty", 1.0, LOGITS, "float",
              "favours tokens of the encoder input; 1.0 disables it."),
    Parameter("length_penalty", 1.0, LOGITS, "float",
              "beam scores are divided by ``length ** length_penalty``; > 0 favours longer sequences, < 0 "
              "shorter ones."),
    Parameter("no_repeat_ngram_size", 0, LOGITS, "int",
              "if > 0, no n-gram of this size occurs twice."),
    Parameter("bad_words_ids", None, LOGITS, "list[list[int]]",
              "token sequences that must not be generated."),
    Parameter("renormalize_logits", False, LOGITS, "bool",
              "log-softmax the scores again after all processors."),
    Parameter("forced_bos_token_id", None, LOGITS, "int",
              "token forced first after ``decoder_start_token_id``."),
    Parameter("forced_eos_token_id", None, LOGITS, "int or list[int]",
              "token(s) forced last when ``max_length`` is reached."),
    Parameter("remove_invalid_values", False, LOGITS, "bool",
              "replace nan/inf scores so generation does not crash (slower)."),
    Parameter("exponential_decay_length_penalty", None, LOGITS, "tuple[int, float]",
              "``(start_index, decay_factor)``: after ``start_index`` generated tokens, the EOS score grows by "
              "``decay_factor ** steps``."),
    Parameter("suppress_tokens", None, LOGITS, "list[int]",
              "tokens whose scores are set to -inf at every step."),
    Parameter("begin_suppress_tokens", None, LOGITS, "list[int]",
              "tokens whose scores are set to -inf at the first step."),
    Parameter("sequence_bias", None, LOGITS, "dict[tuple[int], float]",
              "bias added to the score of a token that completes the given sequence."),
    Parameter("token_healing", False, LOGITS, "bool",
              "rewrite the prompt's last tokens into their best extensions."),
    Parameter("guidance_scale", None, LOGITS, "float",
              "classifier-free guidance scale; guidance is on when > 1."),
    Parameter("watermarking_config", None, LOGITS, "BaseWatermarkingConfig or dict",
              "watermark the output: a ``WatermarkingConfig`` (green list) or a "
              "``SynthIDTextWatermarkingConfig``; a dict is converted to ``WatermarkingConfig``, or to "
              "``SynthIDTextWatermarkingConfig`` when it has ``ngram_len`` or ``keys``.",
              check=optional(check_watermarking_config), coerce=coerce_watermarking_config),
    # -- outputs --------------------------------------------------------------------------------
    Parameter("num_return_sequences", 1, OUTPUTS, "int",
              "sequences returned per input."),
    Parameter("output_attentions", False, OUTPUTS, "bool",
              "return the attention weights."),
    Parameter("output_hidden_states", False, OUTPUTS, "bool",
              "return the hidden states."),
    Parameter("output_scores", False, OUTPUTS, "bool",
              "return the processed scores."),
    Parameter("output_logits", None, OUTPUTS, "bool",
              "return the raw logits."),
    Parameter("return_dict_in_generate", False, OUTPUTS, "bool",
              "return an output object instead of the sequences alone; needed for the cache and the "
              "``output_*`` results."),
    # -- special tokens -------------------------------------------------------------------------
    Parameter("pad_token_id", None, SPECIAL_TOKENS, "int",
              "padding token.",
              check=optional(number), warning=_negative_padding_warning),
    Parameter("bos_token_id", None, SPECIAL_TOKENS, "int",
              "beginning-of-sequence token."),
    Parameter("eos_token_id", None, SPECIAL_TOKENS, "int or list[int]",
              "end-of-sequence token(s)."),
    # -- encoder-decoder ------------------------------------------------------------------------
    Parameter("encoder_no_repeat_ngram_size", 0, ENCODER_DECODER, "int",
              "if > 0, n-grams of this size from the encoder input do not occur in the decoder output."),
    Parameter("decoder_start_token_id", None, ENCODER_DECODER, "int or list[int]",
              "first decoder token, or one per batch row."),
    # -- assisted generation --------------------------------------------------------------------
    Parameter("is_assistant", False, ASSISTED, "bool",
              "this model is an assistant (draft) model."),
    Parameter("num_assistant_tokens", 20, ASSISTED, "int",
              "draft tokens proposed per iteration."),
    Parameter("num_assistant_tokens_schedule", "constant", ASSISTED, "str",
              "how ``num_assistant_tokens`` changes: ``\"heuristic\"`` (+2 when all drafts are accepted, -1 "
              "otherwise, kept across calls), ``\"heuristic_transient\"`` (the same, reset after each call) or "
              "``\"constant\"``."),
    Parameter("assistant_confidence_threshold", 0.4, ASSISTED, "float",
              "the assistant stops drafting when its confidence in a token falls below this (arXiv:2405.04304)."),
    Parameter("prompt_lookup_num_tokens", None, ASSISTED, "int",
              "draft this many tokens by prompt lookup."),
    Parameter("max_matching_ngram_size", None, ASSISTED, "int",
              "longest n-gram matched in the prompt (2 when unset)."),
    Parameter("assistant_early_exit", None, ASSISTED, "int",
              "draft with the model's own first layers (early exit)."),
    Parameter("assistant_lookbehind", 10, ASSISTED, "int",
              "assistant tokens re-encoded when the assistant has a different tokenizer."),
    Parameter("target_lookbehind", 10, ASSISTED, "int",
              "target tokens re-encoded when the assistant has a different tokenizer."),
    # -- compilation ----------------------------------------------------------------------------
    Parameter("compile_config", None, COMPILATION, "CompileConfig",
              "how ``generate`` compiles the forward pass.",
              check=optional(instance_of(CompileConfig, "a CompileConfig")), coerce=coerce_compile_config),
    Parameter("disable_compile", False, COMPILATION, "bool",
              "never compile the forward pass automatically."),
    # -- turbogen additions ---------------------------------------------------------------------
    Parameter("seed", None, TURBOGEN, "int or list[int]",
              "seed of the sampling noise, integers in [0, 2**64). An int ``S`` is the base seed: sequence "
              "``r`` of the batch gets ``S + r``. A list holds one seed per prompt: sequence ``j`` of prompt "
              "``p`` gets ``seed[p] + j``, so a prompt's samples do not depend on its place in the batch "
              "(batch generation over a dataset). Sums wrap modulo 2**64. ``None`` lets ``generate`` choose "
              "a seed.",
              check=optional(uint64_or_list)),
    Parameter("presence_penalty", 0.0, TURBOGEN, "float",
              "subtracted once from the logit of every token that already occurs in the generated text "
              "(OpenAI/vLLM semantics); in [-2, 2].",
              check=finite_number_in(*ADDITIVE_PENALTY_RANGE)),
    Parameter("frequency_penalty", 0.0, TURBOGEN, "float",
              "subtracted from the logit of every generated token, times the number of times it occurs "
              "(OpenAI/vLLM semantics); in [-2, 2].",
              check=finite_number_in(*ADDITIVE_PENALTY_RANGE)),
)
"""Every generation parameter, by group; ``GenerationConfig`` stores them in this order."""

PARAMETERS_BY_NAME: Mapping[str, Parameter] = MappingProxyType({parameter.name: parameter for parameter in PARAMETERS})

DEFAULTS: Mapping[str, Any] = MappingProxyType({parameter.name: parameter.default for parameter in PARAMETERS})
"""``{name: default}`` for every parameter, in table order."""

PARAMETER_GROUPS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    group.key: MappingProxyType({parameter.name: parameter.default for parameter in PARAMETERS
                                 if parameter.group is group})
    for group in GROUPS
})
"""Every generation parameter and its default, by group. The "turbogen" group is not in transformers."""

TURBOGEN_PARAMETERS: tuple[str, ...] = tuple(PARAMETER_GROUPS[TURBOGEN.key])
"""The parameters turbogen adds to transformers' set."""


def parameters_docstring(indent: int = 4) -> str:
    """The parameter list of ``GenerationConfig``'s docstring: each group's title, then its entries.

    Entries are ``name (kind, default): doc``, indented 4 spaces deeper than the titles.
    """
    sections = []
    for group in GROUPS:
        title = textwrap.fill(f"{group.title}:", width=DOCSTRING_WIDTH, initial_indent=" " * indent,
                              subsequent_indent=" " * indent)
        entries = [describe_argument(parameter.name, parameter.kind, parameter.default, parameter.doc, indent + 4)
                   for parameter in PARAMETERS if parameter.group is group]
        sections.append("\n".join([title, *entries]))
    return "\n\n".join(sections)
