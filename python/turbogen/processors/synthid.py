"""SynthID Text watermarking (Dathathri et al., Nature 2024, https://www.nature.com/articles/s41586-024-08025-4),
with transformers v4.57's hashing, sampling table and state, so that text watermarked here is scored by
transformers' ``SynthIDTextWatermarkDetector`` and vice versa.

The scheme, per row and step:

- the context is the last ``ngram_len - 1`` tokens *generated* so far (zeros before the first one: the
  prompt never takes part, as in transformers), hashed with a linear congruential step
  ``h <- (h + token) * 6364136223846793005 + 1`` (wrapping int64) starting from ``h = 1``;
- each candidate token ``v`` and each key ``k`` of ``keys`` (one per tournament layer, the "depth")
  extend that hash: ``(((h + v) * M + 1) + k) * M + 1``; the g-value is
  ``sampling_table[hash mod sampling_table_size]``, a table of 0/1 drawn by ``torch.randint`` under a
  generator seeded with ``sampling_table_seed`` (on the processor's device, as transformers draws it);
- the scores become ``log p'`` where ``p <- softmax(scores)`` and, for each layer ``d`` in order,
  ``p <- p * (1 + g_d - sum(g_d * p))`` (``finfo.min`` where the log is not finite);
- a context whose hash was already seen in the last ``context_history_size`` steps of the row leaves the
  scores unchanged; with ``skip_first_ngram_calls`` the first ``ngram_len - 1`` steps do too (and are not
  remembered).

Everything is vectorised over rows, candidates and layers (the Python loops run over the ``ngram_len``
columns of a hash and the layers of the tournament, never over rows), and nothing reads a tensor back to
the host.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import ArgumentTypeError, LogitsProcessor, check_inputs, check_int, is_integer

__all__ = [
    "HASH_INCREMENT",
    "HASH_MULTIPLIER",
    "SynthIDTextWatermarkLogitsProcessor",
    "accumulate_hash",
    "context_repetition_mask",
    "eos_token_mask",
    "expected_mean_g_value",
    "ngram_g_values",
    "synthid_sampling_table",
    "tournament_log_probs",
]

# The linear congruential step of the hash (Knuth's MMIX / musl constants), transformers' choice.
HASH_MULTIPLIER = 6364136223846793005
HASH_INCREMENT = 1
# How many accepted tokens a row can roll back (speculative decoding) by default.
DEFAULT_SYNTHID_ROLLBACK_WINDOW = 256
# transformers refuses larger sampling tables.
MAX_SAMPLING_TABLE_SIZE = 2**24


def accumulate_hash(current: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """Fold the last dimension of ``data`` into ``current`` (broadcast against ``data[..., 0]``):
    ``h <- (h + data[..., i]) * HASH_MULTIPLIER + HASH_INCREMENT`` for each ``i``, in wrapping int64."""
    for column in range(data.shape[-1]):
        current = (current + data[..., column]) * HASH_MULTIPLIER + HASH_INCREMENT
    return current


def _keyed(hashes: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``hashes[..., None]`` extended by each key: shape ``hashes.shape + (depth,)``."""
    return (hashes[..., None] + keys) * HASH_MULTIPLIER + HASH_INCREMENT


def synthid_sampling_table(size: int, seed: int, device=None) -> torch.Tensor:
    """The 0/1 int64 table the g-values are read from: ``torch.randint(0, 2)`` under a generator on
    ``device`` seeded with ``seed`` (the table transformers' processor draws)."""
    device = torch.device(device if device is not None else "cpu")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return torch.randint(0, 2, (size,), generator=generator, device=device)


