"""Backend selection shared by every op in ``turbogen.ops``.

Rules (docs/design.md, "The seam"): an explicit ``backend=`` argument wins, else the ``TURBOGEN_BACKEND``
environment variable, else an automatic choice by device (CUDA tensors: cuda, triton, ref; CPU
tensors: cpu, ref). An explicitly requested backend that is unavailable, or that cannot take the
input, raises a ValueError naming the backend and the reason; the automatic choice falls back
silently.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import torch

from .. import _ext

BACKENDS = ("ref", "cpu", "triton", "cuda")
ENV_VAR = "TURBOGEN_BACKEND"
_AUTOMATIC_ORDER = {"cuda": ("cuda", "triton", "ref"), "cpu": ("cpu", "ref")}
_DEVICE_OF_BACKEND = {"cpu": "cpu", "cuda": "cuda", "triton": "cuda"}


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run in this process, and if not, why."""

    name: str
    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus("triton", False, "the triton package is not installed")
    if _triton_interpreting():
        return BackendStatus("triton", True, "Triton interpreter (TRITON_INTERPRET=1): CPU tensors, slow")
    if not torch.cuda.is_available():
        return BackendStatus("triton", False, "no CUDA device is visible to torch (set TRITON_INTERPRET=1 to run "
                                              "the kernels in Triton's interpreter)")
    return BackendStatus("triton", True)


def _cpu_status() -> BackendStatus:
    reason = _ext.extension_error()
    return BackendStatus("cpu", reason is None, reason or "")


def _cuda_status() -> BackendStatus:
    reason = _ext.extension_error()
    if reason is not None:
        return BackendStatus("cuda", False, reason)
    if not _ext.cuda_compiled():
        return BackendStatus("cuda", False, "turbogen._C was built without CUDA kernels (no nvcc at build time, "
                                            "or TURBOGEN_CUDA=OFF)")
    if not torch.cuda.is_available():
        count, why = _ext.extension().cuda_device_count()
        return BackendStatus("cuda", False, f"no CUDA device is visible ({why or 'torch sees none'})")
    return BackendStatus("cuda", True)


def backend_status(name: str) -> BackendStatus:
    if name == "ref":
        return BackendStatus("ref", True)
    if name == "cpu":
        return _cpu_status()
    if name == "triton":
        return _triton_status()
    if name == "cuda":
        return _cuda_status()
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def _is_available(name: str) -> bool:
    return backend_status(name).available


# A constant for torch.compile, so dispatch inside a compiled graph does not trace the probing.
# This is what torch.compiler.assume_constant_result does; calling it would import torch._dynamo
# (about 2.5 s) with turbogen. tests/ops/test_registry.py compiles a dispatching call with fullgraph=True.
_is_available._dynamo_marked_constant = True


def available_backends() -> dict[str, BackendStatus]:
    """Every backend with whether it is usable in this process and, if not, why."""
    return {name: backend_status(name) for name in BACKENDS}


def _device_accepts(backend: str, device: torch.device) -> str | None:
    """None when ``backend`` can take tensors on ``device``, else the reason it cannot."""
    wanted = _DEVICE_OF_BACKEND.get(backend)
    if wanted is None or device.type == wanted:
        return None
    if backend == "triton" and device.type == "cpu" and _triton_interpreting():
        return None
    return f"it takes {wanted} tensors and the input is on {device}"


def resolve_backend(op: str, device: torch.device, backend: str | None = None,
                    supported: tuple[str, ...] = BACKENDS) -> str:
    """The backend that runs ``op`` for inputs on ``device``."""
    explicit = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    if explicit is not None:
        source = "backend" if backend is not None else ENV_VAR
        if explicit not in BACKENDS:
            raise ValueError(f"{source} must be one of {BACKENDS}, got {explicit!r}")
        if explicit not in supported:
            raise ValueError(f"{source}={explicit!r}: turbogen.ops.{op} has no {explicit} implementation "
                             f"(it has {supported})")
        if not _is_available(explicit):
            raise ValueError(f"{source}={explicit!r} is unavailable: {backend_status(explicit).reason}")
        why_not = _device_accepts(explicit, device)
        if why_not is not None:
            raise ValueError(f"{source}={explicit!r} cannot run turbogen.ops.{op}: {why_not}")
        return explicit
    for candidate in _AUTOMATIC_ORDER.get(device.type, ("ref",)):
        if candidate in supported and _is_available(candidate) and _device_accepts(candidate, device) is None:
            return candidate
    return "ref"
