"""turbogen: fast, deterministic generate() for causal language models.

The API mirrors Hugging Face transformers' ``GenerationConfig`` and ``generate()``; the hot paths
are Triton, CUDA C++ and C++ CPU kernels (``turbogen.ops``), with a pure-torch reference of every op
(``turbogen.ref``).
"""

from . import ops, ref
from .config import (BaseWatermarkingConfig, CompileConfig, GenerationConfig, GenerationMode,
                     SynthIDTextWatermarkingConfig, WatermarkingConfig, as_generation_config)
from .errors import TurbogenFallbackWarning, UnsupportedByTurbogen
from .generate import compute_transition_scores, generate
from .generation.batch_state import NonFiniteScoresError
from .generation.beam_constraints import Constraint, ConstraintListState, DisjunctiveConstraint, PhrasalConstraint
from .generation.compiled import DecodeStep
from .outputs import (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
                      GenerateEncoderDecoderOutput)
from .patching import is_patched, patch, unpatch
from .processors.synthid import SynthIDTextWatermarkLogitsProcessor
from .serving import Engine, RequestHandle, RequestOutput, generate_batch
from .stopping import (ConfidenceCriteria, EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria, StoppingCriteria,
                       StoppingCriteriaList, StopStringCriteria, validate_stopping_criteria)
from .streamers import AsyncTextIteratorStreamer, BaseStreamer, TextIteratorStreamer, TextStreamer
from .watermarking import (BayesianDetectorConfig, BayesianDetectorModel, SynthIDTextWatermarkDetector,
                           WatermarkDetector, WatermarkDetectorOutput)

__version__ = "0.1.0"

__all__ = [
    "AsyncTextIteratorStreamer",
    "BaseStreamer",
    "BaseWatermarkingConfig",
    "BayesianDetectorConfig",
    "BayesianDetectorModel",
    "CompileConfig",
    "ConfidenceCriteria",
    "Constraint",
    "ConstraintListState",
    "DecodeStep",
    "DisjunctiveConstraint",
    "Engine",
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
    "PhrasalConstraint",
    "RequestHandle",
    "RequestOutput",
    "StopStringCriteria",
    "StoppingCriteria",
    "StoppingCriteriaList",
    "SynthIDTextWatermarkDetector",
    "SynthIDTextWatermarkLogitsProcessor",
    "SynthIDTextWatermarkingConfig",
    "TextIteratorStreamer",
    "TextStreamer",
    "TurbogenFallbackWarning",
    "UnsupportedByTurbogen",
    "WatermarkDetector",
    "WatermarkDetectorOutput",
    "WatermarkingConfig",
    "__version__",
    "as_generation_config",
    "compute_transition_scores",
    "generate",
    "generate_batch",
    "is_patched",
    "ops",
    "patch",
    "ref",
    "unpatch",
    "validate_stopping_criteria",
]
