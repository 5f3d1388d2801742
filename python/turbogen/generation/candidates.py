"""Candidate (draft) generators for speculative decoding: the protocol and turbogen's implementations.

A :class:`CandidateGenerator` proposes, for every row of a batch, up to ``k`` draft tokens that the target
model then verifies in one forward pass (:mod:`turbogen.generation.speculative`). Drafts only decide the
speed: the verification emits exactly the tokens plain decoding would (coupled mode), whatever is drafted.

The loop talks to a generator through three members:

* ``max_drafts`` (int): the most drafts any row may get from the next :meth:`~CandidateGenerator.propose`
  (schedules may change it between steps); ``draft_limit`` (int): the most it will ever be in this call,
  so that the loop can size the caches (a static cache needs room for ``draft_limit`` positions past the
  longest sequence);
* ``propose(sequences, lengths, active)``: the drafts, ``[rows, k]`` int64 with ``k <= max_drafts``, -1
  where a row has fewer drafts than ``k`` (a row's drafts are contiguous from column 0: after the first -1
  every column is -1). Row ``r``'s tokens are ``sequences[r, :lengths[r]]``; ``active[r]`` is False for a
  finished row, which must get no drafts. A row never gets more than ``max_length - lengths[r] - 1``
  drafts (the target emits one more token; the loop trims anything beyond);
* ``accepted(accepted, lengths)``: after verification, ``accepted[r]`` drafts of row ``r`` were accepted
  and its sequence is now ``lengths[r]`` tokens long (prompt + generated, the target's emitted token
  included; a stop inside the accepted run makes it shorter than ``old length + accepted + 1``). A
  generator updates its schedule and forgets (crops) whatever its own cache holds past the new lengths.

Optionally ``finish()``: called once when generation ends (e.g. to persist a heuristic schedule on the
assistant's generation config, as transformers does).

Implementations here: :class:`PromptLookupCandidates` (n-gram lookup in the row's own tokens),
:class:`AssistantCandidates` (a smaller model with the same vocabulary, its own cache) and
:class:`EarlyExitCandidates` (the target's first layers). ``turbogen.generation.universal`` adds an
assistant with another tokenizer.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch

from .. import ops
from ..config import GenerationConfig
from ..processors.build import SamplingParams
from .prepare import accepts
from .record import Record
from .runner import DirectRunner

__all__ = ["AssistantCandidates", "CandidateGenerator", "DraftSchedule", "EarlyExitCandidates",
           "PromptLookupCandidates", "SCHEDULES", "WidthGovernor", "build_candidates", "check_draft_count"]

#: The values of ``num_assistant_tokens_schedule`` (transformers 4.57's).
SCHEDULES = ("constant", "heuristic", "heuristic_transient")


@runtime_checkable
class CandidateGenerator(Protocol):
    """What the speculative loop needs from a draft source (see the module docstring)."""

    #: The most drafts the next :meth:`propose` may return per row.
    max_drafts: int
    #: The most drafts any step of this call may return per row (sizes the caches).
    draft_limit: int

    def propose(self, sequences: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """``sequences`` ``[rows, width]`` int64 (row ``r``'s tokens are ``sequences[r, :lengths[r]]``),
        ``lengths`` ``[rows]`` int64, ``active`` ``[rows]`` bool (unfinished). Returns drafts ``[rows, k]``
        int64, -1 where a row has fewer drafts (``k`` may be 0)."""
        ...

    def accepted(self, accepted: torch.Tensor, lengths: torch.Tensor) -> None:
        """After verification: ``accepted`` ``[rows]`` int64 drafts accepted per row; ``lengths`` ``[rows]`` the
        rows' new lengths (the emitted token included). Update schedules, crop own caches."""
        ...


# ----------------------------------------------------------------------------------------------------------
# The draft-count schedule
# ----------------------------------------------------------------------------------------------------------

#: The most drafts the heuristic schedules may grow to (transformers' grow without bound; the loop must size
#: the caches for the largest draft, and acceptance runs of more than this many tokens are rare).
HEURISTIC_DRAFT_LIMIT = 32
#: Back-off: after this many consecutive steps in which a row drafted one token and none was accepted, the
#: row stops drafting for a cool-down of 1, 2, 4, ... (at most ``MAX_COOLDOWN``) steps, then tries again.
BACKOFF_AFTER = 2
MAX_COOLDOWN = 16


class WidthGovernor:
    """Caps the drafts of every row where a wider verification costs more time than its accepted drafts save.

    Per-row acceptance does not depend on the batch, but the cost of verifying ``k`` drafts does: on a CPU a
    batch-1 step is dominated by per-call overhead (``k`` is nearly free), a batch of 8 by arithmetic (each
    draft position costs a row of compute whether accepted or not). So the governor measures, at run time:

    * the seconds per step at each verified width (exponential averages; one step is the time between two
      :meth:`observe` calls, i.e. drafting + verification + bookkeeping), fitted by a line
      ``t(k) = t0 + slope * k``;
    * the probability ``alpha`` that a draft is accepted given the previous one was (the geometric model's
      maximum-likelihood estimate: accepted drafts / (accepted drafts + rejections), decayed so it follows
      the text);

    and sets :attr:`cap` to the ``k`` in ``0 .. limit`` that maximises the expected tokens per step
    ``(1 - alpha ** (k + 1)) / (1 - alpha)`` per second ``t(k)``. ``cap == 0`` is a plain decoding step. To keep
    both ends of the line measured it tries width 0 once early and, every :data:`PROBE_EVERY` steps, the end of
    the range it is not using. Only the speed depends on it: the verification decides the tokens.

    The geometric model overrates drafting where rows propose fewer drafts than the cap (prompt lookup's
    matches are often short) while the widest row sets the cost of the step, so the model's choice is also
    checked against what was measured: the tokens emitted per second (one per row plus the accepted drafts,
    averaged per width as the times are). Where the chosen width emitted fewer tokens per second than plain
    steps, the cap stays 0, and the probes re-measure the chosen width instead of the end of the range.
    """

    #: Steps between two probes of the unused end of the width range.
    PROBE_EVERY = 16
    #: Weight of the past in the averages of step times and acceptance (per step).
    DECAY = 0.8

    def __init__(self, limit: int, clock: Callable[[], float] = time.perf_counter):
        self.limit = int(limit)
        self.cap = self.limit
        self._clock = clock
        self._seconds: dict[int, float] = {}  # verified width (drafts) -> average seconds per step
        self._accepted = 0.0
        self._rejections = 0.0
        self._last: Optional[float] = None
        self._steps = 0
        self._rates: dict[int, float] = {}  # verified width -> average tokens emitted per second

    def start_step(self) -> None:
        """Called when a step begins drafting (the first step's start; later steps start where the previous
        one was observed)."""
        if self._last is None:
            self._last = self._clock()

    def observe(self, proposed: torch.Tensor, accepted: torch.Tensor) -> None:
        """After a step: ``proposed[r]`` drafts of row ``r`` were verified, ``accepted[r]`` accepted (CPU int64)."""
        now = self._clock()
        width = int(proposed.max()) if proposed.numel() else 0
        if self._last is not None and self._steps > 0:  # the first step may include the caller's set-up
            previous = self._seconds.get(width)
            seconds = now - self._last
            self._seconds[width] = seconds if previous is None else self.DECAY * previous + (1 - self.DECAY) * seconds
            if seconds > 0:
                rate = (proposed.numel() + float(accepted.sum())) / seconds
                known = self._rates.get(width)
                self._rates[width] = rate if known is None else self.DECAY * known + (1 - self.DECAY) * rate
        self._last = now
        drafted = proposed > 0
        self._accepted = self.DECAY * self._accepted + float(accepted[drafted].sum())
        self._rejections = self.DECAY * self._rejections + float((drafted & (accepted < proposed)).sum())
        self._steps += 1
        self.cap = self._choose()

    def _choose(self) -> int:
        if 0 not in self._seconds:
            return 0 if self._steps >= 2 else self.limit  # measure a plain step once, early
        if len(self._seconds) < 2:
            return self.limit
        best = self._best_width()
        measured_slower = best > 0 and best in self._rates and 0 in self._rates and self._rates[best] < self._rates[0]
        if self._steps % self.PROBE_EVERY == 0:  # refresh the chosen width, or the end of the range not in use
            return best if measured_slower else self.limit if best < self.limit / 2 else 0
        return 0 if measured_slower else best

    def _best_width(self) -> int:
        widths = torch.tensor(sorted(self._seconds), dtype=torch.float64)
        seconds = torch.tensor([self._seconds[int(w)] for w in widths], dtype=torch.float64)
        t0 = self._seconds[0]
        others = widths > 0
        # Least squares through (0, t0): each extra draft position costs `slope` seconds.
        slope = float((widths[others] * (seconds[others] - t0)).sum() / (widths[others] ** 2).sum())
        slope = max(slope, 0.0)
        total = self._accepted + self._rejections
        alpha = min(self._accepted / total, 0.999) if total > 0 else 0.0
        k = torch.arange(self.limit + 1, dtype=torch.float64)
        tokens = (1 - alpha ** (k + 1)) / (1 - alpha)
        rate = tokens / (t0 + slope * k)
        return int(torch.argmax(rate))


class DraftSchedule:
    """Per-row ``num_assistant_tokens`` with transformers 4.57's schedules, plus a back-off.

    ``"constant"``: every row drafts ``num_assistant_tokens`` tokens per step. ``"heuristic"`` and
    ``"heuristic_transient"`` (transformers' rule, per row): when every draft of a row was accepted its count
    grows by 2 (at most :data:`HEURISTIC_DRAFT_LIMIT`, or ``num_assistant_tokens`` if larger), else it shrinks
    by 1 (at least 1). Where speculation loses (a row whose single draft keeps being rejected costs a draft
    pass and a wider verification for nothing), the heuristic schedules back off further: after
    :data:`BACKOFF_AFTER` such steps in a row, the row drafts nothing for a cool-down of 1, 2, 4, ...,
    :data:`MAX_COOLDOWN` steps (plain decoding for that row), and an accepted draft resets the cool-down.
    With ``governed=True`` the heuristic schedules also cap every row by a :class:`WidthGovernor`, which
    backs off where wide verifications cost more than they save (large batches on a CPU).
    Values are floats, as transformers keeps them (``20`` becomes ``22.0``).
    """

    def __init__(self, rows: int, num_assistant_tokens: int, schedule: str = "constant",
                 limit: Optional[int] = None, governed: bool = False):
        """``limit``: the most drafts a row may grow to (default: :data:`HEURISTIC_DRAFT_LIMIT`, or
        ``num_assistant_tokens`` if larger, for the heuristic schedules). ``governed``: the generators' schedules
        measure their steps (:class:`WidthGovernor`); a schedule on its own just counts."""
        check_draft_count(num_assistant_tokens, "num_assistant_tokens")
        if schedule not in SCHEDULES:
            raise ValueError(f"`num_assistant_tokens_schedule` must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self.adaptive = schedule != "constant"
        if limit is None:
            limit = max(int(num_assistant_tokens), HEURISTIC_DRAFT_LIMIT) if self.adaptive else num_assistant_tokens
        self.limit = int(limit)
        self.values = torch.full((rows,), float(num_assistant_tokens), dtype=torch.float64)
        self._failures = torch.zeros(rows, dtype=torch.int64)
        self._cooldown = torch.zeros(rows, dtype=torch.int64)
        self._next_cooldown = torch.ones(rows, dtype=torch.int64)
        self.governor = WidthGovernor(self.limit) if governed and self.adaptive else None

    def counts(self) -> torch.Tensor:
        """int64 ``[rows]`` (CPU): the drafts each row may propose now (0 while cooling down)."""
        cap = self.limit
        if self.governor is not None:
            self.governor.start_step()
            cap = self.governor.cap
        counts = self.values.clamp(max=cap).long()
        return torch.where(self._cooldown > 0, 0, counts)

    def update(self, proposed: torch.Tensor, accepted: torch.Tensor) -> None:
        """After a step: row ``r`` proposed ``proposed[r]`` drafts, ``accepted[r]`` of them were accepted
        (CPU int64 ``[rows]``)."""
        if not self.adaptive:
            return
        if self.governor is not None:
            self.governor.observe(proposed, accepted)
        drafted = proposed > 0
        self._cooldown = torch.where(drafted, self._cooldown, (self._cooldown - 1).clamp(min=0))
        all_accepted = drafted & (accepted >= proposed)
        grown = (self.values + 2.0).clamp(max=float(self.limit))
        shrunk = (self.values - 1.0).clamp(min=1.0)
        self.values = torch.where(all_accepted, grown, torch.where(drafted, shrunk, self.values))
        failed = drafted & (proposed == 1) & (accepted == 0)
        self._failures = torch.where(failed, self._failures + 1, torch.where(drafted, 0, self._failures))
        backs_off = self._failures >= BACKOFF_AFTER
        self._cooldown = torch.where(backs_off, self._next_cooldown, self._cooldown)
        self._next_cooldown = torch.where(backs_off, (self._next_cooldown * 2).clamp(max=MAX_COOLDOWN),
                                          torch.where(drafted & (accepted > 0), 1, self._next_cooldown))
        self._failures = torch.where(backs_off, 0, self._failures)

    def persistent_value(self) -> float:
        """The value transformers' ``"heuristic"`` schedule leaves on the assistant's generation config (the
        largest row's, a float)."""
        return float(self.values.max())


def check_draft_count(value: Any, name: str) -> None:
    """``value`` must be a positive int (a draft count), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer (the number of draft tokens per step), got "
                         f"{value!r}")


def _room(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Drafts each row can still take: the target emits one more token and no row exceeds ``max_length``."""
    return (max_length - lengths - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------------------
# Prompt lookup
# ----------------------------------------------------------------------------------------------------------


class PromptLookupCandidates:
    """Drafts copied from each row's own tokens (prompt lookup decoding), with transformers 4.57's
    ``PromptLookupCandidateGenerator`` rules, per row: for n-gram sizes ``max_matching_ngram_size`` down to 1,
    the row's last ``n`` tokens are searched in its sequence (left padding excluded) from the left; the first
    occurrence followed by at least one token gives the drafts, the up to ``num_output_tokens`` tokens after it
    (within the sequence), cut before the first EOS. No match: no drafts (a plain step for that row).

    transformers also runs the logits processors on fake logits to drop drafts they forbid; turbogen does not
    (a forbidden draft is rejected by the verification, the output is the same), so processors see no extra
    calls.

    ``schedule`` (turbogen's extension; transformers always drafts up to ``num_output_tokens``): with
    ``"heuristic"`` / ``"heuristic_transient"`` each row's draft count follows :class:`DraftSchedule`, at most
    ``num_output_tokens``, so that rows whose lookups keep failing stop paying for wide verifications.
    """

    def __init__(self, num_output_tokens: int, max_matching_ngram_size: int, max_length: int,
                 eos_token_ids: Optional[torch.Tensor] = None, prompt_mask: Optional[torch.Tensor] = None,
                 schedule: str = "constant"):
        check_draft_count(num_output_tokens, "prompt_lookup_num_tokens")
        check_draft_count(max_matching_ngram_size, "max_matching_ngram_size")
        DraftSchedule(1, num_output_tokens, schedule)  # validates the schedule
        self._schedule_name = schedule
        self.schedule: Optional[DraftSchedule] = None  # per row, from the first proposal
        self._proposed: Optional[torch.Tensor] = None
        self.num_output_tokens = int(num_output_tokens)
        self.max_matching_ngram_size = int(max_matching_ngram_size)
        self.max_length = int(max_length)
        self.max_drafts = self.draft_limit = self.num_output_tokens
        self._eos = frozenset() if eos_token_ids is None else frozenset(eos_token_ids.reshape(-1).tolist())
        # Where each row's real tokens start (after its left padding).
        self._starts = (None if prompt_mask is None
                        else (prompt_mask.cpu() == 0).long().cumprod(1).sum(1).tolist())
        self._indexes: list[_NgramIndex] = []  # per row, from the first proposal

    def propose(self, sequences: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        rows = sequences.shape[0]
        if self.schedule is None:
            self.schedule = DraftSchedule(rows, self.num_output_tokens, self._schedule_name,
                                          limit=self.num_output_tokens, governed=True)
            self._indexes = [_NgramIndex(self.max_matching_ngram_size) for _ in range(rows)]
        lengths_host = lengths.tolist()
        counts = self.schedule.counts().tolist()
        active_host = active.tolist()
        rooms = [min(max(self.max_length - length - 1, 0), count) if alive else 0
                 for length, count, alive in zip(lengths_host, counts, active_host)]
        drafting = [row for row in range(rows) if rooms[row] > 0]
        found: list[list[int]] = [[] for _ in range(rows)]
        if drafting:
            # One host copy of every drafting row's tokens the index has not seen (usually the last step's).
            starts = [self._starts[row] if self._starts is not None else 0 for row in range(rows)]
            low = min(self._indexes[row].seen_from(starts[row], lengths_host[row]) for row in drafting)
            high = max(lengths_host[row] for row in drafting)
            new_tokens = sequences[:, low:high].tolist()
            for row in drafting:
                index = self._indexes[row]
                index.extend(new_tokens[row], low, starts[row], lengths_host[row])
                found[row] = self._cut_at_eos(index.lookup(self.num_output_tokens)[:rooms[row]])
        k = max(map(len, found), default=0)
        self._proposed = torch.tensor([len(chosen) for chosen in found], dtype=torch.long)
        drafts = torch.tensor([chosen + [-1] * (k - len(chosen)) for chosen in found], dtype=torch.long)
        return drafts.reshape(rows, k).to(sequences.device)

    def _cut_at_eos(self, chosen: list[int]) -> list[int]:
        """``chosen`` up to (without) its first EOS token."""
        if self._eos:
            for position, token in enumerate(chosen):
                if token in self._eos:
                    return chosen[:position]
        return chosen

    def accepted(self, accepted: torch.Tensor, lengths: torch.Tensor) -> None:
        if self.schedule is not None and self._proposed is not None:
            self.schedule.update(self._proposed, torch.minimum(accepted.cpu(), self._proposed))
        self._proposed = None


class _NgramIndex:
    """The n-grams (sizes 1 to ``max_size``) of one row's tokens, each mapped to where it first occurs among
    those followed by at least one token, kept up to date as the row grows, so that a lookup costs a few
    dictionary reads instead of a scan of the sequence.

    A row's tokens only grow within a generation (the loop appends, never rewrites what a row holds). Should
    a row's tokens get shorter, or its last indexed token change (a caller reusing the generator on other
    sequences), the row is indexed again from its start.
    """

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._reset()

    def _reset(self) -> None:
        self.tokens: list[int] = []  # the row's tokens from its first real one (after left padding)
        self.start = 0  # the sequence column of tokens[0]
        self.first: list[dict] = [{} for _ in range(self.max_size + 1)]  # first[n][n-gram] -> first position

    def seen_from(self, start: int, length: int) -> int:
        """The first sequence column :meth:`extend` needs for a row of ``length`` tokens from ``start`` on."""
        if start != self.start or length < start + len(self.tokens):
            return start
        return start + max(len(self.tokens) - 1, 0)  # the last indexed token, to check it is unchanged

    def extend(self, columns: list[int], low: int, start: int, length: int) -> None:
        """Index the row's tokens up to ``length``; ``columns`` holds its sequence from column ``low`` on (at
        least what :meth:`seen_from` asked for)."""
        known = len(self.tokens)
        if known and (start != self.start or length < start + known
                      or columns[start + known - 1 - low] != self.tokens[-1]):
            self._reset()
            known = 0
        if not known:
            self.start = start
        self.tokens.extend(columns[start + known - low:length - low])
        tokens = self.tokens
        # An n-gram at position i counts once a token follows it: i + n <= len(tokens) - 1.
        for size in range(1, self.max_size + 1):
            first = self.first[size]
            for position in range(max(known - size, 0), len(tokens) - size):
                first.setdefault(tuple(tokens[position:position + size]), position)

    def lookup(self, count: int) -> list[int]:
        """transformers' prompt lookup: for n from the largest size down, the row's last n tokens' first
        occurrence followed by a token gives the up to ``count`` tokens after it; none: ``[]``."""
        tokens = self.tokens
        length = len(tokens)
        for size in range(min(self.max_size, length - 1), 0, -1):
            position = self.first[size].get(tuple(tokens[length - size:]))
            if position is not None:
                begin = position + size
                return tokens[begin:begin + count]
        return []


# ----------------------------------------------------------------------------------------------------------
# A draft model
# ----------------------------------------------------------------------------------------------------------


class AssistantCandidates:
    """Drafts from an assistant model sharing the target's vocabulary, over its own cache.

    Each step, every drafting row first feeds the assistant what it has not seen of the row (its accepted
    tokens and the target's last token), then the assistant drafts up to the row's count
    (:class:`DraftSchedule`) one token per forward pass: the argmax (greedy search), or, when sampling, the
    sampling contract's draw with the target's per-row seeds and offsets and the call's temperature / top-k /
    top-p / min-p, so that wherever the two models' distributions agree the draft is the token the target will
    draw (coupled verification then accepts it). A row stops drafting after an EOS token or, with
    ``confidence_threshold > 0``, after a draft whose probability under the assistant is below it (transformers'
    ``assistant_confidence_threshold``, judged per row rather than on row 0; its ROC-based adaptation is not
    reproduced). The assistant's cache keeps the accepted drafts it fed and forgets the rest per row.

    Args:
        assistant_model: a causal LM taking the target's token ids (decoder-only, generic input preparation).
        prompt_ids: ``[rows, P]`` the prompt (left-padded); ``prompt_mask`` its attention mask or ``None``.
        max_length: the longest sequence of the call (prompt included).
        eos_token_ids: 1-D int64 EOS ids, or ``None``.
        num_assistant_tokens, schedule: see :class:`DraftSchedule`.
        confidence_threshold: see above; 0 or ``None`` switches it off.
        seeds: the target's ``[rows]`` int64 sampling seeds, ``None`` for greedy drafts; ``filters`` the
            :class:`~turbogen.processors.build.SamplingParams` the drafts are drawn with.
        assistant_config: the generation config a ``"heuristic"`` schedule's last value is written back to
            (``num_assistant_tokens``), as transformers does; ``None``: nowhere.
    """

    def __init__(self, assistant_model: Any, *, prompt_ids: torch.Tensor, prompt_mask: Optional[torch.Tensor],
                 max_length: int, eos_token_ids: Optional[torch.Tensor], num_assistant_tokens: int,
                 schedule: str = "constant", confidence_threshold: Optional[float] = None,
                 seeds: Optional[torch.Tensor] = None, filters: Any = None, assistant_config: Any = None):
        rows, self.prompt_length = prompt_ids.shape
        self.schedule = DraftSchedule(rows, num_assistant_tokens, schedule, governed=True)
        self.draft_limit = self.schedule.limit
        self.max_length = int(max_length)
        self._eos = eos_token_ids.reshape(-1) if eos_token_ids is not None else None
        self.confidence_threshold = float(confidence_threshold or 0.0)
        self._assistant_config = assistant_config
        self._sampler = None
        if seeds is not None:
            params = filters if filters is not None else SamplingParams()
            self._temperature = params.temperature
            self._sampler = ops.Sampler(rows, prompt_ids.device, temperature=params.temperature,
                                        top_k=params.top_k, top_p=params.top_p, min_p=params.min_p, seed=seeds)
        kwargs = {}
        if prompt_mask is not None and accepts(assistant_model, "attention_mask"):
            kwargs["attention_mask"] = prompt_mask
        self.runner = DirectRunner(self._model(assistant_model), prompt_ids, kwargs, self._new_cache(),
                                   use_cache=True, max_length=self.max_length + self.draft_limit + 1,
                                   record=Record(GenerationConfig()))
        self._valid: Optional[torch.Tensor] = None  # [rows] CPU: positions the assistant holds correctly
        self._proposed = torch.zeros(rows, dtype=torch.long)
        self._lengths = None
        self._fed_drafts = 0

    @property
    def max_drafts(self) -> int:
        return int(self.schedule.counts().max()) if self.schedule.values.numel() else 0

    def _model(self, model: Any) -> Any:
        return model

    @staticmethod
    def _new_cache() -> Any:
        from transformers import DynamicCache

        # Every layer keeps every position, so that the cache can be cropped (transformers' "dynamic_full").
        return DynamicCache()

    def propose(self, sequences: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        rows = sequences.shape[0]
        device = sequences.device
        lengths_host = lengths.cpu()
        counts = torch.minimum(self.schedule.counts(), _room(lengths_host, self.max_length))
        counts = torch.where(active.cpu(), counts, 0)
        self._proposed = counts
        self._lengths = lengths_host
        self._fed_drafts = 0
        k = int(counts.max()) if rows else 0
        if k == 0:  # nothing fed: the assistant catches up at the next draft
            self._lengths = None
            return torch.full((rows, 0), -1, dtype=torch.long, device=device)
        if self._valid is None:  # first draft: the prompt
            self.runner.prefill(sequences[:, :self.prompt_length])
            self._valid = torch.full((rows,), self.prompt_length, dtype=torch.long)
        # Feed every row the same number of positions (what the most behind row lacks), from its own end.
        catch_up = max(int((lengths_host - self._valid).max()), 1)
        starts = (lengths_host - catch_up).clamp(min=0)
        self.runner.crop(_as_lengths(starts))
        index = (starts[:, None] + torch.arange(catch_up)).to(device)
        logits = self.runner.verify(sequences.gather(1, index))[:, -1]
        drafts = torch.full((rows, k), -1, dtype=torch.long, device=device)
        counts_device = counts.to(device)
        alive = counts_device > 0
        offsets = (lengths - self.prompt_length).to(device)
        for position in range(k):
            tokens, confident = self._draw(logits, offsets + position)
            drafts[:, position] = torch.where(alive, tokens, -1)
            alive = alive & (counts_device > position + 1)
            if self._eos is not None:
                alive = alive & ~torch.isin(tokens, self._eos.to(device))
            if confident is not None:
                alive = alive & confident
            if position + 1 == k or not bool(alive.any()):
                break
            logits = self.runner.decode(tokens)
            self._fed_drafts += 1
        # What each row actually drafted (a row may stop early): the schedule judges those.
        self._proposed = (drafts >= 0).sum(dim=1).cpu()
        return drafts

    def _draw(self, logits: torch.Tensor, offsets: torch.Tensor):
        """The drafts ``[rows]`` from the assistant's ``logits`` and, with a confidence threshold, whether each
        row's draft is at least that probable."""
        if self._sampler is None:
            tokens = torch.argmax(logits, dim=-1)
            scaled = logits
        else:
            tokens = self._sampler(logits, offsets).clamp_(min=0)
            scaled = logits / self._temperature if self._temperature not in (0.0, 1.0) else logits
        if self.confidence_threshold <= 0:
            return tokens, None
        probability = scaled.float().softmax(dim=-1).gather(1, tokens[:, None])[:, 0]
        return tokens, probability >= self.confidence_threshold

    def accepted(self, accepted: torch.Tensor, lengths: torch.Tensor) -> None:
        accepted = accepted.cpu()
        self.schedule.update(self._proposed, torch.minimum(accepted, self._proposed))
        if self._valid is None or self._lengths is None:
            return
        grown = (lengths.cpu() - self._lengths).clamp(min=0)
        # The accepted drafts this row fed the assistant are still right; nothing after them.
        kept = torch.minimum(torch.minimum(accepted, grown), torch.full_like(grown, self._fed_drafts))
        kept = torch.where(self._proposed > 0, kept, 0)
        # Every row was fed its tokens up to its old length (the catch-up), then its drafts.
        self._valid = torch.minimum(self._lengths + kept, lengths.cpu())
        self._lengths = None

    def finish(self) -> None:
        """transformers' ``"heuristic"`` schedule leaves its last value on the assistant's generation config."""
        if self.schedule.schedule == "heuristic" and self._assistant_config is not None:
            self._assistant_config.num_assistant_tokens = self.schedule.persistent_value()


def _as_lengths(lengths: torch.Tensor):
    """Per-row lengths for a runner's ``crop``: an int when every row agrees (any runner takes it), else the
    ``[rows]`` tensor (a runner with per-row lengths)."""
    low, high = int(lengths.min()), int(lengths.max())
    return low if low == high else lengths


class _EarlyExitModel:
    """The target model truncated to its first ``layers`` decoder layers, as transformers 4.57's
    ``EarlyExitCandidateGenerator`` runs it: the base model's ``config.num_hidden_layers`` is set to ``layers``
    for the duration of each call (models whose forward loops over ``self.layers[: num_hidden_layers]``, such
    as Llama, then skip the later layers and apply the final norm and head to the early hidden states; others
    run whole)."""

    def __init__(self, model: Any, layers: int):
        self._model = model
        self.config = model.config
        self._layers = layers
        base = getattr(model, getattr(model, "base_model_prefix", ""), model)
        self._base_config = getattr(base, "config", model.config)

        @functools.wraps(model.forward)
        def forward(*args: Any, **kwargs: Any) -> Any:
            with self._truncated():
                return model(*args, **kwargs)

        self.forward = forward

    @contextlib.contextmanager
    def _truncated(self):
        original = self._base_config.num_hidden_layers
        self._base_config.num_hidden_layers = self._layers
        try:
            yield
        finally:
            self._base_config.num_hidden_layers = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)


class EarlyExitCandidates(AssistantCandidates):
    """Self-speculation: drafts from the target's own first ``assistant_early_exit`` layers (own cache), for
    models trained for early exit (LayerSkip); otherwise as :class:`AssistantCandidates`."""

    def __init__(self, model: Any, assistant_early_exit: int, **kwargs: Any):
        check_draft_count(assistant_early_exit, "assistant_early_exit")
        self._early_exit = int(assistant_early_exit)
        super().__init__(model, **kwargs)

    def _model(self, model: Any) -> Any:
        return _EarlyExitModel(model, self._early_exit)


def build_candidates(plan: Any, input_ids: torch.Tensor, prompt_mask: Optional[torch.Tensor], max_length: int,
                     eos_token_ids: Optional[torch.Tensor], seeds: Optional[torch.Tensor],
                     filters: Any) -> CandidateGenerator:
    """The candidate generator of a :class:`~turbogen.generation.prepare.SpeculationPlan` for the prompt
    ``input_ids`` (``[rows, P]``, left-padded; ``prompt_mask`` its attention mask). ``seeds``: the target's
    per-row sampling seeds (``None``: greedy), ``filters``: the sampling filters an assistant drafts with."""
    if plan.kind == "prompt_lookup":
        return PromptLookupCandidates(plan.num_tokens, plan.max_matching_ngram_size, max_length, eos_token_ids,
                                      prompt_mask=prompt_mask, schedule=plan.schedule)
    common = dict(prompt_ids=input_ids, prompt_mask=prompt_mask, max_length=max_length,
                  eos_token_ids=eos_token_ids, num_assistant_tokens=plan.num_tokens, schedule=plan.schedule)
    if plan.kind == "universal":
        from .universal import UniversalAssistantCandidates

        return UniversalAssistantCandidates(plan.assistant_model, target_tokenizer=plan.tokenizer,
                                            assistant_tokenizer=plan.assistant_tokenizer,
                                            assistant_config=plan.assistant_config,
                                            confidence_threshold=plan.confidence_threshold, **common)
    common.update(confidence_threshold=plan.confidence_threshold, seeds=seeds, filters=filters,
                  assistant_config=plan.assistant_config)
    if plan.kind == "early_exit":
        return EarlyExitCandidates(plan.assistant_model, plan.early_exit, **common)
    return AssistantCandidates(plan.assistant_model, **common)
