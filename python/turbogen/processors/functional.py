"""The processors' arithmetic: one pure tensor function per processor (what each processor class calls).

Every function takes ``scores`` of shape ``[batch, vocab]`` (and ``input_ids`` of shape
``[batch, length]`` where the processor looks at the context) and returns the processed scores in
the same dtype, never modifying its inputs (a processor that does nothing at this step may return
``scores`` itself, as transformers' does). Each one computes exactly what the
transformers v4.57 processor of the same purpose computes (same operations in the same order, so
the same float rounding and the same tie-breaking), except where a docstring says otherwise. The
functions that act on the last dimension alone (``temperature`` and ``top_k`` with scalar
parameters, ``epsilon``, ``eta``, ``logit_normalization``, ``inf_nan_remove``, ``suppress_tokens``,
``min_length``, ``min_new_tokens``, ``suppress_tokens_at_begin``, ``classifier_free_guidance``)
also take ``[..., vocab]`` scores, as transformers' processors do.

The ``*_on_seen`` / ``*_on_counts`` / ``*_ragged`` variants take per-row state (seen tokens, token
counts, a history with per-row lengths) instead of ``input_ids``, for the stateful logits stages.

The functions contain no Python branching on tensor values and no host synchronisation: Python
branches only look at shapes and at Python-number arguments, so ``torch.compile(fullgraph=True)``
can compile them. Constructor-style validation lives in :mod:`turbogen.processors`; these functions
trust their arguments (e.g. ``min_tokens_to_keep >= 1``, token ids inside the vocabulary).

Scalar or per-row parameters: ``temperature``, ``top_k``, ``top_p``, ``min_p``,
``repetition_penalty`` and the presence/frequency penalties accept a Python number (the processor
semantics, bit for bit) or a ``[batch]`` tensor giving one value per row. A per-row value is
applied the way transformers applies a Python number: in the operation's compute precision
(float32 for float32/float16/bfloat16 scores) and rounded back to the scores' dtype. For
``top_p`` transformers forms ``1 - top_p`` in float64 before rounding; pass a float64 tensor to
reproduce the scalar result exactly (a float32 ``top_p`` is already rounded and can move the
boundary by one float32 ulp).
"""

from __future__ import annotations

import math
from typing import Union

import torch

Tensor = torch.Tensor
RowParam = Union[float, Tensor]

_NEG_INF = float("-inf")


def _compute_dtype(scores: Tensor) -> torch.dtype:
    """The precision torch computes an elementwise op in (its "opmath" type): float32 for
    reduced-precision floats, the dtype itself otherwise."""
    return torch.promote_types(scores.dtype, torch.float32)


