"""Stopping criteria for :func:`turbogen.generate`, with transformers v4.57 semantics.

A criterion is called as ``criterion(input_ids, scores) -> BoolTensor[rows]`` after each new token is
appended (``True`` = this row is done). ``scores`` is what ``generate`` has collected so far: the tuple of
per-step scores when ``output_scores=True``, else ``None``. Any object with that call signature is accepted,
including transformers' own criteria.

The decode loops do not call a :class:`StoppingCriteriaList` as a black box: :class:`StoppingPlan` splits it
into conditions that hold for every row at once and are decided on the host without touching the device
(maximum length, maximum time) and per-row conditions evaluated on the device (EOS, stop strings, anything
user-supplied). Our per-row criteria also declare how many trailing tokens they read, so beam search can
hand them a short tail instead of materialising whole candidate sequences.
"""

from __future__ import annotations

import copy
import time
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import torch

from . import _transformers_compat as _compat

__all__ = [
    "ConfidenceCriteria",
    "EosTokenCriteria",
    "MaxLengthCriteria",
    "MaxTimeCriteria",
    "StopStringCriteria",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "StoppingPlan",
    "build_stopping_criteria",
    "validate_stopping_criteria",
]


class StoppingCriteria(ABC):
    """Base class of stopping criteria.

    Subclasses implement ``__call__(input_ids, scores, **kwargs)`` returning a ``BoolTensor`` of shape
    ``[rows]``. A subclass that only reads the last few tokens of ``input_ids`` may set ``tail_tokens`` to
    that number, which lets beam search pass it just those columns.
    """

    #: Trailing tokens of ``input_ids`` the criterion reads; ``None`` means the whole sequence.
    tail_tokens: Optional[int] = None

    @abstractmethod
    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor: ...


class MaxLengthCriteria(StoppingCriteria):
    """Every row is done once the sequence (prompt included) reaches ``max_length`` tokens.

    ``max_position_embeddings``, when given, only triggers a one-time warning once generation runs past
    the positions the model was built for.
    """

    tail_tokens = 0

    def __init__(self, max_length: int, max_position_embeddings: Optional[int] = None):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
            raise ValueError(f"`max_length` must be a positive integer, got {max_length!r}")
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings
        self._warned_past_positions = False

    def is_done(self, length: int) -> bool:
        """Whether a sequence of ``length`` tokens has reached the limit (host-side, no tensors)."""
        if (
            self.max_position_embeddings is not None
            and length > self.max_position_embeddings
            and length < self.max_length
            and not self._warned_past_positions
        ):
            self._warned_past_positions = True
            warnings.warn(
                f"Generation has exceeded the model's maximum length (max_position_embeddings="
                f"{self.max_position_embeddings}); the model may misbehave from here on.",
                UserWarning,
                stacklevel=3,
            )
        return length >= self.max_length

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        done = self.is_done(input_ids.shape[-1])
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class MaxTimeCriteria(StoppingCriteria):
    """Every row is done once more than ``max_time`` seconds have passed since ``initial_timestamp``
    (default: when the criterion is created, i.e. at the start of ``generate``)."""

    tail_tokens = 0

    def __init__(self, max_time: float, initial_timestamp: Optional[float] = None):
        if not isinstance(max_time, (int, float)) or isinstance(max_time, bool) or max_time < 0:
            raise ValueError(f"`max_time` must be a non-negative number of seconds, got {max_time!r}")
        self.max_time = float(max_time)
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def is_done(self) -> bool:
        """Whether the time budget is spent (host-side)."""
        return time.time() - self.initial_timestamp > self.max_time

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.is_done(), dtype=torch.bool, device=input_ids.device)


class EosTokenCriteria(StoppingCriteria):
    """A row is done when its last token is one of ``eos_token_id`` (an int, a list of ints or a tensor)."""

    tail_tokens = 1

    def __init__(self, eos_token_id: int | Sequence[int] | torch.Tensor):
        if isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        eos = torch.as_tensor(eos_token_id).reshape(-1)
        if eos.numel() == 0 or eos.is_floating_point():
            raise ValueError(f"`eos_token_id` must be one or more integer token ids, got {eos_token_id!r}")
        self.eos_token_id = eos.long()

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        if self.eos_token_id.device != input_ids.device:
            self.eos_token_id = self.eos_token_id.to(input_ids.device)
        return torch.isin(input_ids[:, -1], self.eos_token_id)


