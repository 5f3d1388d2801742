"""``turbogen.ops.softmax``: the worked example of the backend seam (validate, normalise, dispatch)."""

from __future__ import annotations

import torch

from .. import ref
from . import _native
from ._dispatch import resolve_backend
from ._validate import check_logits, per_row


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
    chosen = resolve_backend("softmax", logits.device, backend)
    if chosen == "ref":
        return ref.softmax(logits, temperature)
    if torch.compiler.is_compiling():
        return torch.ops.turbogen.softmax(logits, temperature, chosen)
    return _launch(logits, temperature, chosen)  # eager: skip the dispatcher's per-call cost


def _launch(logits: torch.Tensor, temperature: torch.Tensor, backend: str) -> torch.Tensor:
    """Compiled-backend softmax over validated inputs."""
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if backend == "triton":
        from ..kernels import softmax as triton_softmax  # imported lazily: needs TRITON_INTERPRET set first on CPU

        return triton_softmax.launch_softmax(logits, temperature, out)
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be 'cpu', 'triton' or 'cuda' for turbogen::softmax, got {backend!r}")
    _native.launch_softmax(backend, logits, temperature, out)
    return out


_softmax_op = torch.library.custom_op("turbogen::softmax", _launch, mutates_args=())


@_softmax_op.register_fake
def _(logits: torch.Tensor, temperature: torch.Tensor, backend: str) -> torch.Tensor:
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
