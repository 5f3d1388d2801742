"""Diverse (group) beam search (``num_beam_groups > 1``, ``diversity_penalty``), natively: transformers 4.45.2's
``_group_beam_search`` is the oracle. (Being built: refused until then.)"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedByTurbogen
from .record import Record

__all__ = ["group_beam_from_call"]


def group_beam_from_call(model: Any, call: Any, record: Record) -> Any:
    raise UnsupportedByTurbogen("turbogen.generate does not support group (diverse) beam search "
                                "(`num_beam_groups` > 1).", reason="generation mode group_beam_search")
