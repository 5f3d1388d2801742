"""Triton softmax(logits / temperature): one program per row, an online (max, sum) pass over the
row in blocks, then a second pass that writes the normalised values."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Largest block a program handles at once; bigger rows loop. Large blocks also keep the
# interpreter fast (it costs per program and per block step, not per element).
MAX_BLOCK = 8192


@triton.jit
def _softmax_kernel(
    logits_ptr,       # [rows, cols] fp32/fp16/bf16, rows `row_stride` elements apart
    out_ptr,          # [rows, cols] same dtype, contiguous
    temperature_ptr,  # [rows] fp32 if TEMPERATURE_PER_ROW else [1]
    cols,
    row_stride,
    TEMPERATURE_PER_ROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    src = logits_ptr + row * row_stride
    dst = out_ptr + row * cols
    temperature = tl.load(temperature_ptr + (row if TEMPERATURE_PER_ROW else 0))

    running_max = tl.full([BLOCK], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, cols, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        x = tl.load(src + idx, mask=idx < cols, other=float("-inf")).to(tl.float32) / temperature
        new_max = tl.maximum(running_max, x)
        # Lanes still at -inf contribute nothing; guard against (-inf) - (-inf).
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.exp(x - safe_max)
        running_max = new_max
    row_max = tl.max(running_max, axis=0)
    lane_scale = tl.where(running_max == float("-inf"), 0.0, tl.exp(running_max - row_max))
    row_sum = tl.sum(running_sum * lane_scale, axis=0)

    for start in range(0, cols, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < cols
        x = tl.load(src + idx, mask=mask, other=float("-inf")).to(tl.float32) / temperature
        y = tl.exp(x - row_max) / row_sum
        tl.store(dst + idx, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch_softmax(logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Launch over validated inputs: ``logits`` [rows, cols] with contiguous rows, ``temperature``
    a float32 tensor of shape [1] or [rows], ``out`` contiguous like ``logits``."""
    rows, cols = logits.shape
    if rows == 0 or cols == 0:
        return out
    block = min(triton.next_power_of_2(cols), MAX_BLOCK)
    _softmax_kernel[(rows,)](
        logits, out, temperature, cols, logits.stride(0),
        TEMPERATURE_PER_ROW=temperature.numel() != 1,
        BLOCK=block,
    )
    return out
