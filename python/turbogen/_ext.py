"""Access to the compiled extension ``turbogen._C``.

The extension is optional at import time: the ``ref`` backend works without it. Everything that
needs it goes through :func:`extension`, which raises an ImportError carrying the reason.

``TURBOGEN_EXTENSION``, when set, is the path of a build of ``_C`` to load instead of the installed
one: the sanitizer stage of ``make test`` runs the op tests against its AddressSanitizer /
UndefinedBehaviorSanitizer build this way, leaving the editable install untouched.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys

import torch

# Element-type codes shared with csrc/include/turbogen/dtype.h (enum class DType).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


_OVERRIDE_VARIABLE = "TURBOGEN_EXTENSION"


def _load_from(path: str):
    """``turbogen._C`` loaded from the shared library at ``path`` (registered as that module)."""
    spec = importlib.util.spec_from_file_location("turbogen._C", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{_OVERRIDE_VARIABLE}={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["turbogen._C"] = module
    return module


@functools.lru_cache(maxsize=None)
def _load():
    override = os.environ.get(_OVERRIDE_VARIABLE)
    try:
        if override:
            return _load_from(override), None
        return importlib.import_module("turbogen._C"), None
    except ImportError as exc:  # not built, or built for another platform
        source = f" from {_OVERRIDE_VARIABLE}={override}" if override else ""
        return None, f"the compiled extension turbogen._C could not be imported{source} ({exc})"


def extension():
    """The loaded ``turbogen._C`` module; ImportError with the reason when it is missing."""
    module, reason = _load()
    if module is None:
        raise ImportError(reason)
    return module


def extension_error() -> str | None:
    """Why the extension is unavailable, or None when it loaded."""
    return _load()[1]


def cuda_compiled() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    module, _ = _load()
    return bool(module is not None and module.cuda_compiled)


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPE_CODES[dtype]


def cuda_stream_handle(device: torch.device) -> int:
    """The raw cudaStream_t of the current stream on ``device``, as an integer for the bindings."""
    return torch.cuda.current_stream(device).cuda_stream
