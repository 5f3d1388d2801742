"""Sampling warpers: temperature and the truncation filters (top-k, top-p, min-p, typical, epsilon,
eta), plus log-softmax normalisation. Each mirrors the transformers v4.57 class of the same name
and delegates the arithmetic to :mod:`turbogen.processors.functional`.

Scores are ``[batch, vocab]``. Like transformers' classes, the temperature, top-k, epsilon and eta
warpers and the normalisation work on the last dimension alone, so they also take ``[vocab]`` or
``[..., vocab]`` scores (e.g. ``[batch, 1, vocab]``); top-p, min-p and typical need ``[batch, vocab]``
(transformers' fail on other shapes)."""

from __future__ import annotations

import torch

from . import functional
from .base import (
    LogitsProcessor,
    check_filter_value,
    check_int,
    check_min_tokens_to_keep,
    check_real,
    check_scores,
)

_NEG_INF = -float("inf")


class TemperatureLogitsWarper(LogitsProcessor):
    """Divide the scores by ``temperature`` (> 0): below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, temperature: float):
        hint = " (for greedy decoding, set `do_sample=False` instead)" if temperature == 0 else ""
        self.temperature = check_real(temperature, "temperature", low=0.0, low_inclusive=False, hint=hint)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        return functional.temperature(scores, self.temperature)


class TopKLogitsWarper(LogitsProcessor):
    """Keep the ``top_k`` highest scores (ties with the k-th included), set the rest to ``filter_value``.

    ``top_k`` is raised to ``min_tokens_to_keep`` and stored that way, as transformers does; a
    ``top_k`` at or above the vocabulary size keeps every token. ``min_tokens_to_keep`` is kept as
    an attribute too, as in transformers 5 (4.57 only folds it into ``top_k``).
    """

    def __init__(self, top_k: int, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        top_k = check_int(top_k, "top_k", minimum=1)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)
        self.top_k = max(top_k, self.min_tokens_to_keep)
        self.filter_value = check_filter_value(filter_value)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        return functional.top_k(scores, self.top_k, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    """Nucleus filtering: keep the most probable tokens whose cumulative probability reaches
    ``top_p`` (in [0, 1]), and at least ``min_tokens_to_keep`` tokens."""

    def __init__(self, top_p: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        self.top_p = check_real(top_p, "top_p", low=0.0, high=1.0)
        self.filter_value = check_filter_value(filter_value)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores)
        return functional.top_p(scores, self.top_p, self.filter_value, self.min_tokens_to_keep)


class MinPLogitsWarper(LogitsProcessor):
    """Keep tokens at least ``min_p`` (in [0, 1]) times as probable as the most probable token, and
    at least ``min_tokens_to_keep`` tokens."""

    def __init__(self, min_p: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        self.min_p = check_real(min_p, "min_p", low=0.0, high=1.0)
        self.filter_value = check_filter_value(filter_value)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores)
        return functional.min_p(scores, self.min_p, self.filter_value, self.min_tokens_to_keep)


class TypicalLogitsWarper(LogitsProcessor):
    """Locally typical sampling: keep the tokens whose log-probability is closest to the entropy,
    up to probability ``mass`` (in (0, 1); the ``typical_p`` of ``generate``)."""

    def __init__(self, mass: float = 0.9, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        self.mass = check_real(mass, "typical_p", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        self.filter_value = check_filter_value(filter_value)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores)
        return functional.typical(scores, self.mass, self.filter_value, self.min_tokens_to_keep)


class EpsilonLogitsWarper(LogitsProcessor):
    """Epsilon sampling: remove tokens with probability below ``epsilon`` (in (0, 1); the
    ``epsilon_cutoff`` of ``generate``), keeping at least ``min_tokens_to_keep`` tokens."""

    def __init__(self, epsilon: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1):
        self.epsilon = check_real(epsilon, "epsilon_cutoff", low=0.0, high=1.0, low_inclusive=False,
                                  high_inclusive=False)
        self.filter_value = check_filter_value(filter_value)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        return functional.epsilon(scores, self.epsilon, self.filter_value, self.min_tokens_to_keep)


class EtaLogitsWarper(LogitsProcessor):
    """Eta sampling: remove tokens with probability below ``min(epsilon, sqrt(epsilon) * exp(-H))``
    (``H`` the entropy; ``epsilon`` in (0, 1) is the ``eta_cutoff`` of ``generate``), keeping at
    least ``min_tokens_to_keep`` tokens.

    ``device`` is accepted for transformers compatibility; the cutoff is formed on the scores' device.
    """

    def __init__(self, epsilon: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1,
                 device: str = "cpu"):
        self.epsilon = check_real(epsilon, "eta_cutoff", low=0.0, high=1.0, low_inclusive=False,
                                  high_inclusive=False)
        self.filter_value = check_filter_value(filter_value)
        self.min_tokens_to_keep = check_min_tokens_to_keep(min_tokens_to_keep)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        return functional.eta(scores, self.epsilon, self.filter_value, self.min_tokens_to_keep)


class LogitNormalization(LogitsProcessor):
    """Replace the scores by their log-softmax; ``generate`` puts it last when ``renormalize_logits``."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        return functional.logit_normalization(scores)
