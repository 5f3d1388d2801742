"""Logits processors with transformers v4.57's names, constructors and results.

Each processor is a callable ``processor(input_ids, scores) -> scores`` (transformers' protocol,
so transformers' own processors can be mixed in); the arithmetic of each is a pure tensor function
in :mod:`turbogen.processors.functional`. :func:`build_logits_processor` assembles the list
``generate`` applies for a generation config, in transformers' order, and
:func:`split_fusable_sampling_tail` separates the trailing temperature/top-k/top-p/min-p warpers
that one fused sampling kernel can replace. :class:`LogitsStages` turns a processor list into
stages with per-row state (``apply`` / ``accept`` / ``reset`` / ``rollback`` / ``reorder``) for the
decode loop: the penalties keep token counts updated by ``accept`` instead of rescanning the history.

turbogen adds ``PresenceFrequencyPenaltyLogitsProcessor`` (OpenAI/vLLM presence and frequency
penalties over the generated tokens).
"""

from .base import ArgumentTypeError, LogitsProcessor, LogitsProcessorList
from .build import build_logits_processor, merge_processor_lists
from .constraints import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    PrefixConstrainedLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
from .fusion import SamplingParams, split_fusable_sampling_tail
from .guidance import ClassifierFreeGuidanceLogitsProcessor, UnbatchedClassifierFreeGuidanceLogitsProcessor
from .ngram_stages import EncoderNoRepeatNGramStage, NoRepeatNGramStage
from .penalty_stages import PenaltyStage
from .penalties import (
    EncoderNoRepeatNGramLogitsProcessor,
    EncoderRepetitionPenaltyLogitsProcessor,
    ExponentialDecayLengthPenalty,
    NoRepeatNGramLogitsProcessor,
    PresenceFrequencyPenaltyLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)
from .stages import LogitsStage, LogitsStages, ProcessorStage
from .synthid import SynthIDTextWatermarkLogitsProcessor
from .warpers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from .watermark import WatermarkLogitsProcessor

__all__ = [
    "ArgumentTypeError",
    "ClassifierFreeGuidanceLogitsProcessor",
    "EncoderNoRepeatNGramLogitsProcessor",
    "EncoderRepetitionPenaltyLogitsProcessor",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "ExponentialDecayLengthPenalty",
    "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor",
    "InfNanRemoveLogitsProcessor",
    "LogitNormalization",
    "LogitsProcessor",
    "LogitsProcessorList",
    "LogitsStage",
    "LogitsStages",
    "MinLengthLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "MinPLogitsWarper",
    "NoBadWordsLogitsProcessor",
    "NoRepeatNGramLogitsProcessor",
    "EncoderNoRepeatNGramStage",
    "NoRepeatNGramStage",
    "PenaltyStage",
    "PrefixConstrainedLogitsProcessor",
    "PresenceFrequencyPenaltyLogitsProcessor",
    "ProcessorStage",
    "RepetitionPenaltyLogitsProcessor",
    "SamplingParams",
    "SequenceBiasLogitsProcessor",
    "SuppressTokensAtBeginLogitsProcessor",
    "SuppressTokensLogitsProcessor",
    "SynthIDTextWatermarkLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TypicalLogitsWarper",
    "UnbatchedClassifierFreeGuidanceLogitsProcessor",
    "WatermarkLogitsProcessor",
    "build_logits_processor",
    "merge_processor_lists",
    "split_fusable_sampling_tail",
]