def _column(param: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``[batch]`` per-row parameter as a ``[batch, 1]`` column of ``dtype`` for broadcasting."""
    return param.to(dtype).reshape(-1, 1)


def _token_mask(token_ids: Tensor, vocab_size: int) -> Tensor:
    """``[vocab]`` bool mask of the (1-D) ``token_ids``; ids outside the vocabulary are ignored."""
    return torch.isin(torch.arange(vocab_size, device=token_ids.device), token_ids)


def _rows_token_mask(token_ids: Tensor, flags: Tensor, vocab_size: int) -> Tensor:
    """``[batch, vocab]`` bool mask: ``mask[b, v]`` is set when some ``j`` has
    ``token_ids[b, j] == v`` and ``flags[b, j]``.

    Summed rather than scattered as bools, because a scatter with repeated indices keeps an
    unspecified one of the written values.
    """
    counts = torch.zeros(token_ids.shape[0], vocab_size, dtype=torch.int32, device=token_ids.device)
    return counts.scatter_add_(1, token_ids, flags.to(torch.int32)) > 0


# --------------------------------------------------------------------------------------------
# Warpers (sampling filters)
# --------------------------------------------------------------------------------------------


def temperature(scores: Tensor, temperature: RowParam) -> Tensor:
    """``scores / temperature`` (TemperatureLogitsWarper). ``temperature`` > 0, scalar or ``[batch]``."""
    if isinstance(temperature, Tensor):
        compute = _compute_dtype(scores)
        return (scores.to(compute) / _column(temperature, compute)).to(scores.dtype)
    return scores / temperature


def top_k(scores: Tensor, k: Union[int, Tensor], filter_value: float = _NEG_INF,
          min_tokens_to_keep: int = 1) -> Tensor:
    """Keep the ``max(k, min_tokens_to_keep)`` highest scores (TopKLogitsWarper).

    Every token scoring at least the k-th largest score survives, so ties with it are all kept; a
    ``k`` at or above the vocabulary size keeps everything. ``k <= 0`` (scalar or in a row of a
    ``[batch]`` tensor) disables the filter for that row, as ``top_k=0`` does in ``generate``.
    """
    vocab_size = scores.shape[-1]
    if isinstance(k, Tensor):
        k = k.to(torch.long).reshape(-1, 1)
        kept = torch.where(k > 0, k.clamp(min=min_tokens_to_keep), vocab_size).clamp(max=vocab_size)
        # The k-th largest value of the row, whatever order equal values come in.
        descending = torch.sort(scores, dim=-1, descending=True).values
        threshold = descending.gather(-1, kept - 1)
        return scores.masked_fill(scores < threshold, filter_value)
    if k <= 0:
        return scores.clone()
    kept = min(max(k, min_tokens_to_keep), vocab_size)
    threshold = torch.topk(scores, kept)[0][..., -1:]
    return scores.masked_fill(scores < threshold, filter_value)


def top_p(scores: Tensor, p: RowParam, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus filtering (TopPLogitsWarper).

    Sorts ascending, removes the tokens whose cumulative probability is ``<= 1 - p`` and always
    keeps the ``min_tokens_to_keep`` most probable ones. Like transformers, ``p = 1`` still removes
    tokens whose probability underflows to exactly 0 (they could never be sampled anyway).
    """
    ascending, order = torch.sort(scores, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    if isinstance(p, Tensor):
        # 1 - p is formed in float64 and rounded once, as a Python float would be.
        removable_mass = (1 - _column(p, torch.float64)).to(cumulative.dtype)
    else:
        removable_mass = 1 - p
    remove_sorted = cumulative <= removable_mass
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, filter_value)


def min_p(scores: Tensor, p: RowParam, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1) -> Tensor:
    """Remove tokens less probable than ``p`` times the most probable one (MinPLogitsWarper).

    ``p`` in [0, 1]. The ``min_tokens_to_keep`` highest-scoring tokens are always kept.
    """
    probs = torch.softmax(scores, dim=-1)
    top_probs = probs.max(dim=-1, keepdim=True).values
    if isinstance(p, Tensor):
        compute = _compute_dtype(probs)
        threshold = (_column(p, compute) * top_probs.to(compute)).to(probs.dtype)
    else:
        threshold = p * top_probs
    remove = probs < threshold
    if min_tokens_to_keep > 1:
        # Same (unstable) argsort as transformers, so ties at the boundary resolve identically.
        order = torch.argsort(scores, descending=True, dim=-1)
        remove_sorted = remove.gather(-1, order)
        remove_sorted[..., :min_tokens_to_keep] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
    # With one token to keep the argsort is unnecessary: the top-scoring token has the top
    # probability, and probs < p * top is false for it whenever p <= 1.
    return scores.masked_fill(remove, filter_value)


def typical(scores: Tensor, mass: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1) -> Tensor:
    """Locally typical filtering (TypicalLogitsWarper), ``0 < mass < 1``.

    Ranks tokens by ``|-log p - H|`` (H the entropy) and keeps the smallest prefix of that ranking
    whose probability reaches ``mass``, plus every token tied with its last one.
    """
    normalized = torch.nn.functional.log_softmax(scores, dim=-1)
    probs = torch.exp(normalized)
    entropy = -(normalized * probs).nansum(-1, keepdim=True)

    shifted = torch.abs((-normalized) - entropy)
    sorted_shifted, order = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)

    last_kept = (cumulative < mass).sum(dim=1).clamp(max=sorted_shifted.shape[-1] - 1)
    remove_sorted = sorted_shifted > sorted_shifted.gather(1, last_kept.view(-1, 1))
    remove_sorted[..., :min_tokens_to_keep] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, filter_value)


def _outside_top(scores: Tensor, min_tokens_to_keep: int) -> Tensor:
    """Mask of tokens scoring below the ``min_tokens_to_keep``-th largest score."""
    kept = min(min_tokens_to_keep, scores.shape[-1])
    return scores < torch.topk(scores, kept)[0][..., -1:]


def epsilon(scores: Tensor, epsilon: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1) -> Tensor:
    """Remove tokens with probability below ``epsilon`` (EpsilonLogitsWarper), ``0 < epsilon < 1``,
    sparing the ``min_tokens_to_keep`` highest-scoring ones."""
    remove = (scores.softmax(dim=-1) < epsilon) & _outside_top(scores, min_tokens_to_keep)
    return scores.masked_fill(remove, filter_value)


