"""Stateful logits stages for the n-gram bans, with per-row n-gram state kept on the device and
updated by ``accept`` instead of matching every n-gram window of the history at every step.

- :class:`NoRepeatNGramStage` stands for ``NoRepeatNGramLogitsProcessor`` (turbogen's or
  transformers'): per row, every ``(n-1)``-gram of the history carries an exact integer key, computed
  once when its last token is accepted; ``apply`` bans the tokens that followed the earlier
  occurrences of the row's current key.
- :class:`EncoderNoRepeatNGramStage` stands for ``EncoderNoRepeatNGramLogitsProcessor``: the prompt's
  n-grams are tabled once (a hash table of the ``(n-1)``-gram prefixes, whose entries list the
  completions); ``apply`` looks each row's last ``n-1`` tokens up in its prompt's table.

Both reproduce the processor's ``__call__`` bit for bit over any stream of ``accept`` /
``rollback`` / ``reorder`` / ``reset`` (see :mod:`turbogen.processors.stages` for the verbs and the
contract). All verbs are tensor operations whose shapes depend on the capacity (``max_length``) and
on tables fixed at construction, never on the tokens: no host synchronisation once ``max_length`` is
given, so a decode step calling them can be compiled or captured in a CUDA graph.

Token ids must be below 2**31 (every vocabulary is); the keys pack two of them into one int64.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._stage_args import accepted_tokens, is_exactly, reorder_index, reset_arguments, rollback_arguments, with_room_for
from .base import check_ids_tensor, check_int, check_scores
from .penalties import EncoderNoRepeatNGramLogitsProcessor, NoRepeatNGramLogitsProcessor

_NEG_INF = float("-inf")
#: Keys pack ``(id, token)`` as ``id * 2**32 + token``: exact for ids below 2**31.
_PACK = 1 << 32
_HASH_MASK = 0x7FFFFFFF


def _widen(columns: torch.Tensor, capacity: int, scratch: int = 0) -> torch.Tensor:
    """``columns`` (``[rows, old_capacity + scratch]``) with ``capacity`` leading columns, the trailing
    ``scratch`` columns kept last (their contents are never read)."""
    old = columns.shape[1] - scratch
    if capacity <= old:
        return columns
    wider = columns.new_zeros(columns.shape[0], capacity + scratch)
    wider[:, :old] = columns[:, :old]
    return wider


def _first_occurrences(keys: torch.Tensor) -> torch.Tensor:
    """``first[r, s]``: the smallest ``s0`` with ``keys[r, s0] == keys[r, s]`` (a stable sort, fixed shapes)."""
    values, order = torch.sort(keys, dim=1, stable=True)
    positions = torch.arange(keys.shape[1], device=keys.device).expand_as(keys)
    starts_group = torch.ones_like(values, dtype=torch.bool)
    starts_group[:, 1:] = values[:, 1:] != values[:, :-1]
    # Within a group the stable sort keeps the original order, so the group's first entry is its smallest index.
    group_start = torch.where(starts_group, positions, 0).cummax(dim=1).values
    return torch.empty_like(order).scatter_(1, order, order.gather(1, group_start))


def _ban(scores: torch.Tensor, tokens: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``scores`` with ``-inf`` at ``[r, tokens[r, j]]`` wherever ``flags[r, j]`` (a new tensor).

    One copy of the scores and one fill of the ``rows * J`` flagged entries: the unflagged ones are
    sent to a scratch element past the end, and every write is the same ``-inf``, so repeated indices
    are harmless (no vocabulary-wide mask is built).
    """
    rows, vocab_size = scores.shape
    size = rows * vocab_size
    if tokens.device.type == "cpu" and not torch.compiler.is_compiling():
        # Free on the host: a banned id outside the vocabulary is an error, as in the processors.
        if bool((flags & (tokens >= vocab_size)).any()):
            raise ValueError(f"a token id to ban is outside the vocabulary of {vocab_size} of `scores`")
    flags = flags & (tokens < vocab_size)
    row_offsets = torch.arange(rows, device=tokens.device).unsqueeze(1) * vocab_size
    flat = torch.where(flags, tokens + row_offsets, size)
    out = scores.new_empty(size + 1)
    processed = out[:size].view(rows, vocab_size)
    processed.copy_(scores)
    out.index_fill_(0, flat.reshape(-1), _NEG_INF)
    return processed


