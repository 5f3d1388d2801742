"""``turbogen.ops.apply_penalties`` and :class:`PenaltyState`: the repetition, presence and frequency
penalties from per-row token state that the decode loop updates, never rescanning the history.

The state (:class:`PenaltyState`) keeps, per row, how often each token occurred (``seen``, from position
``seen_from`` on: the repetition penalty's "seen" set; ``generated``, from ``generated_from`` on: the
presence / frequency counts), a bitmask of the tokens that may have a nonzero count, and a ring of the
last accepted tokens for rolling rejected speculative tokens back. ``accept`` updates it in O(tokens);
the kernels read only the tokens whose mask bit is set, so a penalty costs O(distinct tokens) per row,
and the fused sampler (``turbogen.ops.sample(..., penalties=...)``) applies it while it reads the logits
anyway. The arithmetic is :mod:`turbogen.ref.penalties` (transformers' bit for bit).
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple, Optional, Union

import torch

from .. import _ext
from . import _native
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare
from ._validate import check_logits, per_row

__all__ = ["PenaltyState", "PenaltyTensors", "apply_penalties", "apply_penalty_tensors"]

#: Tokens per mask word.
_WORD_BITS = 32


class PenaltyTensors(NamedTuple):
    """What the penalty kernels read: a :class:`PenaltyState`'s ``mask``, ``seen`` and ``generated`` (either
    count may be None when its penalty is off) and the validated float32 ``[1]`` or ``[rows]`` parameters."""

    mask: torch.Tensor
    seen: Optional[torch.Tensor]
    generated: Optional[torch.Tensor]
    repetition: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor


def _check_int(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _ids(value, name: str, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    if value.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(value.shape)}")
    return value.long()


def _values_checkable(*tensors: torch.Tensor) -> bool:
    """Whether reading tensor values costs nothing: eager, on the host."""
    return not torch.compiler.is_compiling() and all(tensor.device.type == "cpu" for tensor in tensors)


def _check_token_range(tokens: torch.Tensor, vocab_size: int, name: str) -> None:
    if tokens.numel() and _values_checkable(tokens) and bool(((tokens < 0) | (tokens >= vocab_size)).any()):
        raise ValueError(f"{name} must hold token ids in [0, {vocab_size}), got {tokens.min().item()}.."
                         f"{tokens.max().item()}")


def pack_token_bits(present: torch.Tensor) -> torch.Tensor:
    """``[k, vocab]`` bool -> ``[k, ceil(vocab / 32)]`` int32 words, bit ``t % 32`` of word ``t // 32`` set
    where ``present[:, t]``."""
    rows, vocab = present.shape
    words = -(-vocab // _WORD_BITS)
    padded = torch.nn.functional.pad(present, (0, words * _WORD_BITS - vocab)).view(rows, words, _WORD_BITS)
    weights = torch.ones(_WORD_BITS, dtype=torch.int64, device=present.device) << torch.arange(
        _WORD_BITS, device=present.device)
    # Bit 31 makes the sum exceed int32; the conversion wraps it into the sign bit, which is the word's bit 31.
    return (padded.long() * weights).sum(-1).to(torch.int32)


class PenaltyState:
    """Per-row token state for the penalties (device tensors, one row per sequence).

    Args:
        prompt_ids: ``[rows, length]`` int64, each row's history so far (padding included where the model
            sees it: transformers counts left padding for the repetition penalty).
        vocab_size: the width of the logits the state will penalise.
        seen_from: position from which tokens count as seen (the repetition penalty; transformers'
            ``prompt_ignore_length``): an int, a ``[rows]`` tensor, or None to keep no ``seen`` counts.
        generated_from: position from which tokens count for presence / frequency (the prompt length in
            ``generate``): an int, a ``[rows]`` tensor, or None to keep no ``generated`` counts.
        rollback_window: the most tokens a row can roll back at once (counted back from the last accept).

    Attributes (all contiguous):
        mask: int32 ``[rows, ceil(vocab / 32)]``: bit ``t % 32`` of word ``t // 32`` is set for every token
            with a nonzero ``seen`` or ``generated`` count (and may stay set after a rollback: a superset).
        seen, generated: int32 ``[rows, vocab]`` counts, or None.
        seen_from, generated_from: int64 ``[rows]`` (None with their counts).
        lengths: int64 ``[rows]``: each row's history length, the position of its next token.
        recent: int64 ``[rows, rollback_window]``: the token at position ``p`` in slot ``p % rollback_window``.
        retained: int64 ``[rows]``: how many of the last accepted tokens can still be rolled back.

    The verbs (``accept``, ``rollback``, ``reset``, ``reorder``) update the tensors in place, so a captured
    step keeps reading the same buffers.

    Arrays from other libraries (DLPack: numpy, JAX, CuPy, ...) are accepted wherever the constructor and
    the verbs take a tensor (numpy int64 or JAX int32 token ids, say). The state itself stays torch, on
    ``prompt_ids``' device: its attributes are the buffers the kernels read and the verbs update in place,
    and :meth:`tensors` returns them as they are (a handle for :func:`turbogen.ops.sample` and
    :class:`turbogen.ops.Sampler`, never an array of the caller's kind: a JAX view of buffers the verbs
    keep writing would break JAX's immutability). ``seen_from`` / ``generated_from`` tensors and arrays are
    copied, since the verbs update those in place. ``numpy.from_dlpack(state.lengths)`` reads one without a
    copy.
    """

    @accepts_dlpack
    def __init__(self, prompt_ids: torch.Tensor, vocab_size: int, *, seen_from: Union[int, torch.Tensor, None] = 0,
                 generated_from: Union[int, torch.Tensor, None] = None, rollback_window: int = 64):
        prompt_ids = _ids(prompt_ids, "prompt_ids", (2,))
        self.vocab_size = _check_int(vocab_size, "vocab_size", minimum=1)
        self.window = _check_int(rollback_window, "rollback_window", minimum=1)
        if seen_from is None and generated_from is None:
            raise ValueError("seen_from and generated_from are both None: the state would count nothing")
        _check_token_range(prompt_ids, self.vocab_size, "prompt_ids")
        rows, length = prompt_ids.shape
        device = prompt_ids.device
        self.seen_from = None if seen_from is None else self._positions(seen_from, "seen_from", rows, device)
        self.generated_from = (None if generated_from is None
                               else self._positions(generated_from, "generated_from", rows, device))
        self.seen = None if seen_from is None else self._counts(prompt_ids, self.seen_from)
        self.generated = None if generated_from is None else self._counts(prompt_ids, self.generated_from)
        self.mask = pack_token_bits(self._present(slice(None)))
        self.lengths = torch.full((rows,), length, dtype=torch.int64, device=device)
        self.recent = torch.zeros(rows, self.window, dtype=torch.int64, device=device)
        self.retained = torch.zeros(rows, dtype=torch.int64, device=device)

    # -- construction helpers --------------------------------------------------------------------------

    @staticmethod
    def _positions(value, name: str, rows: int, device: torch.device) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            value = _ids(value, name, (0, 1))
            if value.dim() == 1 and value.shape[0] != rows:
                raise ValueError(f"{name} must be an int or a [{rows}] tensor, got shape {tuple(value.shape)}")
            if _values_checkable(value) and bool((value < 0).any()):
                raise ValueError(f"{name} must be >= 0, got {value.min().item()}")
            # A copy: the state updates its starts in place (reorder, reset), never the caller's tensor.
            return value.to(device).expand(rows).clone(memory_format=torch.contiguous_format)
        return torch.full((rows,), _check_int(value, name), dtype=torch.int64, device=device)

    def _counts(self, prompt_ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """int32 ``[k, vocab]`` counts of the prompt tokens at positions ``>= start`` (``[k]``)."""
        positions = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        counted = (positions.unsqueeze(0) >= start.unsqueeze(1)).to(torch.int32)
        counts = torch.zeros(prompt_ids.shape[0], self.vocab_size, dtype=torch.int32, device=prompt_ids.device)
        return counts.scatter_add_(1, prompt_ids, counted)

    def _present(self, rows) -> torch.Tensor:
        present = None
        for counts in (self.seen, self.generated):
            if counts is not None:
                nonzero = counts[rows] > 0
                present = nonzero if present is None else present | nonzero
        return present

    @property
    def rows(self) -> int:
        return self.lengths.shape[0]

    @property
    def device(self) -> torch.device:
        return self.lengths.device

    def __repr__(self) -> str:
        tracked = [name for name in ("seen", "generated") if getattr(self, name) is not None]
        return (f"PenaltyState(rows={self.rows}, vocab_size={self.vocab_size}, counts={tracked}, "
                f"rollback_window={self.window}, device={self.device})")

    def widen_vocabulary(self, vocab_size: int) -> None:
        """Grow the counts (and the mask) to ``vocab_size`` columns of zeros, for a caller that learns the
        vocabulary late. Reallocates the tensors: a captured step must be built after it."""
        vocab_size = _check_int(vocab_size, "vocab_size", minimum=self.vocab_size)
        extra = vocab_size - self.vocab_size
        if extra == 0:
            return
        self.seen, self.generated = (None if counts is None else torch.nn.functional.pad(counts, (0, extra))
                                     for counts in (self.seen, self.generated))
        words = -(-vocab_size // _WORD_BITS)
        self.mask = torch.nn.functional.pad(self.mask, (0, words - self.mask.shape[1]))
        self.vocab_size = vocab_size

    def move_to(self, device: Union[str, torch.device]) -> None:
        """Move every tensor to ``device`` (reallocating them)."""
        for name in ("mask", "seen", "generated", "seen_from", "generated_from", "lengths", "recent", "retained"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))

    # -- the verbs ---------------------------------------------------------------------------------------

    @accepts_dlpack
    def accept(self, tokens: torch.Tensor) -> None:
        """Append ``tokens`` (``[rows]`` or ``[rows, n]`` int64) to every row: O(rows x n)."""
        tokens = _ids(tokens, "tokens", (1, 2))
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(1)
        if tokens.shape[0] != self.rows:
            raise ValueError(f"tokens has {tokens.shape[0]} rows, but the state holds {self.rows} rows")
        tokens = tokens.to(self.device).contiguous()
        if tokens.shape[1] == 0:
            return
        if self.device.type == "cpu" and not torch.compiler.is_compiling() and _ext.extension_error() is None:
            _native.launch_accept_penalty_tokens(self, tokens)  # checks the ids before writing anything
            return
        _check_token_range(tokens, self.vocab_size, "tokens")
        self._accept_with_torch(tokens)

    def _accept_with_torch(self, tokens: torch.Tensor) -> None:
        """:meth:`accept` in torch ops (any device, compilable); the C++ launcher computes the same."""
        accepted = tokens.shape[1]
        positions = self.lengths.unsqueeze(1) + torch.arange(accepted, device=self.device)
        counted = torch.zeros(tokens.shape, dtype=torch.bool, device=self.device)
        for counts, start in ((self.seen, self.seen_from), (self.generated, self.generated_from)):
            if counts is not None:
                inside = positions >= start.unsqueeze(1)
                counts.scatter_add_(1, tokens, inside.to(torch.int32))
                counted |= inside
        # Column by column, so that no scatter writes one word twice (two tokens of a row may share it).
        bits = torch.ones_like(tokens, dtype=torch.int32) << (tokens & (_WORD_BITS - 1)).to(torch.int32)
        bits = torch.where(counted, bits, torch.zeros_like(bits))
        words = tokens >> 5
        for column in range(accepted):
            word = words[:, column:column + 1]
            self.mask.scatter_(1, word, self.mask.gather(1, word) | bits[:, column:column + 1])
        kept = min(accepted, self.window)
        self.recent.scatter_(1, positions[:, -kept:] % self.window, tokens[:, -kept:])
        self.lengths += accepted
        self.retained.add_(accepted).clamp_(max=self.window)

    @accepts_dlpack
    def rollback(self, rows: torch.Tensor, n: torch.Tensor) -> None:
        """Forget the last ``n[i]`` accepted tokens of row ``rows[i]`` (``rows`` distinct; ``0 <= n[i] <=
        retained[rows[i]]``, checked when that costs no host sync). Mask bits stay set (a superset)."""
        rows = _ids(rows, "rows", (1,)).to(self.device)
        n = _ids(n, "n", (1,)).to(self.device)
        if n.shape != rows.shape:
            raise ValueError(f"n has shape {tuple(n.shape)}, but rows has shape {tuple(rows.shape)}")
        if _values_checkable(rows, n):
            if bool(((rows < 0) | (rows >= self.rows)).any()):
                raise ValueError(f"rows must be in [0, {self.rows}), got {rows.tolist()}")
            limits = self.retained.index_select(0, rows)
            if bool(((n < 0) | (n > limits)).any()):
                raise ValueError(f"n must be in [0, retained] for each row (at most rollback_window={self.window} "
                                 f"accepted tokens), got {n.tolist()} for rows {rows.tolist()} holding "
                                 f"{limits.tolist()}")
        back = torch.arange(self.window, device=self.device)
        positions = self.lengths.index_select(0, rows).unsqueeze(1) - 1 - back
        tokens = self.recent.index_select(0, rows).gather(1, positions % self.window)
        forgotten = back < n.unsqueeze(1)
        for counts, start in ((self.seen, self.seen_from), (self.generated, self.generated_from)):
            if counts is not None:
                drop = (forgotten & (positions >= start.index_select(0, rows).unsqueeze(1))).to(torch.int32)
                flat = rows.unsqueeze(1) * self.vocab_size + tokens
                counts.view(-1).scatter_add_(0, flat.view(-1), -drop.view(-1))
        self.lengths.index_add_(0, rows, -n)
        self.retained.index_add_(0, rows, -n)

    @accepts_dlpack
    def reset(self, rows: torch.Tensor, prompt_ids: torch.Tensor, *,
              seen_from: Union[int, torch.Tensor, None] = None,
              generated_from: Union[int, torch.Tensor, None] = None) -> None:
        """Restart ``rows`` (``[k]``, distinct) from ``prompt_ids`` (``[k, length]``); ``seen_from`` /
        ``generated_from`` (an int or ``[k]``) replace those rows' counting starts when given."""
        rows = _ids(rows, "rows", (1,)).to(self.device)
        prompt_ids = _ids(prompt_ids, "prompt_ids", (2,)).to(self.device)
        if prompt_ids.shape[0] != rows.shape[0]:
            raise ValueError(f"prompt_ids has {prompt_ids.shape[0]} rows, but rows names {rows.shape[0]}")
        _check_token_range(prompt_ids, self.vocab_size, "prompt_ids")
        if _values_checkable(rows) and bool(((rows < 0) | (rows >= self.rows)).any()):
            raise ValueError(f"rows must be in [0, {self.rows}), got {rows.tolist()}")
        for name, new_start in (("seen_from", seen_from), ("generated_from", generated_from)):
            start = getattr(self, name)
            if new_start is not None:
                if start is None:
                    raise ValueError(f"{name} was given, but the state keeps no counts for it")
                start.index_copy_(0, rows, self._positions(new_start, name, rows.shape[0], self.device))
        for counts, start in ((self.seen, self.seen_from), (self.generated, self.generated_from)):
            if counts is not None:
                counts.index_copy_(0, rows, self._counts(prompt_ids, start.index_select(0, rows)))
        self.mask.index_copy_(0, rows, pack_token_bits(self._present(rows)))
        self.lengths.index_fill_(0, rows, prompt_ids.shape[1])
        self.retained.index_fill_(0, rows, 0)

    @accepts_dlpack
    def reorder(self, index: torch.Tensor) -> None:
        """New row ``r`` becomes old row ``index[r]`` (beam search), in place."""
        index = _ids(index, "index", (1,)).to(self.device)
        if index.shape[0] != self.rows:
            raise ValueError(f"index has {index.shape[0]} entries, but the state holds {self.rows} rows")
        for state in (self.mask, self.seen, self.generated, self.seen_from, self.generated_from, self.lengths,
                      self.recent, self.retained):
            if state is not None:
                state.copy_(state.index_select(0, index))

    # -- what the kernels read -----------------------------------------------------------------------------

    @accepts_dlpack(convert_results=False)
    def tensors(self, *, repetition_penalty: Union[float, torch.Tensor] = 1.0,
                presence_penalty: Union[float, torch.Tensor] = 0.0,
                frequency_penalty: Union[float, torch.Tensor] = 0.0) -> PenaltyTensors:
        """The validated kernel inputs for these penalties (scalars or ``[rows]`` tensors). A count the
        penalties leave unused (repetition 1, presence and frequency 0 as Python numbers) is not passed."""
        repetition, _ = per_row(repetition_penalty, "repetition_penalty", self.rows, self.device, torch.float32,
                                low=0.0, low_inclusive=False, high=float("inf"), high_inclusive=False)
        presence, _ = per_row(presence_penalty, "presence_penalty", self.rows, self.device, torch.float32,
                              low=-float("inf"), high=float("inf"), low_inclusive=False, high_inclusive=False)
        frequency, _ = per_row(frequency_penalty, "frequency_penalty", self.rows, self.device, torch.float32,
                               low=-float("inf"), high=float("inf"), low_inclusive=False, high_inclusive=False)
        repeats = isinstance(repetition_penalty, torch.Tensor) or repetition_penalty != 1.0
        shifts = any(isinstance(p, torch.Tensor) or p != 0.0 for p in (presence_penalty, frequency_penalty))
        if repeats and self.seen is None:
            raise ValueError("repetition_penalty needs seen counts, but the state was built with seen_from=None")
        if shifts and self.generated is None:
            raise ValueError("presence_penalty / frequency_penalty need generated counts, but the state was built "
                             "with generated_from=None")
        return PenaltyTensors(self.mask, self.seen if repeats else None, self.generated if shifts else None,
                              repetition, presence, frequency)


@accepts_dlpack(writes=("out",))
def apply_penalties(logits: torch.Tensor, state: PenaltyState, *, repetition_penalty: Union[float, torch.Tensor] = 1.0,
                    presence_penalty: Union[float, torch.Tensor] = 0.0,
                    frequency_penalty: Union[float, torch.Tensor] = 0.0, out: Optional[torch.Tensor] = None,
                    backend: Optional[str] = None) -> torch.Tensor:
    """The repetition, presence and frequency penalties of ``state``'s rows applied to ``logits``.

    Per row ``r`` and token ``t`` (:mod:`turbogen.ref.penalties`, transformers' arithmetic bit for bit):

    1. if ``t`` was seen (``state.seen[r, t] > 0``): ``x * repetition_penalty`` if ``x < 0``, else
       ``x / repetition_penalty`` (transformers' ``RepetitionPenaltyLogitsProcessor``);
    2. if ``t`` was generated ``c > 0`` times (``state.generated[r, t]``):
       ``x - frequency_penalty * c - presence_penalty`` (vLLM's presence / frequency penalties);

    in float32, each rounded to the logits' dtype. Only tokens in ``state.mask`` are read and written, so
    the cost is that of the distinct tokens of each row, not of the vocabulary (plus the copy into a new
    tensor, unless ``out`` is ``logits``).

    Args:
        logits: ``[rows, vocab]`` float32, float16 or bfloat16 with contiguous rows, on ``state``'s device,
            ``vocab == state.vocab_size``.
        state: the rows' :class:`PenaltyState`.
        repetition_penalty: > 0, a float or ``[rows]`` tensor (1 = off).
        presence_penalty, frequency_penalty: finite floats or ``[rows]`` tensors (0 = off).
        out: a contiguous tensor like ``logits`` to write into; ``out=logits`` penalises in place (outside
            ``torch.compile``).
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``, else by device).

    Returns:
        the penalised logits, ``out`` when given.
    """
    penalties = _checked_tensors(logits, state, repetition_penalty, presence_penalty, frequency_penalty)
    if out is None:
        return APPLY_PENALTIES(logits, *penalties, backend=backend)
    if not isinstance(out, torch.Tensor) or out.shape != logits.shape or out.dtype != logits.dtype \
            or out.device != logits.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {logits.dtype} tensor of shape {tuple(logits.shape)} on "
                         f"{logits.device}")
    if torch.compiler.is_compiling():
        raise ValueError("out= cannot be used inside torch.compile; use the returned tensor")
    chosen = APPLY_PENALTIES.select_backend(logits.device, backend)
    if chosen == "ref":
        out.copy_(APPLY_PENALTIES.reference(logits, *penalties))
    elif logits.shape[0]:
        APPLY_PENALTIES.spec.launchers[chosen](logits, *penalties, out)
    return out


