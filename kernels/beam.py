"""Triton ``turbogen.ops.beam_step``: one fused beam-search step (docs: /work/notes contract section 6;
python/turbogen/ops/beam.py states the semantics, python/turbogen/ref/beam.py is the oracle).

Three kernels:

1. ``_log_softmax_stats_kernel`` (one program per logits row, skipped when ``normalized``): the row's
   max ``m`` and ``lse = log(sum(exp(x - m)))``, so that ``log_softmax(x) = (x - m) - lse``.
2. ``_keys_kernel`` (batch rows x blocks): the accumulated scores ``acc[i * V + j] = lp[i, j] +
   running_scores[b, i]`` (or, when sampling, ``acc + g``), packed with their index into int64 keys.
3. ``_beam_step_kernel`` (one program per batch row):
   - candidates: K rounds of "the largest key below the previous round's", over the nb * V scores
     (``acc`` or, when sampling, ``acc + g`` with the sampling contract's Gumbel noise ``g`` for token
     counter = flat index), reading the keys; the K candidates' ``acc`` are then recomputed from the
     logits. Every score is packed with its index into one int64 key (order-preserving
     integer image of the float in the high word, NaN as -inf, then ``2**32 - 1 - index``), so keys are
     distinct, "value descending, lowest index on ties" is plain integer order, and no "taken" set is
     needed;
   - the bookkeeping (stopped candidates, running selection, finished merge, may_improve) on the K
     candidates and the nb finished slots, in registers: every selection is a rank computed by
     comparing all pairs of packed keys.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from . import interpreting
from .sampling import _exp, _gumbel, _log

BLOCK = 1024              # elements per step on a GPU
INTERPRETER_BLOCK = 8192  # the interpreter pays per operation, not per element: fewer, wider steps
_IMPOSSIBLE: tl.constexpr = tl.constexpr(-1.0e9)        # transformers' demotion of impossible scores
_INT64_MIN: tl.constexpr = tl.constexpr(-(1 << 63))     # below every packed key
_INT64_MAX: tl.constexpr = tl.constexpr((1 << 63) - 1)  # above every packed key
_INT32_MIN: tl.constexpr = tl.constexpr(-(1 << 31))
_NAN_KEY: tl.constexpr = tl.constexpr(-2139095041)     # -inf's key: NaN ranks as -inf


# ---- helpers ----------------------------------------------------------------------------------------

@triton.jit
def _packed(score, index, valid):
    """int64 key ordering (score descending, index ascending) as integers: the float's
    order-preserving image (-0.0 as +0.0, NaN as -inf) in the high word, 2**32 - 1 - index in the
    low word; _INT64_MIN where not ``valid``."""
    score = tl.where(score == 0.0, 0.0, score)
    bits = score.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = tl.where(score != score, _NAN_KEY, key)
    packed = (key.to(tl.int64) << 32) | (4294967295 - index.to(tl.int64))
    return tl.where(valid, packed, _INT64_MIN)


@triton.jit
def _rank(packed_a, packed_b):
    """For every key of ``packed_a``: how many keys of ``packed_b`` are larger."""
    return tl.sum((packed_b[None, :] > packed_a[:, None]).to(tl.int32), axis=1)


@triton.jit
def _pick_bits(rank, slots, bits):
    """[slots]: ``bits`` (int32) of the element whose rank is the slot, _INT32_MIN where none."""
    return tl.max(tl.where(rank[None, :] == slots[:, None], bits[None, :], _INT32_MIN), axis=1)


@triton.jit
def _pick_int(rank, slots, values):
    """[slots]: ``values`` (int64, >= 0) of the element whose rank is the slot, 0 where none."""
    return tl.sum(tl.where(rank[None, :] == slots[:, None], values[None, :], 0), axis=1)


@triton.jit
def _accumulated(logits_ptr, row_stride, stats_ptr, running_ptr, b, nb, vocab, flat, valid,
                 NORMALIZED: tl.constexpr):
    """acc at flat indices ``flat`` (beam * vocab + token) of batch row ``b``: float32 log_softmax
    (or the normalized scores as they are) plus the beam's running score."""
    beam = flat // vocab
    token = flat - beam * vocab
    row = b * nb + beam
    x = tl.load(logits_ptr + row * row_stride + token, mask=valid, other=0.0).to(tl.float32)
    if NORMALIZED:
        lp = x
    else:
        row_max = tl.load(stats_ptr + row * 2, mask=valid, other=0.0)
        lse = tl.load(stats_ptr + row * 2 + 1, mask=valid, other=0.0)
        lp = (x - row_max) - lse
    return lp + tl.load(running_ptr + row, mask=valid, other=0.0)


