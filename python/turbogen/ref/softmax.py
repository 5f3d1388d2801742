"""Reference softmax: torch ops only, ``torch.compile(fullgraph=True)``-able."""

from __future__ import annotations

import torch


def softmax(logits: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` per row, computed in float32, returned in ``logits.dtype``.

    ``temperature`` is a float or a ``[1]`` / ``[rows]`` tensor (every value > 0).
    """
    x = logits.float()
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(device=x.device, dtype=torch.float32).reshape(-1, 1)
    return torch.softmax(x / temperature, dim=-1).to(logits.dtype)
