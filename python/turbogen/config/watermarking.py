"""Watermarking settings, transformers' classes and checks: ``BaseWatermarkingConfig`` and its two kinds,
``WatermarkingConfig`` (the green list) and ``SynthIDTextWatermarkingConfig`` (SynthID Text)."""

from __future__ import annotations

import abc
import copy
import dataclasses
import json
import numbers
import os
from collections.abc import Mapping
from typing import Any

from ._support import require_number, transformers_class

__all__ = ["BaseWatermarkingConfig", "SynthIDTextWatermarkingConfig", "WatermarkingConfig"]

# Fields only a SynthID config has: a dict holding one of them describes SynthID watermarking.
_SYNTHID_ONLY_FIELDS = ("ngram_len", "keys")


class BaseWatermarkingConfig(abc.ABC):
    """The interface every watermarking config shares (transformers' ``BaseWatermarkingConfig``): dict and
    JSON conversion, ``update``, ``validate`` and ``construct_processor``. Subclasses are dataclasses."""

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any], **kwargs: Any) -> BaseWatermarkingConfig:
        """Builds a config from ``config_dict`` (``TypeError`` naming unknown keys); ``kwargs`` naming a
        field override it, others are ignored (as in transformers)."""
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"config_dict must be a mapping, got {type(config_dict).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise TypeError(f"watermarking_config has unknown keys {unknown}; {cls.__name__} fields are "
                            f"{sorted(known)}")
        config = cls(**config_dict)
        config.update(**kwargs)
        return config

    @abc.abstractmethod
    def validate(self) -> None:
        """Raises ``ValueError`` naming the first invalid field."""

    @abc.abstractmethod
    def construct_processor(self, vocab_size: int, device=None):
        """turbogen's logits processor for these settings."""

    def update(self, **kwargs: Any) -> None:
        """Sets the given fields; keys that are not fields are ignored (as in transformers)."""
        for key, value in kwargs.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        with open(json_file_path, "w", encoding="utf-8") as writer:
            writer.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def __iter__(self):
        yield from self.to_dict().items()


@dataclasses.dataclass
class WatermarkingConfig(BaseWatermarkingConfig):
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

    def construct_processor(self, vocab_size: int, device=None):
        """turbogen's ``WatermarkLogitsProcessor`` for these settings."""
        from ..processors.watermark import WatermarkLogitsProcessor  # torch is only needed here

        return WatermarkLogitsProcessor(vocab_size, device if device is not None else "cpu", **self.to_dict())


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass
class SynthIDTextWatermarkingConfig(BaseWatermarkingConfig):
    """SynthID Text watermarking (Dathathri et al., Nature 2024); transformers' fields.

    Args:
        ngram_len: n-gram length: the previous ``ngram_len - 1`` generated tokens seed the g-values.
        keys: one integer watermarking key per tournament layer (the depth).
        context_history_size: how many previous contexts are remembered, to leave repeated ones unwatermarked.
        sampling_table_seed: seed of the random 0/1 table the g-values are read from.
        sampling_table_size: size of that table, at most ``2**24``.
        skip_first_ngram_calls: leave the first ``ngram_len - 1`` steps unwatermarked.
        debug_mode: replace the scores by ones before watermarking (to test the implementation).
    """

    ngram_len: int
    keys: list
    context_history_size: int = 1024
    sampling_table_seed: int = 0
    sampling_table_size: int = 2**16
    skip_first_ngram_calls: bool = False
    debug_mode: bool = False

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first invalid field (transformers checks only
        ``sampling_table_size``; the other fields would fail later, at generation)."""
        def fail(field: str, expected: str, value: Any) -> None:
            raise ValueError(f"`watermarking_config.{field}` must be {expected}, got {value!r}")

        if not _is_int(self.ngram_len) or self.ngram_len < 1:
            fail("ngram_len", "a positive integer", self.ngram_len)
        keys = self.keys
        if isinstance(keys, (str, bytes, Mapping)) or not hasattr(keys, "__iter__"):
            fail("keys", "a non-empty list of integers", keys)
        keys = list(keys)
        if not keys or not all(_is_int(key) and -2**63 <= key < 2**63 for key in keys):
            fail("keys", "a non-empty list of int64 integers", self.keys)
        if not _is_int(self.context_history_size) or self.context_history_size < 1:
            fail("context_history_size", "a positive integer", self.context_history_size)
        if not _is_int(self.sampling_table_seed):
            fail("sampling_table_seed", "an integer", self.sampling_table_seed)
        if not _is_int(self.sampling_table_size) or not 1 <= self.sampling_table_size <= 2**24:
            fail("sampling_table_size", "an integer in [1, 2**24]", self.sampling_table_size)
        for field in ("skip_first_ngram_calls", "debug_mode"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "a bool", getattr(self, field))

    def construct_processor(self, vocab_size: int, device=None):
        """turbogen's ``SynthIDTextWatermarkLogitsProcessor`` for these settings (``vocab_size`` is unused)."""
        from ..processors.synthid import SynthIDTextWatermarkLogitsProcessor  # torch is only needed here

        return SynthIDTextWatermarkLogitsProcessor(
            ngram_len=self.ngram_len, keys=list(self.keys), sampling_table_size=self.sampling_table_size,
            sampling_table_seed=self.sampling_table_seed, context_history_size=self.context_history_size,
            device=device, skip_first_ngram_calls=self.skip_first_ngram_calls, debug_mode=self.debug_mode,
        )


def watermarking_config_from_dict(config_dict: Mapping[str, Any]) -> BaseWatermarkingConfig:
    """The config a dict describes. transformers always builds a ``WatermarkingConfig`` (and so raises
    ``TypeError`` on a SynthID dict); here a dict with ``ngram_len`` or ``keys`` builds a
    ``SynthIDTextWatermarkingConfig``, so that a saved generation config loads back. Every other dict is
    transformers' ``WatermarkingConfig``."""
    if any(field in config_dict for field in _SYNTHID_ONLY_FIELDS):
        return SynthIDTextWatermarkingConfig.from_dict(config_dict)
    return WatermarkingConfig.from_dict(config_dict)


def coerce_watermarking_config(value: Any) -> Any:
    """A dict or a transformers watermarking config becomes ours; other values are left to validation."""
    if isinstance(value, Mapping):
        return watermarking_config_from_dict(value)
    for name, ours in (("SynthIDTextWatermarkingConfig", SynthIDTextWatermarkingConfig),
                       ("WatermarkingConfig", WatermarkingConfig)):
        theirs = transformers_class(name)
        if theirs is not None and isinstance(value, theirs):
            return ours.from_dict(dict(vars(value)))
    return value


def check_watermarking_config(name: str, value: Any) -> None:
    """A ``BaseWatermarkingConfig`` whose fields are valid (a ``checks.Check``).

    A wrong type raises ``ValueError``, as transformers does.
    """
    if not isinstance(value, BaseWatermarkingConfig):
        raise ValueError(f"`{name}` must be a WatermarkingConfig, a SynthIDTextWatermarkingConfig or a dict of "
                         f"their fields, got {type(value).__name__}")
    value.validate()
