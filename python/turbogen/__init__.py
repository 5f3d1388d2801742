"""turbogen: fast, deterministic generate() for causal language models.

The API mirrors Hugging Face transformers' ``GenerationConfig`` and ``generate()``; the hot paths
are Triton, CUDA C++ and C++ CPU kernels (``turbogen.ops``), with a pure-torch reference of every op
(``turbogen.ref``).
"""

from . import ops, ref
from .config import CompileConfig, GenerationConfig, GenerationMode, WatermarkingConfig, as_generation_config
from .errors import TurbogenFallbackWarning, UnsupportedByTurbogen
from .generate import compute_transition_scores, generate
from .generation.batch_state import NonFiniteScoresError
from .outputs import (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
                      GenerateEncoderDecoderOutput)
from .patching import is_patched, patch, unpatch
from .stopping import (ConfidenceCriteria, EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria, StoppingCriteria,
                       StoppingCriteriaList, StopStringCriteria, validate_stopping_criteria)
from .streamers import AsyncTextIteratorStreamer, BaseStreamer, TextIteratorStreamer, TextStreamer

__version__ = "0.1.0"

__all__ = [
    "AsyncTextIteratorStreamer",
    "BaseStreamer",
    "CompileConfig",
    "ConfidenceCriteria",
    "EosTokenCriteria",
    "GenerateBeamDecoderOnlyOutput",
    "GenerateBeamEncoderDecoderOutput",
    "GenerateDecoderOnlyOutput",
    "GenerateEncoderDecoderOutput",
    "GenerationConfig",
    "GenerationMode",
    "MaxLengthCriteria",
    "MaxTimeCriteria",
    "NonFiniteScoresError",
    "StopStringCriteria",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "TextIteratorStreamer",
    "TextStreamer",
    "TurbogenFallbackWarning",
    "UnsupportedByTurbogen",
    "WatermarkingConfig",
    "__version__",
    "as_generation_config",
    "compute_transition_scores",
    "generate",
    "is_patched",
    "ops",
    "patch",
    "ref",
    "unpatch",
    "validate_stopping_criteria",
]