class _RowHistories:
    """Per-row token histories on the device: ``history`` ``[rows, capacity]`` (row ``r``'s tokens in
    its first ``lengths[r]`` columns), ``lengths`` and ``accepted`` ``[rows]``.

    Without ``max_length`` the capacity grows (doubling) whenever a row could outgrow it, as bounded
    on the host from the shapes passed to ``accept`` and ``reset``; with it the capacity is fixed and
    writing beyond it fails.
    """

    def __init__(self, prompt_ids: torch.Tensor, max_length: Optional[int]):
        rows, length = prompt_ids.shape
        self.max_length = None if max_length is None else check_int(max_length, "max_length", minimum=1)
        self._check_prompt_length(length)
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

    @property
    def capacity(self) -> int:
        return self.history.shape[1]

    def _check_prompt_length(self, length: int) -> None:
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"`prompt_ids` has {length} tokens, more than `max_length`={self.max_length}")

    def room_for(self, longest: int) -> Optional[int]:
        """Without ``max_length``: record that no row is longer than ``longest``; the new capacity when
        the history had to grow, else None."""
        if self.max_length is not None:
            return None
        self._longest = longest
        grown = with_room_for(self.history, longest)
        if grown is self.history:
            return None
        self.history = grown
        return grown.shape[1]

    def to(self, device: torch.device) -> None:
        self.history, self.lengths, self.accepted = (s.to(device) for s in (self.history, self.lengths, self.accepted))

    def accept(self, tokens: torch.Tensor) -> torch.Tensor:
        """Write ``tokens`` (``[rows, k]``); returns the rows' lengths before (``[rows]``)."""
        before = self.lengths.clone()
        positions = before.unsqueeze(1) + torch.arange(tokens.shape[1], device=tokens.device)
        self.history.scatter_(1, positions, tokens)
        self.lengths += tokens.shape[1]
        self.accepted += tokens.shape[1]
        return before

    def reset(self, rows: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Restart ``rows`` from ``prompt_ids``; returns the new rows' histories (``[k, capacity]``)."""
        length = prompt_ids.shape[1]
        fresh = torch.zeros(rows.shape[0], self.capacity, dtype=torch.long, device=self.history.device)
        fresh[:, :length] = prompt_ids.to(self.history.device)
        self.history.index_copy_(0, rows, fresh)
        self.lengths.index_fill_(0, rows, length)
        self.accepted.index_fill_(0, rows, 0)
        return fresh

    def rollback(self, rows: torch.Tensor, n: torch.Tensor) -> None:
        self.lengths.index_add_(0, rows, -n)
        self.accepted.index_add_(0, rows, -n)

    def reorder(self, index: torch.Tensor) -> None:
        for state in (self.history, self.lengths, self.accepted):
            state.copy_(state.index_select(0, index))


class _NGramStageBase:
    """The verbs' argument handling shared by the two stages; subclasses keep their own key state."""

    reads_input_ids = False

    def _start(self, processor, prompt_ids, max_length) -> None:
        self.processor = processor
        self.ngram_size = check_int(processor.ngram_size, "ngram_size", minimum=1)
        prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
        self.rows_state = _RowHistories(prompt_ids, max_length)

    @property
    def rows(self) -> int:
        return self.rows_state.rows

    def _check_apply(self, scores: torch.Tensor) -> None:
        check_scores(scores)
        if scores.shape[0] != self.rows:
            raise ValueError(f"`scores` has {scores.shape[0]} rows, but the stage holds {self.rows} rows")
        if self.rows_state.history.device != scores.device:
            self._to(scores.device)

    def _to(self, device: torch.device) -> None:
        self.rows_state.to(device)

    def _accepted(self, tokens) -> torch.Tensor:
        tokens = accepted_tokens(tokens, self.rows, self.rows_state.history.device)
        if self.rows_state.max_length is None:
            # A growing history: track its bound. (With a fixed capacity, reading the host-side bound would make
            # a compiled step specialise on the prompt's length.)
            self._grown(self.rows_state.room_for(self.rows_state._longest + tokens.shape[1]))
        return tokens

    def _grown(self, capacity: Optional[int]) -> None:
        """The history grew to ``capacity`` columns (None: it did not); widen any per-position state."""

    def _reset_rows(self, rows, prompt_ids) -> "tuple[torch.Tensor, torch.Tensor]":
        rows, prompt_ids = reset_arguments(rows, prompt_ids)
        self.rows_state._check_prompt_length(prompt_ids.shape[1])
        state = self.rows_state
        self._grown(state.room_for(max(state._longest, prompt_ids.shape[1])))
        rows = rows.to(state.history.device)
        return rows, state.reset(rows, prompt_ids)

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        """Forget the last ``n[i]`` accepted tokens of row ``rows[i]`` (any number of them). The keys of
        the forgotten positions stay: beyond the length they are never read, and rewritten when reached."""
        rows, n = rollback_arguments(rows, n, self.rows_state.accepted, "the row's accepted tokens")
        self.rows_state.rollback(rows, n)

    def _reorder_index(self, index) -> torch.Tensor:
        return reorder_index(index, self.rows, self.rows_state.history.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r}, rows={self.rows})"


