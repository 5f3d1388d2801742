"""Route a model's ``generate`` method to :func:`turbogen.generate`, falling back to the original.

``patch(model)`` sets an instance attribute ``model.generate`` that calls ``turbogen.generate(model, ...)``
with the same arguments transformers' method takes; ``unpatch(model)`` removes it, so the class's own
``generate`` (or whatever instance attribute was there before patching) is visible again. ``patch`` also sets
``model.generate_batch`` (:func:`turbogen.generate_batch`, continuous batching), which ``unpatch`` removes too.
Patching affects that one model object only, never its class.

Fallback: a call that turbogen does not implement (it raises :class:`~turbogen.errors.UnsupportedByTurbogen`:
an unsupported decoding method, cache kind, model kind or argument) runs the model's original ``generate``
with the same arguments instead, so patching never turns a call the original serves into an error. Each
refusal reason is reported once per process with a :class:`~turbogen.errors.TurbogenFallbackWarning`
(a set of reasons already reported, rather than Python's per-location warning registry, so that the once
holds whichever code calls ``generate``). Every other error propagates unchanged, and the original is not
called for it: an invalid argument raises turbogen's ``ValueError``, the call is not run twice. The fallback
is also not taken when the call uses turbogen's own parameters (``seed``, ``presence_penalty``,
``frequency_penalty``), as arguments (the original ``generate`` would reject them) or in a turbogen
``GenerationConfig`` (it would ignore them): the refusal is raised instead. The original receives every
argument by name (transformers' positional order differs from turbogen's after ``prefix_allowed_tokens_fn``).
turbogen refuses before it sends anything to the streamer, so the streamer sees the original's output only.
:func:`turbogen.generate` itself never falls back.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from typing import Any

from .errors import TurbogenFallbackWarning, UnsupportedByTurbogen

__all__ = ["is_patched", "patch", "unpatch"]

# Instance attribute holding what `generate` resolved to as an instance attribute before patching (absent
# when it came from the class).
_SAVED_ATTRIBUTE = "_turbogen_saved_generate"
_SAVED_BATCH_ATTRIBUTE = "_turbogen_saved_generate_batch"
_MISSING = object()

# Refusal reasons already reported by a fallback warning in this process.
_warned_reasons: set[str] = set()
_warned_lock = threading.Lock()


def _is_turbogen_generate(method: Any) -> bool:
    return getattr(method, "__turbogen_patch__", False)


def is_patched(model: Any) -> bool:
    """Whether ``model.generate`` currently runs turbogen."""
    return _is_turbogen_generate(vars(model).get("generate")) if hasattr(model, "__dict__") else False


def patch(model: Any) -> Any:
    """Make ``model.generate(...)`` run :func:`turbogen.generate` (same arguments as transformers' method),
    and the original ``generate`` for the calls turbogen does not implement (see the module's docstring).

    Idempotent: patching a patched model changes nothing. Returns ``model``.
    """
    if not hasattr(model, "__dict__"):
        raise TypeError(f"`model` must be an object with instance attributes, got {type(model).__name__}")
    if is_patched(model):
        return model
    from .generate import generate

    original = getattr(model, "generate", None)

    @functools.wraps(generate)
    def patched_generate(*args: Any, **kwargs: Any):
        named = _as_keywords(generate, args, kwargs)
        if named is None:  # a call turbogen.generate cannot bind: its TypeError says why
            return generate(model, *args, **kwargs)
        try:
            # Every refusal comes before turbogen touches the streamer or the model.
            return generate(model, **named)
        except UnsupportedByTurbogen as refusal:
            if original is None or _uses_turbogen_parameters(named):
                raise
            _warn_fallback(refusal)
        # Outside the `except` block, so that an error of the original is not chained to turbogen's refusal.
        # Keywords only: transformers' positional order differs from turbogen's after `prefix_allowed_tokens_fn`.
        if named.get("generation_config") is not None:
            named["generation_config"] = _for_transformers(named["generation_config"])
        return original(**named)

    patched_generate.__turbogen_patch__ = True
    object.__setattr__(model, _SAVED_ATTRIBUTE, vars(model).get("generate", _MISSING))
    object.__setattr__(model, "generate", patched_generate)
    # `model.generate_batch(inputs, generation_config=None, **kwargs)`: turbogen's continuous batching (no fallback:
    # transformers' own differs in its arguments and results).
    from .serving import generate_batch

    object.__setattr__(model, _SAVED_BATCH_ATTRIBUTE, vars(model).get("generate_batch", _MISSING))
    object.__setattr__(model, "generate_batch", functools.wraps(generate_batch)(
        functools.partial(generate_batch, model)))
    return model


def unpatch(model: Any) -> Any:
    """Undo :func:`patch`: ``model.generate`` is again what it was before. A model that is not patched is
    left as it is. Returns ``model``."""
    if not is_patched(model):
        return model
    for name, saved_name in (("generate", _SAVED_ATTRIBUTE), ("generate_batch", _SAVED_BATCH_ATTRIBUTE)):
        saved = vars(model).pop(saved_name, _MISSING)
        if saved is _MISSING:
            vars(model).pop(name, None)
        else:
            object.__setattr__(model, name, saved)
    return model


def _warn_fallback(refusal: UnsupportedByTurbogen) -> None:
    with _warned_lock:
        if refusal.reason in _warned_reasons:
            return
        _warned_reasons.add(refusal.reason)
    # stacklevel 3: the caller of the patched `generate`.
    warnings.warn(f"turbogen does not implement this call ({refusal}); running the model's original "
                  f"`generate` instead. Reported once per process for: {refusal.reason}.",
                  TurbogenFallbackWarning, stacklevel=3)


def _uses_turbogen_parameters(named: dict) -> bool:
    """Whether the call sets a parameter only turbogen has, as an argument or in a turbogen
    ``GenerationConfig`` (where transformers 4.57 would silently ignore it)."""
    from .config import PARAMETERS, TURBOGEN_PARAMETERS, GenerationConfig

    if any(named.get(name) is not None for name in TURBOGEN_PARAMETERS):
        return True
    config = named.get("generation_config")
    return isinstance(config, GenerationConfig) and any(
        getattr(config, p.name, p.default) != p.default for p in PARAMETERS if p.name in TURBOGEN_PARAMETERS)


def _for_transformers(config: Any) -> Any:
    """``config`` as the original ``generate`` takes it: a turbogen ``GenerationConfig`` becomes a transformers
    one with the same non-default parameters (transformers 5 cannot validate a turbogen config, whose defaults
    are 4.57's); anything else is passed as it is."""
    from .config import TURBOGEN_PARAMETERS, GenerationConfig

    if not isinstance(config, GenerationConfig):
        return config
    import transformers

    changed = config.to_diff_dict()
    for name in (*TURBOGEN_PARAMETERS, "transformers_version"):
        changed.pop(name, None)
    return transformers.GenerationConfig(**changed)


def _as_keywords(generate: Any, args: tuple, kwargs: dict) -> Any:
    """The call's arguments as keywords by turbogen.generate's parameter names, or ``None`` when they do not
    bind (too many positional arguments, one given twice)."""
    names = _positional_names(generate)
    if len(args) > len(names) or any(name in kwargs for name in names[:len(args)]):
        return None
    return {**dict(zip(names, args)), **kwargs}


@functools.lru_cache(maxsize=None)
def _positional_names(function: Any) -> tuple[str, ...]:
    """The names of ``function``'s positional parameters after the first (the model)."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    return tuple(p.name for p in parameters
                 if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
