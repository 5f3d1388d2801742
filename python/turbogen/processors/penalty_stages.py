"""Stateful logits stages for the penalties on repeated tokens, with per-row state kept on the
device and updated by ``accept``.

Each stage stands for one processor and reproduces its ``__call__`` bit for bit (see
:mod:`turbogen.processors.stages` for the verbs and the contract):

- :class:`RepetitionPenaltyStage` for ``RepetitionPenaltyLogitsProcessor`` (turbogen's or
  transformers'): per-row counts of the tokens from position ``prompt_ignore_length`` on;
- :class:`PresenceFrequencyPenaltyStage` for turbogen's ``PresenceFrequencyPenaltyLogitsProcessor``:
  per-row counts of the tokens from position ``prompt_length`` on;
- :class:`NoRepeatNGramStage` for ``NoRepeatNGramLogitsProcessor`` (turbogen's or transformers'):
  the per-row token history, whose n-gram windows are matched against the row's last tokens.

The counting stages never look at the history again: ``apply`` reads the counts. The n-gram stage
matches the windows of its own fixed-capacity history, so rows of different lengths (after
per-row rollbacks) need no padded ``input_ids``. All verbs are tensor operations of fixed shapes
(scatters, index copies): no Python loop over rows and no host synchronisation once the
vocabulary size (and, for n-grams, the capacity) is known, so a decode step that calls them can
be compiled or captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import functional
from .base import ArgumentTypeError, check_ids_tensor, check_int, check_scores
from .penalties import (
    NoRepeatNGramLogitsProcessor,
    PresenceFrequencyPenaltyLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

#: The default of the most tokens one row can roll back at once (a generous speculative draft length).
DEFAULT_ROLLBACK_WINDOW = 64

_TRANSFORMERS_PROCESSORS_MODULE = "transformers.generation.logits_process"


# --------------------------------------------------------------------------------------------
# Argument checks of the state verbs (shapes and dtypes only: values would need a host sync)
# --------------------------------------------------------------------------------------------


def _index_tensor(value, name: str, dims: "tuple[int, ...]") -> torch.Tensor:
    """An integer tensor of one of the dimensionalities ``dims``, as int64."""
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"`{name}` has to be an integer torch.Tensor, but is {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ArgumentTypeError(f"`{name}` has to be an integer tensor, but has dtype {value.dtype}")
    if value.dim() not in dims:
        raise ValueError(f"`{name}` has to have {' or '.join(map(str, dims))} dimensions, but has shape "
                         f"{tuple(value.shape)}")
    return value.long()


def _accepted_tokens(tokens, rows: int, device) -> torch.Tensor:
    """``tokens`` (``[rows]`` or ``[rows, n]``) as ``[rows, n]`` int64 on ``device``."""
    tokens = _index_tensor(tokens, "tokens", (1, 2))
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(1)
    if tokens.shape[0] != rows:
        raise ValueError(f"`tokens` has {tokens.shape[0]} rows, but the stage holds {rows} rows")
    return tokens.to(device)


def _reset_arguments(rows, prompt_ids) -> "tuple[torch.Tensor, torch.Tensor]":
    rows = _index_tensor(rows, "rows", (1,))
    prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
    if prompt_ids.shape[0] != rows.shape[0]:
        raise ValueError(f"`prompt_ids` has {prompt_ids.shape[0]} rows, but `rows` names {rows.shape[0]}")
    return rows, prompt_ids


def _rollback_arguments(rows, n, limit: torch.Tensor, limit_meaning: str) -> "tuple[torch.Tensor, torch.Tensor]":
    """``rows`` and ``n`` as int64 on ``limit``'s device, with ``0 <= n <= limit[rows]`` checked when
    that is free: running eagerly on the host (on an accelerator or while compiling it would
    synchronise, so the values are trusted there)."""
    rows = _index_tensor(rows, "rows", (1,))
    n = _index_tensor(n, "n", (1,))
    if n.shape != rows.shape:
        raise ValueError(f"`n` has shape {tuple(n.shape)}, but `rows` has shape {tuple(rows.shape)}")
    on_host = n.device.type == "cpu" and rows.device.type == "cpu" and limit.device.type == "cpu"
    if on_host and not torch.compiler.is_compiling():
        row_limits = limit.index_select(0, rows)
        if bool(((n < 0) | (n > row_limits)).any()):
            raise ValueError(f"`n` has to be in [0, {limit_meaning}] for each row, but is {n.tolist()} for rows "
                             f"{rows.tolist()}, which have {row_limits.tolist()}")
    return rows.to(limit.device), n.to(limit.device)


def _reorder_index(index, rows: int, device) -> torch.Tensor:
    index = _index_tensor(index, "index", (1,))
    if index.shape[0] != rows:
        raise ValueError(f"`index` has {index.shape[0]} entries, but the stage holds {rows} rows")
    return index.to(device)


def _largest_id(token_ids: torch.Tensor) -> int:
    return int(token_ids.max()) if token_ids.numel() else -1


def _with_room_for(columns: torch.Tensor, longest: int) -> torch.Tensor:
    """``columns`` (``[rows, capacity]`` token ids), widened with zeros (a valid id) to at least
    ``longest`` columns, doubling so that a growing history reallocates only now and then."""
    capacity = columns.shape[1]
    if longest <= capacity:
        return columns
    return torch.nn.functional.pad(columns, (0, max(longest, 2 * capacity) - capacity))


# --------------------------------------------------------------------------------------------
# Token counts
# --------------------------------------------------------------------------------------------


class PositionalTokenCounts:
    """Per row, how often each token occurs at positions ``>= start`` of the row's history (the
    prompt followed by the accepted tokens), plus the last accepted tokens for rollback.

    State, all device tensors with one row per sequence:

    - ``counts`` ``[rows, vocab]`` int32: the occurrences;
    - ``lengths`` ``[rows]`` int64: the history length (the position of the next token);
    - ``recent`` ``[rows, window]`` int64: a ring of the accepted tokens, the token at position
      ``p`` in slot ``p % window``;
    - ``retained`` ``[rows]`` int64: how many of the last accepted tokens the ring still holds,
      i.e. can be rolled back: at most ``window``, as accepting a token overwrites the one
      ``window`` positions earlier, and less after a rollback, which leaves forgotten slots stale.

    Without ``vocab_size`` the counts are as wide as the largest token id seen so far (finding it
    synchronises with the host) until :meth:`fit` learns the vocabulary from the scores.
    """

    def __init__(self, prompt_ids: torch.Tensor, start: int, vocab_size: Optional[int], window: int):
        prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
        self.start = check_int(start, "start", minimum=0)
        self.window = check_int(window, "rollback_window", minimum=1)
        self.vocab_size = None if vocab_size is None else check_int(vocab_size, "vocab_size", minimum=1)
        rows, length = prompt_ids.shape
        device = prompt_ids.device
        # At least one column, so that index 0 (an unused ring slot's content) is always valid.
        width = self.vocab_size if self.vocab_size is not None else max(_largest_id(prompt_ids) + 1, 1)
        self.counts = self._prompt_counts(prompt_ids, width)
        self.lengths = torch.full((rows,), length, dtype=torch.long, device=device)
        self.retained = torch.zeros(rows, dtype=torch.long, device=device)
        self.recent = torch.zeros(rows, self.window, dtype=torch.long, device=device)

    @property
    def rows(self) -> int:
        return self.counts.shape[0]

    def _prompt_counts(self, prompt_ids: torch.Tensor, width: int) -> torch.Tensor:
        """``[k, width]`` counts of the prompt tokens at positions ``>= start``."""
        counted = (torch.arange(prompt_ids.shape[1], device=prompt_ids.device) >= self.start).to(torch.int32)
        counts = torch.zeros(prompt_ids.shape[0], width, dtype=torch.int32, device=prompt_ids.device)
        return counts.scatter_add_(1, prompt_ids, counted.expand(prompt_ids.shape))

    def _make_room_for(self, token_ids: torch.Tensor) -> None:
        """While the vocabulary is unknown, widen the counts to hold ``token_ids`` (a host sync)."""
        if self.vocab_size is not None:
            return
        width = _largest_id(token_ids) + 1
        if width > self.counts.shape[1]:
            self.counts = torch.nn.functional.pad(self.counts, (0, width - self.counts.shape[1]))

    def fit(self, scores: torch.Tensor) -> None:
        """Size the state for ``scores`` (``[rows, vocab]``) and move it to their device."""
        if scores.shape[0] != self.rows:
            raise ValueError(f"`scores` has {scores.shape[0]} rows, but the stage holds {self.rows} rows")
        vocab_size = scores.shape[-1]
        if self.vocab_size is None:
            if self.counts.shape[1] > vocab_size:
                raise ValueError(f"token id {self.counts.shape[1] - 1} was seen, but `scores` has a vocabulary of "
                                 f"{vocab_size}")
            self.counts = torch.nn.functional.pad(self.counts, (0, vocab_size - self.counts.shape[1]))
            self.vocab_size = vocab_size
        elif vocab_size != self.vocab_size:
            raise ValueError(f"`scores` has a vocabulary of {vocab_size}, but the stage was sized for "
                             f"{self.vocab_size}")
        if self.counts.device != scores.device:
            self.counts, self.lengths, self.retained, self.recent = (
                state.to(scores.device) for state in (self.counts, self.lengths, self.retained, self.recent))

    def accept(self, tokens: torch.Tensor) -> None:
        """Append ``tokens`` (``[rows]`` or ``[rows, n]``) to every row."""
        tokens = _accepted_tokens(tokens, self.rows, self.counts.device)
        self._make_room_for(tokens)
        accepted = tokens.shape[1]
        positions = self.lengths.unsqueeze(1) + torch.arange(accepted, device=tokens.device)
        self.counts.scatter_add_(1, tokens, (positions >= self.start).to(torch.int32))
        # Only the last `window` tokens fit the ring (and distinct slots keep the scatter deterministic).
        kept = min(accepted, self.window)
        self.recent.scatter_(1, positions[:, -kept:] % self.window, tokens[:, -kept:])
        self.lengths += accepted
        self.retained.add_(accepted).clamp_(max=self.window)

    def reset(self, rows: torch.Tensor, prompt_ids: torch.Tensor) -> None:
        """Restart ``rows`` (``[k]``, distinct) from ``prompt_ids`` (``[k, length]``)."""
        rows, prompt_ids = _reset_arguments(rows, prompt_ids)
        self._make_room_for(prompt_ids)
        device = self.counts.device
        rows, prompt_ids = rows.to(device), prompt_ids.to(device)
        self.counts.index_copy_(0, rows, self._prompt_counts(prompt_ids, self.counts.shape[1]))
        self.lengths.index_fill_(0, rows, prompt_ids.shape[1])
        self.retained.index_fill_(0, rows, 0)

    def rollback(self, rows: torch.Tensor, n: torch.Tensor) -> None:
        """Forget the last ``n[i]`` accepted tokens of row ``rows[i]`` (``rows`` distinct, ``n[i]``
        at most the row's ``retained`` tokens)."""
        rows, n = _rollback_arguments(rows, n, self.retained,
                                      f"the accepted tokens still held (at most rollback_window={self.window})")
        back = torch.arange(self.window, device=rows.device)
        positions = self.lengths.index_select(0, rows).unsqueeze(1) - 1 - back
        tokens = self.recent.index_select(0, rows).gather(1, positions % self.window)
        forgotten = ((back < n.unsqueeze(1)) & (positions >= self.start)).to(torch.int32)
        # One scatter-add over the flattened counts touches only the k * window forgotten entries.
        flat_positions = rows.unsqueeze(1) * self.counts.shape[1] + tokens
        self.counts.view(-1).scatter_add_(0, flat_positions.view(-1), -forgotten.view(-1))
        self.lengths.index_add_(0, rows, -n)
        self.retained.index_add_(0, rows, -n)

    def reorder(self, index: torch.Tensor) -> None:
        """New row ``r`` becomes old row ``index[r]``; in place, so captured graphs keep their buffers."""
        index = _reorder_index(index, self.rows, self.counts.device)
        for state in (self.counts, self.lengths, self.retained, self.recent):
            state.copy_(state.index_select(0, index))


class _CountingStage:
    """A stage whose state is one :class:`PositionalTokenCounts`; subclasses define ``apply``."""

    reads_input_ids = False

    def __init__(self, processor, prompt_ids: torch.Tensor, start: int, vocab_size: Optional[int],
                 rollback_window: int):
        self.processor = processor
        self.state = PositionalTokenCounts(prompt_ids, start, vocab_size, rollback_window)

    def _counts_for(self, scores: torch.Tensor) -> torch.Tensor:
        check_scores(scores)
        self.state.fit(scores)
        return self.state.counts

    def accept(self, tokens: torch.LongTensor) -> None:
        self.state.accept(tokens)

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        self.state.reset(rows, prompt_ids)

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        self.state.rollback(rows, n)

    def reorder(self, index: torch.LongTensor) -> None:
        self.state.reorder(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r}, rows={self.state.rows})"


