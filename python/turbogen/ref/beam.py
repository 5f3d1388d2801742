"""Reference for :func:`turbogen.ops.beam_step`: one fused beam-search step in plain torch
(``torch.compile(fullgraph=True)``-able). The steps are those of ``turbogen.ops.beam_step``'s
docstring, which are transformers 4.57's beam search (``_beam_search``'s candidate selection,
``_update_finished_beams``, ``_check_early_stop_heuristic``) with every ranking fully ordered."""

from __future__ import annotations

import torch

from .philox import gumbel_noise

_IMPOSSIBLE = -1.0e9


def _best(values: torch.Tensor, k: int) -> torch.Tensor:
    """int64 ``[rows, k]``: the column indices of the ``k`` best values of each row, best first. NaN ranks as
    -inf; equal values (NaN and -inf included) by lower index (a stable descending sort)."""
    keys = torch.where(torch.isnan(values), float("-inf"), values)
    return torch.sort(keys, dim=-1, descending=True, stable=True).indices[:, :k]


def _demote(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, scores + _IMPOSSIBLE, scores)


def beam_step(logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
              is_finished: torch.Tensor, may_improve: torch.Tensor, eos: torch.Tensor, seeds: torch.Tensor,
              offsets: torch.Tensor, normalized: bool, generated_length: int, max_generated_length: int,
              length_penalty: float, early_stopping: int, all_stop: bool):
    """The op's nine outputs, in order: ``candidate_scores`` f32 ``[B, K]``, ``candidate_flat`` int64 ``[B, K]``,
    ``next_scores`` f32 ``[B, nb]``, ``next_source`` int64 ``[B, nb]``, ``next_finished_scores`` f32 ``[B, nb]``,
    ``finished_source`` int64 ``[B, nb]``, ``next_is_finished`` bool ``[B, nb]``, ``next_may_improve`` bool ``[B]``,
    ``row_is_finite`` bool ``[B]`` (inputs as validated by ``turbogen.ops.beam_step``)."""
    batch, beams = running_scores.shape
    vocab = logits.shape[1]
    k = max(2, 1 + eos.shape[0]) * beams

    # 1. Accumulated scores.
    x = logits.float()
    log_probs = x if normalized else torch.log_softmax(x, dim=-1)
    acc = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)
    row_is_finite = torch.isfinite(acc.amax(dim=-1))

    # 2. Candidates: the best (or Gumbel-perturbed best) K, scored unperturbed.
    keys = acc + gumbel_noise(seeds, offsets, beams * vocab) if seeds.shape[0] > 0 else acc
    candidate_flat = _best(keys, k)
    candidate_scores = acc.gather(1, candidate_flat)

    # 3. Which candidates stop.
    tokens = candidate_flat % vocab
    stopped = (tokens[:, :, None] == eos).any(dim=-1)
    if all_stop:
        stopped = torch.ones_like(stopped)

    # 4. Running beams: the best candidates that did not stop.
    demoted = _demote(candidate_scores, stopped)
    next_source = _best(demoted, beams)
    next_scores = demoted.gather(1, next_source)

    # 5. Finished beams, when some candidate stopped.
    newly = stopped & (torch.arange(k, device=logits.device) < beams)
    scored = candidate_scores / float(float(generated_length) ** float(length_penalty))
    if early_stopping == 1:
        scored = _demote(scored, is_finished.all(dim=1, keepdim=True))
    scored = _demote(scored, ~may_improve[:, None])
    scored = _demote(scored, ~newly)
    merged = torch.cat((finished_scores, scored), dim=1)
    merged_source = _best(merged, beams)
    merged_scores = merged.gather(1, merged_source)
    merged_finished = torch.cat((is_finished, newly), dim=1).gather(1, merged_source)
    any_stopped = stopped.any(dim=1, keepdim=True)
    keep_slots = torch.arange(beams, device=logits.device).expand(batch, beams)
    next_finished_scores = torch.where(any_stopped, merged_scores, finished_scores)
    finished_source = torch.where(any_stopped, merged_source, keep_slots)
    next_is_finished = torch.where(any_stopped, merged_finished, is_finished)

    # 6. The early-stopping heuristic.
    best_length = max_generated_length if (early_stopping == 2 and length_penalty > 0.0) else generated_length
    best_running = next_scores[:, :1] / float(float(best_length) ** float(length_penalty))
    worst = next_finished_scores.min(dim=1, keepdim=True).values
    bar = torch.where(next_is_finished, worst, _IMPOSSIBLE)
    next_may_improve = may_improve & (best_running > bar).any(dim=1)

    outputs = (candidate_scores, candidate_flat, next_scores, next_source, next_finished_scores, finished_source,
               next_is_finished, next_may_improve, row_is_finite)
    return tuple(output.contiguous() for output in outputs)  # the layout every backend returns