# ---- 1. log-softmax statistics ----------------------------------------------------------------------

@triton.jit
def _log_softmax_stats_kernel(logits_ptr,  # [B * nb, V] float32/16/bf16, rows row_stride apart
                              stats_ptr,   # float32 [B * nb, 2]: (max, log(sum(exp(x - max))))
                              row_stride, vocab, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    running_max = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        running_max = tl.maximum(running_max, x)
    row_max = tl.max(running_max, axis=0)
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        total += tl.where(offs < vocab, _exp(x - row_max, ACCURATE), 0.0)
    tl.store(stats_ptr + row * 2, row_max)
    tl.store(stats_ptr + row * 2 + 1, _log(tl.sum(total, axis=0), ACCURATE))


# ---- 2. the candidates' keys -------------------------------------------------------------------------

@triton.jit
def _keys_kernel(logits_ptr,   # [B * nb, V] float32/16/bf16, rows row_stride apart
                 stats_ptr,    # float32 [B * nb, 2] from kernel 1 (unused when NORMALIZED)
                 running_ptr,  # float32 [B, nb] running scores
                 seed_ptr,     # int64 [B] (unused unless SAMPLE)
                 offset_ptr,   # int64 [B] (unused unless SAMPLE)
                 keys_ptr,     # out int64 [B, nb * V]: _packed(acc (+ noise), flat index)
                 row_stride, nb, vocab, NORMALIZED: tl.constexpr, SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
                 ACCURATE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = nb * vocab
    flat = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = flat < n
    score = _accumulated(logits_ptr, row_stride, stats_ptr, running_ptr, b, nb, vocab, flat, valid, NORMALIZED)
    if SAMPLE:
        offset = tl.load(offset_ptr + b)
        offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
        offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
        score = score + _gumbel(tl.load(seed_ptr + b), flat, offset_lo, offset_hi, ACCURATE)
    tl.store(keys_ptr + b * n + flat, _packed(score, flat, valid), mask=valid)


# ---- 3. the step ------------------------------------------------------------------------------------

@triton.jit
def _beam_step_kernel(
        logits_ptr,             # [B * nb, V] float32/16/bf16, rows row_stride apart
        stats_ptr,              # float32 [B * nb, 2] from kernel 1 (unused when NORMALIZED)
        running_ptr,            # float32 [B, nb] running scores
        finished_ptr,           # float32 [B, nb] finished scores
        is_finished_ptr,        # bool [B, nb]
        may_improve_ptr,        # bool [B]
        eos_ptr,                # int64 [E]
        keys_ptr,               # int64 [B, nb * V]: packed keys from _keys_kernel
        cand_scores_ptr,        # out float32 [B, K]: acc of the candidates
        cand_flat_ptr,          # out int64 [B, K]: beam * V + token
        next_scores_ptr,        # out float32 [B, nb]
        next_source_ptr,        # out int64 [B, nb]: candidate index in [0, K)
        next_finished_ptr,      # out float32 [B, nb]
        finished_source_ptr,    # out int64 [B, nb]: < nb old slot, else nb + candidate
        next_is_finished_ptr,   # out bool [B, nb]
        next_may_improve_ptr,   # out bool [B]
        row_is_finite_ptr,      # out bool [B]
        row_stride, nb, vocab, K, E, early_stopping, all_stop,
        denominator,            # float32(pow(generated_length, length_penalty))
        best_denominator,       # float32(pow(best length, length_penalty)) for may_improve
        NORMALIZED: tl.constexpr, KP: tl.constexpr, NBP: tl.constexpr, EP: tl.constexpr,
        BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = nb * vocab
    lanes = tl.arange(0, BLOCK).to(tl.int64)

    # row_is_finite: the max of acc is finite (no NaN, no +inf, some finite value).
    bad = tl.zeros([BLOCK], tl.int32)
    finite = tl.zeros([BLOCK], tl.int32)
    for start in range(0, n, BLOCK):
        flat = start + lanes
        valid = flat < n
        acc = _accumulated(logits_ptr, row_stride, stats_ptr, running_ptr, b, nb, vocab, flat, valid, NORMALIZED)
        bad |= (valid & ((acc != acc) | (acc == float("inf")))).to(tl.int32)
        finite |= (valid & (acc == acc) & (tl.abs(acc) < float("inf"))).to(tl.int32)
    row_is_finite = (tl.max(bad, axis=0) == 0) & (tl.max(finite, axis=0) > 0)
    tl.store(row_is_finite_ptr + b, row_is_finite)

    # Candidates: K rounds, each the largest packed key below the previous round's.
    k_idx = tl.arange(0, KP).to(tl.int64)
    k_valid = k_idx < K
    chosen = tl.full([KP], _INT64_MIN, tl.int64)
    previous = tl.full([BLOCK], _INT64_MAX, tl.int64)  # a vector: loop-carried like every other value
    for t in range(0, K):
        best = tl.full([BLOCK], _INT64_MIN, tl.int64)
        for start in range(0, n, BLOCK):
            flat = start + lanes
            key = tl.load(keys_ptr + b * n + flat, mask=flat < n, other=_INT64_MIN)
            best = tl.maximum(best, tl.where(key < previous, key, _INT64_MIN))
        round_best = tl.max(best, axis=0)
        chosen = tl.where(k_idx == t, round_best, chosen)
        previous = tl.full([BLOCK], 0, tl.int64) + round_best
    flat_k = tl.where(k_valid, 4294967295 - (chosen & 4294967295), 0)
    cand = _accumulated(logits_ptr, row_stride, stats_ptr, running_ptr, b, nb, vocab, flat_k, k_valid, NORMALIZED)
    tl.store(cand_scores_ptr + b * K + k_idx, cand, mask=k_valid)
    tl.store(cand_flat_ptr + b * K + k_idx, flat_k, mask=k_valid)

    # Stopped candidates: every one when all_stop, else those whose token is an EOS id.
    token = flat_k % vocab
    e_idx = tl.arange(0, EP)
    eos = tl.load(eos_ptr + e_idx, mask=e_idx < E, other=-1)
    is_eos = tl.max((token[:, None] == eos[None, :]).to(tl.int32), axis=1) > 0
    stopped = (is_eos | (all_stop != 0)) & k_valid

    # Running beams: the nb best candidates, stopped ones demoted.
    demoted = tl.where(stopped, cand + _IMPOSSIBLE, cand)
    run_key = _packed(demoted, k_idx, k_valid)
    run_rank = tl.where(k_valid, _rank(run_key, run_key), KP + NBP)
    s_idx = tl.arange(0, NBP).to(tl.int64)
    s_valid = s_idx < nb
    next_bits = _pick_bits(run_rank, s_idx, demoted.to(tl.int32, bitcast=True))
    next_scores = next_bits.to(tl.float32, bitcast=True)
    tl.store(next_scores_ptr + b * nb + s_idx, next_scores, mask=s_valid)
    tl.store(next_source_ptr + b * nb + s_idx, _pick_int(run_rank, s_idx, k_idx), mask=s_valid)

    # Finished beams: merge the old slots with the newly finished top candidates.
    old = tl.load(finished_ptr + b * nb + s_idx, mask=s_valid, other=0.0)
    old_finished = tl.load(is_finished_ptr + b * nb + s_idx, mask=s_valid, other=0).to(tl.int32)
    newly = stopped & (k_idx < nb)
    fs = tl.math.div_rn(cand, tl.zeros([KP], tl.float32) + denominator)
    all_full = tl.min(tl.where(s_valid, old_finished, 1), axis=0) > 0
    fs = tl.where((early_stopping == 1) & all_full, fs + _IMPOSSIBLE, fs)
    may_improve = tl.load(may_improve_ptr + b).to(tl.int32)
    fs = tl.where(may_improve == 0, fs + _IMPOSSIBLE, fs)
    fs = tl.where(newly, fs, fs + _IMPOSSIBLE)
    old_key = _packed(old, s_idx, s_valid)
    new_key = _packed(fs, nb + k_idx, k_valid)
    old_rank = tl.where(s_valid, _rank(old_key, old_key) + _rank(old_key, new_key), KP + NBP)
    new_rank = tl.where(k_valid, _rank(new_key, old_key) + _rank(new_key, new_key), KP + NBP)
    merged_bits = tl.maximum(_pick_bits(old_rank, s_idx, old.to(tl.int32, bitcast=True)),
                             _pick_bits(new_rank, s_idx, fs.to(tl.int32, bitcast=True)))
    merged_source = _pick_int(old_rank, s_idx, s_idx) + _pick_int(new_rank, s_idx, nb + k_idx)
    merged_finished = (_pick_int(old_rank, s_idx, old_finished.to(tl.int64))
                       + _pick_int(new_rank, s_idx, newly.to(tl.int64))) > 0
    any_stopped = tl.max(stopped.to(tl.int32), axis=0) > 0
    next_finished = tl.where(any_stopped, merged_bits.to(tl.float32, bitcast=True), old)
    finished_source = tl.where(any_stopped, merged_source, s_idx)
    next_is_finished = tl.where(any_stopped, merged_finished, old_finished > 0)
    tl.store(next_finished_ptr + b * nb + s_idx, next_finished, mask=s_valid)
    tl.store(finished_source_ptr + b * nb + s_idx, finished_source, mask=s_valid)
    tl.store(next_is_finished_ptr + b * nb + s_idx, next_is_finished, mask=s_valid)

    # may_improve: can the best running beam still beat the worst finished one?
    best_running = tl.math.div_rn(tl.max(tl.where(s_idx == 0, next_scores, float("-inf")), axis=0),
                                  best_denominator)
    worst = tl.min(tl.where(s_valid, next_finished, float("inf")), axis=0)
    threshold = tl.where(next_is_finished, worst, _IMPOSSIBLE)
    improve = tl.max((s_valid & (best_running > threshold)).to(tl.int32), axis=0) > 0
    tl.store(next_may_improve_ptr + b, (may_improve != 0) & improve)


# ---- launcher ---------------------------------------------------------------------------------------

def _float32_pow(base: float, exponent: float) -> float:
    """(float)pow((double)base, (double)exponent), overflowing to inf as C's pow does."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return float(np.float32(np.power(np.float64(base), np.float64(exponent))))


def launch_beam_step(logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
                     is_finished: torch.Tensor, may_improve: torch.Tensor, eos: torch.Tensor, seeds: torch.Tensor,
                     offsets: torch.Tensor, normalized: bool, generated_length: int, max_generated_length: int,
                     length_penalty: float, early_stopping: int, all_stop: bool,
                     candidate_scores: torch.Tensor, candidate_flat: torch.Tensor, next_scores: torch.Tensor,
                     next_source: torch.Tensor, next_finished_scores: torch.Tensor, finished_source: torch.Tensor,
                     next_is_finished: torch.Tensor, next_may_improve: torch.Tensor,
                     row_is_finite: torch.Tensor) -> None:
    """One beam-search step over validated inputs (python/turbogen/ops/beam.py), writing every output.

    Inputs: ``logits`` [B * nb, V] (rows contiguous), ``running_scores`` / ``finished_scores`` float32
    [B, nb], ``is_finished`` bool [B, nb], ``may_improve`` bool [B], ``eos`` int64 [E], ``seeds`` and
    ``offsets`` int64 [B] (beam sampling) or both [0]. Outputs: see the module docstring of
    turbogen.ops.beam; K = ``candidate_scores.shape[1]``.

    Raises:
        ValueError: K > nb * V, or nb * V > 2**32 (flat indices are the noise's 32-bit token counter).
    """
    batch, nb = running_scores.shape
    vocab = logits.shape[1]
    k = candidate_scores.shape[1]
    if k > nb * vocab:
        raise ValueError(f"candidate count K={k} exceeds num_beams * vocab = {nb * vocab}")
    if nb * vocab > 1 << 32:
        raise ValueError(f"num_beams * vocab must be <= 2**32 on the triton backend, got {nb * vocab}")
    if batch == 0 or nb == 0:
        return
    interpreted = interpreting()
    accurate = not interpreted
    limit = INTERPRETER_BLOCK if interpreted else BLOCK
    row_stride = logits.stride(0) if logits.shape[0] > 1 else vocab
    stats = torch.empty((batch * nb, 2), dtype=torch.float32, device=logits.device)
    if not normalized:
        _log_softmax_stats_kernel[(batch * nb,)](logits, stats, row_stride, vocab,
                                                 BLOCK=min(limit, triton.next_power_of_2(vocab)), ACCURATE=accurate)
    if early_stopping == 2 and length_penalty > 0:
        best_length = max_generated_length
    else:
        best_length = generated_length
    sample = seeds.numel() > 0
    n = nb * vocab
    block = min(limit, triton.next_power_of_2(n))
    keys = torch.empty((batch, n), dtype=torch.int64, device=logits.device)
    _keys_kernel[(batch, triton.cdiv(n, block))](
        logits, stats, running_scores, seeds if sample else stats, offsets if sample else stats, keys,
        row_stride, nb, vocab, NORMALIZED=bool(normalized), SAMPLE=sample, BLOCK=block, ACCURATE=accurate)
    _beam_step_kernel[(batch,)](
        logits, stats, running_scores, finished_scores, is_finished, may_improve, eos, keys,
        candidate_scores, candidate_flat, next_scores, next_source, next_finished_scores, finished_source,
        next_is_finished, next_may_improve, row_is_finite,
        row_stride, nb, vocab, k, eos.numel(), int(early_stopping), int(bool(all_stop)),
        _float32_pow(generated_length, length_penalty), _float32_pow(best_length, length_penalty),
        NORMALIZED=bool(normalized), KP=triton.next_power_of_2(max(k, 2)),
        NBP=triton.next_power_of_2(max(nb, 2)), EP=triton.next_power_of_2(max(eos.numel(), 2)), BLOCK=block)
