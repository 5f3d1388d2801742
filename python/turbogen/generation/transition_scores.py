"""``compute_transition_scores``: the score of each generated token, as transformers computes it."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["compute_transition_scores"]


def compute_transition_scores(
    sequences: torch.Tensor,
    scores: Sequence[torch.Tensor],
    beam_indices: Optional[torch.Tensor] = None,
    normalize_logits: bool = False,
) -> torch.Tensor:
    """The score of each generated token, as transformers' ``compute_transition_scores``.

    Args:
        sequences: ``[rows, length]`` from ``generate`` (prompt included).
        scores: the per-step scores (``output.scores``), each ``[score_rows, vocab]``.
        beam_indices: ``output.beam_indices`` for beam methods (which score row produced each token, -1 past
            the end); ``None`` for greedy search and sampling (row ``i`` always produced row ``i``'s tokens).
        normalize_logits: apply ``log_softmax`` over the vocabulary to the scores first.

    Returns:
        ``[rows, generated_length]``: the score of each generated token; 0 past a beam hypothesis' end. For
        beam search, summing a row and dividing by ``generated_length ** length_penalty`` gives its
        ``sequences_scores``.
    """
    if not scores:
        raise ValueError("`scores` is empty: generate with `output_scores=True, return_dict_in_generate=True`.")
    steps = len(scores)
    vocab_size = scores[0].shape[-1]
    if beam_indices is None:
        beam_indices = torch.arange(scores[0].shape[0], device=sequences.device).view(-1, 1).expand(-1, steps)
    # [score_rows * vocab, steps]: one column per step.
    stacked = torch.stack(tuple(scores)).reshape(steps, -1).transpose(0, 1)
    if normalize_logits:
        stacked = stacked.reshape(-1, vocab_size, steps).log_softmax(dim=1).reshape(-1, steps)
    beam_indices = beam_indices.to(sequences.device)
    past_end = beam_indices < 0
    generated = int((~past_end).sum(-1).max())
    rows_of_step = beam_indices[:, :generated].masked_fill(past_end[:, :generated], 0).long()
    token_rows = sequences[:, sequences.shape[-1] - generated :] + rows_of_step * vocab_size
    transition = stacked.gather(0, token_rows)
    return transition.masked_fill(past_end[:, :generated], 0)
