"""``CompileConfig``: how ``generate`` compiles the forward pass, transformers' fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from ._support import transformers_class

__all__ = ["CompileConfig"]


@dataclasses.dataclass
class CompileConfig:
    """How ``generate`` calls ``torch.compile`` on the forward pass when it compiles automatically.

    Args:
        fullgraph: require the whole forward to be one graph (graph breaks become errors).
        dynamic: whether to use dynamic-shape graphs (``None``: let torch decide).
        backend: ``torch.compile`` backend.
        mode: ``torch.compile`` mode.
        options: extra backend options.

    Not serialized: like transformers, ``GenerationConfig.to_dict()`` leaves it out.
    """

    fullgraph: bool = False
    dynamic: bool | None = None
    backend: str | Callable = "inductor"
    mode: str = "reduce-overhead"
    options: dict | None = None
    # Lets generate() compile on devices where it normally would not (e.g. CPU); for testing.
    _compile_all_devices = None

    def to_dict(self) -> dict[str, Any]:
        return deepcopy({field.name: getattr(self, field.name) for field in dataclasses.fields(self)})


def coerce_compile_config(value: Any) -> Any:
    """A transformers ``CompileConfig`` becomes ours; other values are left to validation."""
    theirs = transformers_class("CompileConfig")
    if theirs is not None and isinstance(value, theirs):
        converted = CompileConfig(**value.to_dict())
        if "_compile_all_devices" in vars(value):
            converted._compile_all_devices = value._compile_all_devices
        return converted
    return value
