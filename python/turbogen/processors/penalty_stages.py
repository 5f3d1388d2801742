"""The stateful logits stage of the penalties on repeated tokens, and which processors get a stateful stage.

:class:`PenaltyStage` stands for ``RepetitionPenaltyLogitsProcessor`` (turbogen's or transformers') and
turbogen's ``PresenceFrequencyPenaltyLogitsProcessor``, alone or the two together, and reproduces their
``__call__`` bit for bit (see :mod:`turbogen.processors.stages` for the verbs and the contract): a
:class:`turbogen.ops.PenaltyState` of per-row token counts, read by the ``apply_penalties`` kernels or by
the fused sampler, never the history. The n-gram bans have theirs in :mod:`turbogen.processors.ngram_stages`.
All verbs are tensor operations of fixed shapes (scatters, index copies): no Python loop over rows and no
host synchronisation once the vocabulary size is known, so a decode step that calls them can be compiled or
captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _transformers_compat as _compat
from .. import ops
from ..ops import PenaltyState, PenaltyTensors
from ..ops.penalties import apply_penalty_tensors
from ._stage_args import accepted_tokens, is_exactly, largest_id, reorder_index, reset_arguments, rollback_arguments
from .base import check_ids_tensor, check_int, check_scores
from .ngram_stages import EncoderNoRepeatNGramStage, NoRepeatNGramStage, ngram_stage_for
from .penalties import PresenceFrequencyPenaltyLogitsProcessor, RepetitionPenaltyLogitsProcessor

#: The default of the most tokens one row can roll back at once (a generous speculative draft length).
DEFAULT_ROLLBACK_WINDOW = 64


# --------------------------------------------------------------------------------------------
# The penalties on repeated tokens
# --------------------------------------------------------------------------------------------


class PenaltyStage:
    """``RepetitionPenaltyLogitsProcessor`` and/or ``PresenceFrequencyPenaltyLogitsProcessor`` (the two
    adjacent in a list become one stage) over one :class:`turbogen.ops.PenaltyState`.

    The state counts, per row, the tokens at positions ``>= repetition.prompt_ignore_length`` (the
    repetition penalty's seen set: left padding counts, as in transformers) and at positions
    ``>= presence_frequency.prompt_length`` (the presence / frequency counts). ``apply`` is
    :func:`turbogen.ops.apply_penalties` with the processors' current parameters, reading only each row's
    distinct tokens; the decode loop can instead hand :meth:`penalty_tensors` to the sampler, which applies
    them while it draws. Results are the processors' bit for bit.

    Without ``vocab_size`` the counts are as wide as the largest token id seen so far (finding it
    synchronises with the host) until the first ``apply`` learns the vocabulary from the scores.
    """

    reads_input_ids = False

    def __init__(self, prompt_ids: torch.LongTensor, *, repetition=None, presence_frequency=None,
                 vocab_size: Optional[int] = None, rollback_window: int = DEFAULT_ROLLBACK_WINDOW):
        if repetition is None and presence_frequency is None:
            raise ValueError("a PenaltyStage needs a repetition or a presence/frequency processor")
        prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
        self.repetition = repetition
        self.presence_frequency = presence_frequency
        self.processors = tuple(p for p in (repetition, presence_frequency) if p is not None)
        self.vocab_known = vocab_size is not None
        width = check_int(vocab_size, "vocab_size", minimum=1) if self.vocab_known else largest_id(prompt_ids) + 1
        self.state = PenaltyState(prompt_ids, max(width, 1),
                                  seen_from=None if repetition is None else _compat.prompt_ignore_length(repetition) or 0,
                                  generated_from=None if presence_frequency is None else presence_frequency.prompt_length,
                                  rollback_window=check_int(rollback_window, "rollback_window", minimum=1))
        self._tensors: "tuple[tuple, PenaltyTensors] | None" = None

    @property
    def processor(self):
        """The processor the stage stands for (the first, when it stands for two)."""
        return self.processors[0]

    @property
    def rows(self) -> int:
        return self.state.rows

    def _make_room_for(self, token_ids: torch.Tensor) -> None:
        """While the vocabulary is unknown, widen the counts to hold ``token_ids`` (a host sync)."""
        if not self.vocab_known:
            width = largest_id(token_ids) + 1
            if width > self.state.vocab_size:
                self.state.widen_vocabulary(width)
                self._tensors = None

    def _fit(self, scores: torch.Tensor) -> None:
        """Size the state for ``scores`` (``[rows, vocab]``) and move it to their device."""
        check_scores(scores)
        if scores.shape[0] != self.rows:
            raise ValueError(f"`scores` has {scores.shape[0]} rows, but the stage holds {self.rows} rows")
        vocab_size = scores.shape[-1]
        if not self.vocab_known:
            if self.state.vocab_size > vocab_size:
                raise ValueError(f"token id {self.state.vocab_size - 1} was seen, but `scores` has a vocabulary of "
                                 f"{vocab_size}")
            self.state.widen_vocabulary(vocab_size)
            self.vocab_known = True
            self._tensors = None
        elif vocab_size != self.state.vocab_size:
            raise ValueError(f"`scores` has a vocabulary of {vocab_size}, but the stage was sized for "
                             f"{self.state.vocab_size}")
        if self.state.device != scores.device:
            self.state.move_to(scores.device)
            self._tensors = None

    def _parameters(self) -> "tuple[float, float, float]":
        """The processors' current (repetition, presence, frequency) penalties."""
        return (getattr(self.repetition, "penalty", 1.0),
                getattr(self.presence_frequency, "presence_penalty", 0.0),
                getattr(self.presence_frequency, "frequency_penalty", 0.0))

    def penalty_tensors(self, scores: torch.Tensor) -> PenaltyTensors:
        """What the penalty kernels read for ``scores`` (the state sized and placed for them): the sampler
        applies them while it draws (``turbogen.ops.Sampler(..., penalties=...)``) instead of :meth:`apply`.
        Made again only when a parameter or the state's tensors change."""
        self._fit(scores)
        key = self._parameters()
        if self._tensors is None or self._tensors[0] != key:
            self._tensors = (key, self.state.tensors(repetition_penalty=key[0], presence_penalty=key[1],
                                                     frequency_penalty=key[2]))
        return self._tensors[1]

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if torch.compiler.is_compiling():
            # No cached kernel inputs here: an attribute that changes between calls would recompile the graph.
            self._fit(scores)
            repetition, presence, frequency = self._parameters()
            return ops.apply_penalties(scores, self.state, repetition_penalty=repetition, presence_penalty=presence,
                                       frequency_penalty=frequency)
        # Eagerly, the validated kernel inputs are reused from step to step (validating them costs more than
        # the kernel at small batch sizes).
        tensors = self.penalty_tensors(scores)
        return apply_penalty_tensors(scores, tensors)

    def accept(self, tokens: torch.LongTensor) -> None:
        tokens = accepted_tokens(tokens, self.rows, self.state.device)
        self._make_room_for(tokens)
        self.state.accept(tokens)

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        rows, prompt_ids = reset_arguments(rows, prompt_ids)
        self._make_room_for(prompt_ids)
        self.state.reset(rows, prompt_ids)

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        rows, n = rollback_arguments(rows, n, self.state.retained, f"the accepted tokens still held (at most "
                                      f"rollback_window={self.state.window})")
        self.state.rollback(rows, n)

    def reorder(self, index: torch.LongTensor) -> None:
        self.state.reorder(reorder_index(index, self.rows, self.state.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.processors))}, rows={self.rows})"


