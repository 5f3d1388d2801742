"""``GenerationMode`` and the rules that derive it from a configuration (transformers v4.57's)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from ._support import warn

if TYPE_CHECKING:
    from .generation import GenerationConfig

__all__ = ["GenerationMode", "generation_mode"]


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


# The methods that assisted generation and DoLa can extend.
_EXTENDABLE = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)


def generation_mode(config: GenerationConfig, assistant_model: Any = None) -> GenerationMode:
    """The decoding method ``config`` selects; ``GenerationConfig.get_generation_mode`` documents it.

    ``do_sample`` is tested by identity (``is False``, ``is True``) as transformers does.
    """
    if config.constraints is not None or config.force_words_ids is not None:
        mode = GenerationMode.CONSTRAINED_BEAM_SEARCH
    elif config.num_beams == 1:
        if config.do_sample is False:
            contrastive = (config.top_k is not None and config.top_k > 1
                           and config.penalty_alpha is not None and config.penalty_alpha > 0)
            mode = GenerationMode.CONTRASTIVE_SEARCH if contrastive else GenerationMode.GREEDY_SEARCH
        else:
            mode = GenerationMode.SAMPLE
    elif config.num_beam_groups > 1:
        mode = GenerationMode.GROUP_BEAM_SEARCH
    elif config.do_sample is True:
        mode = GenerationMode.BEAM_SAMPLE
    else:
        mode = GenerationMode.BEAM_SEARCH

    assisted = (assistant_model is not None or config.prompt_lookup_num_tokens is not None
                or config.assistant_early_exit is not None)
    if assisted:
        if mode in _EXTENDABLE:
            mode = GenerationMode.ASSISTED_GENERATION
        else:
            warn(
                f"Assisted generation (an assistant model, `prompt_lookup_num_tokens` or `assistant_early_exit`) "
                f"only extends greedy search and sampling, but the parameters select {mode.value}: "
                "the assisted-generation settings will be ignored."
            )
    if config.dola_layers is not None:
        if mode in _EXTENDABLE:
            mode = GenerationMode.DOLA_GENERATION
        else:
            warn(
                f"DoLa decoding (`dola_layers`) only extends greedy search and sampling, but the parameters "
                f"select {mode.value}: `dola_layers` will be ignored."
            )
    return mode
