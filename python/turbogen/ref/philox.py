"""Philox4x32-10 and the Gumbel noise of the sampling contract, in torch int64 arithmetic.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) with the
Random123 constants; word for word what Triton's ``tl.philox(seed, c0, c1, c2, c3)`` computes with
``n_rounds=10``. Every uint32 word lives in an int64 tensor holding a value in ``[0, 2**32)``. The
32x32-bit products are split into 16-bit halves of the counter word, so no intermediate exceeds
2**49 and nothing overflows int64: the code is plain torch ops (no uint32/uint64 tensor support
needed) and ``torch.compile(fullgraph=True)``-able.

docs/sampling.md gives the exact bit layout; ``tests/ops/test_philox.py`` checks Random123's
known-answer vectors and ``tl.philox``.
"""

from __future__ import annotations

import torch

PHILOX_ROUNDS = 10
PHILOX_ROUND_A = 0xD2511F53  # multiplies counter word 0
PHILOX_ROUND_B = 0xCD9E8D57  # multiplies counter word 2
PHILOX_KEY_A = 0x9E3779B9    # added to key word 0 after every round
PHILOX_KEY_B = 0xBB67AE85    # added to key word 1 after every round

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF


def _mulhilo32(multiplier: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of ``multiplier * word`` for a uint32 constant and uint32 words."""
    low_product = word.bitwise_and(_MASK16) * multiplier          # < 2**48
    high_product = word.bitwise_right_shift(16) * multiplier      # < 2**48
    # multiplier * word = low_product + high_product * 2**16; fold the bits of high_product that
    # land in the low word into low_product, carry the rest into the high word.
    partial = low_product + high_product.bitwise_and(_MASK16).bitwise_left_shift(16)  # < 2**49
    low = partial.bitwise_and(_MASK32)
    high = high_product.bitwise_right_shift(16) + partial.bitwise_right_shift(32)
    return high, low


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               k0: torch.Tensor, k1: torch.Tensor, rounds: int = PHILOX_ROUNDS
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with ``rounds`` rounds on counter ``(c0, c1, c2, c3)`` and key ``(k0, k1)``.

    Inputs are int64 tensors (broadcastable against each other) holding uint32 values; so are the
    four output words.
    """
    for round_index in range(rounds):
        if round_index > 0:
            k0 = (k0 + PHILOX_KEY_A).bitwise_and(_MASK32)
            k1 = (k1 + PHILOX_KEY_B).bitwise_and(_MASK32)
        high_a, low_a = _mulhilo32(PHILOX_ROUND_A, c0)
        high_b, low_b = _mulhilo32(PHILOX_ROUND_B, c2)
        c0, c1, c2, c3 = (_materialized(high_b.bitwise_xor(c1).bitwise_xor(k0)), _materialized(low_b),
                          _materialized(high_a.bitwise_xor(c3).bitwise_xor(k1)), _materialized(low_a))
    return c0, c1, c2, c3


def _materialized(word: torch.Tensor) -> torch.Tensor:
    """``word`` itself (an identity view in eager mode), stored to memory under torch.compile.

    Every round reads each word two or three times, so inductor, which inlines integer arithmetic
    into its consumers, would otherwise trace a tree that grows ~3x per round (3^10 nodes) when the
    counter and key are compile-time constants, and never finish compiling. as_strided needs a
    realized input, which bounds every kernel to one round.
    """
    return word.as_strided(word.shape, word.stride())


def split_uint64(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) 32-bit words of int64 values reinterpreted as uint64."""
    return value.bitwise_and(_MASK32), value.bitwise_right_shift(32).bitwise_and(_MASK32)


def random_bits(seed: torch.Tensor, offset: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The contract's raw draws: ``[rows, vocab_size]`` int64 holding uint32 values.

    Element ``(r, j)`` is word 0 of Philox4x32-10 with key ``(lo32(seed[r]), hi32(seed[r]))`` and
    counter ``(lo32(j), hi32(j), lo32(offset[r]), hi32(offset[r]))``; ``seed`` and ``offset`` are
    int64 ``[rows]`` tensors reinterpreted as uint64.
    """
    token = torch.arange(vocab_size, dtype=torch.int64, device=seed.device)
    token_lo, token_hi = split_uint64(token)
    seed_lo, seed_hi = split_uint64(seed.to(torch.int64).reshape(-1, 1))
    offset_lo, offset_hi = split_uint64(offset.to(torch.int64).reshape(-1, 1))
    word0, _, _, _ = philox4x32(token_lo, token_hi, offset_lo, offset_hi, seed_lo, seed_hi)
    return word0


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """``float32(bits >> 9) * 2**-23 + 2**-24``: exact in float32, strictly inside (0, 1)."""
    return bits.bitwise_right_shift(9).to(torch.float32) * (2.0 ** -23) + (2.0 ** -24)


def gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``-log(-log(u))`` in float32 for every row and token: ``[rows, vocab_size]``."""
    u = uniform_from_bits(random_bits(seed, offset, vocab_size))
    return -torch.log(-torch.log(u))
