"""Input checks shared by the ops: each raises a TypeError/ValueError naming the argument."""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """A 2-D ``[rows, vocab]`` fp32/fp16/bf16 tensor whose rows are contiguous (stride(-1) == 1)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, vocab], got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.shape[1] > 0 and logits.stride(1) != 1:
        raise ValueError(f"{name} must have contiguous rows (stride(-1) == 1), got strides {logits.stride()}; "
                         f"call .contiguous() first")
    if logits.shape[0] > 1 and logits.stride(0) < logits.shape[1]:
        raise ValueError(f"{name} rows overlap (stride(0)={logits.stride(0)} < vocab={logits.shape[1]})")


def per_row(value, name: str, rows: int, device: torch.device, dtype: torch.dtype,
            low: float | None = None, high: float | None = None,
            low_inclusive: bool = True, high_inclusive: bool = True) -> tuple[torch.Tensor, bool]:
    """Normalise a scalar-or-per-row parameter into a tensor on ``device``.

    Returns ``(tensor, per_row)``: a ``[rows]`` tensor for a per-row value, else a ``[1]`` tensor.
    Range bounds are checked on the values: in Python for scalars; for tensors with one reduction
    (a host sync on a GPU), skipped while compiling or capturing a CUDA graph.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            tensor, is_per_row = value.reshape(1), False
        elif value.dim() == 1 and value.shape[0] == rows:
            tensor, is_per_row = value, True
        else:
            raise ValueError(f"{name} must be a scalar or a tensor of shape [{rows}], got shape {tuple(value.shape)}")
        if value.dtype.is_complex or (value.dtype == torch.bool):
            raise TypeError(f"{name} must be a real number tensor, got {value.dtype}")
        tensor = tensor.to(device=device, dtype=dtype).contiguous()
        if not _skip_value_checks(device):
            _check_range(tensor.double(), name, low, high, low_inclusive, high_inclusive)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        _check_scalar_range(float(value), name, low, high, low_inclusive, high_inclusive)
        tensor, is_per_row = torch.tensor([value], device=device, dtype=dtype), False
    else:
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return tensor, is_per_row


def _skip_value_checks(device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _interval(low, high, low_inclusive, high_inclusive) -> str:
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    return f"{'[' if low_inclusive else '('}{lo}, {hi}{']' if high_inclusive else ')'}"


def _check_scalar_range(value: float, name, low, high, low_inclusive, high_inclusive) -> None:
    ok = value == value  # not NaN
    if low is not None:
        ok = ok and (value >= low if low_inclusive else value > low)
    if high is not None:
        ok = ok and (value <= high if high_inclusive else value < high)
    if not ok:
        raise ValueError(f"{name} must be in {_interval(low, high, low_inclusive, high_inclusive)}, got {value}")


def _check_range(values: torch.Tensor, name, low, high, low_inclusive, high_inclusive) -> None:
    bad = torch.isnan(values)
    if low is not None:
        bad |= values < low if low_inclusive else values <= low
    if high is not None:
        bad |= values > high if high_inclusive else values >= high
    if bool(bad.any()):
        first = values[bad][0].item()
        raise ValueError(f"{name} must be in {_interval(low, high, low_inclusive, high_inclusive)}, got {first}")
