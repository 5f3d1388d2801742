"""Value checks, attached to ``GenerationConfig``'s parameter table and ``EngineConfig``'s fields.

A check is called as ``check(name, value)`` and returns nothing when the value is acceptable; it
raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of range,
the message naming the parameter as ``name``. Checks never convert: a table entry's ``coerce``
does that, before the value is stored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from ._support import require_number

Check = Callable[[str, Any], None]
"""``check(name, value)``: raises ``TypeError``/``ValueError`` naming ``name`` for an invalid value."""


def _alternatives(choices: tuple) -> str:
    """``(True, False, 'never')`` -> ``"True, False or 'never'"``."""
    shown = [repr(choice) for choice in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def one_of(*choices: Any) -> Check:
    """The value must equal one of ``choices`` (compared with ``==``, so ``0`` matches ``False``)."""

    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"`{name}` must be {_alternatives(choices)}, got {value!r}")

    return check


def optional(check: Check) -> Check:
    """``None`` or a value ``check`` accepts."""

    def optional_check(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)

    return optional_check


def number(name: str, value: Any) -> None:
    """A real number (bools count, as in Python)."""
    require_number(name, value)


def positive_number(name: str, value: Any) -> None:
    """A real number greater than 0."""
    require_number(name, value)
    if value <= 0:
        raise ValueError(f"`{name}` must be greater than 0, got {value!r}")


def _require_int(name: str, value: Any) -> None:
    """An integer of any integral type (numpy's included), but not a bool."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")


def uint64(name: str, value: Any) -> None:
    """An integer in [0, 2**64), the range of a 64-bit Philox key."""
    _require_int(name, value)
    if not 0 <= value < 2**64:
        raise ValueError(f"`{name}` must be in [0, 2**64), got {value}")


def uint64_or_list(name: str, value: Any) -> None:
    """An integer in [0, 2**64), or a non-empty list / tuple of such integers."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"`{name}` must be an integer or a non-empty list of integers, got an empty list")
        for index, item in enumerate(value):
            uint64(f"{name}[{index}]", item)
        return
    uint64(name, value)


def finite_number_in(low: float, high: float) -> Check:
    """The value must be a finite real number in ``[low, high]``."""

    def check(name: str, value: Any) -> None:
        require_number(name, value)
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"`{name}` must be in [{low:g}, {high:g}], got {value!r}")

    return check


def instance_of(cls: type, description: str) -> Check:
    """An instance of ``cls``; ``description`` says what is accepted, for the message.

    A wrong type raises ``ValueError``, not ``TypeError``: transformers raises ``ValueError`` for
    these nested configurations, and callers catch what it raises.
    """

    def check(name: str, value: Any) -> None:
        if not isinstance(value, cls):
            raise ValueError(f"`{name}` must be {description}, got {type(value).__name__}")

    return check


def positive_integer(name: str, value: Any) -> None:
    """An integer greater than 0."""
    _require_int(name, value)
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")


def non_negative_integer(name: str, value: Any) -> None:
    """An integer of at least 0."""
    _require_int(name, value)
    if value < 0:
        raise ValueError(f"`{name}` must be non-negative, got {value}")


def boolean(name: str, value: Any) -> None:
    """Exactly ``True`` or ``False`` (not 0/1, which would hide a misplaced argument)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r})")
