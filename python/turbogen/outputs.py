"""Structured results of :func:`turbogen.generate` (returned when ``return_dict_in_generate=True``).

The classes and field names are those of transformers v4.57 (``GenerateDecoderOnlyOutput``,
``GenerateBeamDecoderOnlyOutput``, and for encoder-decoder models ``GenerateEncoderDecoderOutput``,
``GenerateBeamEncoderDecoderOutput``), and they behave like its ``ModelOutput``: fields are attributes, the
fields that are set (not ``None``) are also reachable as ``output["name"]`` and, in order, as ``output[i]``,
and ``keys()``/``items()``/``to_tuple()`` list only the fields that are set.

When transformers is importable (4.57 or 5.x), each class here is a dataclass subclass of transformers' class
of the same name (adding no field), so ``isinstance(output, transformers.GenerateDecoderOnlyOutput)`` holds, as
does ``isinstance`` against 4.57's aliases (``GreedySearchDecoderOnlyOutput``, ``SampleDecoderOnlyOutput``,
``BeamSearchDecoderOnlyOutput``, ``BeamSampleDecoderOnlyOutput``, which are those same classes) and against
``ModelOutput``. Without transformers they are standalone dataclasses with the same fields and access methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Optional

import torch


class _GenerateOutputBase:
    """Mapping-style access over a dataclass's non-``None`` fields, in declaration order."""

    def keys(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self) if getattr(self, field.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclasses.dataclass
class _StandaloneGenerateDecoderOnlyOutput(_GenerateOutputBase):
    """Result of greedy decoding or multinomial sampling with a decoder-only model.

    Attributes:
        sequences: ``LongTensor [batch_size * num_return_sequences, sequence_length]``, prompt included;
            shorter than ``max_length`` when every row stopped early.
        scores: processed next-token scores (what the token choice used), one ``[rows, vocab_size]`` float
            tensor per generated token; set with ``output_scores=True``.
        logits: raw next-token logits of the model, same layout; set with ``output_logits=True``.
        attentions: per generated token, the model's per-layer attention tuple; ``output_attentions=True``.
        hidden_states: per generated token, the model's per-layer hidden-state tuple; ``output_hidden_states=True``.
        past_key_values: the model's cache after generation (``use_cache=True``).
    """

    sequences: torch.LongTensor
    scores: Optional[tuple[torch.FloatTensor, ...]] = None
    logits: Optional[tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    hidden_states: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    past_key_values: Optional[Any] = None


@dataclasses.dataclass
class _StandaloneGenerateBeamDecoderOnlyOutput(_GenerateOutputBase):
    """Result of beam search (or beam-search multinomial sampling) with a decoder-only model.

    Attributes:
        sequences: ``LongTensor [batch_size * num_return_sequences, sequence_length]``, best hypotheses first.
        sequences_scores: final (length-penalised) score of each returned hypothesis; set with ``output_scores=True``.
        scores: per step, the processed log-probabilities of every running beam, ``[batch_size * num_beams,
            vocab_size]``; set with ``output_scores=True``.
        logits: per step, the raw logits of every running beam; set with ``output_logits=True``.
        beam_indices: ``[batch_size * num_return_sequences, generated_length]``: at each step, the flat index
            (``batch * num_beams + beam``) of the beam whose scores produced the token; ``-1`` past the end.
        attentions, hidden_states, past_key_values: as in :class:`GenerateDecoderOnlyOutput`.
    """

    sequences: torch.LongTensor
    sequences_scores: Optional[torch.FloatTensor] = None
    scores: Optional[tuple[torch.FloatTensor, ...]] = None
    logits: Optional[tuple[torch.FloatTensor, ...]] = None
    beam_indices: Optional[torch.LongTensor] = None
    attentions: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    hidden_states: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    past_key_values: Optional[Any] = None


@dataclasses.dataclass
class _StandaloneGenerateEncoderDecoderOutput(_GenerateOutputBase):
    """Result of greedy decoding or multinomial sampling with an encoder-decoder model.

    Attributes:
        sequences: the decoder's sequences, ``LongTensor [batch_size * num_return_sequences, sequence_length]``,
            the decoder's prompt (its start token at least) included.
        scores, logits: as in :class:`GenerateDecoderOnlyOutput`.
        encoder_attentions: the encoder's per-layer attentions (computed once, rows not expanded);
            ``output_attentions=True``.
        encoder_hidden_states: the encoder's per-layer hidden states, likewise; ``output_hidden_states=True``.
        decoder_attentions: per generated token, the decoder's per-layer self-attention tuple.
        cross_attentions: per generated token, the decoder's per-layer cross-attention tuple.
        decoder_hidden_states: per generated token, the decoder's per-layer hidden-state tuple.
        past_key_values: the model's cache after generation (``use_cache=True``).
    """

    sequences: torch.LongTensor
    scores: Optional[tuple[torch.FloatTensor, ...]] = None
    logits: Optional[tuple[torch.FloatTensor, ...]] = None
    encoder_attentions: Optional[tuple[torch.FloatTensor, ...]] = None
    encoder_hidden_states: Optional[tuple[torch.FloatTensor, ...]] = None
    decoder_attentions: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    cross_attentions: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    decoder_hidden_states: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    past_key_values: Optional[Any] = None


@dataclasses.dataclass
class _StandaloneGenerateBeamEncoderDecoderOutput(_GenerateOutputBase):
    """Result of beam search (or beam-search multinomial sampling) with an encoder-decoder model.

    Attributes:
        sequences, sequences_scores, scores, logits, beam_indices: as in :class:`GenerateBeamDecoderOnlyOutput`
            (``sequences`` are the decoder's).
        encoder_attentions, encoder_hidden_states, decoder_attentions, cross_attentions, decoder_hidden_states,
            past_key_values: as in :class:`GenerateEncoderDecoderOutput`.
    """

    sequences: torch.LongTensor
    sequences_scores: Optional[torch.FloatTensor] = None
    scores: Optional[tuple[torch.FloatTensor, ...]] = None
    logits: Optional[tuple[torch.FloatTensor, ...]] = None
    beam_indices: Optional[torch.LongTensor] = None
    encoder_attentions: Optional[tuple[torch.FloatTensor, ...]] = None
    encoder_hidden_states: Optional[tuple[torch.FloatTensor, ...]] = None
    decoder_attentions: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    cross_attentions: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    decoder_hidden_states: Optional[tuple[tuple[torch.FloatTensor, ...], ...]] = None
    past_key_values: Optional[Any] = None


def _transformers_output_classes() -> Optional[tuple[type, type, type, type]]:
    """transformers' decoder-only then encoder-decoder output classes (plain, beam), or ``None`` when
    transformers cannot be imported."""
    try:
        from transformers.generation.utils import (GenerateBeamDecoderOnlyOutput as _HFBeamOutput,
                                                   GenerateBeamEncoderDecoderOutput as _HFBeamEncoderDecoderOutput,
                                                   GenerateDecoderOnlyOutput as _HFOutput,
                                                   GenerateEncoderDecoderOutput as _HFEncoderDecoderOutput)
    except ImportError:
        return None
    return _HFOutput, _HFBeamOutput, _HFEncoderDecoderOutput, _HFBeamEncoderDecoderOutput


_TRANSFORMERS_CLASSES = _transformers_output_classes()

if _TRANSFORMERS_CLASSES is None:
    GenerateDecoderOnlyOutput = _StandaloneGenerateDecoderOnlyOutput
    GenerateBeamDecoderOnlyOutput = _StandaloneGenerateBeamDecoderOnlyOutput
    GenerateEncoderDecoderOutput = _StandaloneGenerateEncoderDecoderOutput
    GenerateBeamEncoderDecoderOutput = _StandaloneGenerateBeamEncoderDecoderOutput
else:
    # ModelOutput requires its subclasses to be dataclasses; no field is added, so the fields, their order
    # and the mapping behaviour are exactly transformers'.
    @dataclasses.dataclass
    class GenerateDecoderOnlyOutput(_TRANSFORMERS_CLASSES[0]):  # type: ignore[no-redef]
        __doc__ = _StandaloneGenerateDecoderOnlyOutput.__doc__

    @dataclasses.dataclass
    class GenerateBeamDecoderOnlyOutput(_TRANSFORMERS_CLASSES[1]):  # type: ignore[no-redef]
        __doc__ = _StandaloneGenerateBeamDecoderOnlyOutput.__doc__

    @dataclasses.dataclass
    class GenerateEncoderDecoderOutput(_TRANSFORMERS_CLASSES[2]):  # type: ignore[no-redef]
        __doc__ = _StandaloneGenerateEncoderDecoderOutput.__doc__

    @dataclasses.dataclass
    class GenerateBeamEncoderDecoderOutput(_TRANSFORMERS_CLASSES[3]):  # type: ignore[no-redef]
        __doc__ = _StandaloneGenerateBeamEncoderDecoderOutput.__doc__

GenerateDecoderOnlyOutput.__name__ = GenerateDecoderOnlyOutput.__qualname__ = "GenerateDecoderOnlyOutput"
GenerateBeamDecoderOnlyOutput.__name__ = GenerateBeamDecoderOnlyOutput.__qualname__ = "GenerateBeamDecoderOnlyOutput"

GenerateEncoderDecoderOutput.__name__ = GenerateEncoderDecoderOutput.__qualname__ = "GenerateEncoderDecoderOutput"
GenerateBeamEncoderDecoderOutput.__name__ = GenerateBeamEncoderDecoderOutput.__qualname__ = \
    "GenerateBeamEncoderDecoderOutput"

GenerateOutput = (GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput | GenerateEncoderDecoderOutput
                  | GenerateBeamEncoderDecoderOutput)

__all__ = ["GenerateBeamDecoderOnlyOutput", "GenerateBeamEncoderDecoderOutput", "GenerateDecoderOnlyOutput",
           "GenerateEncoderDecoderOutput", "GenerateOutput"]