# ----------------------------------------------------------------------------------------------------------
# Stop strings
# ----------------------------------------------------------------------------------------------------------


class StopStringCriteria(StoppingCriteria):
    """A row is done when its decoded text contains one of ``stop_strings`` ending inside its last token.

    This is transformers' rule: the stop string may span several tokens and may overhang either end
    (``["st", "opera"]`` and ``["las", "topper"]`` both stop on ``"stop"``), but an occurrence that ends before
    the last token does not count (``["stop", "at"]`` does not stop), because the check runs after every token
    and would already have fired. Only the last ``max(len(s) for s in stop_strings)`` tokens are examined,
    prompt tokens included. Token texts are what each token contributes inside a longer text (leading-space
    markers resolved), obtained from the tokenizer once and cached per tokenizer.

    How the check runs on tensors: for each stop string ``s`` of length ``L``, walking backwards from the last
    token, a partial match is described by how many trailing characters of ``s`` are already matched. Per token
    ``t`` we precompute (``StopStringTables``)

    * ``ends[t, k]``: ``t`` can be the last token with the last ``k`` characters of ``s`` (``k == L``: ``s``
      lies inside ``t``; ``k < L``: ``t`` starts with the last ``k`` characters of ``s``);
    * ``fits[t, p]``: with ``p`` characters matched, ``t`` supplies the characters just before them, i.e.
      ``t`` ends with ``s[max(0, L - p - len(t)) : L - p]`` (running off the start of ``s`` is allowed);
    * ``length[t]``: the number of characters ``t`` adds.

    Each starting ``k`` fixes the whole walk (after ``j`` earlier tokens, ``k`` plus their lengths are matched),
    so all walks are evaluated at once with gathers and a cumulative product, without a Python loop.
    """

    def __init__(self, tokenizer: Any, stop_strings: str | Sequence[str]):
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stop_strings = tuple(stop_strings)
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(
                f"`stop_strings` must be a non-empty string or list of non-empty strings, got {stop_strings!r}"
            )
        if tokenizer is None:
            raise ValueError("`stop_strings` need the model's tokenizer: pass `tokenizer=` to generate().")
        self.stop_strings = stop_strings
        self.tail_tokens = max(len(s) for s in stop_strings)
        self.tables = StopStringTables.for_tokenizer(tokenizer, stop_strings)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        return self.tables.match(input_ids[:, -self.tail_tokens :])


