"""Triton repetition / presence / frequency penalties over per-sequence token counts.

Computes python/turbogen/ops/penalties.py's ``apply_penalties`` (python/turbogen/ref/penalties.py),
bit for bit with transformers' RepetitionPenaltyLogitsProcessor followed by
turbogen.processors.functional.presence_frequency_penalty_on_counts. Per element x of row r:

a. ``seen[r, t] > 0``: ``x < 0 ? x * rep : x / rep`` (float32, IEEE), rounded to the logits dtype;
b. ``generated[r, t] = c > 0``: ``(x - freq * (float)c) - pres`` (float32), rounded to the logits
   dtype.

A token is looked at only where its bit is set in the ``mask`` ([rows, ceil(V / 32)] int32 words,
bit t % 32 of word t // 32): the counts are gathered with masked loads there and nowhere else.

``_penalize`` is the element function; kernels/sampling.py applies it right after loading the
logits, so its sampler draws from the penalised logits without writing them anywhere.

Exactness on a GPU: multiplications are an inline ``mul.rn.f32``, which the compiler never
contracts into an FMA (Triton fuses a plain ``a * b`` followed by ``- c`` into one) nor flushes to
zero (libdevice's ``mul_rn`` does, as Triton links it), and the division is ``div_rn`` (a plain
``/`` is approximate). bfloat16 conversions go through the bits (round to nearest even),
identical on a GPU and in the interpreter, whose own conversions truncate and lose subnormals.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

BLOCK = 1024              # elements per program on a GPU
INTERPRETER_BLOCK = 8192  # the interpreter pays per operation, not per element: few, wide programs


# ---- element helpers ------------------------------------------------------------------------------

@triton.jit
def _mul_rn(a, b, ACCURATE: tl.constexpr):
    """a * b in float32, rounded once (never fused with a following add)."""
    if ACCURATE:
        # Not libdevice.mul_rn: Triton links libdevice with flush-to-zero (mul.rn.ftz.f32).
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a * b  # the interpreter (numpy) rounds each operation


@triton.jit
def _upcast(x):
    """x (float32/float16/bfloat16) as float32, exactly. bfloat16 goes through its bits: the
    interpreter's own conversion loses subnormals (on a GPU both are a shift)."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def _downcast(v, DTYPE: tl.constexpr):
    """float32 v, exactly a DTYPE value (``_round_to``'s result), as DTYPE (through the bits for
    bfloat16, as ``_upcast``)."""
    if DTYPE == tl.bfloat16:
        return (v.to(tl.int32, bitcast=True) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(DTYPE)


@triton.jit
def _round_to(v, DTYPE: tl.constexpr):
    """float32 v rounded (to nearest even) to DTYPE, returned as float32 (exactly a DTYPE value)."""
    if DTYPE == tl.float16:
        return v.to(tl.float16).to(tl.float32)
    elif DTYPE == tl.bfloat16:
        bits = v.to(tl.int32, bitcast=True)
        # Add 0x7FFF, plus 1 when the kept lsb is 1 (ties go to even), then clear the 16 low bits.
        # No integer overflow; the largest finite magnitudes round to inf, as they should.
        rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) & -65536).to(tl.float32, bitcast=True)
        return tl.where(v != v, v, rounded)  # NaN: kept (arithmetic NaNs are quiet, their top bits survive)
    else:
        return v


@triton.jit
def _penalty_params(repetition_ptr, presence_ptr, frequency_ptr, row,
                    REPETITION_PER_ROW: tl.constexpr, PRESENCE_PER_ROW: tl.constexpr,
                    FREQUENCY_PER_ROW: tl.constexpr):
    """The row's (repetition, presence, frequency), float32 scalars; each pointer holds [1] or [rows]."""
    if REPETITION_PER_ROW:
        repetition = tl.load(repetition_ptr + row)
    else:
        repetition = tl.load(repetition_ptr)
    if PRESENCE_PER_ROW:
        presence = tl.load(presence_ptr + row)
    else:
        presence = tl.load(presence_ptr)
    if FREQUENCY_PER_ROW:
        frequency = tl.load(frequency_ptr + row)
    else:
        frequency = tl.load(frequency_ptr)
    return repetition, presence, frequency


