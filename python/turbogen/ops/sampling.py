"""``turbogen.ops.sample`` and ``turbogen.ops.filter_logits``: fused temperature / top-k / top-p /
min-p sampling, deterministic across backends and batch-invariant.

The function computed is defined by :mod:`turbogen.ref.sampling` (transformers' warpers, then
Gumbel-max with counter-based Philox noise; docs/design.md, "Randomness: the determinism contract");
docs/sampling.md describes the bit layout and the kernels' algorithm.
"""

from __future__ import annotations

import functools
import numbers
from typing import Optional

import torch

from . import _native
from ._counters import counter_tensor
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare
from ._validate import check_logits, per_row
from .penalties import APPLY_PENALTIES, PenaltyState, PenaltyTensors

#: The sample / filter_logits inputs that carry the penalties: ``PenaltyTensors``' fields, or all None.
_NO_PENALTIES = (None,) * len(PenaltyTensors._fields)


class _Filters:
    """Validated filter parameters, each a ``[1]`` or ``[rows]`` tensor on the logits' device:
    temperature float32, top_k int64, top_p float64 (so ``1 - top_p`` rounds as in transformers),
    min_p float32."""

    def __init__(self, rows: int, device: torch.device, temperature, top_k, top_p, min_p):
        if isinstance(top_k, bool) or not isinstance(top_k, (numbers.Integral, torch.Tensor)):
            raise TypeError(f"top_k must be an int or an integer tensor, got {type(top_k).__name__}")
        if isinstance(top_k, torch.Tensor) and (top_k.dtype.is_floating_point or top_k.dtype.is_complex
                                                or top_k.dtype == torch.bool):
            raise TypeError(f"top_k must be an int or an integer tensor, got a {top_k.dtype} tensor")
        self.temperature, _ = per_row(temperature, "temperature", rows, device, torch.float32,
                                      low=0.0, high=float("inf"), high_inclusive=False)
        self.top_k, _ = per_row(top_k, "top_k", rows, device, torch.int64, low=0)
        self.top_p, _ = per_row(top_p, "top_p", rows, device, torch.float64,
                                low=0.0, low_inclusive=False, high=1.0)
        self.min_p, _ = per_row(min_p, "min_p", rows, device, torch.float32, low=0.0, high=1.0)

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.temperature, self.top_k, self.top_p, self.min_p


