"""Configuration objects: ``GenerationConfig`` (transformers v4.57's, mirrored) and ``EngineConfig``.

- ``parameters``: the table of generation parameters (name, default, group, type, doc, check),
  from which ``GenerationConfig``'s ``__init__``, docstring and per-parameter checks derive.
- ``generation``: ``GenerationConfig`` itself (loading, saving, comparison) and
  ``as_generation_config``.
- ``validation``: the rules relating parameters to each other; ``checks``: the value checks.
- ``mode``: ``GenerationMode`` and how a configuration selects it.
- ``watermarking``, ``compile``: the nested watermarking configs and ``CompileConfig``.
- ``engine``: ``EngineConfig``, the continuous-batching engine's settings (not a generation
  parameter: transformers has no counterpart).

Nothing here imports torch or transformers.
"""

from .compile import CompileConfig
from .engine import EngineConfig
from .generation import GENERATION_CONFIG_NAME, MIRRORED_TRANSFORMERS_VERSION, GenerationConfig, as_generation_config
from .mode import GenerationMode
from .parameters import ALL_CACHE_IMPLEMENTATIONS, PARAMETER_GROUPS, PARAMETERS, TURBOGEN_PARAMETERS, Parameter
from .watermarking import BaseWatermarkingConfig, SynthIDTextWatermarkingConfig, WatermarkingConfig

__all__ = [
    "ALL_CACHE_IMPLEMENTATIONS",
    "BaseWatermarkingConfig",
    "CompileConfig",
    "EngineConfig",
    "GENERATION_CONFIG_NAME",
    "GenerationConfig",
    "GenerationMode",
    "MIRRORED_TRANSFORMERS_VERSION",
    "PARAMETERS",
    "PARAMETER_GROUPS",
    "Parameter",
    "SynthIDTextWatermarkingConfig",
    "TURBOGEN_PARAMETERS",
    "WatermarkingConfig",
    "as_generation_config",
]