class StopStringTables:
    """Per-token tables for :class:`StopStringCriteria` (see there for their meaning).

    Shapes, with ``R = max token id + 2`` (the last row stands for every unknown id), ``S`` stop strings and
    ``M`` the longest stop string: ``ends`` and ``fits`` are ``bool [R, S, M + 1]``, indexed by a character
    count; ``length`` is ``int64 [R]``; ``target`` (each stop string's length) is ``int64 [S]``.
    """

    # tokenizer -> {"texts": (len(tokenizer), texts), stop_strings: tables}
    _cache: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()

    def __init__(self, token_texts: Sequence[Optional[str]], stop_strings: Sequence[str]):
        num_rows = len(token_texts) + 1
        longest = max(len(s) for s in stop_strings)
        ends = torch.zeros(num_rows, len(stop_strings), longest + 1, dtype=torch.bool)
        fits = torch.zeros_like(ends)
        length = torch.zeros(num_rows, dtype=torch.int64)
        for token_id, text in enumerate(token_texts):
            if text is None:  # an id the tokenizer does not define behaves like an unknown id
                continue
            length[token_id] = len(text)
            for s_index, stop in enumerate(stop_strings):
                total = len(stop)
                if stop in text:
                    ends[token_id, s_index, total] = True
                for k in range(1, min(len(text), total - 1) + 1):
                    if text[:k] == stop[total - k :]:
                        ends[token_id, s_index, k] = True
                for matched in range(1, total):
                    remaining = total - matched
                    if text.endswith(stop[max(0, remaining - len(text)) : remaining]):
                        fits[token_id, s_index, matched] = True
        self.ends, self.fits, self.length = ends, fits, length
        self.target = torch.tensor([len(s) for s in stop_strings], dtype=torch.int64)
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, stop_strings: tuple[str, ...]) -> "StopStringTables":
        """Tables for ``tokenizer`` and ``stop_strings``, built once per (tokenizer, vocabulary size, strings)."""
        try:
            per_tokenizer = cls._cache.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: build without caching
            per_tokenizer = {}
        vocab_size = len(tokenizer)
        texts_entry = per_tokenizer.get("texts")
        if texts_entry is None or texts_entry[0] != vocab_size:
            per_tokenizer.clear()
            per_tokenizer["texts"] = texts_entry = (vocab_size, token_texts(tokenizer))
        if stop_strings not in per_tokenizer:
            per_tokenizer[stop_strings] = cls(texts_entry[1], stop_strings)
        return per_tokenizer[stop_strings]

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in (self.ends, self.fits, self.length, self.target))
        return self._on_device[device]

    def match(self, tail: torch.LongTensor) -> torch.BoolTensor:
        """``BoolTensor[rows]``: whether a stop string ends inside the last token of ``tail`` (``[rows, W]``)."""
        ends, fits, length, target = self._tensors(tail.device)
        unknown_row = ends.shape[0] - 1
        ids = torch.where((tail < 0) | (tail >= unknown_row), unknown_row, tail)
        longest = ends.shape[-1] - 1
        # Walks start with k = 1..longest characters matched by the last token.  [rows, S, K]
        start_ok = ends[ids[:, -1], :, 1:]
        k = torch.arange(1, longest + 1, device=tail.device)
        matched = (start_ok & (k >= target[:, None])).any(dim=(1, 2))
        earlier = ids[:, :-1].flip(1)  # nearest token first: [rows, J]
        if earlier.shape[1] == 0:
            return matched
        earlier_length = length[earlier]  # [rows, J]
        before = earlier_length.cumsum(1) - earlier_length  # characters added by the tokens already walked
        count_before = k[None, :, None] + before[:, None, :]  # [rows, K, J]
        count_after = count_before + earlier_length[:, None, :]
        # fits[token_j, s, count_before] for every walk: [rows, S, J, K]
        fits_rows = fits[earlier].permute(0, 2, 1, 3)  # [rows, S, J, M + 1]
        index = count_before.clamp(max=longest).transpose(1, 2)[:, None].expand(-1, fits_rows.shape[1], -1, -1)
        step_ok = torch.gather(fits_rows, 3, index)
        alive = start_ok[:, :, None, :] & step_ok.cumprod(dim=2).bool()
        reached = count_after.transpose(1, 2)[:, None] >= target[None, :, None, None]
        return matched | (alive & reached).any(dim=(1, 2, 3))


class ConfidenceCriteria(StoppingCriteria):
    """Stops when the model's confidence in the token it just chose falls below a threshold.

    Used by an assistant (draft) model in assisted generation: ``generate`` adds it when the generation config
    has ``is_assistant=True`` and ``assistant_confidence_threshold > 0``, so the draft ends early at a token the
    assistant is unsure of. As in transformers v4.57, the verdict covers the whole batch and is read from row 0
    only: the probability (softmax of the last step's processed scores) of row 0's last token is compared with
    the threshold. It needs the collected scores, so the call must record them (``output_scores=True``).

    Args:
        assistant_confidence_threshold: generation stops when that probability is strictly below this value.
    """

    def __init__(self, assistant_confidence_threshold: float):
        if isinstance(assistant_confidence_threshold, bool) or not isinstance(assistant_confidence_threshold,
                                                                              (int, float)):
            raise TypeError("`assistant_confidence_threshold` must be a real number, got "
                            f"{assistant_confidence_threshold!r}")
        self.assistant_confidence_threshold = assistant_confidence_threshold

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> bool:
        if not scores:
            raise ValueError(
                "ConfidenceCriteria reads the scores of the last step, but none were collected: generate with "
                "`output_scores=True` (and `return_dict_in_generate=True`) when `is_assistant=True`."
            )
        # compared as a Python float (not in the scores' dtype), as transformers does
        probability = scores[-1][0].softmax(-1)[input_ids[0, -1]].item()
        return probability < self.assistant_confidence_threshold


