"""The argument checks and small helpers that the stateful logits stages share (penalty_stages,
ngram_stages): the state verbs' arguments are checked for shapes and dtypes only (values would need a host
sync), and which processors a stage may stand for."""

from __future__ import annotations

import torch

from .._transformers_compat import TRANSFORMERS_PROCESSORS_MODULE, is_type_or_transformers_twin
from .base import ArgumentTypeError, check_ids_tensor

# --------------------------------------------------------------------------------------------
# Argument checks of the state verbs (shapes and dtypes only: values would need a host sync)
# --------------------------------------------------------------------------------------------


def index_tensor(value, name: str, dims: "tuple[int, ...]") -> torch.Tensor:
    """An integer tensor of one of the dimensionalities ``dims``, as int64."""
    if not isinstance(value, torch.Tensor):
        raise ArgumentTypeError(f"`{name}` has to be an integer torch.Tensor, but is {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ArgumentTypeError(f"`{name}` has to be an integer tensor, but has dtype {value.dtype}")
    if value.dim() not in dims:
        raise ValueError(f"`{name}` has to have {' or '.join(map(str, dims))} dimensions, but has shape "
                         f"{tuple(value.shape)}")
    return value.long()


def accepted_tokens(tokens, rows: int, device) -> torch.Tensor:
    """``tokens`` (``[rows]`` or ``[rows, n]``) as ``[rows, n]`` int64 on ``device``."""
    tokens = index_tensor(tokens, "tokens", (1, 2))
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(1)
    if tokens.shape[0] != rows:
        raise ValueError(f"`tokens` has {tokens.shape[0]} rows, but the stage holds {rows} rows")
    return tokens.to(device)


def reset_arguments(rows, prompt_ids) -> "tuple[torch.Tensor, torch.Tensor]":
    rows = index_tensor(rows, "rows", (1,))
    prompt_ids = check_ids_tensor(prompt_ids, "prompt_ids")
    if prompt_ids.shape[0] != rows.shape[0]:
        raise ValueError(f"`prompt_ids` has {prompt_ids.shape[0]} rows, but `rows` names {rows.shape[0]}")
    return rows, prompt_ids


def rollback_arguments(rows, n, limit: torch.Tensor, limit_meaning: str) -> "tuple[torch.Tensor, torch.Tensor]":
    """``rows`` and ``n`` as int64 on ``limit``'s device, with ``0 <= n <= limit[rows]`` checked when
    that is free: running eagerly on the host (on an accelerator or while compiling it would
    synchronise, so the values are trusted there)."""
    rows = index_tensor(rows, "rows", (1,))
    n = index_tensor(n, "n", (1,))
    if n.shape != rows.shape:
        raise ValueError(f"`n` has shape {tuple(n.shape)}, but `rows` has shape {tuple(rows.shape)}")
    on_host = n.device.type == "cpu" and rows.device.type == "cpu" and limit.device.type == "cpu"
    if on_host and not torch.compiler.is_compiling():
        row_limits = limit.index_select(0, rows)
        if bool(((n < 0) | (n > row_limits)).any()):
            raise ValueError(f"`n` has to be in [0, {limit_meaning}] for each row, but is {n.tolist()} for rows "
                             f"{rows.tolist()}, which have {row_limits.tolist()}")
    return rows.to(limit.device), n.to(limit.device)


def reorder_index(index, rows: int, device) -> torch.Tensor:
    index = index_tensor(index, "index", (1,))
    if index.shape[0] != rows:
        raise ValueError(f"`index` has {index.shape[0]} entries, but the stage holds {rows} rows")
    return index.to(device)


def largest_id(token_ids: torch.Tensor) -> int:
    return int(token_ids.max()) if token_ids.numel() else -1


def with_room_for(columns: torch.Tensor, longest: int) -> torch.Tensor:
    """``columns`` (``[rows, capacity]`` token ids), widened with zeros (a valid id) to at least
    ``longest`` columns, doubling so that a growing history reallocates only now and then."""
    capacity = columns.shape[1]
    if longest <= capacity:
        return columns
    return torch.nn.functional.pad(columns, (0, max(longest, 2 * capacity) - capacity))


def is_exactly(processor, turbogen_class: type) -> bool:
    """``processor`` is an instance of ``turbogen_class`` or of transformers' class of the same
    name, and not of a subclass (which may compute something else)."""
    return is_type_or_transformers_twin(processor, turbogen_class, TRANSFORMERS_PROCESSORS_MODULE)
