"""Classifier-free guidance, as transformers v4.57's two processors: one that runs the unconditional branch itself
(``UnbatchedClassifierFreeGuidanceLogitsProcessor``, what ``generate`` uses for ``guidance_scale``, for any batch
size), and one that reads both branches from a doubled batch of scores (``ClassifierFreeGuidanceLogitsProcessor``,
for models whose forward pass already stacks the unconditional rows after the conditional ones)."""

from __future__ import annotations

from typing import Optional

import torch

from . import functional
from .base import ArgumentTypeError, LogitsProcessor, check_ids_tensor, check_inputs, check_real, check_scores


class UnbatchedClassifierFreeGuidanceLogitsProcessor(LogitsProcessor):
    """Classifier-free guidance (https://huggingface.co/papers/2306.17806) with the unconditional
    scores computed by calling ``model`` on a separate, unbatched branch.

    Returns log-probabilities: ``guidance_scale * (c - u) + u`` with ``c`` the log-softmax of the
    scores and ``u`` that of the model's next-token logits on the unconditional branch. A scale of
    1 returns ``c`` without calling the model; above 1 the output follows the prompt more closely,
    below 1 the negative prompt acts as a positive one.

    The branch starts from ``unconditional_ids`` (the negative prompt, ``[batch, length]``; by
    default the last token of the prompt) with ``unconditional_attention_mask`` (default all ones)
    and grows by the last generated token of each row at every call. With ``use_cache`` the
    model's ``past_key_values`` are carried from call to call and only the new token is fed.

    ``model`` is called as ``model(input_ids, attention_mask=..., use_cache=..., past_key_values=...)``
    and must return an object with ``logits`` (``[batch, length, vocab]``) and, when caching,
    ``past_key_values`` (any transformers causal LM does). The processor is stateful: use a new one
    per ``generate`` call.

    Scores are ``[batch, vocab]`` for ``batch`` rows of ``input_ids``; as in transformers, extra
    leading dimensions are accepted when the ``[batch, vocab]`` unconditional scores broadcast to
    the scores' shape (e.g. ``[1, 1, vocab]`` for one row), and any ``[..., vocab]`` shape with a
    scale of 1.
    """

    def __init__(self, guidance_scale: float, model, unconditional_ids: Optional[torch.LongTensor] = None,
                 unconditional_attention_mask: Optional[torch.LongTensor] = None, use_cache: bool = True):
        self.guidance_scale = check_real(guidance_scale, "guidance_scale")
        if not callable(model):
            raise ArgumentTypeError(f"`model` has to be a callable model, but is {type(model).__name__}")
        if unconditional_ids is not None:
            unconditional_ids = check_ids_tensor(unconditional_ids, "unconditional_ids")
        if unconditional_attention_mask is not None:
            if unconditional_ids is None or tuple(unconditional_attention_mask.shape) != tuple(unconditional_ids.shape):
                raise ValueError(
                    "`unconditional_attention_mask` needs `unconditional_ids` of the same shape, but got "
                    f"{tuple(unconditional_attention_mask.shape)} for "
                    f"{None if unconditional_ids is None else tuple(unconditional_ids.shape)}"
                )
        self.model = model
        # The same keys as transformers, so code that inspects the branch state keeps working.
        self.unconditional_context = {
            "input_ids": unconditional_ids,
            "attention_mask": unconditional_attention_mask,
            "use_cache": bool(use_cache),
            "past_key_values": None,
            "first_pass": True,
        }

    def _branch_inputs(self, input_ids: torch.LongTensor) -> "tuple[torch.Tensor, torch.Tensor]":
        """The ids and attention mask to feed the unconditional branch at this step (and record them)."""
        context = self.unconditional_context
        if context["first_pass"]:
            context["first_pass"] = False
            if context["input_ids"] is None:
                context["input_ids"] = input_ids[:, -1:]
            if context["attention_mask"] is None:
                context["attention_mask"] = torch.ones_like(context["input_ids"], dtype=torch.long)
            return context["input_ids"], context["attention_mask"]
        newest = input_ids[:, -1:]
        attention_mask = torch.cat([context["attention_mask"], torch.ones_like(newest, dtype=torch.long)], dim=1)
        branch_ids = newest if context["use_cache"] else torch.cat([context["input_ids"], newest], dim=1)
        context["input_ids"], context["attention_mask"] = branch_ids, attention_mask
        return branch_ids, attention_mask

    def get_unconditional_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Run the model on the unconditional branch for this step; returns its ``[batch, length, vocab]`` logits."""
        branch_ids, attention_mask = self._branch_inputs(input_ids)
        context = self.unconditional_context
        output = self.model(
            branch_ids,
            attention_mask=attention_mask,
            use_cache=context["use_cache"],
            past_key_values=context["past_key_values"],
        )
        context["past_key_values"] = getattr(output, "past_key_values", None)
        return output.logits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.guidance_scale == 1:
            check_scores(scores, any_leading_dims=True)
            return functional.logit_normalization(scores)
        check_inputs(input_ids, scores, any_leading_dims=True)
        unconditional = self.get_unconditional_logits(input_ids)[:, -1]
        if _broadcast_shape(scores.shape, unconditional.shape) != scores.shape:
            raise ValueError(
                f"The unconditional branch gave logits of shape {tuple(unconditional.shape)} for scores of shape "
                f"{tuple(scores.shape)}: `unconditional_ids` needs one row per row of `scores`"
            )
        return functional.classifier_free_guidance(scores, unconditional, self.guidance_scale)


class ClassifierFreeGuidanceLogitsProcessor(LogitsProcessor):
    """Classifier-free guidance (https://huggingface.co/papers/2306.17806) over a doubled batch.

    ``scores`` has ``2 * batch`` rows for ``batch`` rows of ``input_ids``: rows ``[0, batch)`` are the
    conditional logits, rows ``[batch, 2 * batch)`` the unconditional ones of the same sequences. Returns the
    ``[batch, vocab]`` guided scores ``u + guidance_scale * (c - u)``, on the raw scores (no log-softmax, unlike
    :class:`UnbatchedClassifierFreeGuidanceLogitsProcessor`). ``generate`` never adds it by itself: the model
    must produce the doubled batch (e.g. MusicGen-style models).

    Args:
        guidance_scale: strictly greater than 1 (``ValueError`` otherwise, as in transformers).
    """

    def __init__(self, guidance_scale: float):
        guidance_scale = check_real(guidance_scale, "guidance_scale")
        if not guidance_scale > 1:
            raise ValueError("Require guidance scale >1 to use the classifier free guidance processor, got guidance "
                             f"scale {guidance_scale}.")
        self.guidance_scale = guidance_scale

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_scores(scores)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("`input_ids` has to be a [batch, length] tensor")
        if scores.shape[0] != 2 * input_ids.shape[0]:
            raise ValueError(
                "`scores` must have twice the rows of `input_ids` (the conditional rows, then the unconditional "
                f"ones), but has {scores.shape[0]} rows for {input_ids.shape[0]} rows of input ids"
            )
        conditional, unconditional = scores.split(input_ids.shape[0], dim=0)
        return unconditional + (conditional - unconditional) * self.guidance_scale


def _broadcast_shape(*shapes) -> Optional[torch.Size]:
    """The shape the given shapes broadcast to, or None when they do not broadcast."""
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        return None