def apply_penalty_tensors(logits: torch.Tensor, penalties: PenaltyTensors, backend: Optional[str] = None) -> torch.Tensor:
    """:func:`apply_penalties` with kernel inputs already validated by :meth:`PenaltyState.tensors` for these
    logits' rows and vocabulary (a decode loop reuses them from step to step); only the logits are checked."""
    check_logits(logits)
    if logits.shape[0] != penalties.mask.shape[0] or -(-logits.shape[1] // _WORD_BITS) != penalties.mask.shape[1] \
            or logits.device != penalties.mask.device:
        raise ValueError(f"logits of shape {tuple(logits.shape)} on {logits.device} do not match the penalty state "
                         f"(mask of shape {tuple(penalties.mask.shape)} on {penalties.mask.device})")
    return APPLY_PENALTIES(logits, *penalties, backend=backend)


def _checked_tensors(logits, state, repetition_penalty, presence_penalty, frequency_penalty) -> PenaltyTensors:
    check_logits(logits)
    if not isinstance(state, PenaltyState):
        raise TypeError(f"state must be a turbogen.ops.PenaltyState, got {type(state).__name__}")
    if logits.shape != (state.rows, state.vocab_size) or logits.device != state.device:
        raise ValueError(f"logits must have shape [{state.rows}, {state.vocab_size}] on {state.device} (the "
                         f"state's rows and vocabulary), got {tuple(logits.shape)} on {logits.device}")
    return state.tensors(repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                         frequency_penalty=frequency_penalty)


# --- the op declaration ------------------------------------------------------------------------------

def _allocate_outputs(logits: torch.Tensor, mask: torch.Tensor, seen: Optional[torch.Tensor],
                      generated: Optional[torch.Tensor], repetition: torch.Tensor, presence: torch.Tensor,
                      frequency: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor like ``logits``; the inputs are :class:`PenaltyTensors` after the logits."""
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _launch_native(backend, logits, mask, seen, generated, repetition, presence, frequency, out) -> None:
    if logits.shape[0]:
        _native.launch_apply_penalties(backend, logits,
                                       PenaltyTensors(mask, seen, generated, repetition, presence, frequency), out)


def _launch_triton(logits, mask, seen, generated, repetition, presence, frequency, out) -> None:
    from ..kernels import penalties as kernels  # lazy: TRITON_INTERPRET must be set first on CPU

    if logits.shape[0]:
        kernels.launch_apply_penalties(logits, PenaltyTensors(mask, seen, generated, repetition, presence, frequency),
                                       out)


APPLY_PENALTIES = declare(OpSpec(
    name="apply_penalties",
    reference="apply_penalties",
    allocate_outputs=_allocate_outputs,
    launchers={"cpu": functools.partial(_launch_native, "cpu"),
               "triton": _launch_triton,
               "cuda": functools.partial(_launch_native, "cuda")},
))
