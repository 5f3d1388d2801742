"""``turbogen.ops.verify``: speculative-decoding verification of draft tokens against the target's logits.

The function computed is defined by :mod:`turbogen.ref.verify` (docs/design.md, "Contract extensions").
Coupled mode is "sample each position until the first mismatch": the kernels reuse the sampler
(``ops.sample``'s filters, Philox noise and row kernels) and, on the cpu, sample a row's positions only up
to its first mismatch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch

from . import _native
from ._counters import counter_tensor
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare
from ._validate import FLOAT_DTYPES
from .sampling import _Filters

MODES = ("coupled", "rejection")


class VerifyResult(NamedTuple):
    """What :func:`verify` returns.

    Attributes:
        accepted: int64 ``[rows]`` in ``[0, k]``: how many leading drafts each row accepted.
        tokens: int64 ``[rows, k + 1]``: ``tokens[r, :accepted[r]]`` are the accepted drafts,
            ``tokens[r, accepted[r]]`` the target's token (the correction, or the bonus token when every
            draft was accepted; -1 where that position has no finite kept logit), the rest -1.
    """

    accepted: torch.Tensor
    tokens: torch.Tensor


@accepts_dlpack
def verify(target_logits: torch.Tensor, draft_tokens: torch.Tensor, *, draft_probs: torch.Tensor | None = None,
           mode: str = "coupled", seed: int | torch.Tensor | None = None, offset: int | torch.Tensor = 0,
           temperature: float | torch.Tensor = 1.0, top_k: int | torch.Tensor = 0, top_p: float | torch.Tensor = 1.0,
           min_p: float | torch.Tensor = 0.0, backend: str | None = None) -> VerifyResult:
    """Verify ``k`` draft tokens per row with the target's logits: one step of speculative decoding.

    Coupled mode (the default): the target's token at position ``i`` is exactly
    ``turbogen.ops.sample(target_logits[:, i], seed=seed, offset=offset + i, <filters>)`` (greedy: the
    argmax, lowest index on ties); drafts are accepted while they equal it, and the first position that is
    not accepted, or position ``k`` when all are, emits the target's token. The tokens are therefore those
    of non-speculative decoding with the same seed: speculation changes speed, never the tokens.

    Rejection mode (HF's and vLLM's semantics, distribution-exact): with ``p`` the target's filtered,
    tempered distribution at position ``i`` and ``q = draft_probs[:, i]``, draft ``x`` is accepted iff
    ``u <= p(x) / q(x)``, ``u`` the contract's uniform for counter ``2**32 + i`` at the row's offset; the
    first rejected position emits the contract's Gumbel-max draw at offset ``offset + i`` over
    ``log(max(p - q, 0))``. A position without a draft, and the bonus position, emit the target's own
    draw (as coupled mode). docs/design.md, "Contract extensions", and turbogen.ref.verify give the exact
    function.

    Args:
        target_logits: ``[rows, k + 1, vocab]`` float32, float16 or bfloat16, vocab >= 1, with contiguous
            rows (stride(-1) == 1); position ``i`` holds the target's logits for the token after draft ``i``
            (position 0: after the last accepted token). Arithmetic is float32, NaN reads as -inf (as
            :func:`turbogen.ops.sample`).
        draft_tokens: int64 ``[rows, k]`` (``k = 0`` is plain sampling of one token). A value < 0 or
            >= vocab means "no draft" and is never accepted.
        draft_probs: float32 ``[rows, k, vocab]``: the draft's distribution ``q`` at each position;
            required in rejection mode, refused in coupled mode.
        mode: ``"coupled"`` or ``"rejection"``.
        seed: None for greedy (every row takes the argmax; the filters do not change it and are only
            validated), else an int or int64 tensor as :func:`turbogen.ops.sample` takes it (a scalar
            ``S`` means ``S + r`` for row ``r``; ``[rows]`` gives each row its own).
        offset: int, 0-d or ``[rows]`` int64 tensor: the offset of position 0 (the row's n-th generated
            token); position ``i`` draws at ``offset + i``.
        temperature, top_k, top_p, min_p: scalars or ``[rows]`` tensors, as :func:`turbogen.ops.sample`.
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``, else by
            device).

    Returns:
        :class:`VerifyResult` ``(accepted [rows], tokens [rows, k + 1])``, int64.
    """
    logits = _checked_logits(target_logits)
    rows, positions, vocab = logits.shape
    k = positions - 1
    device = logits.device
    drafts = _checked_drafts(draft_tokens, rows, k, device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rejection = mode == "rejection"
    probs = _checked_draft_probs(draft_probs, rejection, rows, k, vocab, device)
    if seed is None and _all_default(offset, temperature, top_k, top_p, min_p):
        # Greedy with the default arguments (a speculative loop's every step): constant parameter tensors.
        temperatures, top_ks, top_ps, min_ps, seeds, offsets = _greedy_parameters(rows, device)
    else:
        filters = _Filters(rows, device, temperature, top_k, top_p, min_p)
        temperatures, top_ks, top_ps, min_ps = filters.as_tuple()
        if seed is None:
            temperatures = torch.zeros(1, dtype=torch.float32, device=device)
            seeds = torch.zeros(rows, dtype=torch.int64, device=device)
        else:
            seeds = counter_tensor(seed, "seed", rows, device, scalar_is_first_of_rows=True)
        offsets = counter_tensor(offset, "offset", rows, device, scalar_is_first_of_rows=False)
    accepted, tokens = VERIFY(logits, drafts, probs, rejection, temperatures, top_ks, top_ps, min_ps, seeds,
                              offsets, backend=backend)
    return VerifyResult(accepted, tokens)


#: ``verify``'s defaults for the offset and the filters.
_DEFAULTS = (0, 1.0, 0, 1.0, 0.0)


def _all_default(*values) -> bool:
    """Every value is the plain Python default (not a tensor, which may differ per row)."""
    return all(type(value) in (int, float) and value == default for value, default in zip(values, _DEFAULTS))


@functools.lru_cache(maxsize=16)
def _greedy_parameters(rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The kernels' parameter tensors of greedy verification with the default arguments (temperature 0,
    filters off, seeds and offset 0), made once per ``(rows, device)``: the kernels only read them."""
    filters = _Filters(1, device, 1.0, 0, 1.0, 0.0)
    return (torch.zeros(1, dtype=torch.float32, device=device), filters.top_k, filters.top_p, filters.min_p,
            torch.zeros(rows, dtype=torch.int64, device=device),
            counter_tensor(0, "offset", rows, device, scalar_is_first_of_rows=False))


