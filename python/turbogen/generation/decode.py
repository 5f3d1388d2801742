"""The greedy-search / multinomial-sampling loop, as verbs (after gpt-fast).

:func:`prefill` runs the prompt and picks the first token, :func:`decode_one_token` feeds one token and
picks the next, :func:`decode_n_tokens` repeats that until the stopping criteria end generation. Per step
there is no Python loop over rows, no reallocation of the output (tokens are written by position into a
``[rows, max_length]`` buffer), one model call through the :class:`~turbogen.generation.runner.ModelRunner`,
and at most one host read of the "all rows finished" flag.

A step: the logits stages (the processors, with per-row state) turn the logits into scores, the token is
the argmax (greedy) or a draw by :class:`turbogen.ops.Sampler` from the per-row
:class:`~turbogen.generation.batch_state.BatchState` at each row's offset, finished rows get the pad token,
the stages accept the appended token, the per-row stopping criteria update the unfinished flags. When the
last stage is the penalties on repeated tokens and nothing records the processed scores, the sampler applies
them while it reads the logits (:meth:`~turbogen.processors.stages.LogitsStages.split_penalties`): the same
tokens, one pass fewer. Greedy search with nothing observing the logits (processors that only mask tokens
aside) runs its decoding steps through
:class:`~turbogen.generation.certified_argmax.CertifiedGreedyHead` (the packed LM head, each argmax certified to
be BLAS's).

Where the model runs on an accelerator and nothing user-supplied could observe it, the finish flag is read
``FINISH_CHECK_LAG`` steps late, so the host never waits on the device while it could queue work; the steps
run past the end are then discarded (sequence length, recorded outputs, cache), leaving results identical.
The logits stages are not rolled back for them: generation is over, nothing reads their state again.

Sampling checks the scores that reach the sampler on the device (NaN, +inf, rows without a finite score),
and the flag is read with the finish flag, or once at the end when no per-row criterion needs a finish flag
(a row without a finite score meanwhile feeds token 0, never an invalid id): such scores raise
:class:`~turbogen.generation.batch_state.NonFiniteScoresError`, as transformers' ``torch.multinomial``
raises. Greedy search takes the argmax like transformers, which picks a NaN as the maximum without error.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional

import torch

from ..processors.penalty_stages import PenaltyStage
from ..processors.stages import LogitsStages
from ..stopping import StoppingPlan
from .batch_state import BatchState, raise_non_finite_scores
from .certified_argmax import CertifiedGreedyHead
from .record import Record
from .runner import ModelRunner

__all__ = ["FINISH_CHECK_LAG", "DecodeState", "DecodeSetup", "decode_n_tokens", "decode_one_token", "prefill",
           "run_decode_step", "run_greedy_or_sample"]

# The "all rows finished" flag is read this many steps late, per device type (see the module docstring).
# Reading it is free on the CPU; elsewhere a one-step lag keeps the device busy while the host waits.
FINISH_CHECK_LAG = collections.defaultdict(lambda: 1, {"cpu": 0})


class FinishWatcher:
    """Learns on the host when every row has finished, reading the device flags ``lag`` steps late.

    Each step pushes a 1-D bool tensor of flags: whether any row is unfinished, then optionally whether the
    scores so far were finite (a ``False`` there raises when read). With ``lag == 0`` a step's flags are read
    right away (one host sync per step). With ``lag >= 1`` they are copied to pinned host memory
    asynchronously and read ``lag`` steps later, when they are (nearly always) already there, so the host
    keeps queueing device work; the caller then discards the steps it ran past the end. On CUDA the
    ``lag + 1`` host slots and events are allocated once.
    """

    def __init__(self, lag: int, device: torch.device, flags: int):
        self.lag = lag
        self._pending: collections.deque = collections.deque()
        self._slots = None
        if lag > 0 and device.type == "cuda":
            self._slots = [(torch.empty(flags, dtype=torch.bool, pin_memory=True), torch.cuda.Event())
                           for _ in range(lag + 1)]

    def push(self, step: int, flags: torch.Tensor) -> Optional[int]:
        """Register the ``flags`` of ``step``; returns the earliest step after which every row had finished,
        once it is known."""
        if self._slots is None:  # read in place: at once (lag 0), or where reading is cheap (not CUDA)
            self._pending.append((step, flags, None))
        else:
            # At most `lag` flags are pending, so the slot of step - lag - 1 is free again.
            host, event = self._slots[step % len(self._slots)]
            host.copy_(flags, non_blocking=True)
            event.record()
            self._pending.append((step, host, event))
        return self._read(keep=self.lag)

    def flush(self) -> Optional[int]:
        """Read every pending flag (generation is ending for another reason); same result as ``push``."""
        return self._read(keep=0)

    def _read(self, keep: int) -> Optional[int]:
        while len(self._pending) > keep:
            flagged_step, flags, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            values = flags.tolist()
            if len(values) > 1 and not values[1]:
                raise_non_finite_scores()
            if not values[0]:
                self._pending.clear()
                return flagged_step
        return None


@dataclasses.dataclass
class DecodeState:
    """Mutable state of a greedy/sampling run: the token buffer and the per-row batch state live on the device."""

    sequences: torch.Tensor  # [rows, max_length]
    length: int
    batch: BatchState
    step: int = 0
    finished: bool = False


@dataclasses.dataclass
class DecodeSetup:
    """What the decode verbs need besides the state. ``stages`` receives the state verbs; ``scoring`` and
    ``fused_penalties`` split it for ``apply`` when the sampler applies the last stage's penalties;
    ``certified``, where it applies, makes greedy search's model calls and picks their tokens."""

    runner: ModelRunner
    stages: Optional[LogitsStages]
    sampler: Any  # turbogen.ops.Sampler, or None for greedy search
    stopping: StoppingPlan
    record: Record
    pad_token: Optional[torch.Tensor]
    streamer: Any
    watcher: FinishWatcher
    prompt_length: int
    scoring: Optional[LogitsStages] = None
    fused_penalties: Optional[PenaltyStage] = None
    certified: Optional[CertifiedGreedyHead] = None

    def __post_init__(self):
        self.scoring = self.stages
        if self.stages is not None and self.sampler is not None and not self.record.wants_scores:
            self.scoring, self.fused_penalties = self.stages.split_penalties()


