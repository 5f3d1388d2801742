"""Logits stages: logits processing with per-row state that the decode loop updates, instead of
history that every processor rescans at every step (llama.cpp's samplers, vLLM's logits processors).

A :class:`LogitsStage` has five verbs:

- ``apply(input_ids, scores)``: the processed scores for this step (inputs untouched). ``input_ids``
  is the ``[rows, length]`` history (prompt + generated) that transformers-style processors read;
  a stage that keeps its own state need not read it.
- ``accept(tokens)``: the tokens appended to each row, ``[rows]`` or ``[rows, n]`` (speculative
  decoding accepts several at once).
- ``reset(rows, prompt_ids)``: rows freed or reassigned by a scheduler start over from new prompts.
- ``rollback(rows, n)``: rows forget their last ``n[i]`` accepted tokens (rejected draft tokens);
  the penalties remember the last ``rollback_window`` accepted tokens of each row for it.
- ``reorder(index)``: beam search: new row ``r`` is old row ``index[r]``.

:class:`LogitsStages` is the ordered pipeline, itself a stage. :meth:`LogitsStages.from_processors`
builds it from any processors: the penalties on repeated tokens become stateful stages (see
:mod:`turbogen.processors.penalty_stages`); anything else, transformers' processors and user
callables included, is wrapped by :class:`ProcessorStage`, which calls it with the history.

The contract: for any processors and any token stream, ``stages.apply(input_ids, scores)`` after
accepting the tokens of ``input_ids`` beyond the prompt equals
``LogitsProcessorList(processors)(input_ids, scores)`` bit for bit, also after any mix of
``reorder``, ``rollback`` (equal to the shortened history) and ``reset`` (equal to the new prompt's
history). A processor parameter that counts positions (``prompt_length``,
``prompt_ignore_length``) counts them in each row's history, a reset row's new prompt included,
exactly as the processor counts them in ``input_ids``. The stateful stages never read
``input_ids``, so after rollbacks of different lengths each row is its own history, which no
rectangular ``input_ids`` could hold; the adapters see whatever ``input_ids`` is passed.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Protocol, runtime_checkable

import torch

from .base import ArgumentTypeError, _extra_call_parameters, check_ids_tensor, check_int
from .penalty_stages import (
    DEFAULT_ROLLBACK_WINDOW,
    PenaltyStage,
    is_presence_frequency_penalty,
    is_repetition_penalty,
    stateful_stage_for,
)


@runtime_checkable
class LogitsStage(Protocol):
    """One step of logits processing with per-row state (see the module docstring for the verbs)."""

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """The processed ``[rows, vocab]`` scores; ``input_ids`` is the ``[rows, length]`` history."""
        ...

    def accept(self, tokens: torch.LongTensor) -> None:
        """Append ``tokens`` (``[rows]`` or ``[rows, n]``) to every row's history."""
        ...

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        """Restart ``rows`` (``[k]``, distinct) from the prompts ``prompt_ids`` (``[k, length]``)."""
        ...

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        """Forget the last ``n[i]`` accepted tokens of row ``rows[i]`` (``rows`` distinct)."""
        ...

    def reorder(self, index: torch.LongTensor) -> None:
        """Make new row ``r`` a copy of old row ``index[r]`` (beam search)."""
        ...


class ProcessorStage:
    """A stateless stage around a transformers-style ``processor(input_ids, scores)`` callable.

    ``apply`` calls the processor with the history; the state verbs do nothing, because the
    processor reads everything it needs from ``input_ids`` at every call. Keyword arguments of
    ``apply`` reach the processor when its ``__call__`` takes parameters beyond
    ``(input_ids, scores)``, all of which must then be present (``LogitsProcessorList``'s rule).
    """

    #: The processor reads the history at every call, so ``apply`` needs the real ``input_ids``.
    reads_input_ids = True

    def __init__(self, processor):
        if not callable(processor):
            raise ArgumentTypeError(
                f"`processor` has to be a callable processor(input_ids, scores), but is {type(processor).__name__}"
            )
        self.processor = processor

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        extra = _extra_call_parameters(self.processor)
        if not extra:
            return self.processor(input_ids, scores)
        missing = [name for name in extra if name not in kwargs]
        if missing:
            raise ValueError(
                f"{type(self.processor).__name__} needs the keyword arguments {list(extra)}, but {missing} were not "
                "passed to `apply`"
            )
        return self.processor(input_ids, scores, **kwargs)

    def accept(self, tokens: torch.LongTensor) -> None:
        pass

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        pass

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        pass

    def reorder(self, index: torch.LongTensor) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r})"


