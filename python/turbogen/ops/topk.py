"""``turbogen.ops.topk``: the k best scores of each row, for beam search's candidate selection over
``num_beams * vocab`` scores per batch row.

Backends: ``ref`` (a stable sort; also the automatic choice on CUDA, where ``torch.sort`` is a
tuned kernel) and ``cpu`` (one pass that skips 16-score blocks that cannot enter the kept set:
about 10x ``torch.topk`` on a CPU for beam-search shapes, see bench/RESULTS.md).
"""

from __future__ import annotations

import numbers

import torch

from .. import ref
from . import _native
from ._dispatch import resolve_backend
from ._validate import check_logits

SUPPORTED_BACKENDS = ("ref", "cpu")


def topk(scores: torch.Tensor, k: int, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores of each row and their column indices, best first.

    Same values as ``torch.topk(scores, k)``, with the order fully specified (``torch.topk`` leaves
    ties unspecified): NaN ranks above every number, then larger scores, then, among equal scores,
    the lower index. So every backend returns the same indices.

    Args:
        scores: ``[rows, n]`` float32 with contiguous rows.
        k: ``0 <= k <= n``.
        backend: ``"ref"``, ``"cpu"`` or None (``TURBOGEN_BACKEND``, else by device).

    Returns:
        ``(values, indices)``: float32 and int64 ``[rows, k]``.
    """
    check_logits(scores, "scores")
    if scores.dtype != torch.float32:
        raise TypeError(f"scores must be float32, got {scores.dtype}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [0, {scores.shape[1]}] (the row length), got {k}")
    chosen = resolve_backend("topk", scores.device, backend, supported=SUPPORTED_BACKENDS)
    if chosen == "ref":
        return ref.topk(scores, int(k))
    if torch.compiler.is_compiling():
        return torch.ops.turbogen.topk(scores, int(k), chosen)
    return _launch(scores, int(k), chosen)


def _launch(scores: torch.Tensor, k: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled-backend top-k over validated inputs."""
    if backend != "cpu":
        raise ValueError(f"backend must be 'cpu' for turbogen::topk, got {backend!r}")
    rows = scores.shape[0]
    values = torch.empty(rows, k, dtype=torch.float32, device=scores.device)
    indices = torch.empty(rows, k, dtype=torch.int64, device=scores.device)
    _native.launch_topk(backend, scores, k, values, indices)
    return values, indices


_topk_op = torch.library.custom_op("turbogen::topk", _launch, mutates_args=())


@_topk_op.register_fake
def _(scores: torch.Tensor, k: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows = scores.shape[0]
    return (torch.empty(rows, k, dtype=torch.float32, device=scores.device),
            torch.empty(rows, k, dtype=torch.int64, device=scores.device))
