"""Vectorised beam search and beam-search multinomial sampling, with transformers v4.57's exact semantics.

Everything per batch row and per beam lives in tensors of fixed shape; a step is a fixed sequence of tensor
ops (one top-k over ``num_beams * vocab`` candidates per batch row, a few gathers, two small top-ks), with no
Python loop over rows or beams. The state per batch row:

* running beams: ``num_beams`` live hypotheses (tokens ``[B, nb, max_length]``, cumulative log-probability,
  and per generated position the flat index of the beam that produced it);
* finished beams: the ``num_beams`` best completed hypotheses so far, with their length-penalised scores
  (``-1e9`` in unused slots), kept sorted best first;
* whether improvement is still possible (the early-stopping heuristic).

A step, given the processed log-probabilities of every running beam:

1. Candidates: add each beam's cumulative score, flatten ``[num_beams * vocab]`` per batch row and keep the
   best ``K = max(2, 1 + number of EOS ids) * num_beams`` (beam search), or draw ``K`` without replacement
   from ``softmax`` of those scores (beam sampling). Keeping more than ``num_beams`` guarantees ``num_beams``
   candidates that do not stop. The selection is :func:`turbogen.ops.topk` (on a CPU a single pass that skips
   blocks of scores below the current K-th best, 8-40x ``torch.topk`` here; equal scores rank by lower index).
2. The stopping criteria judge every candidate (``[B, K]``).
3. Running beams: the best ``num_beams`` candidates that did not stop.
4. Finished beams: candidates among the first ``num_beams`` that stopped are scored ``score / new_length **
   length_penalty`` and merged into the finished set if they beat its worst entry, unless the row is closed
   (``early_stopping=True`` and ``num_beams`` finished, or the heuristic says no improvement is possible).
5. The cache rows are reordered to follow the surviving beams: one ``index_select`` per cache tensor, i.e.
   per layer's keys and values with transformers' ``DynamicCache``, two in all with turbogen's ``StaticKVCache``.

Generation ends when no batch row can improve, or (``early_stopping=True``) every row has ``num_beams``
finished hypotheses, or every candidate of every row stopped (e.g. at ``max_length``).

Beam sampling draws the ``K`` candidates with the Gumbel-top-k trick: add independent Gumbel noise to the
``num_beams * vocab`` log-scores and keep the ``K`` largest; their order is the order of sequential draws
without replacement from the softmax (Vieira 2014; Kool et al. 2019). The noise is the counter-based noise of
turbogen's sampling contract (docs/design.md): for batch row ``b`` its seed, for candidate ``j`` (``beam * vocab +
token``) the counter ``j``, and the decoding step as the offset (a device tensor per batch row, advanced in
place after each step); so a run is reproducible from its seed and a row's draws do not depend on the other
rows. transformers draws with ``torch.multinomial`` instead: the distribution is the same, the individual
draws are not.

When the only stopping criteria are the EOS ids and the length limit, a step is one
:class:`turbogen.ops.beam.BeamStep` launch (steps 1-4 fused) and :class:`FusedBeamSearchState` keeps each step's
chosen candidates (parent beam and token) instead of the token buffers above: a step then writes
``[batch_size, num_beams]`` numbers, and the sequences are rebuilt from the parents once, at the end.

:func:`run_beam_search` drives the state with a :class:`~turbogen.generation.runner.ModelRunner` and the
logits stages: each step the stages process the running beams' log-probabilities, and after the beams are
chosen they follow them (``reorder`` by parent, then ``accept`` of the new tokens), as the cache does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import torch

from ..ops import gumbel_noise, topk
from ..ops.beam import BeamStep
from ..processors.stages import LogitsStages
from ..stopping import EosTokenCriteria, StoppingPlan
from .batch_state import raise_non_finite_scores, sequence_seeds
from .record import Record
from .runner import ModelRunner

# transformers' stand-in for "impossible" scores; using the same constant keeps sums (and ties) identical.
_IMPOSSIBLE = -1.0e9

__all__ = ["BeamCandidates", "BeamScores", "BeamSearchParams", "BeamSearchState", "FusedBeamSearchState",
           "run_beam_search"]


@dataclasses.dataclass(frozen=True)
class BeamSearchParams:
    """Static parameters of one beam search.

    Attributes:
        batch_size: prompts (not rows: the model sees ``batch_size * num_beams`` rows).
        num_beams: live hypotheses per prompt.
        vocab_size: width of the model's scores.
        max_length: total length limit (prompt included), the width of the sequence buffers.
        prompt_length: length of the (left-padded) prompt.
        length_penalty: finished scores are divided by ``generated_length ** length_penalty``.
        early_stopping: ``True``, ``False`` or ``"never"`` (see :class:`turbogen.GenerationConfig`).
        num_eos_tokens: how many EOS ids there are; sets the number of candidates kept per step.
        do_sample: draw candidates (beam sampling) instead of taking the best ones.
    """

    batch_size: int
    num_beams: int
    vocab_size: int
    max_length: int
    prompt_length: int
    length_penalty: float
    early_stopping: Union[bool, str]
    num_eos_tokens: int
    do_sample: bool

    @property
    def candidates_per_row(self) -> int:
        return max(2, 1 + self.num_eos_tokens) * self.num_beams


@dataclasses.dataclass
class BeamCandidates:
    """The ``K`` candidates of one step, per batch row, best (or first drawn) first.

    ``sequences`` (``[B, K, max_length]``) already holds the new token at the current position, and
    ``beam_indices`` (``[B, K, max_new_tokens]``) the flat index of the parent beam at this step.
    """

    log_probs: torch.Tensor
    sequences: torch.Tensor
    beam_indices: torch.Tensor
    length: int  # sequence length including the new token


def _demote(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``scores + _IMPOSSIBLE`` where ``mask`` holds (broadcast), else ``scores``: exactly the numbers of
    transformers' ``scores + mask.to(float32) * -1e9`` (adding ``-0.0`` changes nothing), in fewer tensor ops."""
    return torch.where(mask, scores + _IMPOSSIBLE, scores)


