"""turbogen.ops.gumbel_noise on every backend against turbogen.ref.philox.gumbel_noise.

The contract's noise is ``-log(-log(u))`` in float32, with the raw Philox bits and ``u`` exact on
every backend. The two logs are each backend's float32 log (docs/design.md: "float rounding of log"
is the documented cross-backend difference):
- on a GPU, cuda (CUDA's logf) and triton (libdevice's logf) use torch's CUDA log: bit for bit the
  reference on the same device;
- on a CPU the reference uses torch's log (SLEEF, within 1 ulp), the cpu kernel the correctly rounded
  log (csrc/include/turbogen/noise.h) and the Triton interpreter numpy's log: each is checked bit for
  bit against ``-log(-log(u))`` with its own log over the reference's ``u``, and against the reference
  within the cross-compilation tolerance (about an ulp apart in 15-35% of the elements).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbogen import ops
from turbogen.ref import philox

from conftest import backend_params, device_for
from tolerances import assert_bit_exact, assert_close_across_compilations

BACKENDS = backend_params(("cpu", "triton", "cuda"))

# (seeds, offsets): ordinary values, values >= 2**32 (both words of the key / counter in use) and
# negative int64 (read as uint64).
COUNTERS = [
    ([0, 1, 2], [0, 0, 0]),
    ([(1 << 32) + 5, -1, (1 << 63) - 1], [(1 << 32) + 9, (1 << 40), -3]),
    ([12345, -(1 << 62) + 7, 1 << 33], [7, (1 << 63) - 1, 1 << 32]),
]


def _own_log_formula(backend: str, device: torch.device, u: torch.Tensor) -> torch.Tensor | None:
    """``-log(-log(u))`` with ``backend``'s float32 log where it differs from torch's, else None."""
    if device.type == "cuda":
        return None  # the reference itself, on the GPU
    if backend == "cpu":
        def log(x):  # the correctly rounded float32 log
            return torch.log(x.double()).float()
        return -log(-log(u))
    if backend == "triton":  # the interpreter's numpy log
        return torch.from_numpy(-np.log(-np.log(u.numpy())))
    raise AssertionError(backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("columns", [1, 17, 1000, 4099])
def test_backend_matches_reference(backend, columns):
    device = device_for(backend)
    for seeds, offsets in COUNTERS:
        seed = torch.tensor(seeds, dtype=torch.int64, device=device)
        offset = torch.tensor(offsets, dtype=torch.int64, device=device)
        out = ops.gumbel_noise(seed, offset, len(seeds), columns, backend=backend)
        expected = ops.gumbel_noise(seed, offset, len(seeds), columns, backend="ref")
        assert out.dtype == torch.float32 and out.shape == (len(seeds), columns) and out.is_contiguous()
        assert out.device == device
        assert_close_across_compilations(out, expected)
        u = philox.uniform_from_bits(philox.random_bits(seed.cpu(), offset.cpu(), columns))
        own = _own_log_formula(backend, device, u)
        if own is None:
            assert_bit_exact(out, expected)
        else:
            assert_bit_exact(out.cpu(), own)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_seed_and_offset_mean_per_row_counters(backend):
    """A scalar seed S is row r's seed S + r (wrapping modulo 2**64); a scalar offset every row's."""
    device = device_for(backend)
    first = (1 << 64) - 2  # rows 0..3 get -2, -1, 0, 1
    out = ops.gumbel_noise(first, 1 << 35, 4, 300, device=device, backend=backend)
    per_row = ops.gumbel_noise(torch.tensor([-2, -1, 0, 1], device=device), torch.tensor(1 << 35, device=device),
                               4, 300, backend=backend)
    assert_bit_exact(out, per_row)
    # Each row depends on its own counters only.
    single = ops.gumbel_noise(torch.tensor([0], device=device), 1 << 35, 1, 300, backend=backend)
    assert_bit_exact(out[2:3], single)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_is_the_noise_the_sampler_adds(backend):
    """Zero logits at temperature 1 make the sampler's token the argmax of the noise."""
    device = device_for(backend)
    seeds = torch.tensor([3, (1 << 40) + 1, -5], device=device)
    noise = ops.gumbel_noise(seeds, 11, 3, 500, backend=backend)
    tokens = ops.sample(torch.zeros(3, 500, device=device), seed=seeds, offset=11, backend=backend)
    assert torch.equal(tokens, noise.argmax(dim=1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,columns", [(0, 5), (3, 0), (0, 0)])
def test_empty_shapes(backend, rows, columns):
    device = device_for(backend)
    out = ops.gumbel_noise(torch.arange(rows, device=device), 0, rows, columns, backend=backend)
    assert out.shape == (rows, columns) and out.dtype == torch.float32 and out.device == device


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rows=-1), ValueError, "rows"),
    (dict(columns=-2), ValueError, "columns"),
    (dict(columns=2.5), ValueError, "columns"),
    (dict(rows=True), ValueError, "rows"),
    (dict(seed=torch.tensor([1.0, 2.0])), TypeError, "seed"),
    (dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed"),
    (dict(offset=torch.tensor([1, 2, 3])), ValueError, "offset"),
    (dict(offset=1 << 64), ValueError, "offset"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_refused(backend, kwargs, error, match):
    arguments = dict(seed=torch.tensor([1, 2]), offset=0, rows=2, columns=10)
    arguments.update(kwargs)
    for name in ("seed", "offset"):
        if isinstance(arguments[name], torch.Tensor):
            arguments[name] = arguments[name].to(device_for(backend))
    with pytest.raises(error, match=match):
        ops.gumbel_noise(arguments.pop("seed"), arguments.pop("offset"), arguments.pop("rows"),
                         arguments.pop("columns"), device=device_for(backend), backend=backend)


def test_triton_refuses_columns_beyond_the_token_word():
    pytest.importorskip("triton")
    from turbogen.kernels import noise as kernels

    seed = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="columns"):
        kernels.launch_gumbel_noise(seed, seed, (1 << 32) + 1, torch.empty(1, 0))