def _g_from_hashes(hashes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    # `%` is torch.remainder: the sign of the divisor, so a negative (wrapped) hash maps into the table.
    return table[hashes % table.shape[0]]


def ngram_g_values(input_ids: torch.Tensor, ngram_len: int, keys: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The g-values of every n-gram of ``input_ids`` (``[batch, length]``): ``[batch, length - ngram_len + 1,
    depth]`` int64, the value its last token got when it was generated after the other ``ngram_len - 1``."""
    ngrams = input_ids.unfold(1, ngram_len, 1)
    start = torch.ones((), dtype=torch.long, device=input_ids.device)
    return _g_from_hashes(_keyed(accumulate_hash(start, ngrams), keys), table)


def context_repetition_mask(input_ids: torch.Tensor, ngram_len: int, context_history_size: int) -> torch.Tensor:
    """``[batch, length - ngram_len + 1]`` bool: False where the n-gram's context (its first ``ngram_len - 1``
    tokens) hashes like one of the previous ``context_history_size`` contexts of the row (or, within the first
    ``context_history_size`` contexts, like the zero hash the empty history holds), True elsewhere.

    One comparison of every context with every earlier one in its window (``[batch, n, n]``), no loop."""
    contexts = input_ids[:, :-1].unfold(1, ngram_len - 1, 1)
    start = torch.ones((), dtype=torch.long, device=input_ids.device)
    hashes = accumulate_hash(start, contexts)  # [batch, n]
    count = hashes.shape[1]
    position = torch.arange(count, device=input_ids.device)
    earlier = position[None, :] < position[:, None]
    in_window = position[None, :] >= position[:, None] - context_history_size
    same = hashes[:, :, None] == hashes[:, None, :]
    repeated = (same & (earlier & in_window)).any(dim=2)
    repeated |= (hashes == 0) & (position < context_history_size)
    return ~repeated


def eos_token_mask(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """``[batch, length]`` bool: True before the first ``eos_token_id`` of each row, False from it on."""
    return (input_ids == eos_token_id).cumsum(dim=1) == 0


def tournament_log_probs(scores: torch.Tensor, g_values: torch.Tensor) -> torch.Tensor:
    """The watermarked log-probabilities of ``scores`` (``[batch, vocab]``, log space) for the g-values
    ``[batch, vocab, depth]``: the tournament's layers applied in order to ``softmax(scores)``; entries whose log
    is not finite become the dtype's lowest finite value."""
    probs = torch.softmax(scores, dim=1)
    g_values = g_values.to(probs.dtype)
    for layer in range(g_values.shape[2]):
        g_layer = g_values[:, :, layer]
        mass = (g_layer * probs).sum(dim=1, keepdim=True)
        probs = probs * ((1 + g_layer) - mass)
    log_probs = torch.log(probs)
    return torch.where(torch.isfinite(log_probs), log_probs, torch.finfo(log_probs.dtype).min)


def expected_mean_g_value(vocab_size: int, coinflip_prob: float = 0.5) -> float:
    """The expected mean g-value of one-layer watermarked text under a uniform model distribution."""
    return coinflip_prob + coinflip_prob * (1 - coinflip_prob) * (1 - (1 / vocab_size))


def _check_keys(keys) -> list[int]:
    if isinstance(keys, torch.Tensor):
        keys = keys.tolist()
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
        raise ArgumentTypeError(f"`keys` has to be a non-empty list of integers, but is {keys!r}")
    keys = list(keys)
    if not keys or not all(is_integer(key) for key in keys):
        raise ValueError(f"`keys` has to be a non-empty list of integers, but is {keys!r}")
    if not all(-2**63 <= int(key) < 2**63 for key in keys):
        raise ValueError(f"`keys` has to hold int64 values, but is {keys!r}")
    return [int(key) for key in keys]


def _check_id_matrix(input_ids, name: str = "input_ids") -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor):
        raise ArgumentTypeError(f"`{name}` has to be a torch.Tensor, but is {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"`{name}` has to have shape [batch, length], but has shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ArgumentTypeError(f"`{name}` has to hold integer token ids, but has dtype {input_ids.dtype}")
    return input_ids.long()


class SynthIDTextWatermarkLogitsProcessor(LogitsProcessor):
    """SynthID Text watermarking of the scores (the scheme is in the module docstring); transformers v4.57's
    ``SynthIDTextWatermarkLogitsProcessor``, same arguments, same scores.

    Args:
        ngram_len: the n-gram length: the context is the previous ``ngram_len - 1`` generated tokens.
        keys: one int64 watermarking key per tournament layer.
        sampling_table_size: size of the 0/1 table the hashes index (at most ``2**24``).
        sampling_table_seed: seed of the table's generator.
        context_history_size: how many previous contexts a row remembers to skip repeated ones.
        device: where the table, keys and state live (the table depends on the device's generator).
        skip_first_ngram_calls: leave the scores unchanged for the first ``ngram_len - 1`` steps.
        debug_mode: replace the scores by ones before watermarking (to test the implementation).
        rollback_window: how far behind its longest history a row can :meth:`rollback` (turbogen's addition,
            256 by default; speculative decoding rolls back at most the drafts of one step).

    Both protocols are served, with the same state:

    - transformers' processor: ``processor(input_ids, scores)`` once per step. The first call starts the
      state; every later call first takes ``input_ids[:, -1]`` as the token generated after the previous call.
    - turbogen's logits stage (:mod:`turbogen.processors.stages`): ``apply`` watermarks with the state as it
      is and changes nothing; ``accept(tokens)`` advances it (the state is a function of the accepted tokens
      alone, never of how often ``apply`` ran), ``rollback`` and ``reset`` are per row. ``reorder`` leaves the
      state in place, exactly as transformers' processor, whose state never follows the beams of beam search.
      ``generate()`` uses this protocol, so speculative decoding keeps the output of plain decoding.

    The step counter (``skip_first_ngram_calls``) is per row; transformers keeps one for the whole batch,
    which is the same as long as no row is reset or rolled back alone.
    """

    #: The stage never reads ``input_ids`` in ``apply``.
    reads_input_ids = False

    def __init__(self, ngram_len: int, keys: Sequence[int], sampling_table_size: int, sampling_table_seed: int,
                 context_history_size: int, device=None, skip_first_ngram_calls: bool = False,
                 debug_mode: bool = False, rollback_window: int = DEFAULT_SYNTHID_ROLLBACK_WINDOW):
        self.ngram_len = check_int(ngram_len, "ngram_len", minimum=1)
        keys = _check_keys(keys)
        self.sampling_table_size = check_int(sampling_table_size, "sampling_table_size", minimum=1)
        if self.sampling_table_size > MAX_SAMPLING_TABLE_SIZE:
            raise ValueError(f"`sampling_table_size` has to be at most 2**24, but is {sampling_table_size}")
        self.sampling_table_seed = check_int(sampling_table_seed, "sampling_table_seed")
        self.context_history_size = check_int(context_history_size, "context_history_size", minimum=1)
        for name, flag in (("skip_first_ngram_calls", skip_first_ngram_calls), ("debug_mode", debug_mode)):
            if not isinstance(flag, bool):
                raise ArgumentTypeError(f"`{name}` has to be a bool, but is {flag!r}")
        self.skip_first_ngram_calls = skip_first_ngram_calls
        self.debug_mode = debug_mode
        self.rollback_window = check_int(rollback_window, "rollback_window", minimum=0)
        self.device = torch.device(device if device is not None else "cpu")
        self.keys = torch.tensor(keys, dtype=torch.long, device=self.device)
        self.sampling_table = synthid_sampling_table(self.sampling_table_size, self.sampling_table_seed, self.device)
        self._tokens: Optional[torch.Tensor] = None  # [rows, ngram_len - 1 + window], ring of accepted tokens
        self._hashes: Optional[torch.Tensor] = None  # [rows, history + window], ring of context hashes
        self._calls: Optional[torch.Tensor] = None  # [rows], tokens accepted (= steps watermarked before)
        self._high: Optional[torch.Tensor] = None  # [rows], the most tokens a row has held (ring validity)

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self.keys.shape[0]

    @property
    def _first_watermarked_call(self) -> int:
        """The index of the first step whose context is watermarked and remembered."""
        return self.ngram_len - 1 if self.skip_first_ngram_calls else 0

    def reset_state(self) -> None:
        """Forget every row: the next call or ``apply`` starts over (transformers builds a new processor)."""
        self._tokens = self._hashes = self._calls = self._high = None

    def _ensure_state(self, rows: int, device) -> None:
        if self._calls is not None:
            if self._calls.shape[0] != rows:
                raise ValueError(
                    f"the watermarking state holds {self._calls.shape[0]} rows but the scores have {rows}; call "
                    "reset_state() to start over with another batch"
                )
            return
        width = max(self.ngram_len - 1 + self.rollback_window, 1)
        self._tokens = torch.zeros((rows, width), dtype=torch.long, device=device)
        self._hashes = torch.zeros((rows, self.context_history_size + self.rollback_window), dtype=torch.long,
                                   device=device)
        self._calls = torch.zeros(rows, dtype=torch.long, device=device)
        self._high = torch.zeros(rows, dtype=torch.long, device=device)

    def _context(self) -> torch.Tensor:
        """``[rows, ngram_len - 1]``: the last accepted tokens, zeros before a row's first one."""
        offsets = torch.arange(-(self.ngram_len - 1), 0, device=self._calls.device)
        index = self._calls[:, None] + offsets[None, :]
        tokens = self._tokens.gather(1, index.remainder(self._tokens.shape[1]))
        return torch.where(index >= 0, tokens, 0)

    def _context_hash(self) -> torch.Tensor:
        start = torch.ones((), dtype=torch.long, device=self._calls.device)
        return accumulate_hash(start, self._context())

    def _is_repeated(self, context_hash: torch.Tensor) -> torch.Tensor:
        """``[rows]``: the context hash is among the remembered ones (the last ``context_history_size``
        contexts watermarked, and the zeros the history starts with while it holds fewer)."""
        history = self.context_history_size
        remembered = (self._calls - self._first_watermarked_call).clamp(min=0)  # contexts pushed so far
        back = torch.arange(1, history + 1, device=self._calls.device)
        index = self._calls[:, None] - back[None, :]
        hashes = self._hashes.gather(1, index.remainder(self._hashes.shape[1]))
        valid = back[None, :] <= remembered[:, None]
        repeated = ((hashes == context_hash[:, None]) & valid).any(dim=1)
        return repeated | ((context_hash == 0) & (remembered < history))

    def _watermark(self, scores: torch.Tensor) -> torch.Tensor:
        if self.debug_mode:
            scores = torch.ones_like(scores)
        context_hash = self._context_hash()
        candidates = torch.arange(scores.shape[1], device=scores.device)
        hashes = _keyed((context_hash[:, None] + candidates[None, :]) * HASH_MULTIPLIER + HASH_INCREMENT,
                        self.keys.to(scores.device))
        g_values = _g_from_hashes(hashes, self.sampling_table.to(scores.device))
        watermarked = tournament_log_probs(scores, g_values)
        keep = self._is_repeated(context_hash)
        if self.skip_first_ngram_calls:
            keep |= self._calls + 1 < self.ngram_len
        return torch.where(keep[:, None], scores, watermarked)

    # -- transformers' protocol ------------------------------------------------------------------------------

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        if self._calls is None:
            self._ensure_state(scores.shape[0], scores.device)
        else:
            self.accept(input_ids[:, -1])
        return self._watermark(scores)

    # -- turbogen's stage protocol ------------------------------------------------------------------------------

    def apply(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """The watermarked scores for the state as it is (``input_ids`` is not read)."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.dtype.is_floating_point:
            raise ValueError("`scores` has to be a [rows, vocab] floating-point tensor")
        self._ensure_state(scores.shape[0], scores.device)
        return self._watermark(scores)

    def accept(self, tokens: torch.LongTensor) -> None:
        """Append ``tokens`` (``[rows]`` or ``[rows, n]``) to each row: the context of the step that chose a
        token is remembered, then the token enters the context."""
        tokens = tokens.reshape(tokens.shape[0], -1).long()
        self._ensure_state(tokens.shape[0], tokens.device)
        for column in range(tokens.shape[1]):
            slot = self._calls[:, None]
            self._hashes.scatter_(1, slot.remainder(self._hashes.shape[1]), self._context_hash()[:, None])
            self._tokens.scatter_(1, slot.remainder(self._tokens.shape[1]), tokens[:, column:column + 1])
            self._calls.add_(1)
        torch.maximum(self._high, self._calls, out=self._high)

    def reset(self, rows: torch.LongTensor, prompt_ids: torch.LongTensor) -> None:
        """Rows start over (the prompt never enters the context, as in transformers)."""
        if self._calls is not None:
            rows = rows.to(self._calls.device).long()
            self._calls.index_fill_(0, rows, 0)
            self._high.index_fill_(0, rows, 0)

    def rollback(self, rows: torch.LongTensor, n: torch.LongTensor) -> None:
        """Rows forget their last ``n[i]`` accepted tokens and the contexts remembered for them. A row can go
        back at most ``rollback_window`` tokens behind the longest history it has held (``ValueError`` beyond:
        the state keeps only that much; this check reads one flag back to the host)."""
        if self._calls is None:
            return
        rows = rows.to(self._calls.device).long()
        n = torch.as_tensor(n, device=self._calls.device).long().expand(rows.shape)
        remaining = (self._calls[rows] - n).clamp(min=0)
        # The rings hold the last `rollback_window` tokens (and contexts) beyond what a row needs.
        if bool((remaining < self._high[rows] - self.rollback_window).any()):
            raise ValueError(
                f"cannot roll back further than rollback_window={self.rollback_window} tokens behind a row's "
                "longest history; build the processor with a larger rollback_window"
            )
        self._calls.index_put_((rows,), remaining)

    def reorder(self, index: torch.LongTensor) -> None:
        """Nothing moves: transformers' processor keeps each row's state where it is during beam search."""

    # -- transformers' helpers ------------------------------------------------------------------------------

    def compute_g_values(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """``[batch, length - ngram_len + 1, depth]``: the g-value of every n-gram's last token."""
        input_ids = _check_id_matrix(input_ids)
        return ngram_g_values(input_ids, self.ngram_len, self.keys.to(input_ids.device),
                              self.sampling_table.to(input_ids.device))

    def compute_context_repetition_mask(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """``[batch, length - ngram_len + 1]``: True where the n-gram's context was not seen in the previous
        ``context_history_size`` contexts (see :func:`context_repetition_mask`)."""
        return context_repetition_mask(_check_id_matrix(input_ids), self.ngram_len, self.context_history_size)

    def compute_eos_token_mask(self, input_ids: torch.LongTensor, eos_token_id: int) -> torch.Tensor:
        """``[batch, length]``: True before each row's first ``eos_token_id``."""
        return eos_token_mask(_check_id_matrix(input_ids), eos_token_id)

    def expected_mean_g_value(self, vocab_size: int, coinflip_prob: float = 0.5) -> float:
        return expected_mean_g_value(vocab_size, coinflip_prob)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ngram_len={self.ngram_len}, keys={self.keys.tolist()}, "
                f"sampling_table_size={self.sampling_table_size}, sampling_table_seed={self.sampling_table_seed}, "
                f"context_history_size={self.context_history_size}, device={str(self.device)!r}, "
                f"skip_first_ngram_calls={self.skip_first_ngram_calls}, debug_mode={self.debug_mode})")
