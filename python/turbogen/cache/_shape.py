"""A KV cache's shape, read from a transformers config, and the size check every cache constructor shares."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["positive_int", "shape_from_config", "text_config"]


def text_config(config: Any) -> Any:
    """The decoder's text config of a (possibly multimodal) transformers config."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _first_attribute(config: Any, names: tuple[str, ...]) -> Optional[int]:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def shape_from_config(config: Any) -> dict[str, Optional[int]]:
    """``num_layers``, ``num_kv_heads`` and ``head_dim`` (``None`` where the config lacks them), covering
    Llama-style names and GPT-2's ``n_layer``/``n_head``/``n_embd``."""
    decoder_config = text_config(config)
    attention_heads = _first_attribute(decoder_config, ("num_attention_heads", "n_head"))
    head_dim = _first_attribute(decoder_config, ("head_dim",))
    if head_dim is None and attention_heads:
        hidden_size = _first_attribute(decoder_config, ("hidden_size", "n_embd"))
        if hidden_size is not None:
            if hidden_size % attention_heads:
                raise ValueError(f"the config's hidden size {hidden_size} is not divisible by its "
                                 f"{attention_heads} attention heads; pass `head_dim`")
            head_dim = hidden_size // attention_heads
    return {
        "num_layers": _first_attribute(decoder_config, ("num_hidden_layers", "n_layer")),
        "num_kv_heads": _first_attribute(decoder_config, ("num_key_value_heads",)) or attention_heads,
        "head_dim": head_dim,
    }


def positive_int(value: Any, name: str) -> int:
    """``value``, checked to be a positive ``int`` (not a ``bool``) for the argument called ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")
    return value
