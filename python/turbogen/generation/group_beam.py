"""Diverse (group) beam search (``num_beam_groups > 1``, ``diversity_penalty``), natively: transformers 4.45.2's
``_group_beam_search`` with its ``BeamSearchScorer`` is the oracle (4.57 moved the strategy to a Hub repository).

The ``num_beams`` beams of a prompt are split into ``num_beam_groups`` groups of ``group_size`` consecutive beams;
each group is a beam search of its own (its own finished hypotheses, its own "done" flag), and the groups are
searched in order within a step so that a group is penalised for the tokens the earlier groups chose at that
step. One step:

1. the model gives every row's next-token logits (one forward for all groups); ``log_softmax``;
2. for each group ``g`` in order, for all prompts at once:
   a. the logits processors run on the group's rows, with :class:`HammingDiversityLogitsProcessor` in transformers
      4.45's place (after classifier-free guidance and ``sequence_bias``): ``diversity_penalty`` times the number
      of times each token was chosen by the groups before ``g`` at this step is subtracted;
   b. the beams' cumulative scores are added and the best ``K = max(2, 1 + number of EOS ids) * group_size`` of
      the ``group_size * vocab`` continuations are kept (``torch.topk``, transformers' tie order);
   c. the group's next beams are the first ``group_size`` candidates that are not EOS; an EOS candidate among the
      first ``group_size`` offers its hypothesis (without the EOS) to the group's finished list; a group that is
      done continues with the pad token on beam 0's row (its rows are no longer read);
3. the cache rows follow the chosen beams; after the last group the finished lists are updated and each group's
   "done" flag is set when its list is full and (per ``early_stopping``) no running beam can beat its worst entry;
4. generation ends when every group of every prompt is done, or a stopping criterion holds for every row.

Then every group not done offers its running beams, and each prompt returns its ``num_return_sequences`` best
hypotheses over all its groups (:func:`~turbogen.generation.beam_hypotheses.pack_best_hypotheses`).

Steps 2a-2c are tensor operations over all prompts of the group (no loop over prompts, beams or candidates); the
finished lists are updated on the host once per step, from one read of the groups' top candidates (the same read
tells whether to stop). turbogen's fused beam step (:func:`turbogen.ops.beam_step`) implements transformers 4.57's
beam search, whose finished-set rules differ from this scorer's; it is not used here.

``beam_indices`` (``return_dict_in_generate`` with ``output_scores``) are transformers 4.45's, including its
layout: a finished hypothesis' history is taken from the first group's histories, at the hypothesis' index within
its own group.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .._transformers_compat import is_type_or_transformers_twin
from ..errors import UnsupportedByTurbogen
from ..processors.base import LogitsProcessorList
from ..processors.constraints import PrefixConstrainedLogitsProcessor, SequenceBiasLogitsProcessor
from ..processors.guidance import UnbatchedClassifierFreeGuidanceLogitsProcessor
from ..stopping import StoppingPlan
from .beam_hypotheses import FinishedHypotheses, check_legacy_beam_call, legacy_beam_output, pack_best_hypotheses
from .record import Record
from .runner import ModelRunner, make_runner

__all__ = ["HammingDiversityLogitsProcessor", "group_beam_from_call", "run_group_beam_search"]

# transformers' processors module, whose classes of the same names stand in for turbogen's.
_TRANSFORMERS_PROCESSORS = "transformers.generation.logits_process"
# The initial score of every beam but the first of each group: they start as copies of the prompt.
_IMPOSSIBLE = -1.0e9


class HammingDiversityLogitsProcessor:
    """Subtracts ``diversity_penalty`` times the number of times each token was chosen at this step by the beam
    groups before the current one (of the same prompt), as transformers' processor of that name does.

    Called as ``processor(input_ids, scores, current_tokens, beam_group_idx)``: ``scores`` are the current
    group's rows (``[batch * group_size, vocab]``, prompt-major), ``current_tokens`` (``[batch * num_beams]``) the
    tokens chosen so far at this step (those of later groups are not read)."""

    def __init__(self, diversity_penalty: float, num_beams: int, num_beam_groups: int):
        if not isinstance(diversity_penalty, float) or not diversity_penalty > 0.0:
            raise ValueError(f"`diversity_penalty` should be a float strictly larger than 0, but is "
                             f"{diversity_penalty!r}.")
        if not isinstance(num_beams, int) or num_beams < 2:
            raise ValueError(f"`num_beams` should be an integer strictly larger than 1, but is {num_beams!r}.")
        if not isinstance(num_beam_groups, int) or num_beam_groups < 2:
            raise ValueError(f"`num_beam_groups` should be an integer strictly larger than 1, but is "
                             f"{num_beam_groups!r}.")
        if num_beam_groups > num_beams:
            raise ValueError(f"`num_beam_groups` ({num_beam_groups}) has to be at most `num_beams` ({num_beams}).")
        self.diversity_penalty = diversity_penalty
        self.num_beams = num_beams
        self.group_size = num_beams // num_beam_groups

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, current_tokens: torch.Tensor,
                 beam_group_idx: int) -> torch.Tensor:
        earlier_beams = beam_group_idx * self.group_size
        if earlier_beams == 0:
            return scores
        batch = current_tokens.shape[0] // self.num_beams
        vocab = scores.shape[-1]
        earlier = current_tokens.view(batch, self.num_beams)[:, :earlier_beams]
        counts = torch.zeros(batch, vocab, dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, earlier.to(scores.device), torch.ones_like(earlier, dtype=scores.dtype,
                                                                          device=scores.device))
        # (float32 count times the penalty rounded to float32: transformers' int-count product, value for value)
        penalty = counts.mul_(self.diversity_penalty)
        group_rows = scores.shape[0] // batch
        return (scores.view(batch, group_rows, vocab) - penalty[:, None, :]).view_as(scores)


def check_group_beam_config(config: Any) -> None:
    """transformers 4.45's checks of a diverse beam search configuration (``ValueError`` naming the argument)."""
    prefix = ("`diversity_penalty` is not 0.0 or `num_beam_groups` is not 1, triggering group beam search. In this "
              "generation mode, ")
    if config.do_sample is True:
        raise ValueError(prefix + "`do_sample` must be set to `False`.")
    groups = config.num_beam_groups
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(prefix + f"`num_beam_groups` must be a positive integer, but is {groups!r}.")
    check_legacy_beam_call(config, "diverse beam search")
    if groups > config.num_beams or config.num_beams % groups != 0:
        raise ValueError(prefix + f"`num_beams` ({config.num_beams}) should be divisible by `num_beam_groups` "
                         f"({groups}).")
    if not config.diversity_penalty or config.diversity_penalty == 0.0:
        raise ValueError(prefix + "`diversity_penalty` should be greater than `0.0`, otherwise your groups will be "
                         "identical.")


