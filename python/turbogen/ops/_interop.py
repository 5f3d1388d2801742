"""Arrays from other libraries: the public ops take any array that speaks DLPack and answer in its kind.

:func:`accepts_dlpack` wraps a public op (or a method of a stateful op class). Each argument that is not
a ``torch.Tensor`` but exports DLPack (``__dlpack__``: numpy >= 1.22, JAX, CuPy, ...; TensorFlow
tensors through ``tf.experimental.dlpack``) becomes a torch tensor with :func:`torch.from_dlpack`,
which shares its memory (CPU or CUDA): nothing is copied on the way in. The first such argument sets
the caller's kind, and the op's torch results (a tensor, a tuple or NamedTuple of them, None) are
handed back in that kind through its array-API namespace (``x.__array_namespace__().from_dlpack``:
numpy >= 2, JAX, CuPy) or, for TensorFlow, ``tf.experimental.dlpack.from_dlpack``. A result that is
one of the arguments (``out=``, or an input returned as is) comes back as the caller's own object.

Arguments the op writes into (``writes=``, e.g. ``out``) must be writable where they live: a numpy
array with ``flags.writeable`` False, a JAX array or a TensorFlow tensor (both immutable) raises a
ValueError naming the argument, rather than a copy that would silently drop the write.

Calls with torch tensors only, and every call while ``torch.compile`` traces, take the fast path:
one type check per argument, then the op itself, so a decode loop pays nothing measurable and
compiled graphs see the undecorated op.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import sys
from typing import Any, Callable, Optional, TypeVar

import torch

__all__ = ["accepts_dlpack"]

F = TypeVar("F", bound=Callable[..., Any])

#: Argument types that are never arrays: checked first, so the common scalar arguments cost one lookup.
_PLAIN_TYPES = frozenset({int, float, bool, str, type(None), torch.device, torch.dtype})

#: Top-level modules whose arrays cannot be written in place (and whose DLPack export does not say so).
_IMMUTABLE_ARRAY_MODULES = frozenset({"jax", "jaxlib", "tensorflow"})

#: type -> whether its instances are arrays to import through DLPack (filled as types are met).
_FOREIGN_ARRAY_TYPES: dict[type, bool] = {}


def accepts_dlpack(function: Optional[F] = None, *, writes: tuple[str, ...] = (), convert_results: bool = True):
    """Decorate a public op so it takes DLPack arrays and returns results in the caller's array kind.

    Args:
        function: the op (a function or a method: ``self`` passes through as any non-array does).
        writes: keyword-only parameters the op writes into: a DLPack array given there must be
            writable (else a ValueError naming it) and is converted zero-copy, so the op's write lands
            in the caller's memory; the op returning it returns the caller's object.
        convert_results: False to return the op's torch results as they are (for methods whose result
            is a handle onto state that the op keeps mutating, such as :meth:`PenaltyState.tensors`).

    The decorated op raises what the op raises for arguments that are neither torch tensors nor
    DLPack arrays (its TypeError naming the argument), and a TypeError when a result cannot be
    returned in the caller's kind (an array type with neither ``__array_namespace__`` nor TensorFlow's
    DLPack functions).
    """
    if function is None:
        return functools.partial(accepts_dlpack, writes=writes, convert_results=convert_results)
    parameters = inspect.signature(function).parameters
    for name in writes:
        if name not in parameters or parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise ValueError(f"accepts_dlpack: {function.__qualname__} has no keyword-only parameter {name!r}")
    positional_names = tuple(name for name, parameter in parameters.items()
                             if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD))
    op_name = f"turbogen.ops.{function.__qualname__}"

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        # Inside torch.compile only torch values reach the ops; tracing the wrapper would add nothing.
        if torch.compiler.is_compiling() or not (any(map(_needs_conversion, args))
                                                 or any(map(_needs_conversion, kwargs.values()))):
            return function(*args, **kwargs)
        call = _Call(op_name)
        args = tuple(call.convert(value, positional_names[i] if i < len(positional_names) else f"argument {i}")
                     for i, value in enumerate(args))
        kwargs = {name: call.convert(value, name, written=name in writes)
                  for name, value in kwargs.items()}
        result = function(*args, **kwargs)
        return call.result(result) if convert_results else result

    return wrapper


def _needs_conversion(value: Any) -> bool:
    """Whether ``value`` is a foreign array, or a tuple / list holding one (the fast path's one check)."""
    kind = type(value)
    if kind in _PLAIN_TYPES or isinstance(value, torch.Tensor):
        return False
    if isinstance(value, (tuple, list)):
        return any(map(_needs_conversion, value))
    return _is_foreign_array(value)


def _is_foreign_array(value: Any) -> bool:
    kind = type(value)
    foreign = _FOREIGN_ARRAY_TYPES.get(kind)
    if foreign is None:
        # Per type, once: a type exports DLPack or not. (A TensorFlow tensor type cannot be met before
        # tensorflow is imported, so a cached False never hides one.)
        foreign = _FOREIGN_ARRAY_TYPES[kind] = not issubclass(kind, (torch.Tensor, numbers.Number)) and (
            hasattr(kind, "__dlpack__") or _is_tensorflow_tensor(value))
    return foreign


def _is_tensorflow_tensor(value: Any) -> bool:
    # TensorFlow tensors have no __dlpack__ (tensorflow/tensorflow#61769); only tf.experimental.dlpack.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.Tensor)


def _kind(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _write_problem(array: Any) -> Optional[str]:
    """Why an op may not write into ``array``'s memory, or None if it may: numpy's ``flags.writeable``
    where the type has it; JAX arrays and TensorFlow tensors are immutable (their DLPack export does not
    say so); others (CuPy, ...) are mutable arrays."""
    writeable = getattr(getattr(array, "flags", None), "writeable", None)
    if writeable is not None:
        return None if writeable else f"a read-only {_kind(array)} (flags.writeable is False)"
    if type(array).__module__.partition(".")[0] in _IMMUTABLE_ARRAY_MODULES:
        return f"a {_kind(array)}: JAX arrays and TensorFlow tensors are immutable"
    return None


class _Call:
    """One call's conversions: the caller's kind (its first foreign array) and which torch tensors stand
    for which of the caller's objects, so results that are arguments come back as those objects."""

    def __init__(self, op_name: str):
        self.op_name = op_name
        self.exemplar = None  # the first foreign array: the kind results are returned in
        self.arguments: list[tuple[torch.Tensor, Any]] = []  # (the tensor the op sees, the caller's object)

    def convert(self, value: Any, name: str, *, written: bool = False) -> Any:
        if isinstance(value, torch.Tensor):
            self.arguments.append((value, value))
            return value
        if isinstance(value, (tuple, list)) and _needs_conversion(value):
            items = [self.convert(item, f"{name}[{i}]") for i, item in enumerate(value)]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        if not _is_foreign_array(value):
            return value  # the op validates it (and names it in its error)
        if written:
            problem = _write_problem(value)
            if problem is not None:
                raise ValueError(f"{self.op_name}: {name} must be a writable array (the op writes its result "
                                 f"there), got {problem}; call without {name}= and use the returned array")
        for tensor, original in self.arguments:
            if original is value:  # the same array twice (out=logits): one tensor, so the op sees the aliasing
                return tensor
        tensor = _import(value, name, self.op_name)
        if self.exemplar is None:
            self.exemplar = value
        self.arguments.append((tensor, value))
        return tensor

    def result(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            for tensor, original in self.arguments:
                if tensor is value:
                    return original
            return _export(value, self.exemplar, self.op_name)
        if isinstance(value, tuple):
            items = [self.result(item) for item in value]
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        return value


def _import(array: Any, name: str, op_name: str) -> torch.Tensor:
    """``array`` as a torch tensor sharing its memory."""
    if _is_tensorflow_tensor(array):
        import tensorflow as tf

        return torch.from_dlpack(tf.experimental.dlpack.to_dlpack(array))
    try:
        return torch.from_dlpack(array)
    except BufferError as error:
        # An exporter that cannot speak DLPack >= 1.0 (or a torch that does not ask for it) refuses
        # read-only arrays, whose flag only DLPack 1.0 can carry. Written arguments were checked
        # writable before, so the op only reads this one: a writable copy computes the same result.
        if _write_problem(array) is not None and hasattr(array, "copy"):
            return torch.from_dlpack(array.copy())
        failure = error
    except (RuntimeError, TypeError, ValueError) as error:
        failure = error
    raise TypeError(f"{op_name}: {name} ({_kind(array)}) could not be imported through DLPack: {failure}") from failure


def _export(tensor: torch.Tensor, exemplar: Any, op_name: str) -> Any:
    """``tensor`` as an array of ``exemplar``'s kind (sharing memory where that library allows it)."""
    # DLPack importers need not take strided views (JAX takes only compact arrays): results leave contiguous.
    tensor = tensor.contiguous()
    if _is_tensorflow_tensor(exemplar):
        import tensorflow as tf

        return tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(tensor))
    namespace = getattr(exemplar, "__array_namespace__", None)
    if namespace is None:
        raise TypeError(f"{op_name} cannot return its result as {_kind(exemplar)}: the type has no "
                        f"__array_namespace__() (the array API's from_dlpack) and is not a TensorFlow tensor; "
                        f"pass torch tensors, or convert the arguments with torch.from_dlpack")
    array = namespace().from_dlpack(tensor)
    _check_not_narrowed(tensor, array, exemplar, op_name)
    return array


def _check_not_narrowed(tensor: torch.Tensor, array: Any, exemplar: Any, op_name: str) -> None:
    """Raise if the importer narrowed integers that do not fit (JAX without ``jax_enable_x64`` keeps int64
    as int32, silently wrapping): token ids fit and pass; seeds beyond int32 must not be corrupted. Only
    such narrowing importers pay for the check (one reduction: a host sync for CUDA results)."""
    itemsize = getattr(getattr(array, "dtype", None), "itemsize", None)
    if itemsize is None or itemsize >= tensor.element_size() or tensor.dtype.is_floating_point \
            or tensor.dtype == torch.bool or tensor.numel() == 0:
        return
    narrow = torch.iinfo(getattr(torch, f"int{8 * itemsize}"))
    if bool(((tensor < narrow.min) | (tensor > narrow.max)).any()):
        raise ValueError(f"{op_name}: the result is {tensor.dtype}, which {_kind(exemplar)} holds as {array.dtype}, "
                         f"and its values do not fit (for JAX, enable 64-bit types: "
                         f"jax.config.update('jax_enable_x64', True))")
