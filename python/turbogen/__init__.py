"""turbogen: fast, deterministic generate() for causal language models.

The API mirrors Hugging Face transformers' ``GenerationConfig`` and ``generate()``; the hot paths
are Triton, CUDA C++ and C++ CPU kernels (``turbogen.ops``), with a pure-torch reference of every op
(``turbogen.ref``).
"""

from . import ops, ref
from .config import CompileConfig, GenerationConfig, GenerationMode, WatermarkingConfig, as_generation_config

__version__ = "0.1.0"

__all__ = [
    "CompileConfig",
    "GenerationConfig",
    "GenerationMode",
    "WatermarkingConfig",
    "__version__",
    "as_generation_config",
    "ops",
    "ref",
]
