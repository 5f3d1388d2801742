"""Triton ``turbogen.ops.gumbel_noise``: the sampling contract's Gumbel noise for every token of every row.

Each program writes one block of one row with kernels/sampling.py's ``_gumbel`` (Philox4x32-10
through ``tl.philox``, then ``-log(-log(u))``), the very function the Triton sampler adds to its
scores. On a GPU the logs are libdevice's logf, torch's CUDA log, so the result is the reference's
noise bit for bit; the interpreter (no GPU) has no libdevice and uses numpy's float32 log, which can
differ from torch's CPU log by an ulp (tests/ops/test_gumbel_noise.py checks both).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting
from .sampling import _gumbel

BLOCK = 1024               # elements per program on a GPU
INTERPRETER_BLOCK = 8192   # the interpreter pays per program and per operation, not per element


@triton.jit
def _gumbel_noise_kernel(seed_ptr,    # int64 [rows]: row r's Philox key (read as uint64)
                         offset_ptr,  # int64 [rows]: row r's counter high half (read as uint64)
                         out_ptr,     # float32 [rows, columns], contiguous
                         columns, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr + row)
    offset = tl.load(offset_ptr + row)
    offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
    offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    noise = _gumbel(seed, offs, offset_lo, offset_hi, ACCURATE)
    tl.store(out_ptr + row * columns + offs, noise, mask=offs < columns)


def launch_gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, columns: int, out: torch.Tensor) -> None:
    """Fill ``out`` (float32 [rows, columns], contiguous) with the noise of tokens [0, columns) for
    int64 ``seed`` and ``offset`` of shape [rows] (contiguous, on ``out``'s device).

    Raises:
        ValueError: ``columns`` > 2**32: ``_gumbel`` draws with the token's high word 0.
    """
    rows = out.shape[0]
    if columns > 1 << 32:
        raise ValueError(f"columns must be <= 2**32 on the triton backend, got {columns}")
    if rows == 0 or columns == 0:
        return
    interpreted = interpreting()
    block = min(INTERPRETER_BLOCK if interpreted else BLOCK, triton.next_power_of_2(columns))
    grid = (rows, triton.cdiv(columns, block))
    _gumbel_noise_kernel[grid](seed, offset, out, columns, BLOCK=block, ACCURATE=not interpreted)