class RepetitionPenaltyStage(_CountingStage):
    """``RepetitionPenaltyLogitsProcessor`` with per-row counts instead of the history.

    A token is penalised when it occurs in the row's history (``prompt_ids`` then the accepted
    tokens) at a position ``>= processor.prompt_ignore_length``; pad tokens of a left-padded prompt
    count, as they do in transformers. ``processor.penalty`` is read at every ``apply``.

    ``apply`` touches only candidate columns, not the whole vocabulary: ``candidates``
    (``[rows, capacity]``) holds every token the row ever held at each position (the prompt, then
    the accepted tokens written at their positions; rolled-back or reset tokens stay until
    overwritten). It is a superset of the counted tokens, and a candidate's new score is decided by
    its count alone, so duplicates and stale entries write the same value as the live entry: the
    gather / penalise / scatter is that of transformers over ``input_ids``, as cheap, and bit for bit
    the same. The capacity follows the history's length as :class:`NoRepeatNGramStage`'s does.
    """

    def __init__(self, processor, prompt_ids: torch.LongTensor, *, vocab_size: Optional[int] = None,
                 rollback_window: int = DEFAULT_ROLLBACK_WINDOW, max_length: Optional[int] = None):
        super().__init__(processor, prompt_ids, processor.prompt_ignore_length or 0, vocab_size, rollback_window)
        rows, length = self.state.lengths.shape[0], prompt_ids.shape[1]
        self.max_length = None if max_length is None else check_int(max_length, "max_length", minimum=1)
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"`prompt_ids` has {length} tokens, more than `max_length`={self.max_length}")
        capacity = max(length, 1) if self.max_length is None else self.max_length
        self.candidates = torch.zeros(rows, capacity, dtype=torch.long, device=prompt_ids.device)
        self.candidates[:, :length] = prompt_ids
        # An upper bound of every row's length, known without reading the device.
        self._longest = length

    def _grow_for(self, longest: int) -> None:
        """Without ``max_length``: make room for rows of up to ``longest`` tokens (the new columns hold
        token 0, which like every candidate is penalised only if counted)."""
        if self.max_length is not None:
            return
        self._longest = longest
        self.candidates = _with_room_for(self.candidates, longest)

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = self._counts_for(scores)
        if self.candidates.device != scores.device:
            self.candidates = self.candidates.to(scores.device)
        return functional.repetition_penalty_on_candidates(scores, self.candidates,
                                                           counts.gather(1, self.candidates) > 0,
                                                           self.processor.penalty)

    def accept(self, tokens: torch.LongTensor) -> None:
        tokens = _accepted_tokens(tokens, self.rows, self.candidates.device)
        self._grow_for(self._longest + tokens.shape[1])
        positions = self.state.lengths.unsqueeze(1) + torch.arange(tokens.shape[1], device=tokens.device)
        self.candidates.scatter_(1, positions, tokens)
        super().accept(tokens)

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        super().reset(rows, prompt_ids)
        length = prompt_ids.shape[1]
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"`prompt_ids` has {length} tokens, more than `max_length`={self.max_length}")
        self._grow_for(max(self._longest, length))
        rows = rows.to(self.candidates.device).long()
        fresh = self.candidates.index_select(0, rows)
        fresh[:, :length] = prompt_ids.to(self.candidates.device)
        self.candidates.index_copy_(0, rows, fresh)

    def reorder(self, index: torch.LongTensor) -> None:
        super().reorder(index)
        self.candidates.copy_(self.candidates.index_select(0, index.to(self.candidates.device).long()))

    @property
    def rows(self) -> int:
        return self.state.rows


