"""``turbogen.ops.topk``: the k best scores of each row, for beam search's candidate selection over
``num_beams * vocab`` scores per batch row.

Backends: ``ref`` (a stable sort; also the automatic choice on CUDA, where ``torch.sort`` is a
tuned kernel) and ``cpu`` (one pass that skips 16-score blocks that cannot enter the kept set:
about 10x ``torch.topk`` on a CPU for beam-search shapes, see bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import numbers

import torch

from . import _native
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare
from ._validate import check_logits


@accepts_dlpack
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
    return TOPK(scores, int(k), backend=backend)


def _allocate_outputs(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs for validated inputs (float32 ``scores`` with contiguous rows, ``0 <= k <= n``):
    float32 values and int64 indices, contiguous ``[rows, k]``."""
    rows = scores.shape[0]
    return (torch.empty(rows, k, dtype=torch.float32, device=scores.device),
            torch.empty(rows, k, dtype=torch.int64, device=scores.device))


TOPK = declare(OpSpec(
    name="topk",
    reference="topk",
    allocate_outputs=_allocate_outputs,
    launchers={"cpu": functools.partial(_native.launch_topk, "cpu")},
))