def _categorical_entropy(scores: Tensor) -> Tensor:
    """The entropy ``torch.distributions.Categorical(logits=scores).entropy()`` computes, with the
    same operations, minus the distribution's argument validation (which syncs with the host)."""
    log_probs = scores - scores.logsumexp(dim=-1, keepdim=True)
    probs = torch.softmax(log_probs, dim=-1)
    finite_log_probs = torch.clamp(log_probs, min=torch.finfo(log_probs.dtype).min)
    return -(finite_log_probs * probs).sum(-1)


def eta(scores: Tensor, epsilon: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1) -> Tensor:
    """Eta sampling (EtaLogitsWarper): remove tokens with probability below
    ``min(epsilon, sqrt(epsilon) * exp(-entropy))``, sparing the ``min_tokens_to_keep`` best.

    ``epsilon`` is held as a float32 tensor, as transformers holds it. Unlike transformers, NaN
    scores are not rejected (rejecting them needs a host sync).
    """
    epsilon_t = torch.full((), epsilon, dtype=torch.float32, device=scores.device)
    cutoff = torch.min(epsilon_t, torch.sqrt(epsilon_t) * torch.exp(-_categorical_entropy(scores)))[..., None]
    remove = (scores.softmax(dim=-1) < cutoff) & _outside_top(scores, min_tokens_to_keep)
    return scores.masked_fill(remove, filter_value)


# --------------------------------------------------------------------------------------------
# Penalties
# --------------------------------------------------------------------------------------------


def _scale_away_from_zero(values: Tensor, penalty: RowParam) -> Tensor:
    """``values * penalty`` where negative, ``values / penalty`` elsewhere."""
    if isinstance(penalty, Tensor):
        compute = _compute_dtype(values)
        column = _column(penalty, compute)
        wide = values.to(compute)
        return torch.where(values < 0, wide * column, wide / column).to(values.dtype)
    return torch.where(values < 0, values * penalty, values / penalty)


def repetition_penalty(input_ids: Tensor, scores: Tensor, penalty: RowParam) -> Tensor:
    """CTRL repetition penalty (RepetitionPenaltyLogitsProcessor): the score of every token present
    in ``input_ids`` is multiplied by ``penalty`` if negative, divided by it otherwise, once per
    token however often it occurs. ``penalty > 0``, scalar or ``[batch]``."""
    penalized = _scale_away_from_zero(torch.gather(scores, 1, input_ids), penalty)
    # Repeated ids write identical values, so the scatter is deterministic.
    return scores.scatter(1, input_ids, penalized)


def repetition_penalty_on_seen(scores: Tensor, seen: Tensor, penalty: RowParam) -> Tensor:
    """The repetition penalty given the tokens already seen instead of the history: ``seen`` is a
    ``[batch, vocab]`` bool mask. Elementwise the same operations as :func:`repetition_penalty`,
    so the result is bit-identical to it for the history that ``seen`` summarises."""
    return torch.where(seen, _scale_away_from_zero(scores, penalty), scores)


def repetition_penalty_on_candidates(scores: Tensor, candidates: Tensor, counted: Tensor, penalty: RowParam) -> Tensor:
    """The repetition penalty over candidate columns: ``candidates`` (``[batch, n]`` token ids, a
    superset of the seen tokens, duplicates allowed) and ``counted`` (``[batch, n]`` bool, whether
    each candidate was seen). Every entry for one token writes the same value, so the scatter is
    deterministic, and the result is bit-identical to :func:`repetition_penalty` over the history."""
    values = torch.gather(scores, 1, candidates)
    return scores.scatter(1, candidates, torch.where(counted, _scale_away_from_zero(values, penalty), values))


def encoder_repetition_penalty(scores: Tensor, encoder_input_ids: Tensor, penalty: float) -> Tensor:
    """Inverse repetition penalty on prompt tokens (EncoderRepetitionPenaltyLogitsProcessor):
    ``penalty > 1`` makes tokens of ``encoder_input_ids`` more likely.

    ``encoder_input_ids`` has ``batch`` rows or ``batch / n`` rows (one per prompt, with ``n``
    consecutive hypotheses per prompt, as after beam or ``num_return_sequences`` expansion).
    transformers, given the unexpanded prompts, only touches the first rows of the scores; here
    every hypothesis gets its own prompt's penalty.
    """
    hypotheses_per_prompt = scores.shape[0] // encoder_input_ids.shape[0]
    if hypotheses_per_prompt > 1:
        encoder_input_ids = encoder_input_ids.repeat_interleave(hypotheses_per_prompt, dim=0)
    # transformers stores 1 / penalty (a float64 Python number) and applies it like a penalty.
    penalized = _scale_away_from_zero(torch.gather(scores, 1, encoder_input_ids), 1 / penalty)
    return scores.scatter(1, encoder_input_ids, penalized)


