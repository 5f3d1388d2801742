"""Triton sampling: temperature / top-k / top-p / min-p filtering + Gumbel-max with Philox noise.

Computes turbogen.ref.sampling's function (docs/sampling.md). No sort: the filters reduce to one
cut in the (value descending, index ascending) order, found by a multi-pivot search, and the
vocabulary is split across programs for the passes that read it from memory, so batch 1 still
fills a GPU:

1. ``_chunk_stats_kernel`` (rows x chunks): per chunk the max tempered logit, its first index,
   the sum of exp(z - chunk max) and the number of finite values.
2. ``_select_kernel`` (one program per row, only when a row uses top-k or top-p): combines the
   chunk stats, then finds the k-th largest value and the top-p cut by searching the
   order-preserving integer key of the values, NUM_PIVOTS pivots per pass (each pass counts, and
   weighs by exp(z - max), the values at or above every pivot), and resolves ties at the top-p cut
   by the same search over token indices. Its passes re-read the row, from L2 on a GPU.
3. ``_draw_kernel`` (rows x chunks): Gumbel noise (``tl.philox``) for the kept tokens, the chunk's
   best score with its lowest index, and the chunk's kept mass for logprobs; or
   ``_filter_kernel``, which writes the filtered logits.
4. ``_finish_kernel`` (one program per row): the best chunk, in index order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import interpreting
from .penalties import _flagged, _penalize, _row_penalties, _upcast, penalty_arguments

NUM_PIVOTS = 16        # thresholds evaluated per search pass: each pass narrows the range 16-fold
INTERPRETER_PIVOTS = 128  # the interpreter pays per operation, not per element: fewer, wider passes
SELECT_BLOCK = 1024    # elements per step in the select kernel's passes
MIN_CHUNK = 1024       # vocabulary split: chunks of MIN_CHUNK..MAX_CHUNK elements
MAX_CHUNK = 8192
TARGET_PROGRAMS = 512  # enough (rows x chunks) programs to fill a large GPU
GUMBEL_BOUND: tl.constexpr = tl.constexpr(17.0)  # > every -log(-log(u)); philox.h's kGumbelBound
_FLT_LOWEST: tl.constexpr = tl.constexpr(-3.4028234663852886e38)  # lowest finite float32


# ---- element helpers ------------------------------------------------------------------------------

@triton.jit
def _log(x, ACCURATE: tl.constexpr):
    # libdevice's logf (1 ulp) on a GPU; the interpreter has no libdevice and uses numpy's log.
    if ACCURATE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _exp(x, ACCURATE: tl.constexpr):
    if ACCURATE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _load_tempered(row_ptr, offs, vocab, temperature, pen, PEN: tl.constexpr, ACCURATE: tl.constexpr):
    """float32 logits / temperature (IEEE division), NaN and out-of-row positions as -inf.

    With penalties (PEN = (HAS_PENALTIES, HAS_SEEN, HAS_GENERATED), ``pen`` the row's
    ``_row_penalties`` tuple) the logits are first penalised as ``apply_penalties`` writes them
    (rounded to the logits dtype). Without, PEN[0] is False and nothing more is compiled."""
    if PEN[0]:
        valid = offs < vocab
        x = _upcast(tl.load(row_ptr + offs, mask=valid, other=float("-inf")))
        x, _ = _penalize(x, offs, _flagged(pen[0], offs, valid), pen[1], pen[2], pen[3], pen[4], pen[5],
                         row_ptr.dtype.element_ty, PEN[1], PEN[2], ACCURATE)
    else:
        x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
    z = tl.math.div_rn(x, temperature)
    return tl.where(z != z, float("-inf"), z)


@triton.jit
def _key(z):
    """Order-preserving int64 key of float32 values (-0.0 folded into +0.0, so equal values share it)."""
    bits = (z + 0.0).to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _value(key):
    """Inverse of _key."""
    bits = key.to(tl.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _row_param(ptr, row, PER_ROW: tl.constexpr):
    if PER_ROW:
        return tl.load(ptr + row)
    else:
        return tl.load(ptr)


@triton.jit
def _effective_temperature(temperature_ptr, row, PER_ROW: tl.constexpr):
    """Greedy rows (temperature 0) read the logits unscaled."""
    temperature = _row_param(temperature_ptr, row, PER_ROW)
    return tl.where(temperature == 0.0, 1.0, temperature)


# ---- 1. chunk statistics ------------------------------------------------------------------------

@triton.jit
def _chunk_stats_kernel(logits_ptr, row_stride, vocab, temperature_ptr, chunk_max_ptr, chunk_argmax_ptr,
                        chunk_sum_ptr, chunk_finite_ptr, n_chunks, chunk_size,
                        penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                        frequency_ptr, penalty_words,
                        TEMPERATURE_PER_ROW: tl.constexpr, BLOCK: tl.constexpr, ACCURATE: tl.constexpr,
                        HAS_PENALTIES: tl.constexpr, HAS_SEEN: tl.constexpr, HAS_GENERATED: tl.constexpr,
                        REPETITION_PER_ROW: tl.constexpr, PRESENCE_PER_ROW: tl.constexpr,
                        FREQUENCY_PER_ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pen = _row_penalties(penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                         frequency_ptr, row, vocab, penalty_words, HAS_PENALTIES, REPETITION_PER_ROW,
                         PRESENCE_PER_ROW, FREQUENCY_PER_ROW)
    PEN: tl.constexpr = (HAS_PENALTIES, HAS_SEEN, HAS_GENERATED)
    chunk = tl.program_id(1)
    row_ptr = logits_ptr + row * row_stride
    temperature = _effective_temperature(temperature_ptr, row, TEMPERATURE_PER_ROW)
    begin = chunk * chunk_size
    end = tl.minimum(begin + chunk_size, vocab)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_index = tl.full([BLOCK], 2147483647, tl.int32)
    total = tl.zeros([BLOCK], tl.float32)
    finite = tl.zeros([BLOCK], tl.int32)
    for start in range(begin, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = _load_tempered(row_ptr, offs, end, temperature, pen, PEN, ACCURATE)
        improved = z > best
        # Online sum per lane: rescale when the lane max grows.
        new_best = tl.maximum(best, z)
        safe = tl.where(new_best == float("-inf"), 0.0, new_best)
        total = total * _exp(best - safe, ACCURATE) + _exp(z - safe, ACCURATE)
        best_index = tl.where(improved, offs, best_index)
        best = new_best
        finite += (z > float("-inf")).to(tl.int32)
    chunk_max = tl.max(best, axis=0)
    chunk_argmax = tl.min(tl.where(best == chunk_max, best_index, 2147483647), axis=0)
    safe_max = tl.where(chunk_max == float("-inf"), 0.0, chunk_max)
    chunk_sum = tl.sum(tl.where(best == float("-inf"), 0.0, total * _exp(best - safe_max, ACCURATE)), axis=0)
    out = row * n_chunks + chunk
    tl.store(chunk_max_ptr + out, chunk_max)
    tl.store(chunk_argmax_ptr + out, chunk_argmax)
    tl.store(chunk_sum_ptr + out, chunk_sum)
    tl.store(chunk_finite_ptr + out, tl.sum(finite, axis=0))


@triton.jit
def _row_stats(row, chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr, n_chunks,
               CHUNKS: tl.constexpr, ACCURATE: tl.constexpr):
    """(max, first argmax, sum exp(z - max), finite count) of a row from its chunks, in chunk order."""
    chunks = tl.arange(0, CHUNKS)
    valid = chunks < n_chunks
    base = row * n_chunks
    maxima = tl.load(chunk_max_ptr + base + chunks, mask=valid, other=float("-inf"))
    argmaxes = tl.load(chunk_argmax_ptr + base + chunks, mask=valid, other=2147483647)
    sums = tl.load(chunk_sum_ptr + base + chunks, mask=valid, other=0.0)
    finite = tl.load(chunk_finite_ptr + base + chunks, mask=valid, other=0)
    row_max = tl.max(maxima, axis=0)
    row_argmax = tl.min(tl.where(maxima == row_max, argmaxes, 2147483647), axis=0)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_sum = tl.sum(tl.where(maxima == float("-inf"), 0.0, sums * _exp(maxima - safe_max, ACCURATE)), axis=0)
    return row_max, row_argmax, row_sum, tl.sum(finite, axis=0)


# ---- 2. selection -------------------------------------------------------------------------------

@triton.jit
def _weigh_pivots(row_ptr, vocab, temperature, row_max, floor, pivots, pen,
                  BLOCK: tl.constexpr, NP: tl.constexpr, ACCURATE: tl.constexpr, PEN: tl.constexpr):
    """One pass: for every pivot key, the count and the mass (sum of exp(z - max)) of the values
    >= floor whose key is >= the pivot."""
    counts = tl.zeros([NP], tl.int64)
    masses = tl.zeros([NP], tl.float32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = _load_tempered(row_ptr, offs, vocab, temperature, pen, PEN, ACCURATE)
        eligible = z >= floor
        at_or_above = (_key(z)[:, None] >= pivots[None, :]) & eligible[:, None]
        weight = tl.where(eligible, _exp(z - row_max, ACCURATE), 0.0)
        counts += tl.sum(at_or_above.to(tl.int64), axis=0)
        masses += tl.sum(tl.where(at_or_above, weight[:, None], 0.0), axis=0)
    return counts, masses


@triton.jit
def _search_key(row_ptr, vocab, temperature, row_max, floor, lo, lo_mass, hi, count_target, mass_target, pen,
                BY_MASS: tl.constexpr, BLOCK: tl.constexpr, NP: tl.constexpr, ACCURATE: tl.constexpr,
                PEN: tl.constexpr):
    """The largest key K in [lo, hi] whose count (or mass) at or above reaches the target, given
    that lo's does. Returns (K, mass at or above K)."""
    steps = tl.arange(1, NP + 1).to(tl.int64)
    while lo < hi:
        pivots = lo + ((hi - lo) * steps + NP - 1) // NP  # ceil: increasing, the last one is hi
        counts, masses = _weigh_pivots(row_ptr, vocab, temperature, row_max, floor, pivots, pen, BLOCK, NP,
                                       ACCURATE, PEN)
        if BY_MASS:
            reached = masses >= mass_target
        else:
            reached = counts >= count_target
        n_reached = tl.sum(reached.to(tl.int32), axis=0)
        if n_reached == 0:
            hi = tl.min(pivots, axis=0) - 1
        else:
            new_lo = tl.max(tl.where(reached, pivots, lo), axis=0)
            lo_mass = tl.max(tl.where(reached & (pivots == new_lo), masses, 0.0), axis=0)
            if n_reached < NP:
                hi = tl.min(tl.where(reached, hi, pivots), axis=0) - 1
            lo = new_lo
    return lo, lo_mass