class LogitsStages:
    """An ordered pipeline of logits stages, itself a :class:`LogitsStage`.

    ``apply`` runs the stages in order, each on the previous one's scores; the state verbs reach
    every stage. Calling the pipeline is ``apply``, so it can stand where a ``LogitsProcessorList``
    is called; keyword arguments of the call reach the wrapped processors that take them.
    """

    def __init__(self, stages: Iterable[LogitsStage] = ()):
        self._stages = list(stages)
        for position, stage in enumerate(self._stages):
            if not isinstance(stage, LogitsStage):
                raise ArgumentTypeError(
                    f"`stages[{position}]` has to be a LogitsStage (apply/accept/reset/rollback/reorder), but is "
                    f"{type(stage).__name__}; wrap a processor(input_ids, scores) in ProcessorStage"
                )

    @classmethod
    def from_processors(cls, processors, prompt_ids: torch.LongTensor, *, vocab_size: Optional[int] = None,
                        rollback_window: int = DEFAULT_ROLLBACK_WINDOW,
                        max_length: Optional[int] = None) -> "LogitsStages":
        """The stages equivalent to ``LogitsProcessorList(processors)`` for rows starting from ``prompt_ids``.

        ``processors`` is any iterable of ``(input_ids, scores)`` callables (turbogen's,
        transformers', the user's, or a ``LogitsProcessorList``). The repetition penalty and the
        n-gram ban (turbogen's or transformers' exact classes) and turbogen's presence/frequency
        penalty become stateful stages (:mod:`turbogen.processors.penalty_stages`; a repetition
        penalty followed by a presence/frequency penalty share one :class:`PenaltyStage`) whose per-row
        state starts from ``prompt_ids`` (``[rows, prompt_length]``, rows already expanded for
        beams or ``num_return_sequences``, padding included exactly as in ``input_ids``);
        everything else is wrapped by :class:`ProcessorStage`, except stages, which are used as they are.

        ``vocab_size`` sizes the penalties' per-row counts up front; without it, they are sized by
        the scores of the first ``apply`` (accepting tokens before that synchronises with the
        host). ``rollback_window`` is the most tokens the penalties can roll back per row (counted
        from the last accept backwards). ``max_length`` fixes the n-gram history's capacity (the
        longest a row may grow, draft tokens included); without it, the history grows as needed.
        A step to compile or capture needs ``vocab_size`` and, with an n-gram ban, ``max_length``.
        """
        if callable(processors) and not isinstance(processors, (list, tuple)):
            raise ArgumentTypeError(
                f"`processors` has to be an iterable of processors, but is the single processor "
                f"{type(processors).__name__}; pass [processor]"
            )
        prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
        check_int(rollback_window, "rollback_window", minimum=1)
        for name, size in (("vocab_size", vocab_size), ("max_length", max_length)):
            if size is not None:
                check_int(size, name, minimum=1)
        stages = []
        processors = list(processors)
        position = 0
        while position < len(processors):
            processor = processors[position]
            position += 1
            if isinstance(processor, LogitsStage):
                # Already a stage (e.g. a pipeline built earlier): it keeps its own state.
                stages.append(processor)
                continue
            if (is_repetition_penalty(processor) and position < len(processors)
                    and is_presence_frequency_penalty(processors[position])):
                # One state and one pass over the logits for both penalties.
                stages.append(PenaltyStage(prompt_ids, repetition=processor, presence_frequency=processors[position],
                                           vocab_size=vocab_size, rollback_window=rollback_window))
                position += 1
                continue
            stage = stateful_stage_for(processor, prompt_ids, vocab_size=vocab_size, rollback_window=rollback_window,
                                       max_length=max_length)
            stages.append(stage if stage is not None else ProcessorStage(processor))
        return cls(stages)

    @property
    def reads_input_ids(self) -> bool:
        """Whether some stage may read ``input_ids`` in ``apply``: any wrapped processor counts as
        reading it, and so does any stage without a false ``reads_input_ids`` attribute. When none
        does, the decode loop need not build the history tensor, and rows may differ in length."""
        return any(getattr(stage, "reads_input_ids", True) for stage in self._stages)

    @property
    def processors(self) -> list:
        """The processor objects the stages stand for, in order (a stage with no processor stands for itself;
        a stage with ``processors`` stands for each of them)."""
        flat = []
        for stage in self._stages:
            flat += getattr(stage, "processors", None) or [getattr(stage, "processor", stage)]
        return flat

    def split_penalties(self) -> "tuple[LogitsStages, Optional[PenaltyStage]]":
        """``(head, penalties)``: when the last stage is a :class:`PenaltyStage`, the stages before it and
        that stage, so that a sampler can apply the penalties while it draws (the result is that of
        ``apply``); else ``(self, None)``."""
        if self._stages and isinstance(self._stages[-1], PenaltyStage):
            return LogitsStages(self._stages[:-1]), self._stages[-1]
        return self, None

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for stage in self._stages:
            # The protocol's apply takes no keyword arguments; the adapters pass them to their processors.
            if kwargs and isinstance(stage, (ProcessorStage, LogitsStages)):
                scores = stage.apply(input_ids, scores, **kwargs)
            else:
                scores = stage.apply(input_ids, scores)
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        return self.apply(input_ids, scores, **kwargs)

    def accept(self, tokens: torch.LongTensor) -> None:
        for stage in self._stages:
            stage.accept(tokens)

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        for stage in self._stages:
            stage.reset(rows, prompt_ids)

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        for stage in self._stages:
            stage.rollback(rows, n)

    def reorder(self, index: torch.LongTensor) -> None:
        for stage in self._stages:
            stage.reorder(index)

    def __len__(self) -> int:
        return len(self._stages)

    def __iter__(self) -> Iterator[LogitsStage]:
        return iter(self._stages)

    def __getitem__(self, position: int) -> LogitsStage:
        return self._stages[position]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._stages!r})"


__all__ = ["LogitsStage", "LogitsStages", "ProcessorStage", "history_readers"]


def history_readers(processors) -> list[str]:
    """The class names of the processors in ``processors`` whose stage reads ``input_ids`` in ``apply`` (see
    :attr:`LogitsStages.reads_input_ids`), in order. Empty: a loop need not build the ``[rows, length]`` history at
    every step, so rows may differ in length (speculation) and a step may keep fixed shapes (compilation)."""
    stages = LogitsStages.from_processors(list(processors), torch.zeros(1, 1, dtype=torch.long))
    return [type(getattr(stage, "processor", stage)).__name__ for stage in stages
            if getattr(stage, "reads_input_ids", True)]
