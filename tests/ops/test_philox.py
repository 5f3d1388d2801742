"""Philox4x32-10 and the contract's uniform/Gumbel mapping (docs/design.md, "Randomness").

Every backend draws its noise from the same generator: the torch-int64 version in
turbogen.ref.philox, the C++ header csrc/include/turbogen/philox.h (CPU and CUDA kernels) and
Triton's tl.philox. Each is checked against Random123's known-answer vectors or against the others.
"""

from __future__ import annotations

import math

import pytest
import torch

from turbogen import _ext
from turbogen.ref import philox

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2 words),
# expected output (4 words).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _words(values):
    return [torch.tensor([v], dtype=torch.int64) for v in values]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_reference_matches_random123_known_answers(counter, key, expected):
    out = philox.philox4x32(*_words(counter), *_words(key))
    assert tuple(int(word) for word in out) == expected


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_cpp_matches_random123_known_answers(counter, key, expected):
    reason = _ext.extension_error()
    if reason is not None:
        pytest.skip(reason)
    assert _ext.extension().philox4x32(*counter, *key) == expected


def _random_words(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, 1 << 32, (n,), dtype=torch.int64, generator=generator)


def test_cpp_matches_reference_on_random_inputs():
    reason = _ext.extension_error()
    if reason is not None:
        pytest.skip(reason)
    generator = torch.Generator().manual_seed(0)
    words = [_random_words(generator, 64) for _ in range(6)]
    expected = torch.stack(philox.philox4x32(*words), dim=1)
    for i in range(64):
        assert _ext.extension().philox4x32(*(int(w[i]) for w in words)) == tuple(expected[i].tolist())


try:  # tests/conftest.py has set TRITON_INTERPRET where there is no GPU, before this import
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a test dependency
    triton = None
else:
    @triton.jit
    def _philox_kernel(seed_ptr, c0_ptr, c1_ptr, c2_ptr, c3_ptr, out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        seed = tl.load(seed_ptr)
        c0 = tl.load(c0_ptr + offs).to(tl.uint32)
        c1 = tl.load(c1_ptr + offs).to(tl.uint32)
        c2 = tl.load(c2_ptr + offs).to(tl.uint32)
        c3 = tl.load(c3_ptr + offs).to(tl.uint32)
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
        tl.store(out_ptr + offs, r0.to(tl.int64))
        tl.store(out_ptr + N + offs, r1.to(tl.int64))
        tl.store(out_ptr + 2 * N + offs, r2.to(tl.int64))
        tl.store(out_ptr + 3 * N + offs, r3.to(tl.int64))


def test_triton_philox_matches_reference():
    """tl.philox(seed, c0, c1, c2, c3), in the interpreter or on a GPU, is the reference's
    generator with key (lo32(seed), hi32(seed))."""
    if triton is None:
        pytest.skip("triton is not installed")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not _interpreting():
        pytest.skip("no GPU and TRITON_INTERPRET is not set")
    generator = torch.Generator().manual_seed(1)
    n = 64
    for seed in (0, 12345, -1, (1 << 63) - 7, -(1 << 62) + 3):
        counters = [_random_words(generator, n) for _ in range(4)]
        seed_tensor = torch.tensor([seed], dtype=torch.int64)
        out = torch.empty(4 * n, dtype=torch.int64, device=device)
        _philox_kernel[(1,)](seed_tensor.to(device), *(c.to(device) for c in counters), out, N=n)
        key_lo, key_hi = philox.split_uint64(seed_tensor)
        expected = torch.cat(philox.philox4x32(*counters, key_lo, key_hi))
        assert torch.equal(out.cpu(), expected)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def test_random_bits_layout():
    """Token j of row r: key = seed_r, counter = (lo32(j), hi32(j), lo32(offset_r), hi32(offset_r))."""
    seed = torch.tensor([7, -3], dtype=torch.int64)
    offset = torch.tensor([(5 << 32) | 9, 0], dtype=torch.int64)
    bits = philox.random_bits(seed, offset, 5)
    for r in range(2):
        seed_lo, seed_hi = (int(w) for w in philox.split_uint64(seed[r:r + 1]))
        offset_lo, offset_hi = (int(w) for w in philox.split_uint64(offset[r:r + 1]))
        for j in range(5):
            word0 = philox.philox4x32(*_words((j, 0, offset_lo, offset_hi)), *_words((seed_lo, seed_hi)))[0]
            assert int(bits[r, j]) == int(word0)
    assert (seed_lo, seed_hi) == (0xFFFFFFFD, 0xFFFFFFFF)  # -3 read as uint64


def test_uniform_is_exact_and_strictly_inside_unit_interval():
    bits = torch.tensor([0, 511, 512, (1 << 32) - 1, 0x80000000], dtype=torch.int64)
    u = philox.uniform_from_bits(bits)
    assert u.dtype == torch.float32
    expected = [(2 * (b >> 9) + 1) / 2 ** 24 for b in bits.tolist()]  # exact in float32
    assert u.tolist() == expected
    assert u.min() == 2.0 ** -24 and u.max() == 1 - 2.0 ** -24


def test_gumbel_noise_is_minus_log_minus_log_u():
    seed = torch.tensor([1, 2, 3])
    offset = torch.tensor([0, 10, 1 << 40])
    noise = philox.gumbel_noise(seed, offset, 257)
    u = philox.uniform_from_bits(philox.random_bits(seed, offset, 257))
    assert torch.equal(noise, -torch.log(-torch.log(u)))
    # The kernels skip tokens with z + 17 < best score (philox.h: kGumbelBound): no noise may reach
    # 17. The largest possible value comes from u = 1 - 2^-24.
    assert noise.max() <= -math.log(-math.log1p(-2.0 ** -24)) + 1e-4 < 17.0
    assert noise.std() > 0.8   # Gumbel(0, 1) has std pi / sqrt(6) = 1.28


def test_reference_compiles_fullgraph():
    """Bit-exact under torch.compile (the noise's logs may round differently there, by 1 ulp: the
    documented float-rounding caveat; tests/ops/test_sampling.py compiles the whole sampler)."""
    seed = torch.tensor([5, -9, 1 << 40])
    offset = torch.tensor([3, 0, (1 << 63) - 1])
    bits = torch.compile(philox.random_bits, fullgraph=True, dynamic=False)(seed, offset, 100)
    assert torch.equal(bits, philox.random_bits(seed, offset, 100))