def _with_diversity(processors: Any, config: Any) -> LogitsProcessorList:
    """The call's processors with the diversity processor in transformers 4.45's place (after classifier-free
    guidance and the sequence bias), and the prefix function's processor counting beams per group, as 4.45 builds
    it."""
    leading = (UnbatchedClassifierFreeGuidanceLogitsProcessor, SequenceBiasLogitsProcessor)
    result = LogitsProcessorList()
    inserted = False
    for processor in processors or ():
        is_leading = any(is_type_or_transformers_twin(processor, kind, _TRANSFORMERS_PROCESSORS) for kind in leading)
        if not inserted and not is_leading:
            result.append(HammingDiversityLogitsProcessor(float(config.diversity_penalty), config.num_beams,
                                                          config.num_beam_groups))
            inserted = True
        if isinstance(processor, PrefixConstrainedLogitsProcessor):
            processor = PrefixConstrainedLogitsProcessor(processor._prefix_allowed_tokens_fn,
                                                         config.num_beams // config.num_beam_groups)
        result.append(processor)
    if not inserted:
        result.append(HammingDiversityLogitsProcessor(float(config.diversity_penalty), config.num_beams,
                                                      config.num_beam_groups))
    return result


def group_beam_from_call(model: Any, call: Any, record: Record) -> Any:
    """Diverse beam search for a resolved :func:`turbogen.generate` call (a
    :class:`~turbogen.generation.prepare.PreparedCall` whose mode is group beam search): the sequences, or with
    ``return_dict_in_generate`` a beam output, as transformers 4.45.2 returns them."""
    config = call.config
    check_group_beam_config(config)
    if any(isinstance(p, UnbatchedClassifierFreeGuidanceLogitsProcessor) for p in call.processors or ()):
        raise UnsupportedByTurbogen("classifier-free guidance (`guidance_scale`) with diverse beam search is not "
                                    "supported by turbogen.generate.", reason="guidance with group beam search")
    # Without other processors the diversity penalty is applied inline (see run_group_beam_search).
    processors = _with_diversity(call.processors, config) if call.processors else None
    runner = make_runner(model, call.input_ids, call.model_kwargs, call.cache, config.use_cache, call.max_length,
                         record)
    sequences, scores, beam_indices = run_group_beam_search(
        runner, call.input_ids, num_beams=config.num_beams, num_beam_groups=config.num_beam_groups,
        processors=processors, diversity_penalty=float(config.diversity_penalty), stopping=call.stopping,
        record=record, eos=call.tokens.eos, pad=call.tokens.pad,
        length_penalty=config.length_penalty, early_stopping=config.early_stopping,
        num_return_sequences=config.num_return_sequences or 1, max_length=call.max_length)
    return legacy_beam_output(call, record, runner.past_key_values, sequences, scores, beam_indices)


def _ints(tensor: Optional[torch.Tensor]) -> Optional[list[int]]:
    return None if tensor is None else [int(value) for value in tensor.reshape(-1).tolist()]


def run_group_beam_search(runner: ModelRunner, input_ids: torch.Tensor, num_beams: int, num_beam_groups: int,
                          processors: Optional[Any], diversity_penalty: float, stopping: StoppingPlan,
                          record: Record, eos: Optional[torch.Tensor], pad: Optional[torch.Tensor],
                          length_penalty: float, early_stopping: Any, num_return_sequences: int, max_length: int
                          ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Diverse beam search from the expanded prompt ``input_ids`` (``[batch * num_beams, prompt_length]``, each
    prompt repeated ``num_beams`` times), the module docstring's steps; ``(sequences, sequence_scores,
    beam_indices)`` as transformers 4.45's ``BeamSearchScorer.finalize`` packs them (``beam_indices`` only when
    ``record`` keeps scores).

    ``processors``: a list holding a :class:`HammingDiversityLogitsProcessor` (:func:`_with_diversity`), called on
    each group's rows; or ``None`` when the diversity penalty is the only processing, which is then applied from
    running token counts on views of the scores (the same numbers, fewer operations).

    Tensors are laid out ``[batch, group, beam in group, ...]``, so a group is a slice."""
    rows, prompt_length = input_ids.shape
    device = input_ids.device
    batch, groups = rows // num_beams, num_beam_groups
    group_size = num_beams // groups
    eos_list = _ints(eos)
    pad_id = None if pad is None else int(pad)
    candidates = max(2, 1 + (0 if eos_list is None else len(eos_list))) * group_size
    tracks_history = record.wants_scores
    max_new = max_length - prompt_length + 1

    sequences = torch.zeros(rows, max_length, dtype=input_ids.dtype, device=device)
    sequences[:, :prompt_length] = input_ids
    beam_scores = torch.full((batch, groups, group_size), _IMPOSSIBLE, dtype=torch.float32, device=device)
    beam_scores[:, :, 0] = 0.0
    # The global row of (prompt, group, beam 0), and where a done group's beams come from (prompt 0's group).
    group_base = (torch.arange(batch, device=device)[:, None, None] * num_beams
                  + torch.arange(groups, device=device)[None, :, None] * group_size)
    done_group_base = group_base[:1].expand_as(group_base)
    prompt_offsets = torch.arange(batch, device=device)[:, None] * group_size  # flat index within a group
    ones = torch.ones(batch, group_size, dtype=torch.float32, device=device)
    # Per group, each beam's parent history (indices within the group), -1 past the steps taken.
    histories = [torch.full((batch * group_size, max_new), -1, dtype=torch.long, device=device)
                 for _ in range(groups)] if tracks_history else None
    finished = [[FinishedHypotheses(group_size, length_penalty, early_stopping, max_length)
                 for _ in range(groups)] for _ in range(batch)]
    done = [[False] * groups for _ in range(batch)]
    done_any = [False] * groups
    done_mask = None
    eos_ids = None if eos_list is None else torch.tensor(eos_list, dtype=torch.long, device=device)
    pad_fill = torch.tensor(pad_id if pad_id is not None else 0, dtype=input_ids.dtype, device=device)

    length = prompt_length
    step = 0
    logits = runner.prefill(input_ids)
    while True:
        record.logits(logits)
        vocab = logits.shape[-1]
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1).view(batch, groups, group_size, vocab)
        tokens_now = torch.zeros(batch, groups, group_size, dtype=input_ids.dtype, device=device)
        parents_now = torch.zeros(batch, groups, group_size, dtype=torch.long, device=device)
        processed_scores = (torch.empty(batch, groups, group_size, vocab, dtype=log_probs.dtype, device=device)
                            if record.wants_scores else None)
        counts = torch.zeros(batch, vocab, dtype=log_probs.dtype, device=device) if processors is None else None
        tops = []
        history_before = histories[0] if tracks_history else None
        for g in range(groups):
            if processors is None:
                scores = log_probs[:, g]
                if g:
                    scores = scores - counts.mul(diversity_penalty)[:, None, :]
            else:
                group_ids = sequences.view(batch, groups, group_size, -1)[:, g, :, :length].reshape(-1, length)
                scores = processors(group_ids, log_probs[:, g].reshape(-1, vocab),
                                    current_tokens=tokens_now.view(-1), beam_group_idx=g)
                scores = scores.view(batch, group_size, vocab)
            if processed_scores is not None:
                processed_scores[:, g] = scores
            totals = (scores + beam_scores[:, g, :, None]).view(batch, group_size * vocab)
            top_scores, top_flat = torch.topk(totals, candidates, dim=1, largest=True, sorted=True)
            parents = torch.div(top_flat, vocab, rounding_mode="floor")
            tokens = top_flat - parents * vocab
            if eos_ids is not None:
                is_eos = torch.isin(tokens, eos_ids)
                # the first `group_size` candidates that are not EOS, in rank order
                chosen = torch.argsort(is_eos.to(torch.int8), dim=1, stable=True)[:, :group_size]
                next_scores, next_tokens, next_parents = (top_scores.gather(1, chosen), tokens.gather(1, chosen),
                                                          parents.gather(1, chosen))
                tops.append((top_scores[:, :group_size], parents[:, :group_size], is_eos[:, :group_size]))
            else:
                next_scores, next_tokens, next_parents = (top_scores[:, :group_size], tokens[:, :group_size],
                                                          parents[:, :group_size])
            if done_any[g]:  # a done group continues with the pad token on prompt 0's first beam of the group
                group_done = done_mask[:, g]
                next_scores = torch.where(group_done, 0.0, next_scores)
                next_tokens = torch.where(group_done, pad_fill, next_tokens)
                next_parents = torch.where(group_done, 0, next_parents)
            beam_scores[:, g] = next_scores
            tokens_now[:, g] = next_tokens
            parents_now[:, g] = next_parents
            if counts is not None and g + 1 < groups:
                counts.scatter_add_(1, next_tokens, ones)
            if tracks_history:
                within_group = next_parents + prompt_offsets
                if done_any[g]:
                    within_group = torch.where(done_mask[:, g], 0, within_group)
                within_group = within_group.reshape(-1)
                history = histories[g].index_select(0, within_group)
                history[:, step] = within_group
                histories[g] = history
        record.scores(processed_scores.view(rows, vocab) if processed_scores is not None else None)

        if tops:
            _update_finished(tops, finished, done, sequences, histories, history_before, step, length,
                             prompt_length, num_beams, group_size)
        base = group_base
        if any(done_any):
            base = torch.where(done_mask, done_group_base, group_base)
        reordering = (base + parents_now).view(-1)
        current_tokens = tokens_now.view(-1)
        sequences = sequences.index_select(0, reordering)
        sequences[:, length] = current_tokens
        runner.reorder(reordering)
        length += 1
        step += 1
        stop = all(all(row) for row in done) or stopping.stops_all(length)
        if not stop and stopping.row_criteria:
            verdict = stopping.rows_done(sequences[:, :length], record.collected_scores)
            stop = verdict is not None and bool(verdict.all())
        if stop:
            break
        done_any = [any(row[g] for row in done) for g in range(groups)]
        if any(done_any):
            done_mask = torch.tensor(done, dtype=torch.bool, device=device)[:, :, None]
        logits = runner.decode(current_tokens)

    # Finalize: the groups not done offer their running beams.
    final_histories = torch.cat(histories, dim=0) if tracks_history else None
    final_scores = beam_scores.view(-1).tolist()
    for b in range(batch):
        for g in range(groups):
            if done[b][g]:
                continue
            for j in range(group_size):
                row = b * num_beams + g * group_size + j
                history = None
                if final_histories is not None:
                    # transformers indexes the groups' histories, concatenated, by this flat (prompt, group) index
                    history = _history_list(final_histories[row], step)
                finished[b][g].add(sequences[row, :length].clone(), final_scores[row], history,
                                   length - prompt_length)
    return pack_best_hypotheses(finished, num_return_sequences, max_length, pad_id, eos_list, sequences)


def _history_list(history: torch.Tensor, steps: int) -> list[int]:
    return [int(value) for value in history[:steps].tolist()]


def _update_finished(tops: list, finished: list, done: list, sequences: torch.Tensor, histories: Optional[list],
                     history_before: Optional[torch.Tensor], step: int, length: int, prompt_length: int,
                     num_beams: int, group_size: int) -> None:
    """The host side of a step: offer the EOS candidates among each group's first ``group_size`` to its finished
    list (in rank order), then update the groups' done flags. One read of the groups' top candidates (``tops``:
    per group, the first ``group_size`` candidates' scores, parents within the prompt's group and EOS flags)."""
    scores_by_group = torch.stack([top[0] for top in tops]).tolist()  # [group][prompt][rank]
    parents_by_group = torch.stack([top[1] for top in tops]).tolist()
    eos_by_group = torch.stack([top[2] for top in tops]).tolist()
    generated = length + 1 - prompt_length
    for g, (scores, parents, eos_flags) in enumerate(zip(scores_by_group, parents_by_group, eos_by_group)):
        for b, row_done in enumerate(done):
            if row_done[g]:
                continue
            hypotheses = finished[b][g]
            for rank in range(group_size):
                if not eos_flags[b][rank]:
                    continue
                within_group = b * group_size + parents[b][rank]
                history = None
                if histories is not None:
                    # transformers looks the history up in the first group's (already updated when g > 0)
                    source, steps = (history_before, step) if g == 0 else (histories[0], step + 1)
                    history = _history_list(source[within_group], steps) + [within_group]
                row = b * num_beams + g * group_size + parents[b][rank]
                hypotheses.add(sequences[row, :length].clone(), scores[b][rank], history, generated)
            row_done[g] = hypotheses.is_done(scores[b][0], length + 1, prompt_length)
