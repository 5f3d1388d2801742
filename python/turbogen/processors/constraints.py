"""Hard and soft constraints on the next token: sequence biases and bad words, minimum lengths,
prefix constraints, forced first/last tokens, token suppression and inf/NaN removal. Each mirrors
the transformers v4.57 class of the same name; the arithmetic lives in
:mod:`turbogen.processors.functional`.

Scores are ``[batch, vocab]``. Like transformers' classes, the minimum-length, token-suppression and
inf/NaN processors work on the last dimension alone (reading only the length of ``input_ids``), so
they also take ``[vocab]`` or ``[..., vocab]`` scores; the others need ``[batch, vocab]``."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from . import functional
from .base import (
    ArgumentTypeError,
    LogitsProcessor,
    TokenIds,
    check_inputs,
    check_int,
    check_length_inputs,
    check_scores,
    check_vocabulary,
    is_integer,
    is_real,
    max_token_id,
    token_id_tensor,
)

SequenceBias = Union["dict[tuple[int, ...], float]", "list[list]"]


def _is_token_sequence(sequence) -> bool:
    """A non-empty sequence of non-negative integer token ids."""
    return len(sequence) > 0 and all(is_integer(token) and token >= 0 for token in sequence)


class SequenceBiasLogitsProcessor(LogitsProcessor):
    """Add a bias to the last token of a token sequence whenever the context ends with the rest of it.

    ``sequence_bias`` is a list of ``[token_ids, bias]`` pairs (e.g. ``[[[10, 45], -2.0], [[64], -7.5]]``)
    or, as in older transformers, a dict ``{(10, 45): -2.0, (64,): -7.5}``. A single-token sequence
    is biased at every step; a longer one only when the tokens before its last one are the last
    tokens of the context (and the sequence is no longer than the context). Positive biases make
    the sequence likelier. Token ids must fit the vocabulary; that is checked on the first call,
    when the vocabulary size is known. Unlike transformers, token id 0 and integer biases are accepted.
    """

    # The constructor argument that holds the token ids, for error messages.
    _argument_name = "sequence_bias"

    def __init__(self, sequence_bias: SequenceBias):
        self.sequence_bias = self._normalized(sequence_bias, "sequence_bias")
        if not self.sequence_bias:
            raise ValueError("`sequence_bias` has to be a non-empty list of [token_ids, bias] pairs")
        self._prepare()

    @staticmethod
    def _normalized(sequence_bias: SequenceBias, name: str) -> "dict[tuple[int, ...], float]":
        """The ``{token_id_tuple: bias}`` dict form of ``sequence_bias``, validated."""
        if isinstance(sequence_bias, dict):
            pairs = list(sequence_bias.items())
        elif isinstance(sequence_bias, list):
            if any(not isinstance(pair, (list, tuple)) or len(pair) != 2 for pair in sequence_bias):
                raise ValueError(f"`{name}` has to be a list of [token_ids, bias] pairs, but is {sequence_bias!r}")
            pairs = [(tuple(ids) if isinstance(ids, (list, tuple)) else ids, bias) for ids, bias in sequence_bias]
        else:
            raise ArgumentTypeError(f"`{name}` has to be a list of [token_ids, bias] pairs, but is {sequence_bias!r}")
        normalized = {}
        for ids, bias in pairs:
            if not isinstance(ids, tuple) or not _is_token_sequence(ids):
                raise ValueError(f"Each token sequence of `{name}` has to be a non-empty list of non-negative "
                                 f"integers, but one is {ids!r}")
            if not is_real(bias):
                raise ValueError(f"Each bias of `{name}` has to be a float, but the one of {list(ids)} is {bias!r}")
            normalized[tuple(int(token) for token in ids)] = float(bias)
        return normalized

    def _prepare(self) -> None:
        """Lay the sequences out as the tensors :func:`turbogen.processors.functional.sequence_bias` takes."""
        # Single-token sequences first: transformers applies them before the longer ones, and the
        # order fixes the float summation order where several biases land on one token.
        ordered = sorted(self.sequence_bias.items(), key=lambda item: len(item[0]) > 1)
        width = max((len(ids) for ids in self.sequence_bias), default=1)
        self._sequences = torch.tensor([[-1] * (width - len(ids)) + list(ids) for ids, _ in ordered],
                                       dtype=torch.long).reshape(len(ordered), width)
        self._biases = torch.tensor([bias for _, bias in ordered], dtype=torch.float32)
        self._largest_id = max_token_id(self._sequences)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        if not self.sequence_bias:
            return scores.clone()
        check_vocabulary(self._largest_id, scores, self._argument_name)
        self._sequences = self._sequences.to(scores.device)
        self._biases = self._biases.to(scores.device)
        return functional.sequence_bias(input_ids, scores, self._sequences, self._biases)


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Never let the generated text contain one of ``bad_words_ids`` (a list of token id lists).

    A banned sequence's last token gets -inf whenever the context ends with the rest of it. A
    single-token entry equal to an ``eos_token_id`` is dropped, so EOS stays reachable; if that
    leaves nothing to ban, the processor changes nothing.
    """

    _argument_name = "bad_words_ids"

    def __init__(self, bad_words_ids: "list[list[int]]", eos_token_id: Optional[TokenIds] = None):
        if not isinstance(bad_words_ids, list) or not bad_words_ids:
            raise ValueError(f"`bad_words_ids` has to be a non-empty list, but is {bad_words_ids!r}")
        if any(not isinstance(words, list) for words in bad_words_ids):
            raise ValueError(f"`bad_words_ids` has to be a list of lists, but is {bad_words_ids!r}")
        if any(not _is_token_sequence(words) for words in bad_words_ids):
            raise ValueError(
                f"Each list in `bad_words_ids` has to be a non-empty list of non-negative integers, but is "
                f"{bad_words_ids!r}"
            )
        self.bad_word_ids = bad_words_ids
        if eos_token_id is not None:
            eos_ids = token_id_tensor(eos_token_id, "eos_token_id").tolist()
            bad_words_ids = [words for words in bad_words_ids if not (len(words) == 1 and words[0] in eos_ids)]
        self.sequence_bias = {tuple(int(token) for token in words): float("-inf") for words in bad_words_ids}
        self._prepare()