@accepts_dlpack
def sample(logits: torch.Tensor, *, temperature: float | torch.Tensor = 1.0, top_k: int | torch.Tensor = 0,
           top_p: float | torch.Tensor = 1.0, min_p: float | torch.Tensor = 0.0, seed: int | torch.Tensor,
           offset: int | torch.Tensor = 0, return_logprobs: bool = False, penalty_state: PenaltyState | None = None,
           repetition_penalty: float | torch.Tensor = 1.0, presence_penalty: float | torch.Tensor = 0.0,
           frequency_penalty: float | torch.Tensor = 0.0, backend: str | None = None):
    """Draw one token per row from the filtered, tempered distribution of ``logits``.

    Filtering is exactly transformers' TemperatureLogitsWarper -> TopKLogitsWarper ->
    TopPLogitsWarper -> MinPLogitsWarper with ``min_tokens_to_keep=1``; the draw is Gumbel-max with
    counter-based Philox4x32-10 noise, so every backend returns the same token for the same inputs
    (up to float rounding exactly at a filter boundary, rare) and a row's token depends only on its
    own logits, seed and offset.

    Args:
        logits: ``[batch, vocab]`` float32, float16 or bfloat16 with contiguous rows. Arithmetic is
            float32. NaN reads as -inf. A row with a +inf logit follows the reference: top-k still
            applies, top-p and min-p keep every token (the probabilities are NaN, as in
            transformers), the token is the lowest-index +inf and its logprob is NaN.
        temperature: float or ``[batch]`` tensor, >= 0 and finite. 0 means greedy: the argmax,
            lowest index on ties (rows may mix 0 and > 0).
        top_k: int or ``[batch]`` integer tensor, >= 0; 0 means off. Keeps every token whose
            tempered logit is >= the k-th largest (ties included).
        top_p: float or ``[batch]`` tensor in (0, 1]; 1 means off.
        min_p: float or ``[batch]`` tensor in [0, 1]; 0 means off.
        seed: int or int64 tensor, read as 64 bits. A scalar ``S`` (int or 0-d tensor) means seed
            ``S + r`` for row ``r``; a ``[batch]`` tensor gives each row its own.
        offset: int, 0-d or ``[batch]`` int64 tensor: the Philox counter's high half (``generate``
            advances it by one per step). Seeds and offsets may live on the device, so a captured
            CUDA graph can advance them between replays.
        return_logprobs: also return the float32 log-probability of each drawn token under the
            filtered, tempered distribution (0 for greedy rows).
        penalty_state, repetition_penalty, presence_penalty, frequency_penalty: with a
            :class:`turbogen.ops.PenaltyState`, the draw is from
            ``turbogen.ops.apply_penalties(logits, penalty_state, ...)``, token for token and logprob for
            logprob, computed while the kernel reads the logits (one pass, nothing written).
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``,
            else by device).

    Returns:
        int64 ``[batch]`` token ids, -1 for a row with no finite logit; with ``return_logprobs``,
        the tuple ``(tokens, logprobs)`` (logprob -inf for a -1 row).
    """
    check_logits(logits)
    sampler = Sampler(logits.shape[0], logits.device, temperature=temperature, top_k=top_k, top_p=top_p,
                      min_p=min_p, seed=seed, backend=backend)
    penalties = _penalty_tensors(logits, penalty_state, repetition_penalty, presence_penalty, frequency_penalty)
    return sampler(logits, offset, return_logprobs=return_logprobs, penalties=penalties)


def _penalty_tensors(logits, state, repetition_penalty, presence_penalty, frequency_penalty):
    """The validated penalty inputs for ``logits``, or None without a state."""
    if state is None:
        if not (repetition_penalty == 1.0 and presence_penalty == 0.0 and frequency_penalty == 0.0) or any(
                isinstance(p, torch.Tensor) for p in (repetition_penalty, presence_penalty, frequency_penalty)):
            raise ValueError("repetition_penalty, presence_penalty and frequency_penalty need a penalty_state")
        return None
    from .penalties import _checked_tensors

    return _checked_tensors(logits, state, repetition_penalty, presence_penalty, frequency_penalty)


