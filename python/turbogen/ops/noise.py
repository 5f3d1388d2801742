"""``turbogen.ops.gumbel_noise``: the sampling contract's Gumbel noise for every token of every row.

Beam sampling perturbs ``num_beams * vocab`` accumulated scores per batch row with this noise and
keeps the best ``2 * num_beams`` (Gumbel-top-k), which draws candidates without replacement from
the softmax of the scores. The fused sampler computes the same noise inside its kernels, for the
surviving candidates only; this op materialises all of it. Backends: ``ref`` (pure torch, every
device), ``cpu``, ``triton`` and ``cuda``. The raw bits and the uniform are exact everywhere; the two
float32 logs are each backend's (csrc/include/turbogen/noise.h, kernels/noise.py): on a GPU they are
torch's, so cuda and triton equal the reference bit for bit; on a CPU the C++ takes the correctly
rounded log and the Triton interpreter numpy's, each within an ulp of torch's SLEEF log.
"""

from __future__ import annotations

import functools
import numbers

import torch

from . import _native
from ._counters import counter_tensor
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare


@accepts_dlpack
def gumbel_noise(seed: int | torch.Tensor, offset: int | torch.Tensor, rows: int, columns: int, *,
                 device: torch.device | str = "cpu", backend: str | None = None) -> torch.Tensor:
    """``-log(-log(u))`` in float32, ``u`` the contract's uniform for token ``j`` of row ``r``.

    Args:
        seed: int or int64 tensor: a scalar ``S`` means seed ``S + r`` for row ``r``; a ``[rows]``
            tensor gives each row its own (as :func:`turbogen.ops.sample`).
        offset: int, 0-d or ``[rows]`` int64 tensor: the Philox counter's high half.
        rows, columns: the shape of the result; ``columns`` is the token-index range ``[0, columns)``.
        device: where a scalar seed or offset is placed (a tensor seed's device wins).
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (the dispatch rules).

    Returns:
        float32 ``[rows, columns]``: exactly the noise ``turbogen.ops.sample`` adds to token ``j``.
    """
    for name, value in (("rows", rows), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if isinstance(seed, torch.Tensor):
        device = seed.device
    device = torch.device(device)
    seeds = counter_tensor(seed, "seed", rows, device, scalar_is_first_of_rows=True)
    offsets = counter_tensor(offset, "offset", rows, device, scalar_is_first_of_rows=False).expand(rows)
    return GUMBEL_NOISE(seeds, offsets.contiguous(), int(columns), backend=backend)


def _allocate_outputs(seed: torch.Tensor, offset: torch.Tensor, columns: int) -> torch.Tensor:
    """float32 ``[rows, columns]`` on the seeds' device."""
    return torch.empty(seed.shape[0], columns, dtype=torch.float32, device=seed.device)


def _launch_triton(seed: torch.Tensor, offset: torch.Tensor, columns: int, out: torch.Tensor) -> None:
    from ..kernels import noise as kernels  # imported lazily: needs TRITON_INTERPRET set first on CPU

    kernels.launch_gumbel_noise(seed, offset, columns, out)


GUMBEL_NOISE = declare(OpSpec(
    name="gumbel_noise",
    reference="gumbel_noise",
    allocate_outputs=_allocate_outputs,
    launchers={"cpu": functools.partial(_native.launch_gumbel_noise, "cpu"),
               "triton": _launch_triton,
               "cuda": functools.partial(_native.launch_gumbel_noise, "cuda")},
))
