"""Penalties on repetition and length: the transformers v4.57 repetition, encoder-repetition,
n-gram and exponential-decay processors, plus turbogen's presence/frequency penalty (vLLM
semantics). The arithmetic lives in :mod:`turbogen.processors.functional`."""

from __future__ import annotations

from typing import Optional

import torch

from . import functional
from .base import (
    LogitsProcessor,
    TokenIds,
    check_ids_tensor,
    check_inputs,
    check_int,
    check_real,
    check_row_groups,
    check_vocabulary,
    max_token_id,
    token_id_tensor,
)


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """CTRL's repetition penalty: every token already in ``input_ids`` (prompt included, unless
    ``prompt_ignore_length`` leading tokens are skipped) has its score divided by ``penalty`` when
    positive and multiplied by it when negative, once however often it occurs. ``penalty > 1``
    discourages repetition, ``0 < penalty < 1`` encourages it.

    Scores are ``[batch, vocab]``, or ``[batch, positions, vocab]`` as transformers also accepts,
    where only the last position is penalised.
    """

    def __init__(self, penalty: float, prompt_ignore_length: Optional[int] = None):
        self.penalty = check_real(penalty, "penalty", low=0.0, low_inclusive=False)
        if prompt_ignore_length is not None:
            prompt_ignore_length = check_int(prompt_ignore_length, "prompt_ignore_length", minimum=0)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if isinstance(scores, torch.Tensor) and scores.dim() == 3:
            return self._penalize_last_position(input_ids, scores)
        check_inputs(input_ids, scores)
        if self.prompt_ignore_length:
            input_ids = input_ids[:, self.prompt_ignore_length:]
        return functional.repetition_penalty(input_ids, scores, self.penalty)

    def _penalize_last_position(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """transformers' form for ``[batch, positions, vocab]`` scores: only the last position is
        penalised (transformers writes it into ``scores`` in place; here a copy is returned)."""
        if scores.shape[1] == 0:
            raise ValueError(f"`scores` of shape [batch, positions, vocab] needs a position, but has shape "
                             f"{tuple(scores.shape)}")
        last = scores[:, -1]
        check_inputs(input_ids, last)
        if self.prompt_ignore_length:
            input_ids = input_ids[:, self.prompt_ignore_length:]
        penalized = scores.clone()
        penalized[:, -1] = functional.repetition_penalty(input_ids, last, self.penalty)
        return penalized


class EncoderRepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """The inverse of the repetition penalty, on the tokens of the prompt ``encoder_input_ids``:
    ``penalty > 1`` makes them more likely (against hallucination in input-grounded tasks).

    ``encoder_input_ids`` has one row per prompt; when the scores hold several consecutive
    hypotheses per prompt (beams, ``num_return_sequences``) each gets its own prompt's penalty
    (transformers then penalises only the first rows, with the wrong prompts).
    """

    def __init__(self, penalty: float, encoder_input_ids: torch.LongTensor):
        penalty = check_real(penalty, "penalty", low=0.0, low_inclusive=False)
        # transformers stores the inverse, so `self.penalty` reads the same as there.
        self.penalty = 1 / penalty
        self.encoder_input_ids = check_ids_tensor(encoder_input_ids, "encoder_input_ids")
        self._largest_id = max_token_id(self.encoder_input_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        check_vocabulary(self._largest_id, scores, "encoder_input_ids")
        check_row_groups(scores, self.encoder_input_ids.shape[0], "encoder_input_ids")
        self.encoder_input_ids = self.encoder_input_ids.to(scores.device)
        return functional.encoder_repetition_penalty(scores, self.encoder_input_ids, 1 / self.penalty)


class PresenceFrequencyPenaltyLogitsProcessor(LogitsProcessor):
    """OpenAI-style presence and frequency penalties, with vLLM's semantics (turbogen addition).

    Only generated tokens count: the first ``prompt_length`` tokens of ``input_ids`` (the prompt,
    which ``generate`` passes as ``input_ids_seq_length``) are skipped. With ``count[v]`` the
    occurrences of token ``v`` among the generated tokens::

        scores = scores - frequency_penalty * count - presence_penalty * (count > 0)

    computed in float32. Positive values discourage repetition (OpenAI allows [-2, 2]; any finite
    value is accepted here), negative values encourage it. Unlike the repetition penalty, the
    shift is additive, so it treats positive and negative scores alike.
    """

    def __init__(self, presence_penalty: float = 0.0, frequency_penalty: float = 0.0, prompt_length: int = 0):
        self.presence_penalty = check_real(presence_penalty, "presence_penalty", low=-float("inf"),
                                           low_inclusive=False, high=float("inf"), high_inclusive=False)
        self.frequency_penalty = check_real(frequency_penalty, "frequency_penalty", low=-float("inf"),
                                            low_inclusive=False, high=float("inf"), high_inclusive=False)
        self.prompt_length = check_int(prompt_length, "prompt_length", minimum=0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        return functional.presence_frequency_penalty(
            input_ids, scores, self.presence_penalty, self.frequency_penalty, self.prompt_length
        )


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid every token that would repeat an n-gram of size ``ngram_size`` already present in
    ``input_ids`` (prompt included)."""

    def __init__(self, ngram_size: int):
        self.ngram_size = check_int(ngram_size, "ngram_size", minimum=1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        return functional.no_repeat_ngram(input_ids, scores, self.ngram_size)


class EncoderNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid every token that would complete an n-gram of size ``encoder_ngram_size`` found in the
    prompt ``encoder_input_ids`` (one row per prompt, or a 1-D single prompt)."""

    def __init__(self, encoder_ngram_size: int, encoder_input_ids: torch.LongTensor):
        self.ngram_size = check_int(encoder_ngram_size, "encoder_ngram_size", minimum=1)
        self.encoder_input_ids = check_ids_tensor(encoder_input_ids, "encoder_input_ids")
        self.batch_size = self.encoder_input_ids.shape[0]
        self._largest_id = max_token_id(self.encoder_input_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        check_vocabulary(self._largest_id, scores, "encoder_input_ids")
        check_row_groups(scores, self.batch_size, "encoder_input_ids")
        self.encoder_input_ids = self.encoder_input_ids.to(scores.device)
        return functional.encoder_no_repeat_ngram(input_ids, scores, self.encoder_input_ids, self.ngram_size)


class ExponentialDecayLengthPenalty(LogitsProcessor):
    """Raise the EOS scores exponentially after a number of generated tokens.

    ``exponential_decay_length_penalty = (start_index, decay_factor)``: once the sequence is longer
    than ``input_ids_seq_length + start_index``, each EOS score ``s`` becomes
    ``s + |s| * (decay_factor ** excess - 1)``, ``excess`` being the number of tokens past that point.
    """

    def __init__(self, exponential_decay_length_penalty: "tuple[int, float]", eos_token_id: TokenIds,
                 input_ids_seq_length: int):
        is_pair = (isinstance(exponential_decay_length_penalty, (tuple, list))
                   and len(exponential_decay_length_penalty) == 2)
        if not is_pair:
            raise ValueError(
                "`exponential_decay_length_penalty` has to be a (start_index, decay_factor) pair, but is "
                f"{exponential_decay_length_penalty!r}"
            )
        start_index, decay_factor = exponential_decay_length_penalty
        start_index = check_int(start_index, "exponential_decay_length_penalty[0] (start_index)")
        self.regulation_factor = check_real(decay_factor, "exponential_decay_length_penalty[1] (decay_factor)")
        self.regulation_start = start_index + check_int(input_ids_seq_length, "input_ids_seq_length", minimum=0)
        self.eos_token_id = token_id_tensor(eos_token_id, "eos_token_id")
        self._largest_id = max_token_id(self.eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        check_vocabulary(self._largest_id, scores, "eos_token_id")
        self.eos_token_id = self.eos_token_id.to(scores.device)
        return functional.exponential_decay_length_penalty(
            input_ids, scores, self.eos_token_id, self.regulation_start, self.regulation_factor
        )