# --------------------------------------------------------------------------------------------
# Which processors have a stateful stage
# --------------------------------------------------------------------------------------------


def _is_int_or_none(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def is_repetition_penalty(processor) -> bool:
    """The exact repetition penalty class (turbogen's or transformers') with a whole-batch
    ``prompt_ignore_length`` (transformers 5 also takes a per-row tensor of them: that stays stateless)."""
    # transformers 4.45's class has no `prompt_ignore_length` (None: every token counts).
    return (is_exactly(processor, RepetitionPenaltyLogitsProcessor)
            and _is_int_or_none(_compat.prompt_ignore_length(processor)))


def is_presence_frequency_penalty(processor) -> bool:
    return type(processor) is PresenceFrequencyPenaltyLogitsProcessor


def stateful_stage_for(processor, prompt_ids: torch.LongTensor, *, vocab_size: Optional[int] = None,
                       rollback_window: int = DEFAULT_ROLLBACK_WINDOW, max_length: Optional[int] = None):
    """The stateful stage standing for ``processor``, or None when it has none (then the stateless
    adapter applies): the exact classes of the repetition penalty (with a whole-batch
    ``prompt_ignore_length``) and the n-gram bans (on the output or on the encoder's prompt), turbogen's or
    transformers', and turbogen's presence/frequency penalty. (:meth:`LogitsStages.from_processors` merges a repetition penalty
    followed by a presence/frequency penalty into one :class:`PenaltyStage`.)"""
    if is_repetition_penalty(processor):
        return PenaltyStage(prompt_ids, repetition=processor, vocab_size=vocab_size, rollback_window=rollback_window)
    if is_presence_frequency_penalty(processor):
        return PenaltyStage(prompt_ids, presence_frequency=processor, vocab_size=vocab_size,
                            rollback_window=rollback_window)
    return ngram_stage_for(processor, prompt_ids, max_length=max_length)


__all__ = [
    "DEFAULT_ROLLBACK_WINDOW",
    "EncoderNoRepeatNGramStage",
    "NoRepeatNGramStage",
    "PenaltyStage",
    "is_presence_frequency_penalty",
    "is_repetition_penalty",
    "stateful_stage_for",
]
