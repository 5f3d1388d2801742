"""``EngineConfig``: the settings of the continuous-batching engine and of speculative decoding.

These are not generation parameters: they size the engine's paged KV cache and its steps, and
hold for every request the engine serves, whatever each request's ``GenerationConfig`` says.
transformers has no counterpart, so ``GenerationConfig`` stays an exact mirror of its own.

Each setting is declared once, as a dataclass field whose metadata holds its check and its
documentation; the class docstring's ``Args`` list is generated from them.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

from ._support import describe_argument
from .checks import Check, boolean, non_negative_integer, optional, positive_integer

__all__ = ["EngineConfig"]


def _setting(default: Any, check: Check, doc: str) -> Any:
    """A dataclass field carrying its ``check`` and ``doc``; see ``EngineConfig``."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Settings of the continuous-batching engine (paged KV cache, scheduler) and speculative decoding.

    Immutable; every value is checked on construction (``TypeError`` for a wrong type,
    ``ValueError`` for a value out of range, both naming the setting), and so is every copy made
    with ``dataclasses.replace``. Besides each setting's own range:

    - ``max_num_batched_tokens >= max_num_seqs``: every running sequence gets at least its next
      token in a step;
    - ``max_num_batched_tokens > num_speculative_tokens``: one sequence's verification (its draft
      plus one token) fits in a step;
    - ``num_blocks * block_size >= max_model_len`` when both are given: the longest allowed
      sequence fits in the cache.
    """

    block_size: int = _setting(16, positive_integer, "tokens per block of the paged KV cache.")
    num_blocks: int | None = _setting(
        None, optional(positive_integer),
        "blocks in the paged KV cache; ``None`` sizes the cache from the device's memory budget.")
    max_num_seqs: int = _setting(
        64, positive_integer, "most sequences the scheduler runs in one step.")
    max_num_batched_tokens: int = _setting(
        2048, positive_integer,
        "most tokens in one forward pass, prefill chunks and decode (or verification) tokens together.")
    max_model_len: int | None = _setting(
        None, optional(positive_integer),
        "longest sequence, prompt included; ``None`` takes the model's maximum.")
    num_speculative_tokens: int = _setting(
        0, non_negative_integer,
        "draft tokens proposed per step and verified by the target model in one forward pass; 0 turns "
        "speculative decoding off.")
    enable_prefix_caching: bool = _setting(
        False, boolean, "share the KV blocks of identical prompt prefixes (whole blocks) between requests.")
    finish_check_lag: int | None = _setting(
        None, optional(non_negative_integer),
        "steps by which the host reads the finished flags late, so that the decode loop never waits for "
        "the device; 0 reads them after every step. ``None`` takes the device's default.")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            field.metadata["check"](field.name, value)
            if isinstance(value, numbers.Integral) and type(value) not in (int, bool):
                # An integer of another type (numpy.int64) is stored as a plain int, so that
                # to_dict() is JSON-ready; the instance is frozen, hence object.__setattr__.
                object.__setattr__(self, field.name, int(value))
        self._check_consistency()

    def _check_consistency(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"`max_num_batched_tokens` ({self.max_num_batched_tokens}) must be at least `max_num_seqs` "
                f"({self.max_num_seqs}): every running sequence needs a token in each step"
            )
        if self.max_num_batched_tokens <= self.num_speculative_tokens:
            raise ValueError(
                f"`max_num_batched_tokens` ({self.max_num_batched_tokens}) must exceed `num_speculative_tokens` "
                f"({self.num_speculative_tokens}): a verification step takes the draft plus one token"
            )
        if self.num_blocks is not None and self.max_model_len is not None:
            capacity = self.num_blocks * self.block_size
            if capacity < self.max_model_len:
                raise ValueError(
                    f"`num_blocks` ({self.num_blocks}) * `block_size` ({self.block_size}) = {capacity} tokens "
                    f"cannot hold one sequence of `max_model_len` ({self.max_model_len}) tokens"
                )

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> EngineConfig:
        """The config holding ``settings`` (a mapping of setting names, e.g. ``to_dict()``'s output);
        the others keep their defaults. Unknown names raise ``TypeError``, listing the known ones."""
        if not isinstance(settings, Mapping):
            raise TypeError(f"settings must be a mapping, got {type(settings).__name__}")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(f"unknown EngineConfig settings {unknown}; the settings are {known}")
        return cls(**settings)


def _settings_docstring(indent: int) -> str:
    """The ``Args`` list of ``EngineConfig``'s docstring, from the fields' metadata."""
    entries = [describe_argument(field.name, str(field.type), field.default, field.metadata["doc"], indent + 4)
               for field in dataclasses.fields(EngineConfig)]
    return "\n".join([" " * indent + "Args:", *entries])


# The dataclass decorator needs the class body to exist before its fields can be listed, so the
# generated part of the docstring is appended once the class is created.
EngineConfig.__doc__ = f"{EngineConfig.__doc__.rstrip()}\n\n{_settings_docstring(indent=4)}\n    "