class NoRepeatNGramStage(_NGramStageBase):
    """``NoRepeatNGramLogitsProcessor`` with incremental per-row n-gram keys.

    With ``m = ngram_size - 1``, every start position ``s`` of a row whose ``m``-gram
    ``history[s:s+m]`` is complete carries an exact key: the token itself for ``m = 1``, and for
    ``m >= 2`` the level keys ``key_j(s) = id_{j-1}(s) * 2**32 + history[s + j - 1]`` with
    ``id_1(s) = history[s]`` and ``id_j(s)`` the first start ``s0 <= s`` with ``key_j(s0) == key_j(s)``
    (an exact identity of the ``j``-gram: equal ids iff equal tokens, no hash to collide). ``keys``
    holds ``key_m``; for ``m >= 3`` the intermediate ``key_j`` and ``id_j`` are kept too
    (``[rows, capacity + 1]`` each, the last column a scratch slot for writes before the row start).

    ``accept`` of ``k`` tokens computes the keys of the ``k`` new complete ``j``-grams of each level
    (for ``m <= 2`` a few gathers; for ``m >= 3`` also one comparison with the row's level keys per new
    id). ``apply`` compares the row's current key with the keys of its windows and bans their
    completions: one integer comparison per position and a fill of the banned entries, no window of
    ``n`` tokens and no vocabulary-wide mask. ``rollback`` (any number of accepted tokens), ``reorder``
    and ``reset`` keep the keys of every complete prefix exact. ``max_length`` fixes the capacity (see
    :class:`_RowHistories`).
    """

    def __init__(self, processor, prompt_ids: torch.LongTensor, *, max_length: Optional[int] = None):
        self._start(processor, prompt_ids, max_length)
        self._m = self.ngram_size - 1
        # level j -> [rows, capacity + 1] keys (j = 2..m) and ids (j = 2..m-1)
        self._keys, self._ids = self._prompt_levels(self.rows_state.history)

    # --- per-position state ----------------------------------------------------------------------

    def _prompt_levels(self, history: torch.Tensor) -> "tuple[dict, dict]":
        """The level keys and ids of every start of ``history`` (``[k, capacity]``); starts whose
        prefix is not complete get keys of stale tokens, never read before being rewritten."""
        rows, capacity = history.shape
        keys, ids = {}, {}
        previous = history  # id_1
        for level in range(2, self._m + 1):
            key = history.new_zeros(rows, capacity + 1)
            width = capacity - level + 1
            if width > 0:
                key[:, :width] = previous[:, :width] * _PACK + history[:, level - 1:level - 1 + width]
            keys[level] = key
            if level < self._m:
                ids[level] = torch.cat([_first_occurrences(key[:, :capacity]), key[:, capacity:]], dim=1)
                previous = ids[level]
        return keys, ids

    def _states(self):
        return [*self._keys.values(), *self._ids.values()]

    def _grown(self, capacity: Optional[int]) -> None:
        if capacity is None:
            return
        self._keys = {level: _widen(key, capacity, scratch=1) for level, key in self._keys.items()}
        self._ids = {level: _widen(ids, capacity, scratch=1) for level, ids in self._ids.items()}

    def _to(self, device: torch.device) -> None:
        super()._to(device)
        self._keys = {level: key.to(device) for level, key in self._keys.items()}
        self._ids = {level: ids.to(device) for level, ids in self._ids.items()}

    # --- the verbs ---------------------------------------------------------------------------------

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._check_apply(scores)
        state, m = self.rows_state, self._m
        width = state.capacity - m
        if width <= 0:
            # Not a single complete n-gram fits.
            return scores.clone()
        # Windows start at s <= length - n, i.e. before the start of the row's current (n-1)-gram.
        context_start = state.lengths - m
        match = torch.arange(width, device=scores.device) < context_start.unsqueeze(1)
        if m > 0:
            keys = state.history if m == 1 else self._keys[m]
            context = keys.gather(1, context_start.clamp(min=0).unsqueeze(1))
            match = match & (keys[:, :width] == context)
        return _ban(scores, state.history[:, m:], match)

    def accept(self, tokens: torch.LongTensor) -> None:
        tokens = self._accepted(tokens)
        before = self.rows_state.accept(tokens)
        if self._m < 2:
            return
        capacity = self.rows_state.capacity
        offsets = torch.arange(tokens.shape[1], device=tokens.device)
        positions = torch.arange(capacity, device=tokens.device)
        previous = self.rows_state.history
        for level in range(2, self._m + 1):
            # The new complete level-grams end at the new tokens.
            starts = before.unsqueeze(1) - (level - 1) + offsets
            slots = torch.where(starts >= 0, starts, capacity)
            key = previous.gather(1, starts.clamp(min=0)) * _PACK + tokens
            self._keys[level].scatter_(1, slots, key)
            if level < self._m:
                # The first start with the same key: the new ones of this accept are already written.
                same = (self._keys[level][:, None, :capacity] == key.unsqueeze(2)) & (positions <= starts.unsqueeze(2))
                self._ids[level].scatter_(1, slots, same.to(torch.uint8).argmax(dim=2))
                previous = self._ids[level]

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        rows, fresh = self._reset_rows(rows, prompt_ids)
        keys, ids = self._prompt_levels(fresh)
        for level, key in keys.items():
            self._keys[level].index_copy_(0, rows, key)
        for level, level_ids in ids.items():
            self._ids[level].index_copy_(0, rows, level_ids)

    def reorder(self, index: torch.LongTensor) -> None:
        index = self._reorder_index(index)
        self.rows_state.reorder(index)
        for state in self._states():
            state.copy_(state.index_select(0, index))


