"""The optional per-step outputs of :func:`turbogen.generate` (``return_dict_in_generate=True``): the
processed scores, the raw logits, the model's attentions and hidden states, collected step by step."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..config import GenerationConfig

__all__ = ["Record"]


class Record:
    """Collects what ``return_dict_in_generate`` asks for, step by step (nothing when it is off)."""

    def __init__(self, config: GenerationConfig, encoder_decoder: bool = False):
        """``encoder_decoder``: the model outputs are an encoder-decoder's (``decoder_attentions``,
        ``cross_attentions``, ``decoder_hidden_states``); ``attentions`` and ``hidden_states`` then collect the
        decoder's, and ``cross_attentions`` the cross-attentions."""
        self.encoder_decoder = encoder_decoder
        wanted = bool(config.return_dict_in_generate)
        self.wants_scores = wanted and bool(config.output_scores)
        self.wants_logits = wanted and bool(config.output_logits)
        self.wants_attentions = wanted and bool(config.output_attentions)
        self.wants_hidden_states = wanted and bool(config.output_hidden_states)
        self.collected_scores: Optional[tuple] = () if self.wants_scores else None
        self.collected_logits: Optional[tuple] = () if self.wants_logits else None
        self.attentions: Optional[tuple] = () if self.wants_attentions else None
        self.hidden_states: Optional[tuple] = () if self.wants_hidden_states else None
        self.cross_attentions: Optional[tuple] = () if self.wants_attentions and encoder_decoder else None

    def scores(self, scores: torch.Tensor) -> None:
        if self.wants_scores:
            self.collected_scores += (scores,)

    def logits(self, logits: torch.Tensor) -> None:
        if self.wants_logits:
            self.collected_logits += (logits,)

    def model_outputs(self, outputs: Any) -> None:
        if self.encoder_decoder:
            if self.wants_attentions:
                self.attentions += (outputs.decoder_attentions,)
                self.cross_attentions += (outputs.cross_attentions,)
            if self.wants_hidden_states:
                self.hidden_states += (outputs.decoder_hidden_states,)
            return
        if self.wants_attentions:
            self.attentions += (outputs.attentions,)
        if self.wants_hidden_states:
            self.hidden_states += (outputs.hidden_states,)

    def keep_steps(self, steps: int) -> None:
        """Forget everything recorded after the first ``steps`` steps."""
        for name in ("collected_scores", "collected_logits", "attentions", "hidden_states", "cross_attentions"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, values[:steps])

