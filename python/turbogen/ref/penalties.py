"""Reference penalties on repeated tokens: the executable spec of ``turbogen.ops.apply_penalties``.

Torch ops only, ``torch.compile(fullgraph=True)``-able. Per row ``r`` and token ``t``, in this order:

1. repetition (CTRL, transformers' ``RepetitionPenaltyLogitsProcessor``): where ``seen[r, t] > 0``,
   ``x * rep[r]`` if ``x < 0`` else ``x / rep[r]``, computed in float32 and rounded to the logits' dtype;
2. presence / frequency (OpenAI, vLLM's order of operations): where ``generated[r, t] = c > 0``,
   ``(x - freq[r] * c) - pres[r]`` in float32, rounded to the logits' dtype.

Elements with zero counts are returned unchanged. ``mask`` (the kernels' bitmask of tokens that may have
a nonzero count) only speeds the kernels up: a superset of the counted tokens changes nothing, so the
reference does not read it.
"""

from __future__ import annotations

from typing import Optional

import torch


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def apply_penalties(logits: torch.Tensor, mask: torch.Tensor, seen: Optional[torch.Tensor],
                    generated: Optional[torch.Tensor], repetition: torch.Tensor, presence: torch.Tensor,
                    frequency: torch.Tensor) -> torch.Tensor:
    """The penalised ``[rows, vocab]`` logits (a new contiguous tensor of ``logits``' dtype).

    ``seen`` / ``generated``: int32 ``[rows, vocab]`` counts or None; ``repetition``, ``presence``,
    ``frequency``: float32 ``[1]`` or ``[rows]``.
    """
    del mask  # an acceleration structure of the kernels (module docstring)
    compute = _compute_dtype(logits)
    out = logits
    if seen is not None:
        wide = out.to(compute)
        rep = repetition.to(compute).reshape(-1, 1)
        scaled = torch.where(wide < 0, wide * rep, wide / rep).to(out.dtype)
        out = torch.where(seen > 0, scaled, out)
    if generated is not None:
        counts = generated.to(compute)
        shifted = out.to(compute) - frequency.to(compute).reshape(-1, 1) * counts
        shifted = (shifted - presence.to(compute).reshape(-1, 1)).to(out.dtype)
        out = torch.where(generated > 0, shifted, out)
    return out.clone(memory_format=torch.contiguous_format) if out is logits else out.contiguous()
