"""``GenerationConfig.validate``'s rules: each parameter's own check, then transformers v4.57's
rules relating parameters to each other.

Two outcomes, as in transformers: ``check_values`` raises for values ``generate`` cannot use;
``find_ignored_or_suspicious_flags`` reports values that are valid but will be ignored or are
likely mistakes, which ``validate`` turns into one warning (or an error when strict).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._support import require_number
from .parameters import DEFAULTS, PARAMETERS

if TYPE_CHECKING:
    from .generation import GenerationConfig

__all__ = ["GENERATE_ONLY_ARGUMENTS", "check_values", "find_ignored_or_suspicious_flags"]

# Flags that only matter when sampling; each is a no-op at its default (`None` as the default
# means any value set is flagged).
SAMPLING_ONLY_FLAGS = ("temperature", "top_p", "min_p", "typical_p", "top_k", "epsilon_cutoff", "eta_cutoff")
CACHE_ONLY_FLAGS = ("cache_implementation", "cache_config", "return_legacy_cache")
OUTPUT_FLAGS = ("output_attentions", "output_hidden_states", "output_scores", "output_logits")
# `generate()` arguments that people sometimes put in the config by mistake.
GENERATE_ONLY_ARGUMENTS = (
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


def check_values(config: GenerationConfig) -> None:
    """The hard errors: raises ``ValueError`` (``TypeError`` for a wrong type) naming the parameter.

    Each parameter's table check runs first, in table order, then the cross-parameter rules.
    """
    for parameter in PARAMETERS:
        if parameter.check is not None:
            parameter.check(parameter.name, getattr(config, parameter.name))

    if config.num_return_sequences != 1:
        if config.num_beams == 1:
            if config.do_sample is False:
                raise ValueError(
                    "`num_return_sequences` must be 1 with greedy search (num_beams=1, do_sample=False), "
                    f"got {config.num_return_sequences!r}"
                )
        else:
            require_number("num_return_sequences", config.num_return_sequences)
            require_number("num_beams", config.num_beams)
            if config.num_return_sequences > config.num_beams:
                raise ValueError(
                    f"`num_return_sequences` ({config.num_return_sequences}) must not exceed "
                    f"`num_beams` ({config.num_beams})"
                )

    for argument in GENERATE_ONLY_ARGUMENTS:
        if argument in config.__dict__:
            raise ValueError(
                f"`{argument}` is an argument of generate(), not a GenerationConfig parameter: "
                "pass it to generate() directly"
            )


def find_ignored_or_suspicious_flags(config: GenerationConfig) -> dict[str, str]:
    """The warned problems, as ``{parameter: explanation}``; assumes ``check_values`` passed.

    The boolean flags are tested by identity (``do_sample is False``, ``early_stopping is not
    False``) exactly as transformers does, so ``do_sample=0`` silences the sampling checks and
    ``early_stopping=0`` is flagged; keep it that way for identical outcomes.
    """
    issues = {}
    for parameter in PARAMETERS:
        if parameter.warning is not None:
            explanation = parameter.warning(getattr(config, parameter.name))
            if explanation is not None:
                issues[parameter.name] = explanation
    if config.do_sample is False:
        for name in SAMPLING_ONLY_FLAGS:
            value = getattr(config, name)
            if value is not None and value != DEFAULTS[name]:
                issues[name] = (
                    f"is {value!r} but `do_sample` is False, and it only affects sampling. "
                    f"Set `do_sample=True` or unset `{name}`."
                )
    if config.num_beams == 1:
        beam_only = {
            "early_stopping": config.early_stopping is not False,
            "length_penalty": config.length_penalty is not None and config.length_penalty != 1.0,
        }
        for name, is_set in beam_only.items():
            if is_set:
                issues[name] = (
                    f"is {getattr(config, name)!r} but `num_beams` is 1, and it only affects beam search. "
                    f"Set `num_beams>1` or unset `{name}`."
                )
    if config.use_cache is False:
        for name in CACHE_ONLY_FLAGS:
            value = getattr(config, name)
            if value is not None:
                issues[name] = f"is {value!r} but `use_cache` is False, so it has no effect."
    if config.return_dict_in_generate is not True:
        for name in OUTPUT_FLAGS:
            if getattr(config, name) is True:
                issues[name] = (
                    "is True but `return_dict_in_generate` is not, so it is ignored. "
                    "Set `return_dict_in_generate=True`."
                )
    return issues
