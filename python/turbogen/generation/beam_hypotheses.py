"""The finished-hypothesis lists of transformers 4.45's beam scorers (``BeamHypotheses``, with
``BeamSearchScorer.finalize``'s packing), which diverse and constrained beam search keep: host-side n-best lists
whose insertion, eviction and tie rules decide the output. turbogen's own beam search
(:mod:`turbogen.generation.beam_search`) follows transformers 4.57 instead, whose finished set is a tensor.

Scores are Python floats (doubles), as in transformers: a hypothesis' score is its summed log-probability (a
float32 value) divided by ``generated_length ** length_penalty`` in double precision.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

__all__ = ["FinishedHypotheses", "check_legacy_beam_call", "legacy_beam_output", "pack_best_hypotheses"]


class FinishedHypotheses:
    """The best ``capacity`` finished hypotheses of one beam (group) of one prompt, in insertion order.

    Each entry is ``(score, tokens, beam_indices)``: the length-penalised score, the token ids (a 1-D tensor,
    prompt included) and the parent-beam history (a list of ints, or ``None`` when not recorded).
    """

    __slots__ = ("capacity", "length_penalty", "early_stopping", "max_length", "entries", "worst_score")

    def __init__(self, capacity: int, length_penalty: float, early_stopping: Union[bool, str], max_length: int):
        self.capacity = capacity
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.max_length = max_length
        self.entries: list[tuple[float, torch.Tensor, Optional[list[int]]]] = []
        self.worst_score = 1e9

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, tokens: torch.Tensor, sum_logprobs: float, beam_indices: Optional[list[int]],
            generated_length: int) -> None:
        """Offer a hypothesis whose summed log-probability is ``sum_logprobs`` after ``generated_length`` new
        tokens. While the list is not full every hypothesis enters; once full, only one scoring strictly above the
        worst, which is then evicted (the earliest inserted of equal worst scores)."""
        score = sum_logprobs / (generated_length ** self.length_penalty)
        if len(self.entries) < self.capacity or score > self.worst_score:
            self.entries.append((score, tokens, beam_indices))
            if len(self.entries) > self.capacity:
                ranked = sorted((entry[0], position) for position, entry in enumerate(self.entries))
                del self.entries[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, current_length: int, prompt_length: int) -> bool:
        """Whether no running hypothesis can still enter: the list is full and (``early_stopping=True``) that is
        enough, or the best running score ``best_sum_logprobs`` penalised at ``current_length`` (``"never"`` with a
        positive length penalty: at ``max_length``, its best possible) does not beat the worst finished one."""
        if len(self.entries) < self.capacity:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping is not False and self.length_penalty > 0.0:  # "never"
            if self.max_length <= prompt_length:
                raise ValueError("`max_length` is not larger than the prompt length")
            best_length = self.max_length - prompt_length
        else:
            best_length = current_length - prompt_length
        return self.worst_score >= best_sum_logprobs / (best_length ** self.length_penalty)


def pack_best_hypotheses(lists_per_prompt: Sequence[Sequence[FinishedHypotheses]], keep: int, max_length: int,
                         pad: Optional[int], eos: Optional[Sequence[int]], template: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(sequences, scores, beam_indices)`` of the ``keep`` best hypotheses per prompt, as transformers 4.45's
    scorers' ``finalize`` packs them.

    Per prompt, the entries of its lists (concatenated in order) are ranked by score, ties to the later entry.
    Rows are ``prompt * keep + rank``. Sequences are ``min(longest + 1, max_length)`` wide; when lengths differ
    the rest is ``pad``, and a hypothesis shorter than the width is followed by ``eos[0]``. ``beam_indices``
    (``None`` when the entries have none) are as wide as the sequences, ``-1`` past each history. ``template``
    gives the sequences' dtype and device."""
    best = []
    for lists in lists_per_prompt:
        entries = [entry for hypotheses in lists for entry in hypotheses.entries]
        ranked = sorted(entries, key=lambda entry: entry[0])  # stable: the later of equal scores pops first
        best.extend(ranked.pop() for _ in range(keep))
    lengths = [entry[1].shape[-1] for entry in best]
    width = min(max(lengths) + 1, max_length)
    rows = len(best)
    fill = 0
    if min(lengths) != max(lengths):
        if pad is None:
            raise ValueError("`pad_token_id` has to be defined")
        fill = pad
    sequences = torch.full((rows, width), fill, dtype=template.dtype, device=template.device)
    with_indices = rows > 0 and best[0][2] is not None
    indices = torch.full((rows, width), -1, dtype=template.dtype, device=template.device) if with_indices else None
    for row, (_, tokens, history) in enumerate(best):
        sequences[row, : lengths[row]] = tokens
        if indices is not None:
            indices[row, : len(history)] = torch.tensor(history, dtype=indices.dtype)
        if lengths[row] < width:
            sequences[row, lengths[row]] = eos[0]
    scores = torch.tensor([entry[0] for entry in best], dtype=torch.float32, device=template.device)
    return sequences, scores, indices


def legacy_beam_output(call: Any, record: Any, past_key_values: Any, sequences: torch.Tensor,
                       sequence_scores: torch.Tensor, beam_indices: Optional[torch.Tensor]) -> Any:
    """What transformers 4.45's diverse and constrained beam searches return for a resolved call: the
    sequences, or with ``return_dict_in_generate`` a beam output (``sequences_scores`` only with ``output_scores``;
    ``beam_indices`` as :func:`pack_best_hypotheses` gives them; the recorded scores, logits, attentions and
    hidden states; for an encoder-decoder the encoder's too)."""
    from ..outputs import GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput

    config = call.config
    if not config.return_dict_in_generate:
        return sequences
    common = dict(sequences=sequences, sequences_scores=sequence_scores if config.output_scores else None,
                  scores=record.collected_scores, logits=record.collected_logits, beam_indices=beam_indices,
                  past_key_values=past_key_values)
    encoder = call.encoder_outputs
    if encoder is None:
        return GenerateBeamDecoderOnlyOutput(attentions=record.attentions, hidden_states=record.hidden_states,
                                             **common)
    return GenerateBeamEncoderDecoderOutput(
        encoder_attentions=encoder.get("attentions") if record.wants_attentions else None,
        encoder_hidden_states=encoder.get("hidden_states") if record.wants_hidden_states else None,
        decoder_attentions=record.attentions, cross_attentions=record.cross_attentions,
        decoder_hidden_states=record.hidden_states, **common)


def check_legacy_beam_call(config: Any, mode: str) -> None:
    """The checks transformers 4.45 makes of every beam scorer's parameters (``ValueError`` naming them)."""
    num_beams = config.num_beams
    if not isinstance(num_beams, int) or num_beams <= 1:
        raise ValueError(f"{mode} needs `num_beams` to be an integer strictly greater than 1, but it is "
                         f"{num_beams!r}.")
    if config.num_return_sequences is not None and config.num_return_sequences > num_beams:
        raise ValueError(f"`num_return_sequences` ({config.num_return_sequences}) has to be smaller or equal to "
                         f"`num_beams` ({num_beams}).")
    if config.early_stopping not in (True, False, "never"):
        raise ValueError(f"`early_stopping` has to be True, False or 'never', but is {config.early_stopping!r}.")
