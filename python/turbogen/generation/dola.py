"""DoLa decoding (``dola_layers``), natively: transformers 4.45.2's ``_dola_decoding`` is the oracle. (Being
built: refused until then.)"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedByTurbogen
from .record import Record

__all__ = ["dola_from_call"]


def dola_from_call(model: Any, call: Any, record: Record, streamer: Any = None) -> Any:
    raise UnsupportedByTurbogen("turbogen.generate does not support DoLa decoding (`dola_layers`).",
                                reason="generation mode dola_generation")
