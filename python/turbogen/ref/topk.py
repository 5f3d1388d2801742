"""Reference for :func:`turbogen.ops.topk`: a stable descending sort, so equal scores keep index order."""

from __future__ import annotations

import torch


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best scores of each row of ``scores`` and their indices, best first; NaN ranks above
    every number (as in ``torch.sort``), equal scores by lower index. Both are new contiguous
    ``[rows, k]`` tensors, as every backend returns them."""
    values, indices = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[:, :k].contiguous(), indices[:, :k].contiguous()
