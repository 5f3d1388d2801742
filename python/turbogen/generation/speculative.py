"""The speculative decoding loop: drafts verified by the target, output identical to plain decoding.

Per step: a :class:`~turbogen.generation.candidates.CandidateGenerator` proposes up to ``k`` drafts per row;
the target runs once over ``[last token, drafts]`` (:meth:`~turbogen.generation.runner.ModelRunner.verify`);
the logits stages turn the ``k + 1`` positions' logits into scores one position after the other (position
``i`` sees the history plus the first ``i`` drafts, the stages accepting each draft in turn); one
:func:`turbogen.ops.verify` picks the target's token at every position with the sampling contract (greedy:
the argmax; sampling: the draw for the row's seed at offset ``n + i``) and accepts the leading drafts equal
to it. Each row then appends its accepted drafts and the target's next token, the stopping criteria judge
those tokens one at a time (a stop inside the accepted run cuts the row exactly where plain decoding stops
it), the stages roll the rejected drafts back, and the target's and the generator's caches forget them.

So the output is the output of :func:`~turbogen.generation.decode.run_greedy_or_sample` with the same
arguments: greedy search and sampling (coupled verification) emit the same tokens, the drafts only decide
how many of them one target pass yields (the logits of a ``k + 1``-position pass may differ from
one-position passes in the last float bits, as transformers' assisted generation's do).

Two ways to advance the rows of a batch:

* aligned (any runner; always at batch 1): every unfinished row takes as many tokens as the row that
  accepted fewest drafts; each of those token columns is handled exactly as one plain decoding step (finished
  rows get the pad token, the stopping criteria and the streamer see the whole batch per token, the recorded
  scores and logits are plain decoding's, step by step). Where finished rows are not padded (no EOS
  criterion), plain decoding keeps generating their tokens, so they keep drafting and count for the shortest
  run until every row has finished;
* ragged (a runner with per-row lengths, ``fed_lengths``): each row takes its own accepted run, so no row
  waits for another's rejection. It needs everything to be per row: logits stages that never read the
  history tensor (the penalties, the n-gram ban, none), stopping criteria that are pure functions of a
  row's tokens (EOS, stop strings) and pad finished rows, no streamer, nothing recorded per step, no
  sliding-window attention. :func:`can_advance_ragged` decides (and ``generate`` keeps the rows aligned
  whenever it returns a dict, whose ``past_key_values`` is then laid out as plain decoding leaves it).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .. import ops
from ..processors.penalty_stages import DEFAULT_ROLLBACK_WINDOW
from ..processors.stages import LogitsStages, history_readers
from ..stopping import EosTokenCriteria, StoppingPlan
from .batch_state import BatchState, raise_non_finite_scores
from .candidates import CandidateGenerator
from .decode import DecodeSetup, DecodeState, FinishWatcher, prefill
from .record import Record
from .runner import ModelRunner, has_sliding_window

__all__ = ["can_advance_ragged", "run_speculative"]


def can_advance_ragged(runner: ModelRunner, processors: Any, stopping: StoppingPlan, record: Record,
                       streamer: Any, rows: int, models: Sequence[Any] = ()) -> bool:
    """Whether the rows of this call can each advance by their own accepted run (see the module docstring).
    ``models``: the target and the draft model, if any; sliding-window attention rules ragged rows out (a row
    cropped back leaves masked slots in the cache, which a window counted in cache slots would include)."""
    if rows == 1 or not hasattr(runner, "fed_lengths"):
        return False
    if any(has_sliding_window(model) for model in models if model is not None):
        return False
    if streamer is not None or record.wants_scores or record.wants_logits:
        return False
    if not stopping.rows_are_pure or (stopping.row_criteria and not stopping.pads_finished_rows):
        return False
    return not (processors and history_readers(processors))


def run_speculative(runner: ModelRunner, input_ids: torch.Tensor, batch: BatchState, processors: Any,
                    stopping: StoppingPlan, record: Record, pad_token: Optional[torch.Tensor], max_length: int,
                    streamer: Any, candidates: CandidateGenerator, ragged: bool = False,
                    draft_limit: Optional[int] = None) -> torch.Tensor:
    """Greedy search (``batch`` without seeds) or sampling from the prompt ``input_ids`` (``[rows, P]``) to at
    most ``max_length`` tokens, ``candidates`` drafting; ``ragged``: rows advance independently (only where
    :func:`can_advance_ragged` holds). ``draft_limit``: the most drafts verified per step (default and upper
    bound: ``candidates.draft_limit``); the runner must have room for ``max_length + draft_limit + 1`` positions.
    Returns the ``[rows, length]`` sequences, prompt included, equal to
    :func:`~turbogen.generation.decode.run_greedy_or_sample`'s."""
    rows, prompt_length = input_ids.shape
    device = input_ids.device
    if stopping.pads_finished_rows and pad_token is None:
        raise ValueError("Finished rows must be padded but neither `pad_token_id` nor `eos_token_id` is set.")
    draft_limit = int(candidates.draft_limit) if draft_limit is None else min(int(draft_limit),
                                                                             int(candidates.draft_limit))
    # Drafts are written past a row's end before verification: room for the longest draft.
    # Filled, not empty: a draft model catching up may read a finished row's positions past its end.
    sequences = torch.full((rows, max_length + draft_limit + 1), int(pad_token) if pad_token is not None else 0,
                           dtype=torch.long, device=device)
    sequences[:, :prompt_length] = input_ids
    stages = None
    if processors:
        stages = LogitsStages.from_processors(list(processors), input_ids,
                                              rollback_window=max(DEFAULT_ROLLBACK_WINDOW, draft_limit + 2))
    setup = DecodeSetup(runner=runner, stages=stages, sampler=batch.sampler() if batch.samples else None,
                        stopping=stopping, record=record, pad_token=pad_token, streamer=streamer,
                        watcher=FinishWatcher(0, device, flags=2 if batch.samples else 1),
                        prompt_length=prompt_length)
    state = DecodeState(sequences, prompt_length, batch)
    prefill(setup, state)  # the first token: a plain decoding step
    loop = _Loop(setup, state, candidates, max_length, ragged, draft_limit)
    try:
        while not loop.finished:
            loop.step()
    finally:
        finish = getattr(candidates, "finish", None)
        if finish is not None:
            finish()
    if streamer is not None:
        streamer.end()
    return loop.result()