@triton.jit
def _flagged(mask_row_ptr, offs, valid):
    """Whether the mask bit of each token ``offs`` of a row is set (``valid`` lanes only)."""
    words = tl.load(mask_row_ptr + (offs >> 5), mask=valid, other=0)
    return valid & (((words >> (offs & 31)) & 1) != 0)  # int32 word read as uint32: & 1 drops the sign


@triton.jit
def _row_penalties(mask_ptr, seen_ptr, generated_ptr, repetition_ptr, presence_ptr, frequency_ptr, row, vocab,
                   words, HAS_PENALTIES: tl.constexpr, REPETITION_PER_ROW: tl.constexpr,
                   PRESENCE_PER_ROW: tl.constexpr, FREQUENCY_PER_ROW: tl.constexpr):
    """Row ``row``'s penalty inputs, one tuple for the kernels to pass around: (mask row pointer,
    seen row pointer, generated row pointer, repetition, presence, frequency). The pointers are as
    in ``_apply_penalties_kernel``. Without HAS_PENALTIES nothing is loaded (placeholders)."""
    if HAS_PENALTIES:
        repetition, presence, frequency = _penalty_params(repetition_ptr, presence_ptr, frequency_ptr, row,
                                                          REPETITION_PER_ROW, PRESENCE_PER_ROW, FREQUENCY_PER_ROW)
        return (mask_ptr + row * words, seen_ptr + row * vocab, generated_ptr + row * vocab,
                repetition, presence, frequency)
    else:
        return (mask_ptr, seen_ptr, generated_ptr, 1.0, 0.0, 0.0)


@triton.jit
def _penalize(x, offs, flagged, seen_row_ptr, generated_row_ptr, repetition, presence, frequency,
              DTYPE: tl.constexpr, HAS_SEEN: tl.constexpr, HAS_GENERATED: tl.constexpr, ACCURATE: tl.constexpr):
    """Section 2 on the float32 values ``x`` (exactly DTYPE values) of tokens ``offs`` of one row.

    ``flagged``: the lanes whose mask bit is set (``_flagged``), the only ones whose counts are
    read; ``seen_row_ptr`` / ``generated_row_ptr``: the row's int32 counts (ignored unless
    HAS_SEEN / HAS_GENERATED). Returns (the penalised values as float32, exactly DTYPE values;
    whether each lane was penalised, i.e. has a nonzero count).
    """
    touched = offs < 0  # all False
    y = x
    if HAS_SEEN:
        seen = tl.load(seen_row_ptr + offs, mask=flagged, other=0)
        scaled = tl.where(y < 0, _mul_rn(y, repetition, ACCURATE), tl.math.div_rn(y, repetition))
        hit = seen > 0
        y = tl.where(hit, _round_to(scaled, DTYPE), y)
        touched = touched | hit
    if HAS_GENERATED:
        count = tl.load(generated_row_ptr + offs, mask=flagged, other=0)
        shifted = (y - _mul_rn(frequency, count.to(tl.float32), ACCURATE)) - presence  # presence * 1.0f
        hit = count > 0
        y = tl.where(hit, _round_to(shifted, DTYPE), y)
        touched = touched | hit
    return y, touched


# ---- kernel ---------------------------------------------------------------------------------------