class MinLengthLogitsProcessor(LogitsProcessor):
    """Forbid EOS while the sequence, prompt included, is shorter than ``min_length``."""

    def __init__(self, min_length: int, eos_token_id: TokenIds, device: str = "cpu"):
        self.min_length = check_int(min_length, "min_length", minimum=0)
        self.eos_token_id = token_id_tensor(eos_token_id, "eos_token_id", device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_length_inputs(input_ids, scores)
        self.eos_token_id = self.eos_token_id.to(scores.device)
        return functional.min_length(input_ids, scores, self.eos_token_id, self.min_length)


class MinNewTokensLengthLogitsProcessor(LogitsProcessor):
    """Forbid EOS until ``min_new_tokens`` tokens follow the first ``prompt_length_to_skip`` ones."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id: TokenIds,
                 device: str = "cpu"):
        self.prompt_length_to_skip = check_int(prompt_length_to_skip, "prompt_length_to_skip", minimum=0)
        self.min_new_tokens = check_int(min_new_tokens, "min_new_tokens", minimum=0)
        self.eos_token_id = token_id_tensor(eos_token_id, "eos_token_id", device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_length_inputs(input_ids, scores)
        self.eos_token_id = self.eos_token_id.to(scores.device)
        return functional.min_new_tokens(input_ids, scores, self.eos_token_id, self.prompt_length_to_skip,
                                  self.min_new_tokens)


class PrefixConstrainedLogitsProcessor(LogitsProcessor):
    """Restrict each row to the tokens ``prefix_allowed_tokens_fn(batch_id, row_input_ids)`` returns.

    Rows come in groups of ``num_beams`` consecutive hypotheses per batch entry. The function must
    return a non-empty list (or 1-D tensor) of token ids inside the vocabulary; transformers would
    read a negative id as counted from the end of the vocabulary, here it is an error. The function
    is Python, called once per row and step, so this processor runs on the host.
    """

    def __init__(self, prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], "list[int]"], num_beams: int):
        if not callable(prefix_allowed_tokens_fn):
            raise ArgumentTypeError(
                f"`prefix_allowed_tokens_fn` has to be callable, but is {prefix_allowed_tokens_fn!r}"
            )
        self._prefix_allowed_tokens_fn = prefix_allowed_tokens_fn
        self._num_beams = check_int(num_beams, "num_beams", minimum=1)

    def _allowed_tokens(self, batch_id: int, row_input_ids: torch.Tensor, vocab_size: int) -> "list[int]":
        allowed = self._prefix_allowed_tokens_fn(batch_id, row_input_ids)
        if isinstance(allowed, torch.Tensor):
            allowed = allowed.reshape(-1).tolist()
        allowed = list(allowed)
        if not allowed:
            raise ValueError(
                f"`prefix_allowed_tokens_fn` returned an empty list for batch ID {batch_id}: the constraint is "
                "unsatisfiable"
            )
        if any(not is_integer(token) or not 0 <= token < vocab_size for token in allowed):
            raise ValueError(
                f"`prefix_allowed_tokens_fn` returned {allowed!r} for batch ID {batch_id}; token ids have to be "
                f"integers in [0, {vocab_size})"
            )
        return allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        if scores.shape[0] % self._num_beams:
            raise ValueError(f"`scores` has {scores.shape[0]} rows, not a multiple of `num_beams`={self._num_beams}")
        rows, tokens = [], []
        for row, row_input_ids in enumerate(input_ids):
            allowed = self._allowed_tokens(row // self._num_beams, row_input_ids, scores.shape[-1])
            rows.extend([row] * len(allowed))
            tokens.extend(allowed)
        allowed_mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        allowed_mask[torch.tensor(rows, device=scores.device), torch.tensor(tokens, device=scores.device)] = True
        return functional.prefix_constrained(scores, allowed_mask)


class ForcedBOSTokenLogitsProcessor(LogitsProcessor):
    """Force ``bos_token_id`` as the first generated token (encoder-decoder models: when the
    decoder input holds only the start token)."""

    def __init__(self, bos_token_id: int):
        self.bos_token_id = check_int(bos_token_id, "bos_token_id", minimum=0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        check_vocabulary(self.bos_token_id, scores, "bos_token_id")
        return functional.forced_bos(input_ids, scores, self.bos_token_id)


class ForcedEOSTokenLogitsProcessor(LogitsProcessor):
    """Force an EOS token (any of ``eos_token_id``) as the last token when ``max_length`` is reached."""

    def __init__(self, max_length: int, eos_token_id: TokenIds, device: str = "cpu"):
        self.max_length = check_int(max_length, "max_length", minimum=1)
        self.eos_token_id = token_id_tensor(eos_token_id, "eos_token_id", device)
        self._largest_id = max_token_id(self.eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        check_vocabulary(self._largest_id, scores, "eos_token_id")
        self.eos_token_id = self.eos_token_id.to(scores.device)
        return functional.forced_eos(input_ids, scores, self.eos_token_id, self.max_length)


class SuppressTokensLogitsProcessor(LogitsProcessor):
    """Set the scores of ``suppress_tokens`` to -inf at every step (ids beyond the vocabulary are ignored)."""

    def __init__(self, suppress_tokens: TokenIds, device: str = "cpu"):
        self.suppress_tokens = token_id_tensor(suppress_tokens, "suppress_tokens", device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        self.suppress_tokens = self.suppress_tokens.to(scores.device)
        return functional.suppress_tokens(scores, self.suppress_tokens)


class SuppressTokensAtBeginLogitsProcessor(LogitsProcessor):
    """Set the scores of ``begin_suppress_tokens`` to -inf at the step where the sequence is
    ``begin_index`` tokens long (the first generated token, in ``generate``)."""

    def __init__(self, begin_suppress_tokens: TokenIds, begin_index: int, device: str = "cpu"):
        self.begin_suppress_tokens = token_id_tensor(begin_suppress_tokens, "begin_suppress_tokens", device)
        self.set_begin_index(begin_index)

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = check_int(begin_index, "begin_index", minimum=0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_length_inputs(input_ids, scores)
        self.begin_suppress_tokens = self.begin_suppress_tokens.to(scores.device)
        return functional.suppress_tokens_at_begin(input_ids, scores, self.begin_suppress_tokens, self.begin_index)


class InfNanRemoveLogitsProcessor(LogitsProcessor):
    """Replace NaN by 0 and +/-inf by the largest/lowest finite value of the dtype, so that sampling
    cannot fail on invalid scores (slower; use only if needed)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores, any_leading_dims=True)
        return functional.inf_nan_remove(scores)


__all__ = [
    "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor",
    "InfNanRemoveLogitsProcessor",
    "MinLengthLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "NoBadWordsLogitsProcessor",
    "PrefixConstrainedLogitsProcessor",
    "SequenceBiasLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
    "SuppressTokensLogitsProcessor",
]
