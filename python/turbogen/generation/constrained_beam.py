"""Constrained beam search (``constraints``, ``force_words_ids``), natively: transformers 4.45.2's
``_constrained_beam_search`` with its ``ConstrainedBeamSearchScorer`` is the oracle (4.57 moved the strategy to a
Hub repository).

Constraints are :class:`~turbogen.generation.beam_constraints.Constraint` objects (``force_words_ids`` becomes one
:class:`~turbogen.generation.beam_constraints.PhrasalConstraint` per word, or a
:class:`~turbogen.generation.beam_constraints.DisjunctiveConstraint` per list of alternatives); transformers' own
constraint objects and any object with the constraint protocol are used as they are. A hypothesis' progress
(:class:`~turbogen.generation.beam_constraints.ConstraintListState`) is read from its whole sequence, prompt
included. One step, per prompt:

1. the processed log-probabilities plus each beam's score give the ``K = max(2, 1 + number of EOS ids) *
   num_beams`` best continuations (``torch.topk``, transformers' tie order);
2. in rank order: an EOS candidate among the first ``num_beams`` whose hypothesis fulfils every constraint is
   offered to the finished list; the first ``num_beams`` candidates that are not EOS are the *top-k* candidates;
3. every running beam that has not fulfilled its constraints proposes one candidate per token that advances them
   (``ConstraintListState.advance``), unless the same sequence is already a candidate;
4. candidates are grouped into *banks* by their progress (``get_bank``), each bank sorted by score, and the next
   beams are taken round-robin from the banks, most progress first: the best of each bank, then the second of
   each, ... (the first ``num_beams``);
5. the prompt is done when its finished list is full and no running beam can beat its worst entry (per
   ``early_stopping``); a done prompt continues with the pad token on row 0 (its rows are no longer read).

Generation ends when every prompt is done or a stopping criterion holds for every row. Then the running beams
that fulfil the constraints are offered to the finished list; if fewer than ``num_return_sequences`` do, so are
all the others; each prompt returns its ``num_return_sequences`` best finished hypotheses.

Steps 2-4 run on the host, as transformers' do, but on Python lists read once per step (the candidates' scores,
tokens and parents in one read, the proposed tokens' scores in a second). Progress states are the ones
transformers rebuilds by a reset over each whole sequence; with turbogen's own constraint classes they are
derived instead (:class:`_Progress`: the prompt's state once, a child's as its parent's clone plus one token), and
a running beam keeps the state it was chosen with when that came from the top-k candidates. The model call,
processors and top-k are batched tensor operations.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..errors import UnsupportedByTurbogen
from ..stopping import StoppingPlan
from .beam_constraints import ConstraintListState, DisjunctiveConstraint, PhrasalConstraint, is_constraint
from .beam_hypotheses import FinishedHypotheses, check_legacy_beam_call, legacy_beam_output, pack_best_hypotheses
from .record import Record
from .runner import ModelRunner, make_runner

__all__ = ["constrained_beam_from_call", "constraints_from_config", "run_constrained_beam_search"]

# transformers' weight of a bank when it orders candidates by `bank * 100 + score`.
_BANK_WEIGHT = 100
_IMPOSSIBLE = -1.0e9


def _force_words_error(force_words_ids: Any) -> ValueError:
    return ValueError("`force_words_ids` has to either be a `List[List[List[int]]]` or `List[List[int]]` of "
                      f"non-negative integers, but is {force_words_ids!r}.")


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(token, int) and not isinstance(token, bool) and token >= 0 for token in value)


def constraints_from_config(config: Any) -> list[Any]:
    """The constraints of a constrained beam search: ``config.constraints`` (each must have the constraint
    protocol: ``TypeError`` naming ``constraints`` otherwise), then one per entry of ``config.force_words_ids``
    (a list of token ids: a phrase; a list of such lists: any one of them), checked as transformers 4.45 checks
    them (``ValueError`` naming ``force_words_ids``)."""
    constraints = []
    if config.constraints is not None:
        if not isinstance(config.constraints, (list, tuple)):
            raise TypeError(f"`constraints` has to be a list of Constraint objects, but is "
                            f"{type(config.constraints).__name__}.")
        for constraint in config.constraints:
            if not is_constraint(constraint):
                raise TypeError(f"`constraints` has to be a list of Constraint objects (with `seqlen` and the "
                                f"methods advance, does_advance, update, reset, remaining and copy), but holds "
                                f"{constraint!r} of type {type(constraint).__name__}.")
        constraints.extend(config.constraints)
    words = config.force_words_ids
    if words is not None:
        if not isinstance(words, list) or len(words) == 0:
            raise _force_words_error(words)
        for word in words:
            if not isinstance(word, list) or len(word) == 0:
                raise _force_words_error(words)
            if isinstance(word[0], list):
                if not all(_is_token_list(alternative) for alternative in word):
                    raise _force_words_error(words)
                constraints.append(DisjunctiveConstraint(word))
            else:
                if not _is_token_list(word):
                    raise _force_words_error(words)
                constraints.append(PhrasalConstraint(word))
    if not constraints:
        raise ValueError("constrained beam search needs at least one constraint: `constraints` and "
                         "`force_words_ids` are empty.")
    return constraints


def check_constrained_config(config: Any) -> None:
    """transformers 4.45's checks of a constrained beam search configuration (``ValueError`` naming the
    argument)."""
    message = ("one of `constraints`, `force_words_ids` is not `None`, triggering constrained beam search. However, "
               "`{name}` is set to `{value}`, which is incompatible with this generation mode. Set `constraints` and "
               "`force_words_ids` to `None` or unset `{name}` to continue.")
    if config.do_sample is True:
        raise ValueError(message.format(name="do_sample", value=config.do_sample))
    if config.num_beam_groups is not None and config.num_beam_groups != 1:
        raise ValueError(message.format(name="num_beam_groups", value=config.num_beam_groups))
    check_legacy_beam_call(config, "constrained beam search")


def constrained_beam_from_call(model: Any, call: Any, record: Record) -> Any:
    """Constrained beam search for a resolved :func:`turbogen.generate` call (a
    :class:`~turbogen.generation.prepare.PreparedCall` whose mode is constrained beam search): the sequences, or
    with ``return_dict_in_generate`` a beam output, as transformers 4.45.2 returns them."""
    config = call.config
    check_constrained_config(config)
    constraints = constraints_from_config(config)
    if call.input_ids.shape[1] == 0:
        raise UnsupportedByTurbogen("constrained beam search from `inputs_embeds` alone is not supported by "
                                    "turbogen.generate.", reason="constrained beam search with inputs_embeds")
    runner = make_runner(model, call.input_ids, call.model_kwargs, call.cache, config.use_cache, call.max_length,
                         record)
    sequences, scores, beam_indices = run_constrained_beam_search(
        runner, call.input_ids, constraints, num_beams=config.num_beams, processors=call.processors,
        stopping=call.stopping, record=record, eos=call.tokens.eos, pad=call.tokens.pad,
        length_penalty=config.length_penalty, early_stopping=config.early_stopping,
        num_return_sequences=config.num_return_sequences or 1, max_length=call.max_length)
    return legacy_beam_output(call, record, runner.past_key_values, sequences, scores, beam_indices)


class _Candidate:
    """A continuation under consideration: parent row (global), token, score, progress state, full sequence."""

    __slots__ = ("parent", "token", "score", "state", "sequence")

    def __init__(self, parent: int, token: int, score: float, state: ConstraintListState, sequence: list[int]):
        self.parent = parent
        self.token = token
        self.score = score
        self.state = state
        self.sequence = sequence


class _Progress:
    """Constraint states as a reset over a sequence (``ConstraintListState.reset``) builds them.

    With turbogen's own constraint classes the state after a prompt is computed once and cloned
    (:meth:`ConstraintListState.clone`), and a child's state is its parent's, cloned, fed the new token: the same
    state a reset builds, in one step instead of one per token. Other constraints are reset every time."""

    def __init__(self, constraints: list[Any], prompt_length: int):
        self.constraints = constraints
        self.prompt_length = prompt_length
        self.clonable = ConstraintListState(constraints).clone() is not None
        self._after_prompt: dict[tuple, ConstraintListState] = {}

    def of(self, sequence: list[int]) -> ConstraintListState:
        if not self.clonable:
            state = ConstraintListState(self.constraints)
            state.reset(sequence)
            return state
        prompt = tuple(sequence[: self.prompt_length])
        base = self._after_prompt.get(prompt)
        if base is None:
            base = ConstraintListState(self.constraints)
            base.reset(list(prompt))
            self._after_prompt[prompt] = base
        state = base.clone()
        for token in sequence[self.prompt_length:]:
            if state.completed:
                break
            state.add(token)
        return state

    def child(self, parent: ConstraintListState, sequence: list[int]) -> ConstraintListState:
        """The state of ``sequence`` (``parent``'s sequence plus one token), ``parent`` being a reset-built state
        not stepped since."""
        if not self.clonable:
            return self.of(sequence)
        state = parent.clone()
        if not state.completed:
            state.add(sequence[-1])
        return state


def run_constrained_beam_search(runner: ModelRunner, input_ids: torch.Tensor, constraints: list[Any],
                                num_beams: int, processors: Any, stopping: StoppingPlan, record: Record,
                                eos: Optional[torch.Tensor], pad: Optional[torch.Tensor], length_penalty: float,
                                early_stopping: Any, num_return_sequences: int, max_length: int
                                ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Constrained beam search from the expanded prompt ``input_ids`` (``[batch * num_beams, prompt_length]``),
    the module docstring's steps; ``(sequences, sequence_scores, beam_indices)`` as transformers 4.45's
    ``ConstrainedBeamSearchScorer.finalize`` packs them (``beam_indices`` only when ``record`` keeps scores)."""
    rows, prompt_length = input_ids.shape
    device = input_ids.device
    batch = rows // num_beams
    eos_list = None if eos is None else [int(value) for value in eos.reshape(-1).tolist()]
    eos_set = frozenset(eos_list or ())
    pad_id = None if pad is None else int(pad)
    candidates = max(2, 1 + (0 if eos_list is None else len(eos_list))) * num_beams
    tracks_history = record.wants_scores
    progress = _Progress(constraints, prompt_length)

    sequences = torch.zeros(rows, max_length, dtype=input_ids.dtype, device=device)
    sequences[:, :prompt_length] = input_ids
    host_sequences = input_ids.tolist()
    # each running beam's state after its whole sequence, or None until needed
    states: list[Optional[ConstraintListState]] = [None] * rows
    beam_scores = torch.zeros(batch, num_beams, dtype=torch.float32, device=device)
    beam_scores[:, 1:] = _IMPOSSIBLE
    beam_scores = beam_scores.view(-1)
    histories: Optional[list[list[int]]] = [[] for _ in range(rows)] if tracks_history else None
    finished = [FinishedHypotheses(num_beams, length_penalty, early_stopping, max_length) for _ in range(batch)]
    done = [False] * batch

    def state_of(row: int) -> ConstraintListState:
        if states[row] is None:
            states[row] = progress.of(host_sequences[row])
        return states[row]

    length = prompt_length
    logits = runner.prefill(input_ids)
    while True:
        record.logits(logits)
        log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
        if processors:
            log_probs = processors(sequences[:, :length], log_probs)
        totals = log_probs + beam_scores[:, None]
        record.scores(totals)
        vocab = totals.shape[-1]
        top_scores, top_flat = torch.topk(totals.view(batch, num_beams * vocab), candidates, dim=1, largest=True,
                                          sorted=True)
        top_parents = (top_flat / vocab).long()
        top_tokens = top_flat % vocab
        host_scores, host_parents, host_tokens = (
            top_scores.tolist(), top_parents.tolist(), top_tokens.tolist())

        # Steps 2 and 3 per prompt; the proposed tokens' scores are read for all prompts at once.
        chosen_per_prompt: list[Optional[list[_Candidate]]] = []
        proposals_per_prompt: list[list[_Candidate]] = []
        proposal_rows: list[int] = []
        proposal_tokens: list[int] = []
        generated = length + 1 - prompt_length
        for b in range(batch):
            if done[b]:
                if eos_list is None or pad_id is None:
                    raise ValueError("Generated beams >= num_beams -> eos_token_id and pad_token have to be defined")
                chosen_per_prompt.append(None)
                proposals_per_prompt.append([])
                continue
            top_k: list[_Candidate] = []
            for rank in range(candidates):
                token = host_tokens[b][rank]
                parent = b * num_beams + host_parents[b][rank]
                if token in eos_set:
                    if rank >= num_beams:
                        continue
                    if state_of(parent).completed:
                        history = histories[parent] + [parent] if tracks_history else None
                        finished[b].add(sequences[parent, :length].clone(), host_scores[b][rank], history,
                                        generated)
                else:
                    # (its state now, from the parent's, before proposals step copies sharing the parent's)
                    sequence = host_sequences[parent] + [token]
                    top_k.append(_Candidate(parent, token, host_scores[b][rank],
                                            progress.child(state_of(parent), sequence), sequence))
                    if len(top_k) == num_beams:
                        break
            if len(top_k) < num_beams:
                raise ValueError(f"At most {num_beams} tokens in {host_tokens[b]} can be equal to `eos_token_id: "
                                 f"{eos_list}`. Make sure {host_tokens[b]} are corrected.")
            seen = {tuple(candidate.sequence) for candidate in top_k}
            proposals = []
            for row in range(b * num_beams, (b + 1) * num_beams):
                base = state_of(row)
                if base.completed:
                    continue
                for token in base.advance():
                    # (a copy per token, each stepped: transformers' order, which stateful copies can observe)
                    state = base.copy(stateful=True)
                    state.add(token)
                    sequence = host_sequences[row] + [token]
                    key = tuple(sequence)
                    if key in seen:
                        continue
                    seen.add(key)
                    proposals.append(_Candidate(row, token, 0.0, state, sequence))
                    proposal_rows.append(row)
                    proposal_tokens.append(token)
            chosen_per_prompt.append(top_k)
            proposals_per_prompt.append(proposals)
        if proposal_rows:
            proposal_scores = totals[proposal_rows, proposal_tokens].tolist()
            position = 0
            for proposals in proposals_per_prompt:
                for candidate in proposals:
                    candidate.score = proposal_scores[position]
                    position += 1

        # Step 4 and the done flags.
        next_parents: list[int] = []
        next_tokens: list[int] = []
        next_scores: list[float] = []
        next_states: list[Optional[ConstraintListState]] = []
        for b in range(batch):
            top_k = chosen_per_prompt[b]
            if top_k is None:  # done: pad on row 0
                next_parents.extend([0] * num_beams)
                next_tokens.extend([pad_id] * num_beams)
                next_scores.extend([0.0] * num_beams)
                next_states.extend([None] * num_beams)
                continue
            selected = _select_by_bank(top_k, proposals_per_prompt[b], num_beams)
            for candidate in selected:
                next_parents.append(candidate.parent)
                next_tokens.append(candidate.token)
                next_scores.append(candidate.score)
                # a top-k candidate's state is a fresh reset over its sequence: next step's state; a proposal's was
                # built by copying and stepping, which a reset need not reproduce
                next_states.append(candidate.state if candidate in top_k else None)
            done[b] = finished[b].is_done(host_scores[b][0], length + 1, prompt_length)

        parent_index = torch.tensor(next_parents, dtype=torch.long, device=device)
        beam_scores = torch.tensor(next_scores, dtype=torch.float32, device=device)
        token_tensor = torch.tensor(next_tokens, dtype=input_ids.dtype, device=device)
        sequences = sequences.index_select(0, parent_index)
        sequences[:, length] = token_tensor
        host_sequences = [host_sequences[parent] + [token] for parent, token in zip(next_parents, next_tokens)]
        states = next_states
        if tracks_history:
            histories = [histories[parent] + [parent] for parent in next_parents]
        runner.reorder(parent_index)
        length += 1
        stop = all(done) or stopping.stops_all(length)
        if not stop and stopping.row_criteria:
            verdict = stopping.rows_done(sequences[:, :length], record.collected_scores)
            stop = verdict is not None and bool(verdict.all())
        if stop:
            break
        logits = runner.decode(token_tensor)

    # Finalize: running beams that fulfil the constraints, then (if too few) the others, without histories.
    final_scores = beam_scores.tolist()
    for b in range(batch):
        if done[b]:
            continue
        fulfilled = []
        for j in range(num_beams):
            row = b * num_beams + j
            if state_of(row).completed:
                finished[b].add(sequences[row, :length].clone(), final_scores[row],
                                histories[row] if tracks_history else None, length - prompt_length)
                fulfilled.append(j)
        if len(fulfilled) < num_return_sequences:
            for j in range(num_beams):
                if j not in fulfilled:
                    row = b * num_beams + j
                    finished[b].add(sequences[row, :length].clone(), final_scores[row], None,
                                    length - prompt_length)
    return pack_best_hypotheses([[hypotheses] for hypotheses in finished], num_return_sequences, max_length, pad_id,
                                eos_list, sequences)


def _select_by_bank(top_k: list[_Candidate], proposals: list[_Candidate], num_beams: int) -> list[_Candidate]:
    """The next ``num_beams`` beams among the top-k candidates and the proposals: transformers 4.45's bank order
    (sorted by ``bank * 100 + score`` descending with ``torch.sort``, then taken round-robin over the banks)."""
    if not proposals:
        return top_k
    pool = top_k + proposals
    banks = [candidate.state.get_bank() for candidate in pool]
    scores = [candidate.score for candidate in pool]
    # transformers' key, in float32: bank * 100 + score
    keys = np.asarray(banks, dtype=np.float32) * np.float32(_BANK_WEIGHT) + np.asarray(scores, dtype=np.float32)
    if len(np.unique(keys)) == len(keys):  # no ties: any sort gives torch's order
        order = np.argsort(-keys, kind="stable").tolist()
    else:  # ties: torch.sort's own (unstable) order decides, as in transformers
        order = torch.from_numpy(keys).sort(descending=True).indices.tolist()
    sorted_banks = [banks[position] for position in order]
    # the position of each candidate within its bank run, then a stable sort by it: round-robin over the banks
    within = []
    counter, current = -1, sorted_banks[0]
    for bank in sorted_banks:
        if bank == current:
            counter += 1
        else:
            counter, current = 0, bank
        within.append(counter)
    round_robin = sorted(range(len(order)), key=within.__getitem__)
    return [pool[order[position]] for position in round_robin[:num_beams]]