class PresenceFrequencyPenaltyStage(_CountingStage):
    """``PresenceFrequencyPenaltyLogitsProcessor`` with per-row counts of the tokens at positions
    ``>= processor.prompt_length`` (in ``generate``, the generated tokens). The penalties are read
    from the processor at every ``apply``."""

    def __init__(self, processor, prompt_ids: torch.LongTensor, *, vocab_size: Optional[int] = None,
                 rollback_window: int = DEFAULT_ROLLBACK_WINDOW):
        super().__init__(processor, prompt_ids, processor.prompt_length, vocab_size, rollback_window)

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = self._counts_for(scores)
        return functional.presence_frequency_penalty_on_counts(scores, counts, self.processor.presence_penalty,
                                                        self.processor.frequency_penalty)


# --------------------------------------------------------------------------------------------
# N-grams
# --------------------------------------------------------------------------------------------


class NoRepeatNGramStage:
    """``NoRepeatNGramLogitsProcessor`` over a per-row history kept on the device.

    State: ``history`` ``[rows, capacity]`` int64 (row ``r``'s tokens in its first ``lengths[r]``
    columns: the prompt, then the accepted tokens), ``lengths`` and ``accepted`` ``[rows]``.
    ``accept`` writes the new columns, ``rollback`` shortens the lengths (any number of accepted
    tokens, no window), and ``apply`` matches every complete n-gram window of each row against its
    last ``ngram_size - 1`` tokens, in shapes that depend on the capacity alone.

    Without ``max_length`` the capacity grows (doubling, which reallocates the history) whenever a
    row could outgrow it, as bounded on the host from the shapes passed to ``accept`` and ``reset``
    (rolled-back tokens still count in that bound). With ``max_length`` the capacity is fixed, as a
    captured step needs: no row may then grow longer (draft tokens included), and writing beyond it
    fails.
    """

    reads_input_ids = False

    def __init__(self, processor, prompt_ids: torch.LongTensor, *, max_length: Optional[int] = None):
        self.processor = processor
        self.ngram_size = check_int(processor.ngram_size, "ngram_size", minimum=1)
        prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
        rows, length = prompt_ids.shape
        self.max_length = None if max_length is None else check_int(max_length, "max_length", minimum=1)
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"`prompt_ids` has {length} tokens, more than `max_length`={self.max_length}")
        capacity = max(length, 1) if self.max_length is None else self.max_length
        self.history = torch.zeros(rows, capacity, dtype=torch.long, device=prompt_ids.device)
        self.history[:, :length] = prompt_ids
        self.lengths = torch.full((rows,), length, dtype=torch.long, device=prompt_ids.device)
        self.accepted = torch.zeros(rows, dtype=torch.long, device=prompt_ids.device)
        # An upper bound of every row's length, known without reading the device.
        self._longest = length

    @property
    def rows(self) -> int:
        return self.history.shape[0]

    def _grow_for(self, longest: int) -> None:
        """Without ``max_length``: record that no row is longer than ``longest`` and make room for it.
        (With it, nothing is tracked: a Python counter changing at every step would make a compiled
        step recompile.)"""
        if self.max_length is not None:
            return
        self._longest = longest
        self.history = _with_room_for(self.history, longest)

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores)
        if scores.shape[0] != self.rows:
            raise ValueError(f"`scores` has {scores.shape[0]} rows, but the stage holds {self.rows} rows")
        if self.history.device != scores.device:
            self.history, self.lengths, self.accepted = (
                state.to(scores.device) for state in (self.history, self.lengths, self.accepted))
        return functional.no_repeat_ngram_ragged(self.history, self.lengths, scores, self.ngram_size)

    def accept(self, tokens: torch.LongTensor) -> None:
        tokens = _accepted_tokens(tokens, self.rows, self.history.device)
        self._grow_for(self._longest + tokens.shape[1])
        positions = self.lengths.unsqueeze(1) + torch.arange(tokens.shape[1], device=tokens.device)
        self.history.scatter_(1, positions, tokens)
        self.lengths += tokens.shape[1]
        self.accepted += tokens.shape[1]

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        rows, prompt_ids = _reset_arguments(rows, prompt_ids)
        length = prompt_ids.shape[1]
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"`prompt_ids` has {length} tokens, more than `max_length`={self.max_length}")
        self._grow_for(max(self._longest, length))
        device = self.history.device
        rows = rows.to(device)
        fresh = torch.zeros(rows.shape[0], self.history.shape[1], dtype=torch.long, device=device)
        fresh[:, :length] = prompt_ids.to(device)
        self.history.index_copy_(0, rows, fresh)
        self.lengths.index_fill_(0, rows, length)
        self.accepted.index_fill_(0, rows, 0)

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        # The forgotten columns stay as they are: beyond the length, they are never read.
        rows, n = _rollback_arguments(rows, n, self.accepted, "the row's accepted tokens")
        self.lengths.index_add_(0, rows, -n)
        self.accepted.index_add_(0, rows, -n)

    def reorder(self, index: torch.LongTensor) -> None:
        index = _reorder_index(index, self.rows, self.history.device)
        for state in (self.history, self.lengths, self.accepted):
            state.copy_(state.index_select(0, index))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r}, rows={self.rows})"


