"""Per-row seeds and offsets of the sampling contract (docs/design.md, "Randomness: the determinism contract").

Seeds and offsets are 64-bit words held in int64 tensors (the same bits read as uint64). A scalar
seed ``S`` means ``S + r`` for row ``r``, modulo 2**64; a scalar offset is every row's offset.
These helpers are shared by the public ops, ``generate()`` and the reference (``turbogen.ref``),
so every caller turns a scalar into per-row counters the same way.
"""

from __future__ import annotations

import numbers

import torch

from ._interop import accepts_dlpack

_INT64_MIN = -(1 << 63)
_INT64_END = 1 << 63
_UINT64_END = 1 << 64


def wrap_int64(value: int) -> int:
    """An integer modulo 2**64, as the int64 with the same bits."""
    if _INT64_MIN <= value < _INT64_END:  # the usual case; keeps symbolic ints (torch.compile) symbolic
        return value
    value %= _UINT64_END
    return value - _UINT64_END if value >= _INT64_END else value


@accepts_dlpack
def row_seeds(seed: int | torch.Tensor, rows: int, device: torch.device | str) -> torch.Tensor:
    """Per-row int64 seeds: a ``[rows]`` tensor as is; a scalar ``S`` (int or 0-d tensor) gives
    ``S + r`` for row ``r``, modulo 2**64."""
    if isinstance(seed, torch.Tensor) and seed.dim() == 1:
        return seed.to(device=device, dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        # Two's-complement int64 addition wraps modulo 2**64, as the contract wants.
        return seed.to(device=device, dtype=torch.int64) + torch.arange(rows, dtype=torch.int64, device=device)
    first = wrap_int64(int(seed))
    if first + rows - 1 < _INT64_END:
        return torch.arange(first, first + rows, dtype=torch.int64, device=device)
    return torch.tensor([wrap_int64(first + r) for r in range(rows)], dtype=torch.int64, device=device)


@accepts_dlpack
def row_offsets(offset: int | torch.Tensor, rows: int, device: torch.device | str) -> torch.Tensor:
    """Per-row int64 offsets: a ``[rows]`` tensor as is, a scalar (int or 0-d tensor) for every row."""
    if isinstance(offset, torch.Tensor):
        return offset.to(device=device, dtype=torch.int64).reshape(-1).expand(rows)
    return torch.full((rows,), wrap_int64(int(offset)), dtype=torch.int64, device=device)


def counter_tensor(value, name: str, rows: int, device: torch.device, *, scalar_is_first_of_rows: bool
                   ) -> torch.Tensor:
    """A validated seed or offset as a contiguous int64 tensor on ``device``: ``[rows]``, or ``[1]``
    when one value serves every row.

    ``value`` is an int in ``[-2**63, 2**64)`` or an int64 tensor of shape ``[]`` or ``[rows]``;
    anything else raises a TypeError/ValueError naming ``name``. With ``scalar_is_first_of_rows``
    (seeds) a scalar ``S`` becomes ``[S, S + 1, ...]``; otherwise (offsets) it stays one shared value.
    """
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64:
            raise TypeError(f"{name} must be an int or an int64 tensor, got a {value.dtype} tensor")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != rows):
            raise ValueError(f"{name} must be an int, a 0-d tensor or a tensor of shape [{rows}], "
                             f"got shape {tuple(value.shape)}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or an int64 tensor, got {type(value).__name__}")
    elif not _INT64_MIN <= int(value) < _UINT64_END:
        raise ValueError(f"{name} must be in [-2**63, 2**64) (it is read as 64 bits), got {value}")
    if scalar_is_first_of_rows:
        return row_seeds(value, rows, device).contiguous()
    if isinstance(value, torch.Tensor):
        return value.to(device).reshape(-1).contiguous()
    return row_offsets(value, 1, device)


__all__ = ["counter_tensor", "row_offsets", "row_seeds", "wrap_int64"]