@triton.jit
def _apply_penalties_kernel(logits_ptr,      # [rows, vocab], rows row_stride apart; float32/float16/bfloat16
                            out_ptr,         # [rows, vocab] contiguous, logits' dtype (may be logits_ptr)
                            mask_ptr,        # int32 [rows, words] contiguous: bit t % 32 of word t // 32
                            seen_ptr,        # int32 [rows, vocab] contiguous (read only if HAS_SEEN)
                            generated_ptr,   # int32 [rows, vocab] contiguous (read only if HAS_GENERATED)
                            repetition_ptr,  # float32 [rows] or [1]
                            presence_ptr,    # float32 [rows] or [1]
                            frequency_ptr,   # float32 [rows] or [1]
                            row_stride, vocab, words,
                            HAS_SEEN: tl.constexpr, HAS_GENERATED: tl.constexpr, IN_PLACE: tl.constexpr,
                            REPETITION_PER_ROW: tl.constexpr, PRESENCE_PER_ROW: tl.constexpr,
                            FREQUENCY_PER_ROW: tl.constexpr, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < vocab
    repetition, presence, frequency = _penalty_params(repetition_ptr, presence_ptr, frequency_ptr, row,
                                                      REPETITION_PER_ROW, PRESENCE_PER_ROW, FREQUENCY_PER_ROW)
    flagged = _flagged(mask_ptr + row * words, offs, valid)
    # In place, only flagged tokens can change: read (and write) nothing else.
    x = tl.load(logits_ptr + row * row_stride + offs, mask=flagged if IN_PLACE else valid, other=0.0)
    y, touched = _penalize(_upcast(x), offs, flagged, seen_ptr + row * vocab,
                           generated_ptr + row * vocab, repetition, presence, frequency,
                           logits_ptr.dtype.element_ty, HAS_SEEN, HAS_GENERATED, ACCURATE)
    # y holds exactly representable values: the conversion back is exact.
    y = tl.where(touched, _downcast(y, out_ptr.dtype.element_ty), x)
    if IN_PLACE:
        tl.store(out_ptr + row * vocab + offs, y, mask=touched)
    else:
        tl.store(out_ptr + row * vocab + offs, y, mask=valid)


# ---- launchers ------------------------------------------------------------------------------------

def penalty_arguments(penalties) -> tuple[tuple, dict]:
    """(pointer arguments, constexpr flags) of ``penalties`` (a PenaltyTensors) for the kernels:
    (mask, seen, generated, repetition, presence, frequency), absent counts replaced by the mask
    (never read), and HAS_SEEN / HAS_GENERATED / *_PER_ROW."""
    mask, seen, generated = penalties.mask, penalties.seen, penalties.generated
    pointers = (mask, mask if seen is None else seen, mask if generated is None else generated,
                penalties.repetition, penalties.presence, penalties.frequency)
    flags = dict(HAS_SEEN=seen is not None, HAS_GENERATED=generated is not None,
                 REPETITION_PER_ROW=penalties.repetition.numel() != 1,
                 PRESENCE_PER_ROW=penalties.presence.numel() != 1,
                 FREQUENCY_PER_ROW=penalties.frequency.numel() != 1)
    return pointers, flags


def launch_apply_penalties(logits: torch.Tensor, penalties, out: torch.Tensor) -> None:
    """Launch over validated inputs (python/turbogen/ops/penalties.py): ``logits`` [rows, vocab]
    float32/float16/bfloat16 with contiguous rows; ``penalties`` a PenaltyTensors (mask int32
    [rows, ceil(vocab / 32)], seen / generated int32 [rows, vocab] or None, repetition / presence /
    frequency float32 [1] or [rows], all contiguous on the logits' device); ``out`` [rows, vocab]
    contiguous, logits' dtype. Writes the penalised logits to ``out``; when ``out`` is ``logits``
    (same data pointer) only the penalised entries are written."""
    rows, vocab = logits.shape
    if rows == 0 or vocab == 0:
        return
    in_place = out.data_ptr() == logits.data_ptr()
    if penalties.seen is None and penalties.generated is None:
        if not in_place:
            out.copy_(logits)
        return
    block = min(INTERPRETER_BLOCK if interpreting() else BLOCK, triton.next_power_of_2(vocab))
    row_stride = logits.stride(0) if rows > 1 else vocab
    pointers, flags = penalty_arguments(penalties)
    _apply_penalties_kernel[(rows, triton.cdiv(vocab, block))](
        logits, out, *pointers, row_stride, vocab, penalties.mask.shape[1],
        IN_PLACE=in_place, BLOCK=block, ACCURATE=not interpreting(), **flags)
