"""Constrained beam search (``constraints``, ``force_words_ids``), natively: transformers 4.45.2's
``_constrained_beam_search`` is the oracle. (Being built: refused until then.)"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedByTurbogen
from .record import Record

__all__ = ["constrained_beam_from_call"]


def constrained_beam_from_call(model: Any, call: Any, record: Record) -> Any:
    raise UnsupportedByTurbogen("turbogen.generate does not support constrained beam search (`constraints`, "
                                "`force_words_ids`).", reason="generation mode constrained_beam_search")