def token_texts(tokenizer: Any) -> list[Optional[str]]:
    """The text each token id contributes in the middle of a decoded sequence (``None`` for unused ids).

    Decoding a token on its own can drop or add a leading space (SentencePiece/metaspace markers, byte-level
    BPE), so each token is decoded after a fixed reference text and that reference is cut off again.
    """
    reference = "abcdef"
    reference_tokens = tokenizer.convert_ids_to_tokens(tokenizer(reference, add_special_tokens=False)["input_ids"])
    vocab = tokenizer.get_vocab()
    texts: list[Optional[str]] = [None] * (max(vocab.values()) + 1)
    for token, token_id in vocab.items():
        decoded = tokenizer.convert_tokens_to_string([*reference_tokens, token])
        texts[token_id] = decoded[decoded.index(reference) + len(reference) :]
    return texts


# ----------------------------------------------------------------------------------------------------------
# Lists, construction, and the decode loops' view of them
# ----------------------------------------------------------------------------------------------------------


class StoppingCriteriaList(list):
    """A list of criteria; calling it ORs their per-row verdicts."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | _as_row_flags(criterion(input_ids, scores, **kwargs), input_ids)
        return done

    @property
    def max_length(self) -> Optional[int]:
        """The ``max_length`` of the first :class:`MaxLengthCriteria` in the list, if any."""
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None


def _as_row_flags(verdict: Any, input_ids: torch.Tensor) -> torch.BoolTensor:
    """A criterion's verdict as ``BoolTensor[rows]`` (accepts Python bools, scalars and ``[rows, 1]``)."""
    verdict = torch.as_tensor(verdict, device=input_ids.device)
    if verdict.numel() == input_ids.shape[0]:
        return verdict.reshape(-1).bool()
    if verdict.numel() == 1:
        return verdict.reshape(()).bool().expand(input_ids.shape[0])
    raise ValueError(
        f"a stopping criterion returned a verdict of shape {tuple(verdict.shape)} for {input_ids.shape[0]} rows; "
        "expected one boolean per row"
    )


# transformers' criteria live here; one of them stands in for the turbogen class of the same name.
TRANSFORMERS_STOPPING_MODULE = "transformers.generation.stopping_criteria"


def is_same_criterion_kind(criterion: Any, cls: type) -> bool:
    """``criterion`` is a ``cls`` (exactly, not a subclass), or transformers' class of the same name."""
    return _compat.is_type_or_transformers_twin(criterion, cls, TRANSFORMERS_STOPPING_MODULE)


def build_stopping_criteria(
    generation_config: Any,
    *,
    eos_token_ids: Optional[torch.Tensor] = None,
    tokenizer: Any = None,
    max_position_embeddings: Optional[int] = None,
    custom: Optional[Iterable[Any]] = None,
) -> StoppingCriteriaList:
    """The criteria ``generate`` uses, in transformers' order: max length, max time, stop strings, EOS,
    confidence (an assistant model's: ``is_assistant`` and ``assistant_confidence_threshold > 0``); then
    merged with the user's ``custom`` criteria as transformers does: a custom criterion of the same kind as a
    built-in one (the same class, or transformers' class of that name) replaces it in place, with a warning;
    the other custom ones are appended."""
    defaults = StoppingCriteriaList()
    if generation_config.max_length is not None:
        defaults.append(MaxLengthCriteria(generation_config.max_length, max_position_embeddings))
    if generation_config.max_time is not None:
        defaults.append(MaxTimeCriteria(generation_config.max_time))
    if generation_config.stop_strings is not None:
        if tokenizer is None:
            raise ValueError(
                "`stop_strings` are set (in the arguments or the model's generation config) but no tokenizer was "
                "given: pass the model's tokenizer as `tokenizer=` to generate()."
            )
        defaults.append(StopStringCriteria(tokenizer, generation_config.stop_strings))
    if eos_token_ids is not None:
        defaults.append(EosTokenCriteria(eos_token_ids))
    threshold = getattr(generation_config, "assistant_confidence_threshold", None)
    if getattr(generation_config, "is_assistant", False) and threshold is not None and threshold > 0:
        defaults.append(ConfidenceCriteria(threshold))
    custom = list(custom or ())
    if not custom:
        return defaults
    merged = StoppingCriteriaList()
    for default in defaults:
        replacement = next((c for c in custom if is_same_criterion_kind(c, type(default))), None)
        if replacement is not None:
            warnings.warn(
                f"A custom {type(default).__name__} was passed to generate() although the generation config also "
                "defines one; the custom one takes precedence.",
                UserWarning,
                stacklevel=3,
            )
        merged.append(default if replacement is None else replacement)
    merged.extend(c for c in custom if not any(c is m for m in merged))
    return merged


