"""``WatermarkingConfig``: green-list watermarking settings, transformers' fields and checks."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from ._support import require_number, transformers_class

__all__ = ["WatermarkingConfig"]


@dataclasses.dataclass
class WatermarkingConfig:
    """Green-list watermarking (Kirchenbauer et al. 2023, arXiv:2306.04634); transformers' fields.

    Args:
        greenlist_ratio: fraction of the vocabulary put on the "green" list at each step, in [0, 1].
        bias: added to the logits of green tokens.
        hashing_key: key of the hash that seeds the green-list selection (default: the
            millionth prime).
        seeding_scheme: ``"lefthash"`` (the green list depends on the previous tokens) or
            ``"selfhash"`` (it also depends on the candidate token itself; slower).
        context_width: how many previous tokens seed the green list; at least 1.
    """

    greenlist_ratio: float = 0.25
    bias: float = 2.0
    hashing_key: int = 15485863
    seeding_scheme: str = "lefthash"
    context_width: int = 1

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any], **kwargs: Any) -> WatermarkingConfig:
        """Builds a config from ``config_dict``; ``kwargs`` naming a field override it, others are ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise TypeError(
                f"watermarking_config has unknown keys {unknown}; WatermarkingConfig fields are {sorted(known)}"
            )
        config = cls(**config_dict)
        config.update(**kwargs)
        return config

    def validate(self) -> None:
        """Raises ``ValueError`` (``TypeError`` for non-numbers) naming the first invalid field."""
        if self.seeding_scheme not in ("selfhash", "lefthash"):
            raise ValueError(
                f"`watermarking_config.seeding_scheme` must be 'selfhash' or 'lefthash', got {self.seeding_scheme!r}"
            )
        require_number("watermarking_config.greenlist_ratio", self.greenlist_ratio)
        if not 0.0 <= self.greenlist_ratio <= 1.0:
            raise ValueError(
                f"`watermarking_config.greenlist_ratio` must be in [0, 1], got {self.greenlist_ratio!r}"
            )
        require_number("watermarking_config.context_width", self.context_width)
        if not self.context_width >= 1:
            raise ValueError(
                f"`watermarking_config.context_width` must be a positive integer, got {self.context_width!r}"
            )

    def update(self, **kwargs: Any) -> None:
        """Sets the given fields; keys that are not fields are ignored (as in transformers)."""
        for key, value in kwargs.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        with open(json_file_path, "w", encoding="utf-8") as writer:
            writer.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def __iter__(self):
        yield from self.to_dict().items()


def coerce_watermarking_config(value: Any) -> Any:
    """A dict or a transformers ``WatermarkingConfig`` becomes ours; other values are left to validation."""
    if isinstance(value, Mapping):
        return WatermarkingConfig.from_dict(value)
    theirs = transformers_class("WatermarkingConfig")
    if theirs is not None and isinstance(value, theirs):
        return WatermarkingConfig.from_dict(value.to_dict())
    return value


def check_watermarking_config(name: str, value: Any) -> None:
    """A ``WatermarkingConfig`` whose fields are valid (a ``checks.Check``).

    A wrong type raises ``ValueError``, as transformers does.
    """
    if not isinstance(value, WatermarkingConfig):
        raise ValueError(f"`{name}` must be a WatermarkingConfig or a dict of its fields, got {type(value).__name__}")
    value.validate()