@triton.jit
def _search_tie_index(row_ptr, vocab, temperature, value, keep, pen, BLOCK: tl.constexpr, NP: tl.constexpr,
                      ACCURATE: tl.constexpr, PEN: tl.constexpr):
    """The index of the keep-th token (in index order) whose value equals `value`."""
    lo = tl.zeros([], tl.int64)
    hi = tl.zeros([], tl.int64) + vocab - 1
    steps = tl.arange(0, NP).to(tl.int64)
    while lo < hi:
        pivots = lo + (hi - lo) * steps // NP  # increasing, the first one is lo
        counts = tl.zeros([NP], tl.int64)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            z = _load_tempered(row_ptr, offs, vocab, temperature, pen, PEN, ACCURATE)
            tied = (z == value)[:, None] & (offs[:, None] <= pivots[None, :])
            counts += tl.sum(tied.to(tl.int64), axis=0)
        reached = counts >= keep
        n_reached = tl.sum(reached.to(tl.int32), axis=0)
        if n_reached == 0:
            lo = tl.max(pivots, axis=0) + 1
        else:
            first = tl.min(tl.where(reached, pivots, hi), axis=0)
            if n_reached < NP:
                lo = tl.max(tl.where(reached, lo, pivots), axis=0) + 1
            hi = first
    return lo