def _checked_logits(logits) -> torch.Tensor:
    """``target_logits`` validated, as a tensor whose ``[rows * (k + 1), vocab]`` view has one row stride."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"target_logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"target_logits must be 3-D [rows, k + 1, vocab], got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"target_logits must be float32, float16 or bfloat16, got {logits.dtype}")
    rows, positions, vocab = logits.shape
    if positions < 1:
        raise ValueError(f"target_logits must have k + 1 >= 1 positions, got shape {tuple(logits.shape)}")
    if vocab < 1:
        raise ValueError(f"target_logits must have a vocabulary of at least 1 token, got shape {tuple(logits.shape)}")
    if logits.stride(2) != 1:
        raise ValueError(f"target_logits must have contiguous rows (stride(-1) == 1), got strides {logits.stride()}; "
                         f"call .contiguous() first")
    if positions > 1 and logits.stride(1) < vocab:
        raise ValueError(f"target_logits positions overlap (stride(1)={logits.stride(1)} < vocab={vocab})")
    # The kernels read position i of row r at flat row r * (k + 1) + i: one stride between flat rows.
    if rows > 1 and logits.stride(0) != positions * logits.stride(1) and not (positions == 1
                                                                            and logits.stride(0) >= vocab):
        return logits.contiguous()
    return logits


def _checked_drafts(drafts, rows: int, k: int, device: torch.device) -> torch.Tensor:
    if not isinstance(drafts, torch.Tensor):
        raise TypeError(f"draft_tokens must be a torch.Tensor, got {type(drafts).__name__}")
    if drafts.dtype != torch.int64:
        raise TypeError(f"draft_tokens must be int64, got {drafts.dtype}")
    if tuple(drafts.shape) != (rows, k):
        raise ValueError(f"draft_tokens must have shape [rows, k] = [{rows}, {k}] (target_logits has k + 1 = {k + 1} "
                         f"positions), got {tuple(drafts.shape)}")
    if drafts.device != device:
        raise ValueError(f"draft_tokens must be on {device} (target_logits' device), got {drafts.device}")
    return drafts.contiguous()


def _checked_draft_probs(probs, rejection: bool, rows: int, k: int, vocab: int, device) -> torch.Tensor | None:
    if not rejection:
        if probs is not None:
            raise ValueError("draft_probs is only used with mode='rejection'; pass None in coupled mode")
        return None
    if probs is None:
        raise ValueError("draft_probs is required with mode='rejection' (the draft's distribution q)")
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"draft_probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.dtype != torch.float32:
        raise TypeError(f"draft_probs must be float32, got {probs.dtype}")
    if tuple(probs.shape) != (rows, k, vocab):
        raise ValueError(f"draft_probs must have shape [rows, k, vocab] = [{rows}, {k}, {vocab}], "
                         f"got {tuple(probs.shape)}")
    if probs.device != device:
        raise ValueError(f"draft_probs must be on {device} (target_logits' device), got {probs.device}")
    return probs.contiguous()


# --- the op declaration ---------------------------------------------------------------------------

def _allocate_outputs(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: Optional[torch.Tensor],
                      rejection: bool, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                      min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 ``[rows]`` accepted counts and int64 ``[rows, k + 1]`` tokens (contiguous).

    The inputs are validated: ``target_logits`` ``[rows, k + 1, vocab]`` whose flat ``[rows * (k + 1),
    vocab]`` view has one row stride; ``draft_tokens`` int64 ``[rows, k]`` contiguous; ``draft_probs``
    float32 ``[rows, k, vocab]`` contiguous with ``rejection``, else None; the filters as ops.sampling's
    ``_Filters`` holds them (temperature 0 everywhere for greedy); ``seed`` int64 ``[rows]``; ``offset``
    int64 ``[1]`` or ``[rows]``.
    """
    rows, positions, _ = target_logits.shape
    accepted = torch.empty(rows, dtype=torch.int64, device=target_logits.device)
    tokens = torch.empty(rows, positions, dtype=torch.int64, device=target_logits.device)
    return accepted, tokens


def _verify_by_reference(reference, target_logits, draft_tokens, draft_probs, rejection, temperature, top_k, top_p,
                         min_p, seed, offset):
    return reference(target_logits, draft_tokens, draft_probs, rejection=rejection, temperature=temperature,
                     top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, offset=offset)


def _launch_native(backend, *inputs_and_outputs) -> None:
    _native.launch_verify(backend, *inputs_and_outputs)


def _launch_triton(*inputs_and_outputs) -> None:
    from ..kernels import verify as kernels  # lazy: TRITON_INTERPRET must be set first on CPU

    kernels.launch_verify(*inputs_and_outputs)


VERIFY = declare(OpSpec(
    name="verify",
    reference="verify",
    allocate_outputs=_allocate_outputs,
    call_reference=_verify_by_reference,
    launchers={"cpu": functools.partial(_launch_native, "cpu"),
               "triton": _launch_triton,
               "cuda": functools.partial(_launch_native, "cuda")},
))