def presence_frequency_penalty(input_ids: Tensor, scores: Tensor, presence: RowParam, frequency: RowParam,
                               prompt_length: int = 0) -> Tensor:
    """OpenAI / vLLM presence and frequency penalties over the generated tokens.

    With ``count[v]`` the number of occurrences of token ``v`` in ``input_ids[:, prompt_length:]``
    (the prompt is not counted), computes in float32 (vLLM's order of operations)::

        scores - frequency * count - presence * (count > 0)

    and rounds back to the scores' dtype. Penalties are scalars or ``[batch]`` tensors; negative
    values reward repetition.
    """
    generated = input_ids[:, prompt_length:]
    counts = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
    counts.scatter_add_(1, generated, torch.ones(generated.shape, dtype=torch.int32, device=scores.device))
    return presence_frequency_penalty_on_counts(scores, counts, presence, frequency)


def presence_frequency_penalty_on_counts(scores: Tensor, counts: Tensor, presence: RowParam,
                                         frequency: RowParam) -> Tensor:
    """The presence and frequency penalties given the token counts instead of the history:
    ``counts`` is ``[batch, vocab]`` (any numeric dtype; integers are exact up to 2**24), the
    occurrences of each token among the counted tokens. Same result as
    :func:`presence_frequency_penalty` for the history those counts summarise."""
    compute = _compute_dtype(scores)
    counts = counts.to(compute)
    if isinstance(presence, Tensor):
        presence = _column(presence, compute)
    if isinstance(frequency, Tensor):
        frequency = _column(frequency, compute)
    penalized = scores.to(compute) - frequency * counts
    penalized = penalized - presence * (counts > 0).to(compute)
    return penalized.to(scores.dtype)


def _banned_ngram_completions(windows: Tensor, context: Tensor, vocab_size: int) -> Tensor:
    """``[batch, vocab]`` mask of the last tokens of the n-gram ``windows`` (``[batch, W, n]``) whose
    first ``n - 1`` tokens equal the row's ``context`` (``[batch, n - 1]``)."""
    matches = (windows[..., :-1] == context.unsqueeze(1)).all(dim=-1)
    return _rows_token_mask(windows[..., -1], matches, vocab_size)


def no_repeat_ngram(input_ids: Tensor, scores: Tensor, ngram_size: int) -> Tensor:
    """Forbid any token that would repeat an n-gram of ``input_ids`` (NoRepeatNGramLogitsProcessor).

    A token ``t`` gets -inf when the last ``ngram_size - 1`` tokens followed by ``t`` already occur
    somewhere in the row. Vectorised: every n-gram window is compared to the row's suffix at once.
    """
    length = input_ids.shape[-1]
    if length < ngram_size:
        # Not a single complete n-gram yet, so nothing can repeat.
        return scores.clone()
    windows = input_ids.unfold(-1, ngram_size, 1)
    context = input_ids[:, length - ngram_size + 1:]
    banned = _banned_ngram_completions(windows, context, scores.shape[-1])
    return scores.masked_fill(banned, _NEG_INF)


def no_repeat_ngram_ragged(history: Tensor, lengths: Tensor, scores: Tensor, ngram_size: int) -> Tensor:
    """:func:`no_repeat_ngram` for rows of different lengths: row ``b`` holds the tokens
    ``history[b, :lengths[b]]`` (``history`` is ``[batch, capacity]``, later columns are ignored and
    must hold valid ids). Each row's result equals ``no_repeat_ngram`` on that row's tokens alone.

    The shapes depend on the capacity only, never on the lengths, so a compiled step reuses one graph.
    """
    capacity = history.shape[-1]
    if capacity < ngram_size:
        return scores.clone()
    windows = history.unfold(-1, ngram_size, 1)
    starts = torch.arange(windows.shape[1], device=history.device)
    # A window counts when it ends at or before the row's last token.
    inside = starts.unsqueeze(0) <= (lengths - ngram_size).unsqueeze(1)
    context_offsets = torch.arange(ngram_size - 1, device=history.device)
    context_positions = (lengths.unsqueeze(1) - (ngram_size - 1) + context_offsets).clamp(min=0)
    context = history.gather(1, context_positions)
    matches = (windows[..., :-1] == context.unsqueeze(1)).all(dim=-1) & inside
    banned = _rows_token_mask(windows[..., -1], matches, scores.shape[-1])
    return scores.masked_fill(banned, _NEG_INF)