def validate_stopping_criteria(stopping_criteria: StoppingCriteriaList, max_length: int) -> StoppingCriteriaList:
    """A copy (``copy.deepcopy``) of ``stopping_criteria`` that enforces ``max_length``, as transformers v4.57's
    function of this name: when the list has no :class:`MaxLengthCriteria` one for ``max_length`` is appended;
    when its ``max_length`` differs from ``max_length`` a ``UserWarning`` says so and the copy is left as it is
    (the list's own limit applies). The list passed in is never modified."""
    if not hasattr(stopping_criteria, "max_length"):
        raise TypeError("`stopping_criteria` must be a StoppingCriteriaList (it has no `max_length`), got "
                        f"{type(stopping_criteria).__name__}")
    listed_max_length = stopping_criteria.max_length
    validated = copy.deepcopy(stopping_criteria)
    if listed_max_length is None:
        validated.append(MaxLengthCriteria(max_length=max_length))
    elif listed_max_length != max_length:
        warnings.warn("You set different `max_length` for stopping criteria and `max_length` parameter", UserWarning,
                      stacklevel=2)
    return validated


def _length_reached(criterion: Any, length: int) -> bool:
    if isinstance(criterion, MaxLengthCriteria):
        return criterion.is_done(length)
    return length >= criterion.max_length  # transformers' MaxLengthCriteria


def _time_is_up(criterion: Any) -> bool:
    if isinstance(criterion, MaxTimeCriteria):
        return criterion.is_done()
    return time.time() - criterion.initial_timestamp > criterion.max_time  # transformers' MaxTimeCriteria


class StoppingPlan:
    """How a decode loop evaluates a :class:`StoppingCriteriaList` cheaply.

    * :meth:`stops_all` (host only): whether a sequence of the given length has hit a
      :class:`MaxLengthCriteria` or the time budget of a :class:`MaxTimeCriteria` is spent (transformers'
      classes of those names count too); either ends the whole generation, exactly as those criteria marking
      every row done would.
    * :meth:`rows_done` (device): the OR of every other criterion, ``None`` if there are none.
    * ``tail_tokens``: the trailing tokens those criteria need (``None``: whole sequences).
    * ``pads_finished_rows``: transformers' rule that tokens of finished rows are replaced by the pad token
      only when some criterion carries an ``eos_token_id``.
    * ``rows_are_pure``: every row criterion is one of ours (a pure function of the tokens), so skipping a
      call, or making one for a step that is later discarded, cannot be observed by user code.
    """

    def __init__(self, criteria: Iterable[Any]):
        criteria = list(criteria)
        self.length_criteria = [c for c in criteria if is_same_criterion_kind(c, MaxLengthCriteria)]
        self.time_criteria = [c for c in criteria if is_same_criterion_kind(c, MaxTimeCriteria)]
        host_side = self.length_criteria + self.time_criteria
        self.row_criteria = [c for c in criteria if not any(c is h for h in host_side)]
        self.max_length = min((c.max_length for c in self.length_criteria), default=None)
        tails = [getattr(c, "tail_tokens", None) for c in self.row_criteria]
        self.tail_tokens = None if any(t is None for t in tails) else max(tails, default=0)
        self.pads_finished_rows = any(hasattr(c, "eos_token_id") for c in criteria)
        self.rows_are_pure = all(type(c) in (EosTokenCriteria, StopStringCriteria) for c in self.row_criteria)

    def stops_all(self, length: int) -> bool:
        """Host-side: does a sequence of ``length`` tokens end the generation for every row?"""
        # Every criterion is asked (no short-circuit), so each can emit its own warnings.
        reached = [_length_reached(criterion, length) for criterion in self.length_criteria]
        return any(reached) or any(_time_is_up(criterion) for criterion in self.time_criteria)

    def rows_done(self, input_ids: torch.LongTensor, scores: Any) -> Optional[torch.BoolTensor]:
        """OR of the per-row criteria on ``input_ids`` (or its last ``tail_tokens`` columns); ``None`` if none."""
        done = None
        for criterion in self.row_criteria:
            verdict = _as_row_flags(criterion(input_ids, scores), input_ids)
            done = verdict if done is None else done | verdict
        return done