class Sampler:
    """:func:`sample` prepared for a decode loop: the filter parameters, the seeds and the backend are
    validated and placed on the device once, so each call only checks the logits and launches.

    ``Sampler(rows, device, temperature=..., top_k=..., top_p=..., min_p=..., seed=..., backend=...)``
    takes :func:`sample`'s arguments (``rows`` and ``device`` are those of the logits it will get);
    ``sampler(logits, offset)`` returns what ``sample(logits, offset=offset, ...)`` returns, token for
    token. It saves the per-call argument normalisation (about 30 us per call on this project's CPU);
    eager calls launch the kernel directly, calls inside ``torch.compile`` go through the registered
    custom op (whose dispatch costs another 30 us in eager mode).

    Arrays from other libraries (DLPack: numpy, JAX, CuPy, ...) may stand for any tensor: the per-row
    parameters and seeds are read without a copy where no dtype or device conversion is needed (so an
    int64 seeds array updated in place is seen by the next call, as a tensor would be), and each call
    returns its tokens (and logprobs) in the type of that call's logits: one sampler serves numpy and
    torch callers alike."""

    @accepts_dlpack
    def __init__(self, rows: int, device: torch.device | str, *, temperature: float | torch.Tensor = 1.0,
                 top_k: int | torch.Tensor = 0, top_p: float | torch.Tensor = 1.0,
                 min_p: float | torch.Tensor = 0.0, seed: int | torch.Tensor, backend: str | None = None):
        if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < 0:
            raise ValueError(f"rows must be a non-negative int, got {rows!r}")
        self.rows = int(rows)
        self.device = torch.device(device)
        self._filters = _Filters(self.rows, self.device, temperature, top_k, top_p, min_p)
        self._seeds = counter_tensor(seed, "seed", self.rows, self.device, scalar_is_first_of_rows=True)
        self.backend = SAMPLE.select_backend(self.device, backend)

    @accepts_dlpack
    def __call__(self, logits: torch.Tensor, offset: int | torch.Tensor = 0, *, return_logprobs: bool = False,
                 penalties: PenaltyTensors | None = None):
        """``penalties``: :meth:`turbogen.ops.PenaltyState.tensors` of the logits' rows, applied while drawing."""
        check_logits(logits)
        if logits.shape[0] != self.rows or logits.device != self.device:
            raise ValueError(f"logits must have {self.rows} rows on {self.device} (as the Sampler was built), "
                             f"got shape {tuple(logits.shape)} on {logits.device}")
        offsets = counter_tensor(offset, "offset", self.rows, self.device, scalar_is_first_of_rows=False)
        if penalties is not None and not isinstance(penalties, PenaltyTensors):
            raise TypeError(f"penalties must be turbogen.ops.PenaltyTensors (PenaltyState.tensors()), got "
                            f"{type(penalties).__name__}")
        tokens, logprobs = SAMPLE.run(self.backend, logits, *self._filters.as_tuple(), self._seeds, offsets,
                                      bool(return_logprobs), *(penalties or _NO_PENALTIES))
        return (tokens, logprobs) if return_logprobs else tokens


@accepts_dlpack
def filter_logits(logits: torch.Tensor, *, temperature: float | torch.Tensor = 1.0, top_k: int | torch.Tensor = 0,
                  top_p: float | torch.Tensor = 1.0, min_p: float | torch.Tensor = 0.0,
                  penalty_state: PenaltyState | None = None, repetition_penalty: float | torch.Tensor = 1.0,
                  presence_penalty: float | torch.Tensor = 0.0, frequency_penalty: float | torch.Tensor = 0.0,
                  backend: str | None = None) -> torch.Tensor:
    """The float32 tempered logits with the tokens that :func:`sample` would never draw at -inf.

    Same arguments and filter and penalty semantics as :func:`sample` (what ``output_scores`` returns in
    sampling mode). A temperature-0 row is a point mass: only the greedy token keeps its logit.
    Returns a new contiguous float32 ``[batch, vocab]`` tensor.
    """
    check_logits(logits)
    filters = _Filters(logits.shape[0], logits.device, temperature, top_k, top_p, min_p)
    penalties = _penalty_tensors(logits, penalty_state, repetition_penalty, presence_penalty, frequency_penalty)
    return FILTER_LOGITS(logits, *filters.as_tuple(), *(penalties or _NO_PENALTIES), backend=backend)


# --- the op declarations: the validated inputs, their outputs, the reference and the kernels -------

def _allocate_sample_outputs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                             top_p: torch.Tensor, min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor,
                             want_logprobs: bool, penalty_mask: Optional[torch.Tensor],
                             penalty_seen: Optional[torch.Tensor], penalty_generated: Optional[torch.Tensor],
                             repetition: Optional[torch.Tensor], presence: Optional[torch.Tensor],
                             frequency: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 ``[rows]`` tokens and float32 logprobs, ``[rows]`` when wanted, else empty.

    The inputs are validated: ``logits`` [rows, vocab] with contiguous rows; the filters as
    :class:`_Filters` holds them; ``seed`` int64 ``[rows]``; ``offset`` int64 ``[1]`` or ``[rows]``; the
    penalties as :class:`PenaltyTensors` holds them, or all None.
    """
    rows = logits.shape[0]
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(rows if want_logprobs else 0, dtype=torch.float32, device=logits.device)
    return tokens, logprobs


def _penalised_by_reference(logits, penalties):
    """The reference of sample / filter_logits with penalties: apply_penalties' reference first."""
    return logits if penalties[0] is None else APPLY_PENALTIES.reference(logits, *penalties)