# --------------------------------------------------------------------------------------------
# The prompt's n-grams (EncoderNoRepeatNGramLogitsProcessor)
# --------------------------------------------------------------------------------------------


def _prefix_hash(tokens: torch.Tensor) -> torch.Tensor:
    """A hash (``[...]`` int64 in ``[0, 2**47)``) of the ``(n-1)``-grams ``tokens`` (``[..., m]``), the
    same on every device: no intermediate value overflows int64."""
    value = torch.zeros(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
    for position in range(tokens.shape[-1]):
        value = (value * 1000003 + (tokens[..., position] & _HASH_MASK)) & _HASH_MASK
    return (value * 2654435761) >> 16


def _encoder_ngrams(processor, ngram_size: int) -> "list[dict]":
    """Per prompt, ``{prefix tuple: completions}`` in first-seen order, as the processor has them."""
    tables = getattr(processor, "generated_ngrams", None)
    if tables is not None:  # transformers' processor: its own tables
        return [{tuple(prefix): list(dict.fromkeys(completions)) for prefix, completions in table.items()}
                for table in tables]
    tables = []
    for prompt in processor.encoder_input_ids.tolist():
        table: dict = {}
        for start in range(len(prompt) - ngram_size + 1):
            completions = table.setdefault(tuple(prompt[start:start + ngram_size - 1]), [])
            if prompt[start + ngram_size - 1] not in completions:
                completions.append(prompt[start + ngram_size - 1])
        tables.append(table)
    return tables


class EncoderNoRepeatNGramStage(_NGramStageBase):
    """``EncoderNoRepeatNGramLogitsProcessor`` with the prompt's n-grams tabled once.

    Rows are hypotheses: row ``r`` is checked against prompt ``r // (rows // prompts)`` of the
    processor's ``encoder_input_ids`` (consecutive hypotheses per prompt, fixed by row position as in
    the processor; ``reorder`` moves the histories, not the prompts).

    The tables, built at construction and never changed: per prompt, the distinct ``(n-1)``-gram
    prefixes (``prefixes`` ``[prompts, groups, n-1]``), their distinct completions (``completions``,
    ``begin`` and ``count``: a concatenated list), and an open-addressing hash table of the prefixes
    (``slots`` ``[prompts, buckets]`` group numbers, -1 for empty) with linear probing, whose longest
    probe distance is measured when it is built. ``apply`` hashes each row's last ``n-1`` tokens,
    reads that many + 1 slots, verifies the candidates against the real prefix tokens (a hash
    collision never bans anything) and bans the found group's completions: work per row set by the
    tables, independent of the history's length. The rows keep their own histories (for
    ``rollback`` of any number of tokens); see :class:`_RowHistories` for ``max_length``.
    """

    def __init__(self, processor, prompt_ids: torch.LongTensor, *, max_length: Optional[int] = None):
        self._start(processor, prompt_ids, max_length)
        self.prompts = check_int(processor.batch_size, "batch_size", minimum=1)
        if self.rows % self.prompts != 0:
            raise ValueError(f"`prompt_ids` has {self.rows} rows, which is not a multiple of the {self.prompts} "
                             "rows of `encoder_input_ids`")
        self._build_tables(_encoder_ngrams(processor, self.ngram_size), self.rows_state.history.device)

    def _build_tables(self, tables: "list[dict]", device: torch.device) -> None:
        m = self.ngram_size - 1
        self._has_ngrams = any(tables)
        groups = max(1, max(len(table) for table in tables))
        total = max(1, max(sum(len(c) for c in table.values()) for table in tables))
        self._most_completions = max([len(c) for table in tables for c in table.values()] or [0])
        self._largest_id = max([max(c) for table in tables for c in table.values()] or [-1])
        buckets = 1 << max(1, (2 * groups - 1).bit_length())
        prefixes = torch.zeros(self.prompts, groups, m, dtype=torch.long)
        completions = torch.zeros(self.prompts, total, dtype=torch.long)
        begin = torch.zeros(self.prompts, groups, dtype=torch.long)
        count = torch.zeros(self.prompts, groups, dtype=torch.long)
        for prompt, table in enumerate(tables):
            offset = 0
            for group, (prefix, group_completions) in enumerate(table.items()):
                prefixes[prompt, group] = torch.tensor(prefix, dtype=torch.long)
                completions[prompt, offset:offset + len(group_completions)] = torch.tensor(group_completions)
                begin[prompt, group], count[prompt, group] = offset, len(group_completions)
                offset += len(group_completions)
        homes = (_prefix_hash(prefixes) & (buckets - 1)).tolist()
        slots = [[-1] * buckets for _ in tables]
        self._probes = 1
        for prompt, table in enumerate(tables):
            for group in range(len(table)):
                bucket, distance = homes[prompt][group], 0
                while slots[prompt][bucket] != -1:
                    bucket, distance = (bucket + 1) & (buckets - 1), distance + 1
                slots[prompt][bucket] = group
                self._probes = max(self._probes, distance + 1)
        self._buckets = buckets
        self.prefixes, self.completions, self.begin, self.count = (
            t.to(device) for t in (prefixes, completions, begin, count))
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)

    def _to(self, device: torch.device) -> None:
        super()._to(device)
        self.prefixes, self.completions, self.begin, self.count, self.slots = (
            t.to(device) for t in (self.prefixes, self.completions, self.begin, self.count, self.slots))

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._check_apply(scores)
        if not self._has_ngrams:
            return scores.clone()
        if self._largest_id >= scores.shape[-1]:
            raise ValueError(f"`encoder_input_ids` holds token id {self._largest_id}, outside the vocabulary of "
                             f"{scores.shape[-1]} of `scores`")
        state, m, device = self.rows_state, self.ngram_size - 1, scores.device
        lengths = state.lengths
        context = state.history.gather(
            1, (lengths.unsqueeze(1) - m + torch.arange(m, device=device)).clamp(min=0))
        prompt = (torch.arange(self.rows, device=device) // (self.rows // self.prompts)).unsqueeze(1)
        home = _prefix_hash(context) & (self._buckets - 1)
        probed = (home.unsqueeze(1) + torch.arange(self._probes, device=device)) & (self._buckets - 1)
        groups = self.slots[prompt, probed]  # [rows, probes]
        candidates = self.prefixes[prompt, groups.clamp(min=0)]  # [rows, probes, m]
        found = (groups >= 0) & (candidates == context.unsqueeze(1)).all(dim=2)
        group = torch.where(found, groups, -1).amax(dim=1, keepdim=True)  # at most one prefix matches
        # A row shorter than n - 1 tokens has no (n-1)-gram to look up.
        valid = (group >= 0) & (lengths.unsqueeze(1) >= m)
        group = group.clamp(min=0)
        begin, count = self.begin[prompt, group], self.count[prompt, group]
        ranks = torch.arange(max(self._most_completions, 1), device=device)
        entries = (begin + ranks).clamp(max=self.completions.shape[1] - 1)
        return _ban(scores, self.completions[prompt, entries], valid & (ranks < count))

    def accept(self, tokens: torch.LongTensor) -> None:
        self.rows_state.accept(self._accepted(tokens))

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        self._reset_rows(rows, prompt_ids)

    def reorder(self, index: torch.LongTensor) -> None:
        self.rows_state.reorder(self._reorder_index(index))


def ngram_stage_for(processor, prompt_ids: torch.LongTensor, *, max_length: Optional[int] = None):
    """The stage standing for ``processor`` when it is exactly ``NoRepeatNGramLogitsProcessor`` or
    ``EncoderNoRepeatNGramLogitsProcessor`` (turbogen's or transformers', not a subclass), for rows
    starting from ``prompt_ids``; None for anything else."""
    if is_exactly(processor, NoRepeatNGramLogitsProcessor):
        return NoRepeatNGramStage(processor, prompt_ids, max_length=max_length)
    if is_exactly(processor, EncoderNoRepeatNGramLogitsProcessor):
        return EncoderNoRepeatNGramStage(processor, prompt_ids, max_length=max_length)
    return None


__all__ = ["EncoderNoRepeatNGramStage", "NoRepeatNGramStage", "ngram_stage_for"]