class _Loop:
    """The state of one speculative run after the first token (see :func:`run_speculative`)."""

    def __init__(self, setup: DecodeSetup, state: DecodeState, candidates: CandidateGenerator, max_length: int,
                 ragged: bool, draft_limit: int):
        self.draft_limit = draft_limit
        self.setup = setup
        self.state = state
        self.candidates = candidates
        self.max_length = max_length
        self.ragged = ragged
        self.batch = state.batch
        rows = state.sequences.shape[0]
        self.device = state.sequences.device
        self.lengths = torch.full((rows,), state.length, dtype=torch.long, device=self.device)
        self.finished = state.finished
        fill = setup.pad_token if setup.pad_token is not None else torch.zeros((), dtype=torch.long)
        self.fill = fill.to(self.device)
        self.rows_index = torch.arange(rows, device=self.device)
        # The EOS ids when the only per-row criteria are EOS criteria and nothing watches single steps: the
        # aligned rows then take a whole run of tokens at once (see `_append_run`); else None.
        watched = setup.streamer is not None or setup.record.wants_scores or setup.record.wants_logits
        self.run_eos = None if watched else _eos_only(setup, self.device)

    # -- one step -------------------------------------------------------------------------------------------

    def step(self) -> None:
        setup, batch = self.setup, self.batch
        sequences, lengths = self.state.sequences, self.lengths
        # Rows drafted for and verified. Without padding of finished rows (no EOS criterion), plain decoding
        # keeps generating real tokens for finished rows: they stay active until every row has finished.
        if setup.stopping.pads_finished_rows or self.ragged:
            active = batch.unfinished.clone()
        else:
            active = torch.ones_like(batch.unfinished)
        drafts = self._clean(self.candidates.propose(sequences, lengths, active), active)
        k = drafts.shape[1]
        last = sequences.gather(1, (lengths - 1)[:, None])  # [rows, 1]
        fed = torch.cat([last, torch.where(drafts >= 0, drafts, self.fill)], dim=1)  # [rows, k + 1]
        logits = setup.runner.verify(fed)  # [rows, k + 1, vocab]
        scores = self._scores(logits, fed) if setup.stages is not None else logits
        result = self._verify(scores, drafts)
        accepted, tokens = result.accepted, result.tokens
        if batch.samples:
            self._check_finite(scores, accepted, active)
        old_lengths = lengths
        if self.ragged:
            counts = self._append_ragged(tokens, accepted, active)
        else:
            counts = self._append_aligned(tokens, accepted, active, logits, scores)
        if setup.stages is not None:
            self._settle_stages(k, counts, old_lengths)
        if batch.samples:
            batch.offsets.add_(counts)
        new_lengths = old_lengths + counts
        self.lengths = new_lengths
        # The last token of every row is fed by the next step (aligned rows share one length: no device read).
        setup.runner.crop(self.state.length - 1 if not self.ragged else _as_lengths(new_lengths - 1))
        self.candidates.accepted(accepted, new_lengths)

    def _clean(self, drafts: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The proposal as the verification takes it: int64 on the device, only for active rows, within each
        row's room before ``max_length``, valid ids only, contiguous from column 0, no all-empty columns."""
        if not isinstance(drafts, torch.Tensor) or drafts.dim() != 2 or drafts.shape[0] != active.shape[0]:
            shape = tuple(drafts.shape) if isinstance(drafts, torch.Tensor) else type(drafts).__name__
            raise ValueError(f"the candidate generator must return drafts [rows={active.shape[0]}, k], got {shape}")
        drafts = drafts.to(device=self.device, dtype=torch.long)
        k = drafts.shape[1]
        if k == 0:
            return drafts
        room = (self.max_length - self.lengths - 1).clamp(min=0)
        columns = torch.arange(k, device=self.device)
        valid = ((drafts >= 0) & active[:, None] & (columns[None, :] < room[:, None])
                 & (columns[None, :] < self.draft_limit))
        vocab = getattr(self.setup.runner, "vocab_size", None)
        if vocab is not None:
            valid &= drafts < vocab
        valid = valid.long().cumprod(dim=1).bool()
        keep = int(valid.sum(dim=1).max())
        return torch.where(valid, drafts, -1)[:, :keep]

    def _scores(self, logits: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """The processed scores of every position: position ``i`` after the stages accepted the first ``i``
        drafts (the stages' state then holds all ``k``; :meth:`_settle_stages` rolls back)."""
        stages = self.setup.stages
        length = self.state.length
        k = fed.shape[1] - 1
        sequences = self.state.sequences
        if not self.ragged and k:
            # The history of position i is the sequence plus the first i fed drafts (aligned: one length).
            sequences[:, length:length + k] = fed[:, 1:]
        scores = []
        for position in range(k + 1):
            history = sequences[:, :length + position] if not self.ragged else sequences[:, :1]
            scores.append(stages.apply(history, logits[:, position]))
            if position < k:
                stages.accept(fed[:, position + 1])
        return torch.stack(scores, dim=1)

    def _verify(self, scores: torch.Tensor, drafts: torch.Tensor):
        batch = self.batch
        if not batch.samples:
            return ops.verify(scores, drafts)
        return ops.verify(scores, drafts, seed=batch.seeds, offset=batch.offsets, temperature=batch.temperature,
                      top_k=batch.top_k, top_p=batch.top_p, min_p=batch.min_p)

    def _check_finite(self, scores: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor) -> None:
        """Sampling: the scores of every emitted position must be sampleable (as plain decoding checks)."""
        row_max = scores.amax(dim=-1)  # [rows, k + 1]; NaN propagates
        emitted = (torch.arange(scores.shape[1], device=self.device)[None, :] <= accepted[:, None]) & active[:, None]
        if not bool((torch.isfinite(row_max) | ~emitted).all()):
            raise_non_finite_scores()

    # -- appending tokens -----------------------------------------------------------------------------------

    def _append_aligned(self, tokens: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor,
                        logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Every row takes the same number of tokens (the fewest any unfinished row accepted, plus one), each
        column appended exactly as a plain decoding step would; returns the tokens appended per row."""
        setup, state, batch = self.setup, self.state, self.batch
        columns = int(accepted[active].min()) + 1 if bool(active.any()) else 1
        if self.run_eos is not None:
            return self._append_run(tokens[:, :columns])
        appended = 0
        for column in range(columns):
            setup.record.logits(logits[:, column])
            setup.record.scores(scores[:, column])
            token = tokens[:, column]
            if setup.stopping.pads_finished_rows:
                token = torch.where(batch.unfinished, token, setup.pad_token)
            state.sequences[:, state.length] = token
            state.length += 1
            appended += 1
            if setup.streamer is not None:
                setup.streamer.put(token.cpu())
            done = setup.stopping.rows_done(state.sequences[:, :state.length], setup.record.collected_scores)
            if done is not None:
                batch.finish(done)
            if setup.stopping.stops_all(state.length) or not bool(batch.unfinished.any()):
                self.finished = True
                break
        return torch.full_like(self.lengths, appended)

    def _append_run(self, tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`_append_aligned`'s loop in a few tensor operations, where the only per-row criteria are EOS
        criteria (``self.run_eos``) and no streamer or record sees single steps: ``tokens`` ``[rows, columns]``
        are appended column by column, a row's tokens after its first EOS become padding, and the run ends
        after the column where the length or time limit is reached or no row is left unfinished."""
        setup, state, batch = self.setup, self.state, self.batch
        length = state.length
        columns = tokens.shape[1]
        # The host-side limits, asked once per column as plain decoding asks them.
        limit = next((column + 1 for column in range(columns) if setup.stopping.stops_all(length + column + 1)),
                     None)
        taken = columns if limit is None else limit
        tokens = tokens[:, :taken]
        if self.run_eos.numel():
            is_eos = torch.isin(tokens, self.run_eos)
            eos_so_far = is_eos.cumsum(dim=1)
            ended = eos_so_far > 0  # the row has emitted an EOS at or before this column
            # Unfinished before the column: unfinished before the run and no EOS in an earlier column.
            alive = batch.unfinished[:, None] & (eos_so_far == is_eos)
            tokens = torch.where(alive, tokens, setup.pad_token)
            unfinished_after = batch.unfinished[:, None] & ~ended
            none_left = (~unfinished_after.any(dim=0)).nonzero()
            if none_left.numel():
                taken = min(taken, int(none_left[0, 0]) + 1)
                tokens = tokens[:, :taken]
            batch.finish(ended[:, taken - 1])
        state.sequences[:, length:length + taken] = tokens
        state.length = length + taken
        if taken < columns or limit is not None or not bool(batch.unfinished.any()):
            self.finished = True
        return torch.full_like(self.lengths, taken)

    def _append_ragged(self, tokens: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Each unfinished row takes its accepted drafts and the target's token, judged one token at a time;
        returns the tokens appended per row."""
        setup, batch = self.setup, self.batch
        lengths = self.lengths
        takes = torch.where(active, accepted + 1, 0)
        if self.run_eos is not None:
            counts = self._append_ragged_runs(tokens, takes)
        else:
            counts = self._append_ragged_columns(tokens, takes, active)
        self.state.length = int((lengths + counts).max())
        if not bool(batch.unfinished.any()):
            self.finished = True
        elif setup.stopping.stops_all(int((lengths + counts)[batch.unfinished].min())):
            self.finished = True  # the time limit (every unfinished row below max_length)
        return counts

    def _append_ragged_runs(self, tokens: torch.Tensor, takes: torch.Tensor) -> torch.Tensor:
        """:meth:`_append_ragged_columns` in a few tensor operations where the only per-row criteria are EOS
        criteria (``self.run_eos``): row ``r`` takes its first ``takes[r]`` tokens, up to its first EOS and
        ``max_length``; returns the counts."""
        lengths = self.lengths
        width = int(takes.max())
        if width == 0:
            return torch.zeros_like(lengths)
        tokens = tokens[:, :width]
        columns = torch.arange(width, device=self.device)
        counts = torch.minimum(takes, (self.max_length - lengths).clamp(min=0))
        if self.run_eos.numel():
            is_eos = torch.isin(tokens, self.run_eos) & (columns[None, :] < counts[:, None])
            first_eos = torch.where(is_eos, columns[None, :], width).amin(dim=1)
            counts = torch.minimum(counts, first_eos + 1)
            ended = first_eos < width
        else:
            ended = torch.zeros_like(takes, dtype=torch.bool)
        written = columns[None, :] < counts[:, None]
        rows, cols = written.nonzero(as_tuple=True)
        self.state.sequences[rows, lengths[rows] + cols] = tokens[rows, cols]
        self.batch.finish((ended | (lengths + counts >= self.max_length)) & (counts > 0))
        return counts

    def _append_ragged_columns(self, tokens: torch.Tensor, takes: torch.Tensor, active: torch.Tensor
                               ) -> torch.Tensor:
        """Each row takes its first ``takes[r]`` tokens one column at a time, the stopping criteria judging
        every token; returns the counts."""
        setup, batch = self.setup, self.batch
        sequences = self.state.sequences
        lengths = self.lengths
        counts = torch.zeros_like(lengths)
        growing = active.clone()
        tail = setup.stopping.tail_tokens
        for column in range(int(takes.max())):
            growing &= takes > column
            if not bool(growing.any()):
                break
            position = lengths + column
            rows = growing.nonzero()[:, 0]
            sequences[rows, position[rows]] = tokens[rows, column]
            counts = torch.where(growing, counts + 1, counts)
            new_lengths = position + 1
            done = torch.zeros_like(growing)
            if setup.stopping.row_criteria:
                verdict = setup.stopping.rows_done(self._tails(new_lengths, tail), None)
                done = verdict & growing
            done |= growing & (new_lengths >= self.max_length)
            batch.finish(done)
            growing &= ~done
        return counts

    def _tails(self, lengths: torch.Tensor, tail: Optional[int]) -> torch.Tensor:
        """Each row's last ``tail`` tokens ending at its own length, right-aligned (``[rows, tail]``; -1 before
        a row's start); the whole ragged history when ``tail`` is ``None``."""
        width = int(lengths.max()) if tail is None else max(int(tail), 1)
        columns = lengths[:, None] - width + torch.arange(width, device=self.device)[None, :]
        gathered = self.state.sequences.gather(1, columns.clamp(min=0))
        return torch.where(columns >= 0, gathered, -1)

    def _settle_stages(self, k: int, counts: torch.Tensor, old_lengths: torch.Tensor) -> None:
        """The stages accepted the ``k`` fed drafts of every row; make them hold what was appended instead."""
        stages = self.setup.stages
        all_rows = self.rows_index
        if k:
            stages.rollback(all_rows, torch.full_like(all_rows, k))
        most = int(counts.max())
        if most == 0:
            return
        columns = old_lengths[:, None] + torch.arange(most, device=self.device)[None, :]
        appended = self.state.sequences.gather(1, columns)
        # Past a row's count: a filler, rolled back below.
        appended = torch.where(columns < (old_lengths + counts)[:, None], appended, self.fill)
        stages.accept(appended)
        extra = most - counts
        rows = (extra > 0).nonzero()[:, 0]
        if rows.numel():
            stages.rollback(rows, extra[rows])

    def result(self) -> torch.Tensor:
        """The ``[rows, length]`` sequences; ragged rows shorter than the longest are padded."""
        sequences = self.state.sequences
        if not self.ragged:
            return sequences[:, :self.state.length].contiguous()
        width = int(self.lengths.max())
        out = sequences[:, :width].clone()
        beyond = torch.arange(width, device=self.device)[None, :] >= self.lengths[:, None]
        return torch.where(beyond, self.fill, out)


def _eos_only(setup: DecodeSetup, device: torch.device) -> Optional[torch.Tensor]:
    """The EOS ids (1-D int64, empty when there are no per-row criteria) when the per-row stopping criteria are
    only turbogen's EOS criteria and finished rows are padded (or none finish); else None."""
    criteria = setup.stopping.row_criteria
    if any(type(criterion) is not EosTokenCriteria for criterion in criteria):
        return None
    if criteria and (not setup.stopping.pads_finished_rows or setup.pad_token is None):
        return None
    ids = [criterion.eos_token_id.reshape(-1).to(device) for criterion in criteria]
    return torch.cat(ids) if ids else torch.empty(0, dtype=torch.long, device=device)


def _as_lengths(lengths: torch.Tensor):
    """An int when every row agrees (any runner's ``crop`` takes it), else the ``[rows]`` tensor."""
    low, high = int(lengths.min()), int(lengths.max())
    return low if low == high else lengths

