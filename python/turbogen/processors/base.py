"""The processor protocol (``LogitsProcessor``, ``LogitsProcessorList``) and the argument checks
the processors share.

A logits processor is a callable ``processor(input_ids, scores) -> scores``: ``input_ids`` is the
``[batch, length]`` integer tensor of the tokens so far (prompt included), ``scores`` the
``[batch, vocab]`` float tensor of next-token scores. It returns new scores and leaves its inputs
untouched. This is transformers' protocol, so transformers' own processors and turbogen's mix
freely in one ``LogitsProcessorList``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import weakref
from typing import Optional, Union

import numpy as np
import torch

TokenIds = Union[int, "list[int]", torch.Tensor]


class LogitsProcessor:
    """Base class of turbogen's logits processors (transformers' protocol; see the module docstring)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


class LogitsProcessorList(list):
    """A list of logits processors, applied in order by calling the list.

    Processors whose ``__call__`` takes parameters beyond ``(input_ids, scores)`` get them from the
    keyword arguments of the call, all of which must then be present (transformers' rule).
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.FloatTensor:
        for processor in self:
            extra = _extra_call_parameters(processor)
            if not extra:
                scores = processor(input_ids, scores)
                continue
            missing = [name for name in extra if name not in kwargs]
            if missing:
                raise ValueError(
                    f"{type(processor).__name__} needs the keyword arguments {list(extra)}, but {missing} were not "
                    f"passed to the LogitsProcessorList call"
                )
            scores = processor(input_ids, scores, **kwargs)
        return scores


# class -> (its __call__ function, the names of that function's parameters after input_ids and scores).
_EXTRA_PARAMETERS_BY_CLASS: "weakref.WeakKeyDictionary[type, tuple[object, tuple[str, ...]]]" = (
    weakref.WeakKeyDictionary())


def _extra_call_parameters(processor) -> tuple[str, ...]:
    """The parameters of ``processor.__call__`` after ``(input_ids, scores)``.

    ``inspect.signature`` costs tens of microseconds and a list is called at every decoding step, so the
    answer is kept per class when ``__call__`` is a plain function defined on the class (then every instance
    has the same signature; the cached function is compared so a reassigned ``__call__`` is noticed).
    Other callables (functions, ``functools.partial``) are inspected at every call.
    """
    cls = type(processor)
    call = getattr(cls, "__call__", None)
    if not inspect.isfunction(call):
        return tuple(inspect.signature(processor.__call__).parameters)[2:]
    cached = _EXTRA_PARAMETERS_BY_CLASS.get(cls)
    if cached is None or cached[0] is not call:
        cached = (call, tuple(inspect.signature(processor.__call__).parameters)[2:])
        _EXTRA_PARAMETERS_BY_CLASS[cls] = cached
    return cached[1]


# --------------------------------------------------------------------------------------------
# Argument checks. Each raises an ArgumentTypeError/ValueError whose message names the argument.
# --------------------------------------------------------------------------------------------


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Also a ValueError, because transformers raises ValueError
    for these, so code written against transformers catches it unchanged."""


