"""``turbogen.ops.softmax``: the worked example of the backend seam (validate, normalise, dispatch)."""

from __future__ import annotations

import functools

import torch

from . import _native
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare
from ._validate import check_logits, per_row


@accepts_dlpack
def softmax(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, *,
            backend: str | None = None) -> torch.Tensor:
    """Row-wise ``softmax(logits / temperature)``.

    Args:
        logits: ``[batch, vocab]`` float32, float16 or bfloat16 with contiguous rows.
        temperature: a float or a ``[batch]`` tensor; every value must be finite and > 0.
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``, else by device).

    Returns:
        A new contiguous ``[batch, vocab]`` tensor of ``logits.dtype``. Arithmetic is float32 on
        every backend. A row whose logits are all ``-inf`` (or contain NaN) gives NaN, as torch does.
    """
    check_logits(logits)
    temperature, _ = per_row(temperature, "temperature", logits.shape[0], logits.device, torch.float32,
                             low=0.0, low_inclusive=False, high=float("inf"), high_inclusive=False)
    return SOFTMAX(logits, temperature, backend=backend)


def _allocate_outputs(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The output for validated inputs (``logits`` with contiguous rows, a float32 ``[1]`` or
    ``[rows]`` ``temperature``): contiguous, shaped and typed like ``logits``."""
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _launch_triton(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> None:
    from ..kernels import softmax as kernels  # imported lazily: needs TRITON_INTERPRET set first on CPU

    kernels.launch_softmax(logits, temperature, out)


SOFTMAX = declare(OpSpec(
    name="softmax",
    reference="softmax",
    allocate_outputs=_allocate_outputs,
    launchers={"cpu": functools.partial(_native.launch_softmax, "cpu"),
               "triton": _launch_triton,
               "cuda": functools.partial(_native.launch_softmax, "cuda")},
))