def _choose(setup: DecodeSetup, state: DecodeState, logits: torch.Tensor) -> torch.Tensor:
    """The next token of every row (before padding), recording the logits and scores."""
    setup.record.logits(logits)
    input_ids = state.sequences[:, : state.length]
    scores = setup.scoring.apply(input_ids, logits) if setup.scoring else logits
    setup.record.scores(scores)
    if setup.sampler is None:
        return torch.argmax(scores, dim=-1)
    batch = state.batch
    # Checked before the fused penalties, which keep finite scores finite short of overflowing float32.
    batch.check_scores(scores)
    penalties = setup.fused_penalties.penalty_tensors(scores) if setup.fused_penalties is not None else None
    tokens = setup.sampler(scores, batch.offsets, penalties=penalties)
    batch.advance()
    # A row without a finite score draws -1; the error is raised when the flag is read, and the model must
    # not see an invalid id before that.
    return tokens.clamp_(min=0)


def _accept(setup: DecodeSetup, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Append and judge the chosen next token of every row (``[rows]``); returns the tokens appended."""
    batch = state.batch
    if setup.stopping.pads_finished_rows:
        tokens = torch.where(batch.unfinished, tokens, setup.pad_token)
    state.sequences[:, state.length] = tokens
    state.length += 1
    if setup.stages is not None:
        setup.stages.accept(tokens)
    if setup.streamer is not None:
        setup.streamer.put(tokens.cpu())
    done = setup.stopping.rows_done(state.sequences[:, : state.length], setup.record.collected_scores)
    if done is not None:
        batch.finish(done)
        flags = batch.unfinished.any()
        if batch.samples:
            flags = torch.stack((flags, batch.scores_are_finite))
        finished_step = setup.watcher.push(state.step, flags.reshape(-1))
        if finished_step is not None:
            _discard_steps_after(setup, state, finished_step)
            state.finished = True
    state.step += 1
    if not state.finished and setup.stopping.stops_all(state.length):
        finished_step = setup.watcher.flush()
        if finished_step is not None:
            _discard_steps_after(setup, state, finished_step)
        elif batch.samples and not bool(batch.scores_are_finite):  # no flag was read after the last step
            raise_non_finite_scores()
        state.finished = True
    return tokens


def _discard_steps_after(setup: DecodeSetup, state: DecodeState, last_step: int) -> None:
    """Forget the steps run after ``last_step`` (when the finish flag was read late)."""
    keep_length = setup.prompt_length + last_step + 1
    if keep_length == state.length:
        return
    state.length = keep_length
    setup.record.keep_steps(last_step + 1)
    setup.runner.crop(keep_length - 1)  # the last kept token was never fed


def prefill(setup: DecodeSetup, state: DecodeState) -> torch.Tensor:
    """Run the prompt through the model and pick the first new token of every row."""
    logits = setup.runner.prefill(state.sequences[:, : state.length])
    return _accept(setup, state, _choose(setup, state, logits))


def decode_one_token(setup: DecodeSetup, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed the last tokens to the model and pick the next token of every row."""
    if setup.certified is not None:
        return _accept(setup, state, setup.certified.decode(tokens, state.sequences[:, : state.length]))
    logits = setup.runner.decode(tokens)
    return _accept(setup, state, _choose(setup, state, logits))


def decode_n_tokens(setup: DecodeSetup, state: DecodeState, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Decode up to ``n`` more tokens, stopping early when generation is over; returns the last tokens."""
    for _ in range(n):
        if state.finished:
            break
        tokens = decode_one_token(setup, state, tokens)
    return tokens


def run_greedy_or_sample(runner: ModelRunner, input_ids: torch.Tensor, batch: BatchState, processors: Any,
                         stopping: StoppingPlan, record: Record, pad_token: Optional[torch.Tensor],
                         max_length: int, streamer: Any, deferrable: bool) -> torch.Tensor:
    """Greedy search (``batch`` without seeds) or multinomial sampling from the prompt ``input_ids``
    (``[rows, prompt_length]``, rows expanded) to at most ``max_length`` tokens. ``deferrable``: nothing
    user-supplied runs per step, so the finish flag may be read late. Returns the ``[rows, length]``
    sequences, prompt included."""
    rows, prompt_length = input_ids.shape
    device = input_ids.device
    if stopping.pads_finished_rows and pad_token is None:
        raise ValueError("Finished rows must be padded but neither `pad_token_id` nor `eos_token_id` is set.")
    sequences = torch.empty(rows, max_length, dtype=torch.long, device=device)
    sequences[:, :prompt_length] = input_ids
    lag = FINISH_CHECK_LAG[device.type] if deferrable and runner.can_crop else 0
    stages = LogitsStages.from_processors(list(processors), input_ids) if processors else None
    setup = DecodeSetup(
        runner=runner,
        stages=stages,
        sampler=batch.sampler() if batch.samples else None,
        stopping=stopping,
        record=record,
        pad_token=pad_token,
        streamer=streamer,
        watcher=FinishWatcher(lag, device, flags=2 if batch.samples else 1),
        prompt_length=prompt_length,
        certified=CertifiedGreedyHead.for_run(runner, stages, batch.samples, record),
    )
    state = DecodeState(sequences, prompt_length, batch)
    last = prefill(setup, state)
    decode_n_tokens(setup, state, last, max_length - state.length)
    if streamer is not None:
        streamer.end()
    return state.sequences[:, : state.length].contiguous()


def run_decode_step(step: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], processors: Any,
                    stopping: StoppingPlan, batch: BatchState, pad_token: Optional[torch.Tensor],
                    deferrable: bool = True) -> torch.Tensor:
    """Greedy search or sampling driven by a :class:`~turbogen.generation.compiled.DecodeStep` (the compiled
    whole step): the same tokens and the same end as :func:`run_greedy_or_sample` (the finish flag read
    ``FINISH_CHECK_LAG`` steps late where ``deferrable``, the steps past the end forgotten), but every step is one
    call of ``step`` on its own buffers. Returns a copy of the ``[rows, length]`` sequences, prompt included."""
    step.start(input_ids, attention_mask, processors, stopping, batch, pad_token)
    prompt_length = step.prompt_length
    lag = FINISH_CHECK_LAG[step.device.type] if deferrable else 0
    watcher = FinishWatcher(lag, step.device, flags=step.flags.shape[0])
    judges_rows = bool(stopping.row_criteria)
    index = 0  # the step whose token was just written (0: the prefill's)
    while True:
        if judges_rows:
            # The flags buffer is overwritten by the next step: a late read needs its own copy.
            finished_step = watcher.push(index, step.flags if lag == 0 else step.flags.clone())
            if finished_step is not None:
                step.finish(prompt_length + finished_step + 1)
                break
        index += 1
        if stopping.stops_all(step.length):
            finished_step = watcher.flush() if judges_rows else None
            if finished_step is not None:
                step.finish(prompt_length + finished_step + 1)
            elif step.samples and not bool(step.flags[-1]):  # no flag was read after the last step
                raise_non_finite_scores()
            break
        step()
    return step.sequences[:, : step.length].clone()