def encoder_no_repeat_ngram(input_ids: Tensor, scores: Tensor, encoder_input_ids: Tensor, ngram_size: int) -> Tensor:
    """Forbid tokens that would complete an n-gram of the prompt (EncoderNoRepeatNGramLogitsProcessor).

    ``encoder_input_ids`` has one row per prompt; the ``batch / prompts`` consecutive hypotheses of
    each prompt (beams) are checked against their own prompt's n-grams.
    """
    length = input_ids.shape[-1]
    if length < ngram_size - 1 or encoder_input_ids.shape[-1] < ngram_size:
        return scores.clone()
    hypotheses_per_prompt = scores.shape[0] // encoder_input_ids.shape[0]
    windows = encoder_input_ids.unfold(-1, ngram_size, 1).repeat_interleave(hypotheses_per_prompt, dim=0)
    context = input_ids[:, length - ngram_size + 1:]
    banned = _banned_ngram_completions(windows, context, scores.shape[-1])
    return scores.masked_fill(banned, _NEG_INF)


def sequence_bias(input_ids: Tensor, scores: Tensor, sequences: Tensor, biases: Tensor) -> Tensor:
    """Add ``biases[s]`` to the last token of sequence ``s`` wherever the row's context ends with
    the rest of that sequence (SequenceBiasLogitsProcessor; NoBadWords is the -inf case).

    ``sequences`` is ``[S, W]`` int64, each sequence right-aligned and left-padded with -1 (its last
    column holds the biased tokens); ``biases`` is ``[S]`` float32. A single-token sequence always
    applies; a longer one applies only when it is no longer than the context, as in transformers.
    Biases landing on the same token are summed in sequence order, so list single-token sequences
    first to reproduce transformers' summation order bit for bit.
    """
    batch, length = input_ids.shape
    prefix_width = sequences.shape[-1] - 1
    present = sequences >= 0
    lengths = present.sum(dim=-1)
    applicable = (lengths == 1) | (lengths <= length)
    matches = applicable.unsqueeze(0).expand(batch, -1)
    if prefix_width > 0:
        context = input_ids[:, -prefix_width:]
        if length < prefix_width:
            # -1 never equals a token, so prefixes reaching before the context cannot match.
            context = torch.nn.functional.pad(context, (prefix_width - length, 0), value=-1)
        agrees = context.unsqueeze(1) == sequences[:, :-1].unsqueeze(0)
        matches = matches & (agrees | ~present[:, :-1]).all(dim=-1)
    contributions = torch.where(matches, biases.unsqueeze(0), 0.0).to(scores.dtype)
    bias = torch.zeros_like(scores).scatter_add_(1, sequences[:, -1].expand(batch, -1), contributions)
    return scores + bias


def exponential_decay_length_penalty(input_ids: Tensor, scores: Tensor, eos_token_id: Tensor,
                                     regulation_start: int, regulation_factor: float) -> Tensor:
    """Raise the EOS scores exponentially once the sequence is longer than ``regulation_start``
    (ExponentialDecayLengthPenalty): ``score += |score| * (factor ** (length - start) - 1)``."""
    length = input_ids.shape[-1]
    if length <= regulation_start:
        return scores
    growth = pow(regulation_factor, length - regulation_start) - 1
    penalties = torch.zeros_like(scores)
    penalties[:, eos_token_id] = torch.abs(scores[:, eos_token_id]) * growth
    return scores + penalties


# --------------------------------------------------------------------------------------------
# Constraints
# --------------------------------------------------------------------------------------------


def suppress_tokens(scores: Tensor, token_ids: Tensor) -> Tensor:
    """Set the scores of ``token_ids`` (1-D) to -inf (SuppressTokensLogitsProcessor)."""
    return torch.where(_token_mask(token_ids, scores.shape[-1]), _NEG_INF, scores)


def min_length(input_ids: Tensor, scores: Tensor, eos_token_id: Tensor, min_length: int) -> Tensor:
    """Forbid EOS while the sequence (prompt included) is shorter than ``min_length``."""
    if input_ids.shape[-1] < min_length:
        return suppress_tokens(scores, eos_token_id)
    return scores.clone()


