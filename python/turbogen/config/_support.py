"""Small helpers shared by the configuration modules: type checks, warnings, docstring entries."""

from __future__ import annotations

import numbers
import os
import sys
import textwrap
import warnings
from typing import Any

_PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(__file__))
# Width of the generated docstring lines, indentation included.
DOCSTRING_WIDTH = 100


def require_number(name: str, value: Any) -> None:
    """Raises ``TypeError`` naming ``name`` unless ``value`` is a real number (bools count, as in Python)."""
    if not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} ({value!r})")


def warn(message: str) -> None:
    """``warnings.warn(message, UserWarning)`` attributed to the first caller outside this package.

    Validation runs a few calls deep inside the package (``__init__`` -> ``validate`` -> ...); the
    warning must point at the user's line that built or updated the configuration.
    """
    frame, stacklevel = sys._getframe(1), 2  # stacklevel 2 designates warn's caller
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE_DIRECTORY:
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, UserWarning, stacklevel=stacklevel)


def transformers_class(name: str) -> type | None:
    """transformers' class of that name in its generation config module, if transformers is loaded.

    An object can only be an instance of a transformers class if transformers was imported, so
    looking in ``sys.modules`` answers isinstance questions without importing it.
    """
    module = sys.modules.get("transformers.generation.configuration_utils")
    return getattr(module, name, None)


def describe_argument(name: str, kind: str, default: Any, doc: str, indent: int) -> str:
    """One docstring entry, ``name (kind, default): doc``, wrapped; continuation lines indented 4 more."""
    shown_default = f'"{default}"' if isinstance(default, str) else repr(default)
    return textwrap.fill(
        f"{name} ({kind}, {shown_default}): {doc}",
        width=DOCSTRING_WIDTH,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + 4),
        break_long_words=False,
        break_on_hyphens=False,
    )
