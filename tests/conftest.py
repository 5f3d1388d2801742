"""Shared test setup.

Without a GPU, Triton kernels run in Triton's interpreter, which must be switched on before the
first ``@triton.jit`` module is imported; this file is imported before any test module.

The suite runs against transformers 4.57 (turbogen's behavioural spec) and 5.x. Where transformers 5
changed on purpose what a test compares against, the comparison is skipped under 5.x by
:func:`skip_on_transformers_5`, whose reason says what changed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run tiny models on a 2-core CI machine: intra-op threads only add contention there
# (about 5x slower model tests). The C++ kernels use their own pool and are unaffected.
torch.set_num_threads(1)

from turbogen.ops import available_backends  # noqa: E402  (after TRITON_INTERPRET is set)


def _installed_transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


TRANSFORMERS_VERSION = _installed_transformers_version()
#: Whether the installed transformers is a 5.x release (whose behaviour differs from 4.57 in places).
TRANSFORMERS_5 = TRANSFORMERS_VERSION is not None and int(re.match(r"\d+", TRANSFORMERS_VERSION).group()) >= 5


def skip_on_transformers_5(reason: str):
    """Skip mark for a comparison that only holds with transformers 4.57; ``reason`` says what 5.x changed."""
    return pytest.mark.skipif(TRANSFORMERS_5, reason=f"transformers {TRANSFORMERS_VERSION} differs from 4.57: {reason}")


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