def min_new_tokens(input_ids: Tensor, scores: Tensor, eos_token_id: Tensor, prompt_length: int,
                   min_new_tokens: int) -> Tensor:
    """Forbid EOS until ``min_new_tokens`` tokens follow the first ``prompt_length`` ones."""
    if input_ids.shape[-1] - prompt_length < min_new_tokens:
        return suppress_tokens(scores, eos_token_id)
    return scores.clone()


def suppress_tokens_at_begin(input_ids: Tensor, scores: Tensor, token_ids: Tensor, begin_index: int) -> Tensor:
    """Suppress ``token_ids`` at the step where the sequence is exactly ``begin_index`` long."""
    if input_ids.shape[-1] == begin_index:
        return suppress_tokens(scores, token_ids)
    return scores


def _force_tokens(scores: Tensor, token_ids: Union[int, Tensor]) -> Tensor:
    """Scores that make ``token_ids`` the only candidates: 0 for them, -inf for every other token."""
    forced = torch.full_like(scores, -math.inf)
    forced[:, token_ids] = 0
    return forced


def forced_bos(input_ids: Tensor, scores: Tensor, bos_token_id: int) -> Tensor:
    """Force ``bos_token_id`` as the first generated token (length 1: only the decoder start)."""
    if input_ids.shape[-1] == 1:
        return _force_tokens(scores, bos_token_id)
    return scores


def forced_eos(input_ids: Tensor, scores: Tensor, eos_token_id: Tensor, max_length: int) -> Tensor:
    """Force an EOS token as the last token, at the step where the length is ``max_length - 1``."""
    if input_ids.shape[-1] == max_length - 1:
        return _force_tokens(scores, eos_token_id)
    return scores


def prefix_constrained(scores: Tensor, allowed: Tensor) -> Tensor:
    """Add -inf to every score whose token is not ``allowed`` (``[batch, vocab]`` bool), 0 elsewhere."""
    return scores + torch.zeros_like(scores).masked_fill(~allowed, -math.inf)


def inf_nan_remove(scores: Tensor) -> Tensor:
    """NaN -> 0, +inf -> the dtype's largest finite value, -inf -> its lowest (InfNanRemoveLogitsProcessor)."""
    finfo = torch.finfo(scores.dtype)
    cleaned = torch.where(scores != scores, 0.0, scores)
    cleaned = torch.where(scores == float("inf"), finfo.max, cleaned)
    return torch.where(scores == float("-inf"), finfo.min, cleaned)


def logit_normalization(scores: Tensor) -> Tensor:
    """Log-softmax over the vocabulary (LogitNormalization)."""
    return scores.log_softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# Guidance and watermarking
# --------------------------------------------------------------------------------------------


def classifier_free_guidance(scores: Tensor, unconditional_logits: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance on log-probabilities (UnbatchedClassifierFreeGuidanceLogitsProcessor).

    Returns ``log_softmax(scores)`` when ``guidance_scale == 1``, else
    ``scale * (log_softmax(scores) - u) + u`` with ``u = log_softmax(unconditional_logits)``
    (``[batch, vocab]``: the unconditional branch's scores for this step).
    """
    conditional = torch.nn.functional.log_softmax(scores, dim=-1)
    if guidance_scale == 1:
        return conditional
    unconditional = torch.nn.functional.log_softmax(unconditional_logits, dim=-1)
    return guidance_scale * (conditional - unconditional) + unconditional


def watermark(scores: Tensor, greenlist: Tensor, bias: float) -> Tensor:
    """Add ``bias`` to the scores of the green-list tokens (``greenlist``: ``[batch, vocab]`` bool)."""
    return torch.where(greenlist, scores + bias, scores)


__all__ = [
    "classifier_free_guidance",
    "encoder_no_repeat_ngram",
    "encoder_repetition_penalty",
    "epsilon",
    "eta",
    "exponential_decay_length_penalty",
    "forced_bos",
    "forced_eos",
    "inf_nan_remove",
    "logit_normalization",
    "min_length",
    "min_new_tokens",
    "min_p",
    "no_repeat_ngram",
    "no_repeat_ngram_ragged",
    "prefix_constrained",
    "presence_frequency_penalty",
    "presence_frequency_penalty_on_counts",
    "repetition_penalty",
    "repetition_penalty_on_seen",
    "sequence_bias",
    "suppress_tokens",
    "suppress_tokens_at_begin",
    "temperature",
    "top_k",
    "top_p",
    "typical",
    "watermark",
]
