"""Recognising the sampling tail of a processor list, so one fused sampling kernel can replace it.

``generate`` ends a sampling list with TemperatureLogitsWarper -> TopKLogitsWarper ->
TopPLogitsWarper -> MinPLogitsWarper (each optional). Those four are exactly what
``turbogen.ops.sample`` computes in one pass, so :func:`split_fusable_sampling_tail` hands the
head of the list to the processors and the tail's parameters to the kernel.

``generate`` itself no longer splits its list: it builds it without those warpers and takes the
parameters from the config (:func:`turbogen.processors.build.sampler_filter_params`). This split
serves lists assembled elsewhere (e.g. a user's own processor list).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from .base import LogitsProcessorList
from .._transformers_compat import TRANSFORMERS_PROCESSORS_MODULE, is_type_or_transformers_twin
from .build import SamplingParams
from .warpers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def _filters_to_neg_inf(warper) -> bool:
    return getattr(warper, "filter_value", None) == -math.inf


def _keeps_at_most_one(warper) -> bool:
    return getattr(warper, "min_tokens_to_keep", 1) <= 1


# (stage rank in the fused order, turbogen class, field, value reader, fusable check) per warper.
# TopKLogitsWarper folds min_tokens_to_keep into its top_k, so any value of it fuses.
_STAGES: "list[tuple[int, type, str, Callable, Callable]]" = [
    (0, TemperatureLogitsWarper, "temperature", lambda w: float(w.temperature), lambda w: True),
    (1, TopKLogitsWarper, "top_k", lambda w: int(w.top_k), _filters_to_neg_inf),
    (2, TopPLogitsWarper, "top_p", lambda w: float(w.top_p),
     lambda w: _filters_to_neg_inf(w) and _keeps_at_most_one(w)),
    (3, MinPLogitsWarper, "min_p", lambda w: float(w.min_p),
     lambda w: _filters_to_neg_inf(w) and _keeps_at_most_one(w)),
]


def _stage_of(processor):
    """``(rank, field, value)`` when ``processor`` is a fusable warper (turbogen's or transformers'
    exact class, not a subclass that may change its behaviour), else None."""
    for rank, cls, field, read, fusable in _STAGES:
        if is_type_or_transformers_twin(processor, cls, TRANSFORMERS_PROCESSORS_MODULE):
            return (rank, field, read(processor)) if fusable(processor) else None
    return None


def split_fusable_sampling_tail(processors) -> "tuple[LogitsProcessorList, Optional[SamplingParams]]":
    """Split ``processors`` into ``(head, params)`` so that applying ``head`` and then a fused
    sampling step with ``params`` equals applying ``processors``.

    The tail is the longest suffix made of Temperature/TopK/TopP/MinP warpers, each at most once
    and in that order, with ``filter_value=-inf`` and (for TopP and MinP) ``min_tokens_to_keep <= 1``;
    transformers' classes count as turbogen's. Returns ``(all processors, None)`` when there is no
    such tail (e.g. a Typical warper, a watermark or LogitNormalization comes last).
    """
    processors = list(processors)
    start = len(processors)
    fields = {}
    next_rank = len(_STAGES)
    while start > 0:
        stage = _stage_of(processors[start - 1])
        if stage is None or stage[0] >= next_rank:
            break
        next_rank, field, value = stage
        fields[field] = value
        start -= 1
    head = LogitsProcessorList(processors[:start])
    return head, (SamplingParams(**fields) if fields else None)