@triton.jit
def _select_kernel(logits_ptr, row_stride, vocab, temperature_ptr, top_k_ptr, top_p_ptr,
                   chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr, n_chunks,
                   cut_value_ptr, cut_index_ptr,
                   penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                   frequency_ptr, penalty_words,
                   TEMPERATURE_PER_ROW: tl.constexpr, TOP_K_PER_ROW: tl.constexpr, TOP_P_PER_ROW: tl.constexpr,
                   CHUNKS: tl.constexpr, BLOCK: tl.constexpr, NP: tl.constexpr, ACCURATE: tl.constexpr,
                   HAS_PENALTIES: tl.constexpr, HAS_SEEN: tl.constexpr, HAS_GENERATED: tl.constexpr,
                   REPETITION_PER_ROW: tl.constexpr, PRESENCE_PER_ROW: tl.constexpr,
                   FREQUENCY_PER_ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pen = _row_penalties(penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                         frequency_ptr, row, vocab, penalty_words, HAS_PENALTIES, REPETITION_PER_ROW,
                         PRESENCE_PER_ROW, FREQUENCY_PER_ROW)
    PEN: tl.constexpr = (HAS_PENALTIES, HAS_SEEN, HAS_GENERATED)
    row_ptr = logits_ptr + row * row_stride
    temperature = _effective_temperature(temperature_ptr, row, TEMPERATURE_PER_ROW)
    top_k = _row_param(top_k_ptr, row, TOP_K_PER_ROW)
    top_p = _row_param(top_p_ptr, row, TOP_P_PER_ROW)
    row_max, row_argmax, row_sum, finite = _row_stats(row, chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr,
                                                      chunk_finite_ptr, n_chunks, CHUNKS, ACCURATE)
    floor = tl.full([], _FLT_LOWEST, tl.float32)
    cut_value = floor
    cut_index = tl.zeros([], tl.int64) + vocab
    if row_max > float("-inf"):
        lo = _key(tl.full([], _FLT_LOWEST, tl.float32))
        hi = _key(row_max)
        mass = row_sum
        # top-k: the k-th largest value (ties with it stay). Fewer than k finite values: no-op.
        if (top_k > 0) & (top_k < finite):
            lo, mass = _search_key(row_ptr, vocab, temperature, row_max, floor, lo, mass, hi, top_k, 0.0, pen,
                                   False, BLOCK, NP, ACCURATE, PEN)
            floor = _value(lo)
            cut_value = floor
        # top-p over the top-k survivors: the cut is the first token, in (value desc, index asc)
        # order, where the mass ranked at or above it reaches top_p of their total. A +inf max makes
        # every probability NaN in the reference, whose top-p then removes nothing.
        if (top_p < 1.0) & (row_max < float("inf")):
            target = (top_p * mass).to(tl.float32)
            key, _ = _search_key(row_ptr, vocab, temperature, row_max, floor, lo, mass, hi, 0, target, pen,
                                 True, BLOCK, NP, ACCURATE, PEN)
            cut_value = _value(key)
            # Ties at the cut value: keep them in index order while the mass above stays < target.
            above_pivots = tl.full([2], 0, tl.int64) + key + tl.arange(0, 2).to(tl.int64)
            counts, masses = _weigh_pivots(row_ptr, vocab, temperature, row_max, floor, above_pivots, pen,
                                           BLOCK, 2, ACCURATE, PEN)
            tied = tl.sum(tl.where(tl.arange(0, 2) == 0, counts, -counts), axis=0)
            mass_above = tl.sum(tl.where(tl.arange(0, 2) == 1, masses, 0.0), axis=0)
            weight = _exp(cut_value - row_max, ACCURATE)
            needed = tl.ceil((target - mass_above) / weight)
            keep = tl.minimum(tl.maximum(needed, 1.0), tied.to(tl.float32)).to(tl.int64)
            if keep < tied:
                cut_index = _search_tie_index(row_ptr, vocab, temperature, cut_value, keep, pen, BLOCK, NP,
                                              ACCURATE, PEN)
    tl.store(cut_value_ptr + row, cut_value)
    tl.store(cut_index_ptr + row, cut_index.to(tl.int32))


# ---- 3. draw or filter --------------------------------------------------------------------------

@triton.jit
def _gumbel(seed, offs, offset_lo, offset_hi, ACCURATE: tl.constexpr):
    """-log(-log(u)) for tokens `offs` of a row: u from word 0 of Philox4x32-10 with key = seed and
    counter (token, 0, lo32(offset), hi32(offset)), u = (bits >> 9) * 2^-23 + 2^-24."""
    zeros = tl.zeros(offs.shape, tl.uint32)
    bits, _, _, _ = tl.philox(seed, offs.to(tl.uint32), zeros, zeros + offset_lo, zeros + offset_hi)
    u = (bits >> 9).to(tl.float32) * 1.1920928955078125e-07 + 5.960464477539063e-08
    return -_log(-_log(u, ACCURATE), ACCURATE)


@triton.jit
def _kept(z, offs, cut_value, cut_index, row_max, min_p, ACCURATE: tl.constexpr):
    """The row's kept set: at or above the cut in (value desc, index asc) order, and min-p."""
    above_cut = (z > cut_value) | ((z == cut_value) & (offs <= cut_index))
    # min_p = 0 keeps everything: exp(z - max) >= 0. A +inf max makes every probability NaN in the
    # reference, whose min-p then removes nothing.
    infinite_max = (tl.zeros_like(z) + row_max) == float("inf")
    return above_cut & (infinite_max | (_exp(z - row_max, ACCURATE) >= min_p))


@triton.jit
def _draw_kernel(logits_ptr, row_stride, vocab, temperature_ptr, min_p_ptr, seed_ptr, offset_ptr,
                 chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr, n_chunks, chunk_size,
                 cut_value_ptr, cut_index_ptr, part_score_ptr, part_index_ptr, part_value_ptr, part_mass_ptr,
                 penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                 frequency_ptr, penalty_words,
                 TEMPERATURE_PER_ROW: tl.constexpr, MIN_P_PER_ROW: tl.constexpr, OFFSET_PER_ROW: tl.constexpr,
                 WANT_MASS: tl.constexpr, CHUNKS: tl.constexpr, BLOCK: tl.constexpr, ACCURATE: tl.constexpr,
                 HAS_PENALTIES: tl.constexpr, HAS_SEEN: tl.constexpr, HAS_GENERATED: tl.constexpr,
                 REPETITION_PER_ROW: tl.constexpr, PRESENCE_PER_ROW: tl.constexpr,
                 FREQUENCY_PER_ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pen = _row_penalties(penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                         frequency_ptr, row, vocab, penalty_words, HAS_PENALTIES, REPETITION_PER_ROW,
                         PRESENCE_PER_ROW, FREQUENCY_PER_ROW)
    PEN: tl.constexpr = (HAS_PENALTIES, HAS_SEEN, HAS_GENERATED)
    chunk = tl.program_id(1)
    row_ptr = logits_ptr + row * row_stride
    temperature = _effective_temperature(temperature_ptr, row, TEMPERATURE_PER_ROW)
    min_p = _row_param(min_p_ptr, row, MIN_P_PER_ROW)
    seed = tl.load(seed_ptr + row)
    offset = _row_param(offset_ptr, row, OFFSET_PER_ROW)
    offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
    offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    row_max, row_argmax, _, _ = _row_stats(row, chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr,
                                           n_chunks, CHUNKS, ACCURATE)
    cut_value = tl.load(cut_value_ptr + row)
    cut_index = tl.load(cut_index_ptr + row)
    # The top token is always kept, so its score bounds the winner's from below: a block whose kept
    # tokens all have z + GUMBEL_BOUND below it cannot hold the winner and needs no noise.
    first = tl.zeros([1], tl.int32) + row_argmax
    first_noise = tl.max(_gumbel(seed, first, offset_lo, offset_hi, ACCURATE), axis=0)
    first_score = tl.where(row_max > float("-inf"), row_max + first_noise, float("-inf"))
    begin = chunk * chunk_size
    end = tl.minimum(begin + chunk_size, vocab)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_index = tl.full([BLOCK], 2147483647, tl.int32)
    best_value = tl.full([BLOCK], float("-inf"), tl.float32)
    mass = tl.zeros([BLOCK], tl.float32)
    safe_max = tl.where(row_max > float("-inf"), row_max, 0.0)  # a row with no kept token reads as max 0
    for start in range(begin, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = _load_tempered(row_ptr, offs, end, temperature, pen, PEN, ACCURATE)
        kept = _kept(z, offs, cut_value, cut_index, safe_max, min_p, ACCURATE)
        if WANT_MASS:
            mass += tl.where(kept, _exp(z - safe_max, ACCURATE), 0.0)
        live = kept & (z + GUMBEL_BOUND >= first_score)
        if tl.max(live.to(tl.int32), axis=0) > 0:
            score = tl.where(live, z + _gumbel(seed, offs, offset_lo, offset_hi, ACCURATE), float("-inf"))
            improved = score > best  # strictly: a lane keeps its first (lowest) index on ties
            best_index = tl.where(improved, offs, best_index)
            best_value = tl.where(improved, z, best_value)
            best = tl.where(improved, score, best)
    chunk_best = tl.max(best, axis=0)
    winner = tl.min(tl.where(best == chunk_best, best_index, 2147483647), axis=0)
    out = row * n_chunks + chunk
    tl.store(part_score_ptr + out, chunk_best)
    tl.store(part_index_ptr + out, winner)
    tl.store(part_value_ptr + out, tl.max(tl.where(best_index == winner, best_value, float("-inf")), axis=0))
    if WANT_MASS:
        tl.store(part_mass_ptr + out, tl.sum(mass, axis=0))


@triton.jit
def _filter_kernel(logits_ptr, row_stride, vocab, temperature_ptr, min_p_ptr, out_ptr,
                   chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr, n_chunks, chunk_size,
                   cut_value_ptr, cut_index_ptr,
                   penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                   frequency_ptr, penalty_words,
                   TEMPERATURE_PER_ROW: tl.constexpr, MIN_P_PER_ROW: tl.constexpr,
                   CHUNKS: tl.constexpr, BLOCK: tl.constexpr, ACCURATE: tl.constexpr,
                   HAS_PENALTIES: tl.constexpr, HAS_SEEN: tl.constexpr, HAS_GENERATED: tl.constexpr,
                   REPETITION_PER_ROW: tl.constexpr, PRESENCE_PER_ROW: tl.constexpr,
                   FREQUENCY_PER_ROW: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pen = _row_penalties(penalty_mask_ptr, penalty_seen_ptr, penalty_generated_ptr, repetition_ptr, presence_ptr,
                         frequency_ptr, row, vocab, penalty_words, HAS_PENALTIES, REPETITION_PER_ROW,
                         PRESENCE_PER_ROW, FREQUENCY_PER_ROW)
    PEN: tl.constexpr = (HAS_PENALTIES, HAS_SEEN, HAS_GENERATED)
    chunk = tl.program_id(1)
    row_ptr = logits_ptr + row * row_stride
    greedy = _row_param(temperature_ptr, row, TEMPERATURE_PER_ROW) == 0.0
    temperature = _effective_temperature(temperature_ptr, row, TEMPERATURE_PER_ROW)
    min_p = _row_param(min_p_ptr, row, MIN_P_PER_ROW)
    row_max, row_argmax, _, _ = _row_stats(row, chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr,
                                           n_chunks, CHUNKS, ACCURATE)
    safe_max = tl.where(row_max > float("-inf"), row_max, 0.0)
    cut_value = tl.load(cut_value_ptr + row)
    cut_index = tl.load(cut_index_ptr + row)
    begin = chunk * chunk_size
    end = tl.minimum(begin + chunk_size, vocab)
    for start in range(begin, end, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = _load_tempered(row_ptr, offs, end, temperature, pen, PEN, ACCURATE)
        kept = _kept(z, offs, cut_value, cut_index, safe_max, min_p, ACCURATE)
        kept = tl.where(greedy, offs == row_argmax, kept)  # temperature 0: a point mass
        tl.store(out_ptr + row * vocab + offs, tl.where(kept, z, float("-inf")), mask=offs < end)


# ---- 4. finish ----------------------------------------------------------------------------------

@triton.jit
def _finish_kernel(temperature_ptr, chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr, n_chunks,
                   part_score_ptr, part_index_ptr, part_value_ptr, part_mass_ptr, tokens_ptr, logprobs_ptr,
                   TEMPERATURE_PER_ROW: tl.constexpr, WANT_LOGPROBS: tl.constexpr, CHUNKS: tl.constexpr,
                   ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    greedy = _row_param(temperature_ptr, row, TEMPERATURE_PER_ROW) == 0.0
    row_max, row_argmax, _, _ = _row_stats(row, chunk_max_ptr, chunk_argmax_ptr, chunk_sum_ptr, chunk_finite_ptr,
                                           n_chunks, CHUNKS, ACCURATE)
    chunks = tl.arange(0, CHUNKS)
    valid = chunks < n_chunks
    base = row * n_chunks
    scores = tl.load(part_score_ptr + base + chunks, mask=valid, other=float("-inf"))
    indices = tl.load(part_index_ptr + base + chunks, mask=valid, other=2147483647)
    values = tl.load(part_value_ptr + base + chunks, mask=valid, other=float("-inf"))
    best = tl.max(scores, axis=0)
    winner = tl.min(tl.where(scores == best, indices, 2147483647), axis=0)
    value = tl.max(tl.where(indices == winner, values, float("-inf")), axis=0)
    found = best > float("-inf")
    token = tl.where(found, winner, -1).to(tl.int64)
    token = tl.where(greedy, tl.where(row_max > float("-inf"), row_argmax, -1).to(tl.int64), token)
    tl.store(tokens_ptr + row, token)
    if WANT_LOGPROBS:
        mass = tl.sum(tl.load(part_mass_ptr + base + chunks, mask=valid, other=0.0), axis=0)
        # A kept winner implies a positive mass, or a NaN one with a +inf max, where the reference's
        # logprob is NaN (inf - inf), greedy or not.
        found = found & ((mass > 0.0) | (row_max == float("inf")))
        safe_max = tl.where(found, row_max, 0.0)
        logprob = tl.where(found, (value - safe_max) - _log(tl.where(found, mass, 1.0), ACCURATE), float("-inf"))
        logprob = tl.where(greedy, tl.where(row_max > float("-inf"), row_max - row_max, float("-inf")), logprob)
        tl.store(logprobs_ptr + row, logprob)


# ---- launcher -----------------------------------------------------------------------------------

def _chunk_size(rows: int, vocab: int) -> int:
    """Vocabulary chunk per program: small enough that rows x chunks fills a GPU, large enough that
    a program has work (and, in the interpreter, as few programs as possible)."""
    largest = triton.next_power_of_2(vocab)
    if interpreting():
        return min(largest, MAX_CHUNK)
    chunks_wanted = triton.cdiv(TARGET_PROGRAMS, max(rows, 1))
    size = triton.next_power_of_2(triton.cdiv(vocab, chunks_wanted))
    return max(MIN_CHUNK, min(size, MAX_CHUNK, largest))


def _select_block(vocab: int) -> int:
    # The interpreter pays per step, not per element: take the row in as few steps as possible.
    limit = MAX_CHUNK if interpreting() else SELECT_BLOCK
    return min(limit, triton.next_power_of_2(vocab))


def launch_sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           min_p: torch.Tensor, seed: torch.Tensor | None, offset: torch.Tensor | None, *,
           tokens: torch.Tensor | None = None, logprobs: torch.Tensor | None = None,
           filtered: torch.Tensor | None = None, penalties=None) -> None:
    """Launch over validated inputs (python/turbogen/ops/sampling.py): ``logits`` [rows, vocab] with
    contiguous rows; temperature (float32), top_k (int64), top_p (float64), min_p (float32) of
    shape [1] or [rows]; seed int64 [rows] and offset int64 [1] or [rows] when drawing. Writes the
    given outputs: ``tokens`` int64 [rows], ``logprobs`` float32 [rows], ``filtered`` float32
    [rows, vocab] contiguous.

    ``penalties``: a PenaltyTensors (python/turbogen/ops/penalties.py) or None. When given, every
    read of the logits sees them penalised as ``kernels.penalties.launch_apply_penalties`` writes
    them, so the result is that of sampling (filtering) the penalised logits; nothing is written."""
    rows, vocab = logits.shape
    if rows == 0:
        return
    if vocab == 0:
        if tokens is not None:
            tokens.fill_(-1)
        if logprobs is not None:
            logprobs.fill_(float("-inf"))
        return
    device = logits.device
    accurate = not interpreting()
    chunk_size = _chunk_size(rows, vocab)
    n_chunks = triton.cdiv(vocab, chunk_size)
    chunks_block = triton.next_power_of_2(n_chunks)
    block = min(chunk_size, 1024)
    row_stride = logits.stride(0) if rows > 1 else vocab
    per_row = {name: value.numel() != 1 for name, value in
               (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p))}
    # Every kernel that reads the logits takes the penalty arguments (placeholders without penalties).
    if penalties is None or (penalties.seen is None and penalties.generated is None):
        penalty_pointers = (temperature,) * 6
        penalty_words = 0
        penalty_flags = dict(HAS_PENALTIES=False, HAS_SEEN=False, HAS_GENERATED=False, REPETITION_PER_ROW=False,
                             PRESENCE_PER_ROW=False, FREQUENCY_PER_ROW=False)
    else:
        penalty_pointers, penalty_flags = penalty_arguments(penalties)
        penalty_words = penalties.mask.shape[1]
        penalty_flags["HAS_PENALTIES"] = True
    penalty_args = (*penalty_pointers, penalty_words)

    def workspace(dtype):
        return torch.empty((rows, n_chunks), dtype=dtype, device=device)

    chunk_max, chunk_argmax = workspace(torch.float32), workspace(torch.int32)
    chunk_sum, chunk_finite = workspace(torch.float32), workspace(torch.int32)
    stats = (chunk_max, chunk_argmax, chunk_sum, chunk_finite, n_chunks)
    _chunk_stats_kernel[(rows, n_chunks)](
        logits, row_stride, vocab, temperature, *stats[:4], n_chunks, chunk_size, *penalty_args,
        TEMPERATURE_PER_ROW=per_row["temperature"], BLOCK=block, ACCURATE=accurate, **penalty_flags)

    cut_value = torch.full((rows,), -3.4028234663852886e38, dtype=torch.float32, device=device)
    cut_index = torch.full((rows,), vocab, dtype=torch.int32, device=device)
    _select_kernel[(rows,)](
        logits, row_stride, vocab, temperature, top_k, top_p, *stats, cut_value, cut_index, *penalty_args,
        TEMPERATURE_PER_ROW=per_row["temperature"], TOP_K_PER_ROW=per_row["top_k"],
        TOP_P_PER_ROW=per_row["top_p"], CHUNKS=chunks_block, BLOCK=_select_block(vocab),
        NP=INTERPRETER_PIVOTS if interpreting() else NUM_PIVOTS, ACCURATE=accurate, **penalty_flags)

    if filtered is not None:
        _filter_kernel[(rows, n_chunks)](
            logits, row_stride, vocab, temperature, min_p, filtered, *stats, chunk_size, cut_value, cut_index,
            *penalty_args, TEMPERATURE_PER_ROW=per_row["temperature"], MIN_P_PER_ROW=per_row["min_p"],
            CHUNKS=chunks_block, BLOCK=block, ACCURATE=accurate, **penalty_flags)
    if tokens is None:
        return
    part_score, part_index = workspace(torch.float32), workspace(torch.int32)
    part_value, part_mass = workspace(torch.float32), workspace(torch.float32)
    want_logprobs = logprobs is not None
    _draw_kernel[(rows, n_chunks)](
        logits, row_stride, vocab, temperature, min_p, seed, offset, *stats, chunk_size, cut_value, cut_index,
        part_score, part_index, part_value, part_mass, *penalty_args,
        TEMPERATURE_PER_ROW=per_row["temperature"], MIN_P_PER_ROW=per_row["min_p"],
        OFFSET_PER_ROW=offset.numel() != 1, WANT_MASS=want_logprobs, CHUNKS=chunks_block, BLOCK=block,
        ACCURATE=accurate, **penalty_flags)
    _finish_kernel[(rows,)](
        temperature, *stats, part_score, part_index, part_value, part_mass, tokens,
        logprobs if want_logprobs else part_mass,
        TEMPERATURE_PER_ROW=per_row["temperature"], WANT_LOGPROBS=want_logprobs, CHUNKS=chunks_block,
        ACCURATE=accurate)
