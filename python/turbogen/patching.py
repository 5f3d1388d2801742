"""Route a model's ``generate`` method to :func:`turbogen.generate`.

``patch(model)`` sets an instance attribute ``model.generate`` that calls ``turbogen.generate(model, ...)``
with the same arguments transformers' method takes; ``unpatch(model)`` removes it, so the class's own
``generate`` (or whatever instance attribute was there before patching) is visible again. Patching affects
that one model object only, never its class.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["is_patched", "patch", "unpatch"]

# Instance attribute holding what `generate` resolved to as an instance attribute before patching (absent
# when it came from the class).
_SAVED_ATTRIBUTE = "_turbogen_saved_generate"
_MISSING = object()


def _is_turbogen_generate(method: Any) -> bool:
    return getattr(method, "__turbogen_patch__", False)


def is_patched(model: Any) -> bool:
    """Whether ``model.generate`` currently runs turbogen."""
    return _is_turbogen_generate(vars(model).get("generate")) if hasattr(model, "__dict__") else False


def patch(model: Any) -> Any:
    """Make ``model.generate(...)`` run :func:`turbogen.generate` (same arguments as transformers' method).

    Idempotent: patching a patched model changes nothing. Returns ``model``.
    """
    if not hasattr(model, "__dict__"):
        raise TypeError(f"`model` must be an object with instance attributes, got {type(model).__name__}")
    if is_patched(model):
        return model
    from .generate import generate

    @functools.wraps(generate)
    def patched_generate(*args: Any, **kwargs: Any):
        return generate(model, *args, **kwargs)

    patched_generate.__turbogen_patch__ = True
    object.__setattr__(model, _SAVED_ATTRIBUTE, vars(model).get("generate", _MISSING))
    object.__setattr__(model, "generate", patched_generate)
    return model


def unpatch(model: Any) -> Any:
    """Undo :func:`patch`: ``model.generate`` is again what it was before. A model that is not patched is
    left as it is. Returns ``model``."""
    if not is_patched(model):
        return model
    saved = vars(model).pop(_SAVED_ATTRIBUTE, _MISSING)
    if saved is _MISSING:
        object.__delattr__(model, "generate")
    else:
        object.__setattr__(model, "generate", saved)
    return model