def _sample_by_reference(reference, logits, temperature, top_k, top_p, min_p, seed, offset, want_logprobs,
                         *penalties):
    logits = _penalised_by_reference(logits, penalties)
    filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if want_logprobs:
        return reference(logits, **filters, seed=seed, offset=offset, return_logprobs=True)
    tokens = reference(logits, **filters, seed=seed, offset=offset)
    return tokens, torch.empty(0, dtype=torch.float32, device=logits.device)


def _penalty_argument(penalties) -> PenaltyTensors | None:
    return None if penalties[0] is None else PenaltyTensors(*penalties)


def _launch_sample_native(backend, logits, temperature, top_k, top_p, min_p, seed, offset, want_logprobs,
                          *penalties_and_outputs) -> None:
    *penalties, tokens, logprobs = penalties_and_outputs
    if logits.shape[0]:
        _native.launch_sample(backend, logits, temperature, top_k, top_p, min_p, seed, offset,
                              tokens, logprobs if want_logprobs else None, None, penalties=_penalty_argument(penalties))


def _launch_sample_triton(logits, temperature, top_k, top_p, min_p, seed, offset, want_logprobs,
                          *penalties_and_outputs) -> None:
    from ..kernels import sampling as kernels  # lazy: TRITON_INTERPRET must be set first on CPU

    *penalties, tokens, logprobs = penalties_and_outputs
    kernels.launch_sample(logits, temperature, top_k, top_p, min_p, seed, offset,
                          tokens=tokens, logprobs=logprobs if want_logprobs else None,
                          penalties=_penalty_argument(penalties))


SAMPLE = declare(OpSpec(
    name="sample",
    reference="sample",
    allocate_outputs=_allocate_sample_outputs,
    call_reference=_sample_by_reference,
    launchers={"cpu": functools.partial(_launch_sample_native, "cpu"),
               "triton": _launch_sample_triton,
               "cuda": functools.partial(_launch_sample_native, "cuda")},
))


def _allocate_filtered(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                       min_p: torch.Tensor, penalty_mask: Optional[torch.Tensor], penalty_seen: Optional[torch.Tensor],
                       penalty_generated: Optional[torch.Tensor], repetition: Optional[torch.Tensor],
                       presence: Optional[torch.Tensor], frequency: Optional[torch.Tensor]) -> torch.Tensor:
    """float32 ``[rows, vocab]``, contiguous; the inputs are the sample op's, without the counters."""
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)


def _filter_by_reference(reference, logits, temperature, top_k, top_p, min_p, *penalties):
    logits = _penalised_by_reference(logits, penalties)
    return reference(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)


def _launch_filter_native(backend, logits, temperature, top_k, top_p, min_p, *penalties_and_output) -> None:
    *penalties, filtered = penalties_and_output
    if logits.shape[0]:
        _native.launch_sample(backend, logits, temperature, top_k, top_p, min_p, None, None, None, None, filtered,
                              penalties=_penalty_argument(penalties))


def _launch_filter_triton(logits, temperature, top_k, top_p, min_p, *penalties_and_output) -> None:
    from ..kernels import sampling as kernels  # lazy: TRITON_INTERPRET must be set first on CPU

    *penalties, filtered = penalties_and_output
    kernels.launch_sample(logits, temperature, top_k, top_p, min_p, None, None, filtered=filtered,
                          penalties=_penalty_argument(penalties))


FILTER_LOGITS = declare(OpSpec(
    name="filter_logits",
    reference="filter_logits",
    allocate_outputs=_allocate_filtered,
    call_reference=_filter_by_reference,
    launchers={"cpu": functools.partial(_launch_filter_native, "cpu"),
               "triton": _launch_filter_triton,
               "cuda": functools.partial(_launch_filter_native, "cuda")},
))