def is_integer(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A Python or NumPy real number, not a bool."""
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value, name: str, minimum: Optional[int] = None) -> int:
    """``value`` as an ``int``: an integer (not a bool), at least ``minimum`` when given."""
    if not is_integer(value):
        raise ArgumentTypeError(f"`{name}` has to be an integer, but is {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` has to be an integer >= {minimum}, but is {value}")
    return int(value)


def check_real(value, name: str, low: Optional[float] = None, high: Optional[float] = None,
               low_inclusive: bool = True, high_inclusive: bool = True, hint: str = "") -> float:
    """``value`` as a ``float``: a real number (not a bool, not NaN) in the given interval."""
    if not is_real(value):
        raise ArgumentTypeError(f"`{name}` has to be a real number, but is {value!r}")
    value = float(value)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if math.isnan(value) or too_low or too_high:
        interval = (
            f"{'[' if low_inclusive else '('}{'-inf' if low is None else low}, "
            f"{'inf' if high is None else high}{']' if high_inclusive else ')'}"
        )
        raise ValueError(f"`{name}` has to be in {interval}, but is {value}{hint}")
    return value


def check_min_tokens_to_keep(value) -> int:
    return check_int(value, "min_tokens_to_keep", minimum=1)


def check_filter_value(value) -> float:
    if not is_real(value):
        raise ArgumentTypeError(f"`filter_value` has to be a real number, but is {value!r}")
    return float(value)


def token_id_tensor(token_ids: TokenIds, name: str, device=None) -> torch.Tensor:
    """Token id(s) (an int, a sequence of ints or an integer tensor) as a 1-D int64 tensor.

    Every id must be non-negative: transformers would silently ignore or wrap negative ids.
    """
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dtype.is_floating_point or token_ids.dtype.is_complex or token_ids.dtype == torch.bool:
            raise ArgumentTypeError(f"`{name}` has to hold integer token ids, but has dtype {token_ids.dtype}")
        ids = token_ids.reshape(-1).to(device=device if device is not None else token_ids.device, dtype=torch.long)
        if ids.numel() and bool((ids < 0).any()):
            raise ValueError(f"`{name}` has to hold non-negative token ids, but is {token_ids.tolist()}")
        return ids
    values = [token_ids] if is_integer(token_ids) else token_ids
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ArgumentTypeError(f"`{name}` has to be an int, a list of ints or an integer tensor, but is {token_ids!r}")
    values = list(values)
    if any(not is_integer(value) or value < 0 for value in values):
        raise ValueError(f"`{name}` has to hold non-negative integer token ids, but is {token_ids!r}")
    return torch.tensor([int(value) for value in values], dtype=torch.long, device=device)


def max_token_id(token_ids: torch.Tensor) -> int:
    """The largest id of a 1-D or 2-D id tensor (-1 when empty), read once so that later calls can
    check it against the vocabulary without a host sync."""
    return int(token_ids.max()) if token_ids.numel() else -1


def check_vocabulary(largest_id: int, scores: torch.Tensor, name: str) -> None:
    """Raise if a token id held by a processor does not fit the vocabulary of ``scores``."""
    if largest_id >= scores.shape[-1]:
        raise ValueError(f"`{name}` holds token id {largest_id}, but the vocabulary size is {scores.shape[-1]}")


def check_inputs(input_ids: torch.Tensor, scores: torch.Tensor, any_leading_dims: bool = False) -> None:
    """The shapes and dtypes of a processor call: ``[batch, length]`` integer ids and
    ``[batch, vocab]`` float scores; with ``any_leading_dims``, ``[..., batch, vocab]`` scores."""
    check_scores(scores, any_leading_dims)
    if scores.dim() < 2:
        raise ValueError(f"`scores` has to have shape [..., batch, vocab], but has shape {tuple(scores.shape)}")
    if not isinstance(input_ids, torch.Tensor):
        raise ArgumentTypeError(f"`input_ids` has to be a torch.Tensor, but is {type(input_ids).__name__}")
    if input_ids.dim() != 2 or input_ids.shape[0] != scores.shape[-2]:
        raise ValueError(
            f"`input_ids` has to have shape [batch, length] with batch = {scores.shape[-2]} (the rows of `scores`), "
            f"but has shape {tuple(input_ids.shape)}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ArgumentTypeError(f"`input_ids` has to hold integer token ids, but has dtype {input_ids.dtype}")


def check_scores(scores: torch.Tensor, any_leading_dims: bool = False) -> None:
    """``scores`` is a ``[batch, vocab]`` floating-point tensor; with ``any_leading_dims``, any
    ``[..., vocab]`` one (e.g. ``[vocab]`` or ``[batch, 1, vocab]``), for the processors whose
    transformers class works on the last dimension alone."""
    if not isinstance(scores, torch.Tensor):
        raise ArgumentTypeError(f"`scores` has to be a torch.Tensor, but is {type(scores).__name__}")
    if any_leading_dims:
        if scores.dim() < 1:
            raise ValueError("`scores` has to have shape [..., vocab], but is a scalar")
    elif scores.dim() != 2:
        raise ValueError(f"`scores` has to have shape [batch, vocab], but has shape {tuple(scores.shape)}")
    if not scores.dtype.is_floating_point:
        raise ArgumentTypeError(f"`scores` has to be a floating-point tensor, but has dtype {scores.dtype}")


def check_length_inputs(input_ids: torch.Tensor, scores: torch.Tensor) -> None:
    """The inputs of a processor that reads only the length of ``input_ids`` (its last dimension)
    and works on the last dimension of ``scores``: integer ids of any shape, ``[..., vocab]`` scores."""
    check_scores(scores, any_leading_dims=True)
    if not isinstance(input_ids, torch.Tensor):
        raise ArgumentTypeError(f"`input_ids` has to be a torch.Tensor, but is {type(input_ids).__name__}")
    if input_ids.dim() < 1:
        raise ValueError("`input_ids` has to have shape [batch, length], but is a scalar")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ArgumentTypeError(f"`input_ids` has to hold integer token ids, but has dtype {input_ids.dtype}")


def check_ids_tensor(ids, name: str) -> torch.Tensor:
    """A 1-D or 2-D integer tensor of non-negative token ids (e.g. a prompt), as a 2-D int64 tensor."""
    if not isinstance(ids, torch.Tensor):
        raise ArgumentTypeError(f"`{name}` has to be a torch.Tensor of token ids, but is {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ArgumentTypeError(f"`{name}` has to hold integer token ids, but has dtype {ids.dtype}")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError(
            f"`{name}` has to have shape [batch, length] with batch >= 1, but has shape {tuple(ids.shape)}"
        )
    if ids.numel() and bool((ids < 0).any()):
        raise ValueError(f"`{name}` has to hold non-negative token ids")
    return ids.long()


def check_row_groups(scores: torch.Tensor, groups: int, name: str) -> None:
    """``scores`` holds a whole number of rows per each of ``groups`` prompts (beam expansion)."""
    if scores.shape[0] % groups != 0:
        raise ValueError(
            f"`scores` has {scores.shape[0]} rows, which is not a multiple of the {groups} rows of `{name}`"
        )
