"""Triton ``turbogen.ops.verify``: speculative verification; the function computed is turbogen.ref.verify's.

1. The sampler (kernels/sampling.py ``launch_sample``) draws the target's token at every position of every
   row at once, over the ``[rows * (k + 1), vocab]`` view of the logits with each row's filters and seed
   and offset ``offset + i`` per position; in rejection mode it also writes the filtered logits.
2. ``_accept_kernel`` (one program per row) walks the positions in order: coupled mode accepts a draft
   while it equals the target's token; rejection mode computes ``p = softmax(filtered)`` at the draft,
   accepts iff ``u <= p(x) / q(x)`` (``u``: counter ``2**32 + i``, the row's offset) and on rejection
   draws the Gumbel-max over ``log(max(p - q, 0))`` at ``offset + i`` (the target's token when no residual
   is positive). It writes the accepted count and the row's tokens.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting
from .sampling import _exp, _gumbel, _log, launch_sample

BLOCK = 1024              # vocabulary elements per step of the acceptance kernel on a GPU
INTERPRETER_BLOCK = 8192  # the interpreter pays per step, not per element


@triton.jit
def _pick(values, lanes, i):
    """``values[i]`` of a 1-D block (lanes = its arange)."""
    return tl.sum(tl.where(lanes == i, values, 0), axis=0)


@triton.jit(do_not_specialize=["positions", "vocab"])
def _accept_kernel(target_ptr,     # int64 [rows, positions]: the target's token at every position
                   draft_ptr,      # int64 [rows, k]
                   filtered_ptr,   # float32 [rows * positions, vocab] (rejection mode; else a placeholder)
                   probs_ptr,      # float32 [rows, k, vocab] (rejection mode; else a placeholder)
                   seed_ptr,       # int64 [rows]
                   offset_ptr,     # int64 [1] or [rows]: position 0's offset
                   accepted_ptr,   # int64 [rows] output
                   tokens_ptr,     # int64 [rows, positions] output
                   positions, vocab,
                   OFFSET_PER_ROW: tl.constexpr, REJECTION: tl.constexpr, P_BLOCK: tl.constexpr,
                   BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    k = positions - 1
    lanes = tl.arange(0, P_BLOCK)
    targets = tl.load(target_ptr + row * positions + lanes, mask=lanes < positions, other=-1)
    drafts = tl.load(draft_ptr + row * k + lanes, mask=lanes < k, other=-1)
    seed = tl.load(seed_ptr + row)
    if OFFSET_PER_ROW:
        offset = tl.load(offset_ptr + row)
    else:
        offset = tl.load(offset_ptr)
    offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
    offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    # u for every position: counter (i, 1, lo32(offset), hi32(offset)).
    zeros = tl.zeros([P_BLOCK], tl.uint32)
    bits, _, _, _ = tl.philox(seed, lanes.to(tl.uint32), zeros + 1, zeros + offset_lo, zeros + offset_hi)
    uniforms = (bits >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08

    stop = k  # < k once the row has stopped at a rejected position
    token = _pick(targets, lanes, k)
    for i in range(0, k):
        if stop == k:
            x = _pick(drafts, lanes, i)
            target = _pick(targets, lanes, i)
            has_draft = (x >= 0) & (x < vocab)
            accept = has_draft & (x == target)
            emitted = target
            if REJECTION:
                accept = has_draft & (x < 0)  # False, typed as the comparisons below
                if has_draft:
                    f_ptr = filtered_ptr + (row * positions + i) * vocab
                    q_ptr = probs_ptr + (row * k + i) * vocab
                    row_max = tl.full([BLOCK], float("-inf"), tl.float32)
                    for start in range(0, vocab, BLOCK):
                        offs = start + tl.arange(0, BLOCK)
                        row_max = tl.maximum(row_max, tl.load(f_ptr + offs, mask=offs < vocab, other=float("-inf")))
                    top = tl.max(row_max, axis=0)
                    if (top > float("-inf")) & (top < float("inf")):
                        mass = tl.zeros([BLOCK], tl.float32)
                        for start in range(0, vocab, BLOCK):
                            offs = start + tl.arange(0, BLOCK)
                            f = tl.load(f_ptr + offs, mask=offs < vocab, other=float("-inf"))
                            mass += _exp(f - top, ACCURATE)
                        total = tl.sum(mass, axis=0)
                        p_x = _exp(tl.load(f_ptr + x) - top, ACCURATE) / total
                        u = _pick(uniforms, lanes, i)
                        accept = u <= p_x / tl.load(q_ptr + x)
                        if accept == 0:
                            position_offset = offset + i
                            residual_lo = (position_offset & 0xFFFFFFFF).to(tl.uint32)
                            residual_hi = ((position_offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
                            best = tl.full([BLOCK], float("-inf"), tl.float32)
                            best_index = tl.full([BLOCK], 2147483647, tl.int32)
                            for start in range(0, vocab, BLOCK):
                                offs = start + tl.arange(0, BLOCK)
                                valid = offs < vocab
                                f = tl.load(f_ptr + offs, mask=valid, other=float("-inf"))
                                q = tl.load(q_ptr + offs, mask=valid, other=0.0)
                                excess = _exp(f - top, ACCURATE) / total - q
                                positive = valid & (excess > 0.0)
                                safe = tl.where(positive, excess, 1.0)
                                score = tl.where(positive,
                                                 _log(safe, ACCURATE) + _gumbel(seed, offs, residual_lo, residual_hi,
                                                                                ACCURATE),
                                                 float("-inf"))
                                improved = score > best  # strictly: a lane keeps its lowest index on ties
                                best_index = tl.where(improved, offs, best_index)
                                best = tl.where(improved, score, best)
                            winner_score = tl.max(best, axis=0)
                            winner = tl.min(tl.where(best == winner_score, best_index, 2147483647), axis=0)
                            if winner_score > float("-inf"):
                                emitted = winner.to(tl.int64)
            if accept == 0:
                stop = i
                token = emitted
    out = tl.where(lanes < stop, drafts, tl.where(lanes == stop, token, -1))
    tl.store(tokens_ptr + row * positions + lanes, out, mask=lanes < positions)
    tl.store(accepted_ptr + row, stop.to(tl.int64))


def _per_position(value: torch.Tensor, positions: int) -> torch.Tensor:
    """A ``[1]`` or ``[rows]`` parameter for the ``[rows * positions]`` flat rows."""
    return value if value.numel() == 1 else value.repeat_interleave(positions)


def launch_verify(logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None, rejection: bool,
                  temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
                  seed: torch.Tensor, offset: torch.Tensor, accepted: torch.Tensor, tokens: torch.Tensor) -> None:
    """Launch over validated inputs (python/turbogen/ops/verify.py's ``_allocate_outputs`` lists them),
    writing ``accepted`` [rows] and ``tokens`` [rows, k + 1]."""
    rows, positions, vocab = logits.shape
    if rows == 0:
        return
    device = logits.device
    if positions > 1:
        flat_stride = logits.stride(1)
    else:
        flat_stride = logits.stride(0) if rows > 1 else vocab
    flat = logits.as_strided((rows * positions, vocab), (flat_stride, 1))
    seeds = seed.repeat_interleave(positions)
    step = torch.arange(positions, dtype=torch.int64, device=device)
    offsets = (offset.reshape(-1, 1).expand(rows, 1) + step).reshape(-1)
    target = torch.empty(rows * positions, dtype=torch.int64, device=device)
    filtered = torch.empty(rows * positions, vocab, dtype=torch.float32, device=device) if rejection else None
    launch_sample(flat, _per_position(temperature, positions), _per_position(top_k, positions),
                  _per_position(top_p, positions), _per_position(min_p, positions), seeds, offsets,
                  tokens=target, filtered=filtered)
    interpreted = interpreting()
    block = min(INTERPRETER_BLOCK if interpreted else BLOCK, triton.next_power_of_2(vocab))
    placeholder = target  # never read when its constexpr flag is off
    _accept_kernel[(rows,)](
        target, draft_tokens if positions > 1 else placeholder, filtered if rejection else placeholder,
        draft_probs if rejection and positions > 1 else placeholder, seed, offset, accepted, tokens,
        positions, vocab, OFFSET_PER_ROW=offset.numel() != 1, REJECTION=bool(rejection),
        P_BLOCK=triton.next_power_of_2(positions), BLOCK=block, ACCURATE=not interpreted)
