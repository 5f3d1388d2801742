"""Shared test setup.

Without a GPU, Triton kernels run in Triton's interpreter, which must be switched on before the
first ``@triton.jit`` module is imported; this file is imported before any test module.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run tiny models on a 2-core CI machine: intra-op threads only add contention there
# (about 5x slower model tests). The C++ kernels use their own pool and are unaffected.
torch.set_num_threads(1)

from turbogen.ops import available_backends  # noqa: E402  (after TRITON_INTERPRET is set)


def backend_params(names=("ref", "cpu", "triton", "cuda")):
    """``pytest.param`` per backend, skipped with the reason when it is unavailable here."""
    statuses = available_backends()
    return [
        pytest.param(name, id=name, marks=pytest.mark.skipif(not statuses[name].available,
                                                             reason=f"{name}: {statuses[name].reason}"))
        for name in names
    ]


def device_for(backend: str) -> torch.device:
    """Where a backend's inputs live: CUDA for cuda (and triton when a GPU exists), else CPU."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