# --------------------------------------------------------------------------------------------
# Which processors have a stateful stage
# --------------------------------------------------------------------------------------------


def _is_exactly(processor, turbogen_class: type) -> bool:
    """``processor`` is an instance of ``turbogen_class`` or of transformers' class of the same
    name, and not of a subclass (which may compute something else)."""
    processor_type = type(processor)
    return processor_type is turbogen_class or (
        processor_type.__module__ == _TRANSFORMERS_PROCESSORS_MODULE
        and processor_type.__name__ == turbogen_class.__name__
    )


def _is_int_or_none(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def stateful_stage_for(processor, prompt_ids: torch.LongTensor, *, vocab_size: Optional[int] = None,
                       rollback_window: int = DEFAULT_ROLLBACK_WINDOW, max_length: Optional[int] = None):
    """The stateful stage standing for ``processor``, or None when it has none (then the stateless
    adapter applies): the exact classes of the repetition penalty (with a whole-batch
    ``prompt_ignore_length``) and the n-gram ban, turbogen's or transformers', and turbogen's
    presence/frequency penalty."""
    # transformers 5 also takes a per-row tensor of prompt lengths to ignore; that stays stateless.
    if _is_exactly(processor, RepetitionPenaltyLogitsProcessor) and _is_int_or_none(processor.prompt_ignore_length):
        return RepetitionPenaltyStage(processor, prompt_ids, vocab_size=vocab_size, rollback_window=rollback_window,
                                      max_length=max_length)
    if type(processor) is PresenceFrequencyPenaltyLogitsProcessor:
        return PresenceFrequencyPenaltyStage(processor, prompt_ids, vocab_size=vocab_size,
                                             rollback_window=rollback_window)
    if _is_exactly(processor, NoRepeatNGramLogitsProcessor):
        return NoRepeatNGramStage(processor, prompt_ids, max_length=max_length)
    return None


__all__ = [
    "DEFAULT_ROLLBACK_WINDOW",
    "NoRepeatNGramStage",
    "PositionalTokenCounts",
    "PresenceFrequencyPenaltyStage",
    "RepetitionPenaltyStage",
    "stateful_stage_for",
]