def _gather_beams(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tensor[b, indices[b, i], ...]`` for ``[B, beams, ...]`` data and ``[B, n]`` int64 indices (one ``gather``:
    ``take_along_dim`` would spend several more ops on broadcasting and wrapping negative indices)."""
    trailing = tensor.shape[2:]
    index = indices.view(*indices.shape, *(1,) * len(trailing)).expand(*indices.shape, *trailing)
    return torch.gather(tensor, 1, index)


class BeamScores:
    """What every beam-search state keeps, whatever it does with the sequences: the parameters, the beam-sampling
    counters, the running and finished scores, the finished flags and the early-stopping state, and the choice
    of the best finished hypotheses. :class:`BeamSearchState` (torch steps, any stopping criteria) keeps the
    sequences themselves; :class:`FusedBeamSearchState` (one :func:`turbogen.ops.beam_step` per step) keeps each
    step's chosen candidates and builds the sequences at the end.

    ``input_ids``: the expanded prompt (``[batch_size * num_beams, prompt_length]``, each prompt repeated
    ``num_beams`` times). ``seeds`` (``int64 [batch_size]``, one per prompt) are required for beam sampling;
    ``offsets`` (``int64 [batch_size]``) is then the noise offset of the next step, 0 at first.
    """

    def __init__(self, input_ids: torch.Tensor, params: BeamSearchParams, seeds: Optional[torch.Tensor] = None):
        if params.do_sample and seeds is None:
            raise ValueError("beam sampling needs `seeds` (one int64 per batch row)")
        batch, beams = params.batch_size, params.num_beams
        device = input_ids.device
        self.params = params
        self.seeds = seeds
        self.offsets = None if seeds is None else torch.zeros_like(seeds)
        # Beam sampling: whether every step's scores could be sampled.
        self.scores_are_finite = torch.ones((), dtype=torch.bool, device=device)
        # Only the first beam of each row starts alive, so the first step does not pick the same token
        # from identical copies of the prompt.
        self.running_scores = torch.zeros(batch, beams, dtype=torch.float32, device=device)
        self.running_scores[:, 1:] = _IMPOSSIBLE
        self.scores = torch.full((batch, beams), _IMPOSSIBLE, dtype=torch.float32, device=device)
        self.is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
        self.may_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)
        self._no_candidate_stopped = torch.zeros((), dtype=torch.bool, device=device)
        self._every_candidate_stopped = torch.ones((), dtype=torch.bool, device=device)
        self.all_candidates_stopped = self._no_candidate_stopped
        self._batch_offsets = torch.arange(batch, device=device).view(-1, 1) * beams

    def _best_finished(self, sequences: torch.Tensor, beam_indices: torch.Tensor,
                       num_return_sequences: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sequences, scores, beam_indices)`` of the best ``num_return_sequences`` of the finished hypotheses
        (``sequences`` ``[B, num_beams, max_length]``, ``beam_indices`` ``[B, num_beams, generated width]``, in
        the order of :attr:`scores`), rows ordered by prompt then rank, cropped to the longest hypothesis."""
        p = self.params
        sequences = sequences[:, :num_return_sequences].reshape(-1, p.max_length)
        scores = self.scores[:, :num_return_sequences].reshape(-1)
        beam_indices = beam_indices[:, :num_return_sequences].reshape(-1, beam_indices.shape[-1])
        generated = int((beam_indices >= 0).sum(dim=1).max())
        return sequences[:, : p.prompt_length + generated], scores, beam_indices[:, :generated]


def _running_sequences(input_ids: torch.Tensor, params: BeamSearchParams, fill_value: int) -> torch.Tensor:
    """``[batch_size, num_beams, max_length]``: the prompt of every beam, then ``fill_value``."""
    sequences = torch.full((params.batch_size, params.num_beams, params.max_length), fill_value,
                           dtype=torch.int64, device=input_ids.device)
    sequences[:, :, : params.prompt_length] = input_ids.reshape(params.batch_size, params.num_beams, -1)
    return sequences


class BeamSearchState(BeamScores):
    """The tensors of a running beam search (see the module docstring) and its step functions, with the running
    and finished sequences and beam indices kept as ``[batch_size, num_beams, ...]`` buffers. ``fill_value``
    fills positions past a hypothesis' end; the other arguments are :class:`BeamScores`'."""

    def __init__(self, input_ids: torch.Tensor, params: BeamSearchParams, fill_value: int,
                 seeds: Optional[torch.Tensor] = None):
        super().__init__(input_ids, params, seeds)
        device = input_ids.device
        self.running_sequences = _running_sequences(input_ids, params, fill_value)
        self.running_beam_indices = torch.full(
            (params.batch_size, params.num_beams, params.max_length - params.prompt_length), -1, dtype=torch.int32,
            device=device)
        self.sequences = self.running_sequences.clone()
        self.beam_indices = self.running_beam_indices.clone()
        # The first `num_beams` candidates are the only ones that may enter the finished set.
        self._in_top_beams = torch.arange(params.candidates_per_row, device=device) < params.num_beams

    # -- step 1: candidates -------------------------------------------------------------------------

    def flat_running_sequences(self, length: int) -> torch.Tensor:
        """``[batch_size * num_beams, length]``: the running hypotheses as the model and processors see them."""
        return self.running_sequences[:, :, :length].reshape(-1, length)

    def last_tokens(self, length: int) -> torch.Tensor:
        """``[batch_size * num_beams]``: the running beams' tokens at position ``length - 1``, the model's next
        input."""
        return self.running_sequences[:, :, length - 1].reshape(-1)

    def candidates(self, log_probs: torch.Tensor, length: int, overwrite: bool = False) -> BeamCandidates:
        """Top (or sampled) ``K`` continuations of the running beams.

        ``log_probs`` are the processed next-token log-probabilities ``[batch_size * num_beams, vocab]``,
        ``length`` the current sequence length. When sampling, the noise is drawn at ``offsets``, which then
        advance by one. With ``overwrite`` (the caller no longer needs ``log_probs``), the beams' cumulative
        scores are added into ``log_probs`` in place instead of into a new ``[batch_size * num_beams, vocab]``
        tensor.
        """
        p = self.params
        batch, beams, vocab, k = p.batch_size, p.num_beams, p.vocab_size, p.candidates_per_row
        per_beam = log_probs.reshape(batch, beams, vocab)
        running_scores = self.running_scores[:, :, None]
        accumulated = per_beam.add_(running_scores) if overwrite else per_beam + running_scores
        accumulated = accumulated.reshape(batch, beams * vocab)
        if p.do_sample:
            # transformers' multinomial raises on NaN, +inf or a batch row without a finite score; the flag is
            # read with `is_done`, without a sync of its own.
            self.scores_are_finite.logical_and_(torch.isfinite(accumulated.amax(dim=-1)).all())
            perturbed = accumulated + gumbel_noise(self.seeds, self.offsets, accumulated.shape[0], beams * vocab)
            self.offsets.add_(1)
            flat_indices = topk(perturbed, k)[1]
            top_log_probs = accumulated.gather(1, flat_indices)
        else:
            top_log_probs, flat_indices = topk(accumulated, k)
        parent = torch.div(flat_indices, vocab, rounding_mode="floor")
        tokens = flat_indices % vocab
        sequences = _gather_beams(self.running_sequences, parent)
        sequences[:, :, length] = tokens
        beam_indices = _gather_beams(self.running_beam_indices, parent)
        beam_indices[:, :, length - p.prompt_length] = (parent + self._batch_offsets).to(beam_indices.dtype)
        return BeamCandidates(top_log_probs, sequences, beam_indices, length + 1)

    def candidate_tails(self, candidates: BeamCandidates, tail_tokens: Optional[int]) -> torch.Tensor:
        """``[batch_size * K, n]``: the candidates' last ``tail_tokens`` tokens (all when ``None``), for the
        stopping criteria."""
        start = 0 if tail_tokens is None else max(0, candidates.length - tail_tokens)
        tails = candidates.sequences[:, :, start : candidates.length]
        return tails.reshape(tails.shape[0] * tails.shape[1], tails.shape[2])

    # -- steps 3-5: advance -------------------------------------------------------------------------

    def advance(self, candidates: BeamCandidates, stopped: Optional[torch.Tensor]) -> torch.Tensor:
        """Update running and finished beams from ``candidates`` and which of them ``stopped`` (``[B, K]`` bool,
        ``None`` if none can). Returns the flat parent index of every new running beam
        (``[batch_size * num_beams]``), by which the cache rows must be reordered."""
        p = self.params
        length = candidates.length
        if stopped is None:
            self.all_candidates_stopped = self._no_candidate_stopped
            running_log_probs = candidates.log_probs
        else:
            self.all_candidates_stopped = stopped.all()
            running_log_probs = _demote(candidates.log_probs, stopped)

        # Running beams: the best candidates that did not stop.
        keep = torch.topk(running_log_probs, k=p.num_beams).indices
        self.running_sequences = _gather_beams(candidates.sequences, keep)
        self.running_scores = _gather_beams(running_log_probs, keep)
        self.running_beam_indices = _gather_beams(candidates.beam_indices, keep)

        if stopped is not None:
            self._merge_finished(candidates, stopped)
        self._update_may_improve(length)
        return self.running_beam_indices[:, :, length - 1 - p.prompt_length].reshape(-1).long()

    def _merge_finished(self, candidates: BeamCandidates, stopped: torch.Tensor) -> None:
        """Merge the stopped top candidates that are allowed in into the finished beams, keeping the best
        ``num_beams``. (Without stopped candidates nothing could enter, so :meth:`advance` skips this.)"""
        p = self.params
        newly_finished = stopped & self._in_top_beams[None, :]
        finished_scores = candidates.log_probs / ((candidates.length - p.prompt_length) ** p.length_penalty)
        if p.early_stopping is True:  # otherwise this penalty is 0 everywhere (adding it is a no-op)
            row_is_full = torch.all(self.is_finished, dim=-1, keepdim=True)
            finished_scores = _demote(finished_scores, row_is_full)
        finished_scores = _demote(finished_scores, ~self.may_improve)
        finished_scores = _demote(finished_scores, ~newly_finished)
        merged_scores = torch.cat((self.scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=p.num_beams).indices
        self.sequences = _gather_beams(torch.cat((self.sequences, candidates.sequences), dim=1), best)
        self.scores = _gather_beams(merged_scores, best)
        self.beam_indices = _gather_beams(torch.cat((self.beam_indices, candidates.beam_indices), dim=1), best)
        self.is_finished = _gather_beams(torch.cat((self.is_finished, newly_finished), dim=1), best)

    def _update_may_improve(self, length: int) -> None:
        """The early-stopping heuristic: can the best running beam still beat the worst finished one?

        The best running score is extrapolated with the current length, except for ``early_stopping="never"``
        with a positive length penalty, where the longest possible length gives the optimistic bound.
        """
        p = self.params
        if p.early_stopping == "never" and p.length_penalty > 0.0:
            best_length = p.max_length - p.prompt_length
        else:
            best_length = length - p.prompt_length
        best_running = self.running_scores[:, :1] / (best_length**p.length_penalty)
        worst_finished = torch.where(self.is_finished, torch.min(self.scores, dim=1, keepdim=True).values,
                                     _IMPOSSIBLE)
        self.may_improve = self.may_improve & torch.any(best_running > worst_finished, dim=-1, keepdim=True)

    def is_done(self) -> torch.Tensor:
        """0-d bool tensor: no row can improve, or every row is full under ``early_stopping=True``, or every
        candidate of the last step stopped."""
        cannot_improve = ~torch.any(self.may_improve)
        all_full = torch.all(self.is_finished) & (self.params.early_stopping is True)
        return cannot_improve | all_full | self.all_candidates_stopped

    # -- result -------------------------------------------------------------------------------------

    def result(self, num_return_sequences: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sequences, scores, beam_indices)`` of the best ``num_return_sequences`` finished hypotheses per
        prompt, rows ordered by prompt then rank, cropped to the longest hypothesis."""
        return self._best_finished(self.sequences, self.beam_indices, num_return_sequences)


class FusedBeamSearchState(BeamScores):
    """The state of a search whose steps are all :func:`turbogen.ops.beam_step` launches (:meth:`step`): the only
    stopping criteria are the EOS ids and the length limit.

    The op returns each step's candidates as flat indices ``parent_beam * vocab + token``; this state keeps them
    instead of sequence buffers, so a step writes ``[batch_size, num_beams]`` numbers rather than gathering
    ``[batch_size, num_beams, max_length]`` ones:

    * ``history[s]`` (``int64 [batch_size, num_beams]``): for generated position ``s``, the flat candidate that
      each running beam slot took (its parent is a running slot of position ``s - 1``, or of the prompt);
    * a finished hypothesis is the code ``s * num_beams * vocab + flat candidate`` of the step ``s`` that ended
      it (``-1`` in unused slots), moved between finished slots as the op says.

    Sequences are built only where they are read: following the parents back through ``history`` gives every
    finished hypothesis in :meth:`result`; with ``track_sequences`` (processors that see the history), the
    running sequences are also kept, as :class:`BeamSearchState` keeps them. The scores, the finished flags and
    the early-stopping state are the op's outputs, exactly those of :meth:`BeamSearchState.candidates` then
    :meth:`BeamSearchState.advance`.
    """

    def __init__(self, input_ids: torch.Tensor, params: BeamSearchParams, fill_value: int, eos: torch.Tensor,
                 seeds: Optional[torch.Tensor] = None, track_sequences: bool = False):
        super().__init__(input_ids, params, seeds)
        batch, beams = params.batch_size, params.num_beams
        device = input_ids.device
        self._fill_value = fill_value
        self._prompt = input_ids.reshape(batch, beams, -1)
        self._op = BeamStep(batch, beams, params.vocab_size, device, eos,
                            max_generated_length=params.max_length - params.prompt_length,
                            length_penalty=float(params.length_penalty), early_stopping=params.early_stopping,
                            seeds=seeds)
        self._can_finish_early = eos.shape[0] > 0
        self._history = torch.zeros(params.max_length - params.prompt_length, batch, beams, dtype=torch.int64,
                                    device=device)
        self._finished_codes = torch.full((batch, beams), -1, dtype=torch.int64, device=device)
        self._tokens: Optional[torch.Tensor] = None
        #: ``[batch_size, num_beams, max_length]`` with ``track_sequences``, else None.
        self.running_sequences = _running_sequences(input_ids, params, fill_value) if track_sequences else None

    def flat_running_sequences(self, length: int) -> torch.Tensor:
        """``[batch_size * num_beams, length]``: the running hypotheses (``track_sequences`` only)."""
        if self.running_sequences is None:
            raise ValueError("the running sequences are kept only with `track_sequences=True`")
        return self.running_sequences[:, :, :length].reshape(-1, length)

    def step(self, scores: torch.Tensor, normalized: bool, length: int, every_candidate_stops: bool) -> torch.Tensor:
        """Steps 1 and 3-5 for the current sequence ``length``: ``scores`` are the raw logits (``normalized=False``:
        the op applies the log-softmax) or the processed log-probabilities; ``every_candidate_stops`` at the
        length limit. Returns the flat parent of every new running beam (``[batch_size * num_beams]``)."""
        p = self.params
        position = length - p.prompt_length
        out = self._op.step(scores, self.running_scores, self.scores, self.is_finished, self.may_improve.view(-1),
                            generated_length=position + 1, all_stop=every_candidate_stops, normalized=normalized,
                            offsets=self.offsets)
        if p.do_sample:
            self.scores_are_finite.logical_and_(out.row_is_finite.all())
            self.offsets.add_(1)
        taken = self._history[position]
        torch.gather(out.candidate_flat, 1, out.next_source, out=taken)
        parents = torch.div(taken, p.vocab_size, rounding_mode="floor")
        self._tokens = taken - parents * p.vocab_size
        if self.running_sequences is not None:
            self.running_sequences = _gather_beams(self.running_sequences, parents)
            self.running_sequences[:, :, length] = self._tokens
        self.running_scores = out.next_scores
        if self._can_finish_early or every_candidate_stops:  # otherwise nothing finishes: the finished set stays
            codes = out.candidate_flat + position * (p.num_beams * p.vocab_size)
            self._finished_codes = torch.cat((self._finished_codes, codes), dim=1).gather(1, out.finished_source)
            self.scores = out.next_finished_scores
            self.is_finished = out.next_is_finished
        self.may_improve = out.next_may_improve.view(-1, 1)
        # At most num_eos * num_beams of the K > num_eos * num_beams distinct candidates end with an EOS id, so
        # all of them stop only at the length limit.
        self.all_candidates_stopped = (self._every_candidate_stopped if every_candidate_stops
                                       else self._no_candidate_stopped)
        return (parents + self._batch_offsets).view(-1)

    def last_tokens(self, length: int) -> torch.Tensor:
        return self._tokens.view(-1)

    def is_done(self) -> torch.Tensor:
        # BeamSearchState.is_done with what the host knows here folded in: whether every candidate stopped.
        if self.all_candidates_stopped is self._every_candidate_stopped:
            return self._every_candidate_stopped
        cannot_improve = ~torch.any(self.may_improve)
        return cannot_improve | torch.all(self.is_finished) if self.params.early_stopping is True else cannot_improve

    def result(self, num_return_sequences: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`BeamSearchState.result`."""
        sequences, beam_indices = self._finished_sequences()
        return self._best_finished(sequences, beam_indices, num_return_sequences)

    def _finished_sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The finished hypotheses as :class:`BeamSearchState` keeps them: ``(sequences [B, nb, max_length],
        beam_indices int32 [B, nb, max_length - prompt_length])``, ``fill_value`` / -1 past each one's end (and
        everywhere in unused slots), found by following the parents back from the step that ended each."""
        p = self.params
        batch, beams, vocab = p.batch_size, p.num_beams, p.vocab_size
        generated_width = p.max_length - p.prompt_length
        codes = self._finished_codes
        last_position = torch.where(codes >= 0, torch.div(codes, beams * vocab, rounding_mode="floor"), -1)
        last_flat = codes - last_position * (beams * vocab)  # unused slots: -1 + (beams * vocab), never read
        tokens = torch.full((batch, beams, generated_width), self._fill_value, dtype=torch.int64,
                            device=codes.device)
        beam_indices = torch.full((batch, beams, generated_width), -1, dtype=torch.int32, device=codes.device)
        # slot: the running slot whose history entry the hypothesis goes through at the current position (an
        # unused slot keeps its own index, so that it shows the prompt of its own row, as BeamSearchState's).
        slot = torch.arange(beams, device=codes.device).expand(batch, beams)
        for position in range(int(last_position.max()), -1, -1):
            flat = torch.where(last_position == position, last_flat, self._history[position].gather(1, slot))
            covered = position <= last_position
            parent = torch.div(flat, vocab, rounding_mode="floor")
            tokens[:, :, position] = torch.where(covered, flat - parent * vocab, self._fill_value)
            beam_indices[:, :, position] = torch.where(covered, parent + self._batch_offsets, -1).to(torch.int32)
            slot = torch.where(covered, parent, slot)
        prompt = _gather_beams(self._prompt, slot)
        return torch.cat((prompt, tokens), dim=2), beam_indices


def _fused_eos_ids(stopping: StoppingPlan, num_eos_tokens: int, device: torch.device) -> Optional[torch.Tensor]:
    """The EOS ids for :meth:`FusedBeamSearchState.step` (``int64 [num_eos_tokens]``, padded with -1, an id that
    never matches), or None when a row criterion other than turbogen's :class:`EosTokenCriteria` (a user criterion,
    stop strings) must judge the candidates; the length and time limits are host-side (``stops_all``)."""
    ids = []
    for criterion in stopping.row_criteria:
        if type(criterion) is not EosTokenCriteria:
            return None
        ids.append(criterion.eos_token_id.reshape(-1).to(device=device, dtype=torch.int64))
    eos = torch.cat(ids) if ids else torch.empty(0, dtype=torch.int64, device=device)
    if eos.shape[0] > num_eos_tokens:  # K is sized by the call's EOS ids; more ids here would need more candidates
        return None
    padding = torch.full((num_eos_tokens - eos.shape[0],), -1, dtype=torch.int64, device=device)
    return torch.cat((eos, padding))


def _torch_step(state: BeamSearchState, log_probs: torch.Tensor, length: int, stopping: StoppingPlan,
                record: Record, every_candidate_stops: bool, overwrite: bool) -> torch.Tensor:
    """One step with torch ops and any stopping criteria (:meth:`BeamSearchState.candidates`, the criteria on
    every candidate, :meth:`BeamSearchState.advance`); returns the parents."""
    params = state.params
    candidates = state.candidates(log_probs, length, overwrite=overwrite)
    stopped = None
    if stopping.row_criteria and not (every_candidate_stops and stopping.rows_are_pure):
        # (user criteria are called at every step, as in transformers, even when the length ends it)
        tails = state.candidate_tails(candidates, stopping.tail_tokens)
        verdict = stopping.rows_done(tails, record.collected_scores)
        if verdict is not None:
            stopped = verdict.view(params.batch_size, params.candidates_per_row)
    if every_candidate_stops:
        stopped = torch.ones_like(candidates.log_probs, dtype=torch.bool)
    return state.advance(candidates, stopped)


def run_beam_search(runner: ModelRunner, input_ids: torch.Tensor, config: Any, processors: Any,
                    stopping: StoppingPlan, record: Record, tokens: Any, max_length: int) -> BeamScores:
    """Beam search or beam sampling (``config.do_sample``) from the expanded prompt ``input_ids``
    (``[batch_size * num_beams, prompt_length]``) to at most ``max_length`` tokens, until
    :meth:`BeamSearchState.is_done`. ``tokens`` are the call's special tokens (``eos``, ``pad``); ``record``
    collects the optional per-step outputs. Returns the final state (its ``result``)."""
    rows, prompt_length = input_ids.shape
    batch_size = rows // config.num_beams
    logits = runner.prefill(input_ids)
    params = BeamSearchParams(
        batch_size=batch_size,
        num_beams=config.num_beams,
        vocab_size=logits.shape[-1],
        max_length=max_length,
        prompt_length=prompt_length,
        length_penalty=config.length_penalty,
        early_stopping=config.early_stopping,
        num_eos_tokens=0 if tokens.eos is None else tokens.eos.shape[0],
        do_sample=config.do_sample,
    )
    # transformers' fill value for positions past a hypothesis' end (a pad id of 0 falls through to EOS).
    if tokens.eos is None:
        fill_value = -1
    else:
        fill_value = int(tokens.pad) if tokens.pad is not None and int(tokens.pad) != 0 else int(tokens.eos[0])
    seeds = sequence_seeds(config, batch_size, input_ids.device) if config.do_sample else None
    stages = LogitsStages.from_processors(list(processors), input_ids) if processors else None
    fused_eos = _fused_eos_ids(stopping, params.num_eos_tokens, input_ids.device)
    if fused_eos is None:
        state = BeamSearchState(input_ids, params, fill_value, seeds)
    else:
        state = FusedBeamSearchState(input_ids, params, fill_value, fused_eos, seeds,
                                     track_sequences=stages is not None)

    length = prompt_length
    # Without processors or recorded scores, a step's log_softmax output is read only by `candidates`, which may
    # then add the beam scores into it in place; and the fused step can take the raw logits.
    log_probs_are_scratch = stages is None and not record.wants_scores
    while True:
        if fused_eos is not None and log_probs_are_scratch:
            # The fused step applies the log-softmax itself (its sum is reduced in another order than torch's, so
            # the scores agree with transformers' to float32 rounding; tokens and beams are the same).
            record.logits(logits)
            every_candidate_stops = stopping.stops_all(length + 1)
            parents = state.step(logits, False, length, every_candidate_stops)
        else:
            log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
            if stages is not None:
                log_probs = stages.apply(state.flat_running_sequences(length), log_probs)
            record.logits(logits)
            record.scores(log_probs)
            every_candidate_stops = stopping.stops_all(length + 1)
            if fused_eos is not None:
                parents = state.step(log_probs, True, length, every_candidate_stops)
            else:
                parents = _torch_step(state, log_probs, length, stopping, record, every_candidate_stops,
                                      overwrite=log_probs_are_scratch)
        runner.reorder(parents)
        length += 1
        is_done = state.is_done()
        if params.do_sample:  # the sampling check travels with the done flag: still one host read per step
            is_done, scores_are_finite = torch.stack((is_done, state.scores_are_finite)).tolist()
            if not scores_are_finite:
                raise_non_finite_scores()
        if bool(is_done):
            return state
        next_tokens = state.last_tokens(length)
        if stages is not None:
            stages.reorder(parents)
            stages.accept(next_tokens)
        logits = runner.decode(next_tokens)
