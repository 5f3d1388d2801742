"""Greedy search's next tokens through the packed LM head, each certified to be BLAS's argmax.

Why: on CPUs the head of a decode step costs BLAS (MKL) up to half the step at a few rows, where the packed
product (:class:`~turbogen.generation.packed_head.PackedHead`) takes a third of that; but its logits differ from
BLAS's in the last bits, and greedy search promises transformers' tokens exactly. Only the argmax leaves the
step when nothing observes the logits, and it can be certified:

1. Every float32 dot product of length ``K`` plus a bias, in any summation order, with or without fused
   multiply-adds, is within ``gamma(K + 1) * (sum_k |x_k w_k| + |b|)`` of the exact value, where
   ``gamma(m) = m u / (1 - m u)`` and ``u = 2**-24`` (Higham, *Accuracy and Stability of Numerical Algorithms*,
   section 3.1). By Cauchy-Schwarz ``sum_k |x_k w_k| <= ||x|| ||w||``, so with the largest row norm of the
   weight and the largest bias, ``bound(x) = gamma(K + 1) * (||x|| max_n ||w_n|| + max_n |b_n|)`` (plus a slack
   for subnormal flushing) holds for every logit of a row, for BLAS's product and the packed one alike.
2. The packed top-1 logit ``p_i`` of a row leads its runner-up by more than ``4 * bound(x)``; then for every
   ``j != i``, BLAS's ``b_i >= p_i - 2 bound > p_j + 2 bound >= b_j``: BLAS's logits have their unique maximum at
   ``i`` too, so ``argmax`` of BLAS's logits (transformers' token) is ``i``.
3. A row that fails (a near tie, NaN, an infinity: about one row in two hundred per step on the random-weight
   benchmark models, whose logits are flat) is not guessed: the step's head is computed again with the module's
   own ``F.linear`` on the same input, whose bits are BLAS's (the whole input: BLAS's result for a row can depend
   on the other rows), and those rows take its argmax.

Conditions: greedy search whose logits processors only mask tokens chosen from the ids (``min_length``,
``min_new_tokens``, ``bad_words_ids``, ``no_repeat_ngram_size``, ``encoder_no_repeat_ngram_size``,
``suppress_tokens``, ``begin_suppress_tokens``: the same tokens are masked in both products, and the certificate
is taken over the scores left), no recorded scores or logits (stopping criteria then see no scores either), an
eager model call on the CPU, a head :meth:`PackedHead.for_model` serves, and a model whose logits are its head's
output as it is, one position per row (the first decoding step, computed by BLAS, checks
that the runner's logits are a view of the head's output holding its product bit for bit; a model that softcaps,
scales or biases its logits after the head, or changes them in place, fails the check and keeps BLAS's head),
and a head without forward hooks. Not under autocast (the packed product then stands aside). The prefill and the
first decoding step are never packed.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Optional

import torch

from ..processors.constraints import (
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)
from ..processors.penalties import EncoderNoRepeatNGramLogitsProcessor, NoRepeatNGramLogitsProcessor
from .packed_head import PackedHead

__all__ = ["CertifiedGreedyHead", "logit_error_bound"]

_UNIT_ROUNDOFF = 2.0 ** -24
# An absolute slack per product term for subnormals flushed to zero (torch.set_flush_denormal), per unit of
# magnitude of the row: far below any gap the bound's relative term leaves.
_SUBNORMAL_SLACK = 2.0 ** -126

_NORM_ROWS_PER_SLICE = 8192

# turbogen's processors whose only effect is -inf on tokens chosen from the ids alone (the history, the prompt,
# the length), never from the scores: applied to BLAS's logits and to the packed ones they mask the same
# tokens, so the certificate over the scores left holds (step 2 of the module docstring).
_MASKING_PROCESSORS = frozenset({
    MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor, NoBadWordsLogitsProcessor,
    SuppressTokensLogitsProcessor, SuppressTokensAtBeginLogitsProcessor, NoRepeatNGramLogitsProcessor,
    EncoderNoRepeatNGramLogitsProcessor,
})

_LOCK = threading.Lock()
# head module -> (PackedHead.weight_key(), largest row norm of the weight, largest |bias|), float64
_WEIGHT_BOUNDS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _weight_bounds(head: PackedHead) -> tuple[float, float]:
    """The weight's largest row norm and the bias's largest magnitude, computed in float64 once per weight."""
    module, key = head.module, head.weight_key()
    with _LOCK:
        cached = _WEIGHT_BOUNDS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    weight = module.weight.detach()
    with torch.no_grad():
        # In float64, a slice of rows at a time (a float64 copy of a large head would be gigabytes).
        row_norm = max(float(torch.linalg.vector_norm(rows.double(), dim=1).max())
                       for rows in weight.split(_NORM_ROWS_PER_SLICE))
        bias = 0.0 if module.bias is None else float(module.bias.detach().double().abs().max())
    with _LOCK:
        _WEIGHT_BOUNDS[module] = (key, row_norm, bias)
    return row_norm, bias


def logit_error_bound(rows: torch.Tensor, row_norm: float, bias: float) -> torch.Tensor:
    """``[rows]`` float64: how far any float32 computation of ``rows @ weight.T + bias`` (``rows`` ``[rows, K]``)
    can be from the exact value, for a weight whose rows' norms are at most ``row_norm`` and a bias at most
    ``bias`` in magnitude (step 1 of the module docstring). Infinite or NaN where ``rows`` are."""
    terms = rows.shape[1] + 1
    gamma = terms * _UNIT_ROUNDOFF / (1.0 - terms * _UNIT_ROUNDOFF)
    # (1 + 2**-30): room for the float64 rounding of the norms themselves.
    magnitude = (torch.linalg.vector_norm(rows.double(), dim=1) * row_norm + bias) * (1.0 + 2.0 ** -30)
    return gamma * magnitude + terms * _SUBNORMAL_SLACK * (1.0 + magnitude)


class CertifiedGreedyHead:
    """Runs greedy search's model calls with the head computed through the packed weight and picks each row's
    token by the certificate of the module docstring. Built by :meth:`for_run`; :meth:`decode` stands for the
    runner's and returns the chosen tokens."""

    def __init__(self, runner: Any, head: PackedHead, stages: Any = None):
        self.runner = runner
        self.head = head
        #: The logits stages, each only setting scores to -inf (see ``_MASKING_PROCESSORS``), or None.
        self.stages = stages
        #: None until the first decoding step showed whether the logits are the head's output; then whether
        #: the later steps run through the packed head.
        self.active: Optional[bool] = None
        #: Steps whose rows were not all certified (their head was computed again by BLAS).
        self.recomputed_steps = 0

    @classmethod
    def for_run(cls, runner: Any, stages: Any, samples: bool, record: Any) -> Optional["CertifiedGreedyHead"]:
        """The certified head for a greedy run of ``runner``, or None where the conditions of the module
        docstring do not hold (``stages``: the logits stages, None without processors)."""
        if samples or record.wants_scores or record.wants_logits:
            return None
        if stages is not None and not all(type(processor) in _MASKING_PROCESSORS for processor in stages.processors):
            return None
        if getattr(runner, "compiles_decode", False):
            return None
        head = PackedHead.for_model(getattr(runner, "model", None))
        if head is None or head.module.out_features < 2 or _has_forward_hooks(head.module):
            return None
        return cls(runner, head, stages)

    def decode(self, tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` ``[rows]`` and return the next token of every row (``[rows]`` int64): the argmax of
        the stages' scores of BLAS's logits (``input_ids``: the ``[rows, length]`` history the stages see). The
        first call computes the logits with BLAS's head and checks that they are its output."""
        if not self.active:
            with contextlib.ExitStack() as recording:
                calls = recording.enter_context(self.head.recorded_calls()) if self.active is None else None
                logits = self.runner.decode(tokens)
            if calls is not None:
                self.active = _is_view_of_output(logits, calls) and self._equal_to_blas(logits, calls[0][0])
            return torch.argmax(self._scores(input_ids, logits), dim=-1)
        with self.head.installed(), self.head.recorded_calls() as calls:
            logits = self.runner.decode(tokens)
        if not _is_view_of_output(logits, calls):
            # The first step's logits were the head's output but these are not: nothing certifies them.
            raise RuntimeError("turbogen: the model's logits at a decoding step are not its LM head's output, as "
                               "they were at the first one; greedy search cannot certify its tokens (please "
                               "report the model)")
        hidden = calls[0][0]
        top = torch.topk(self._scores(input_ids, logits), 2, dim=-1)
        row_norm, bias = _weight_bounds(self.head)
        bound = logit_error_bound(hidden.reshape(-1, hidden.shape[-1]), row_norm, bias).view(logits.shape[:-1])
        gap = top.values[..., 0].double() - top.values[..., 1].double()
        certified = torch.isfinite(top.values).all(dim=-1) & (gap > 4.0 * bound)
        chosen = top.indices[..., 0]
        if not bool(certified.all()):
            self.recomputed_steps += 1
            blas_scores = self._scores(input_ids, self._blas_logits(hidden, logits))
            chosen = torch.where(certified, chosen, torch.argmax(blas_scores, dim=-1))
        return chosen

    def _scores(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.stages is None else self.stages.apply(input_ids, logits)

    def _blas_logits(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The head's own product of ``hidden`` (the model's call, again), shaped as ``logits``."""
        return self.head.own_product(hidden).reshape(logits.shape)

    def _equal_to_blas(self, logits: torch.Tensor, hidden: torch.Tensor) -> bool:
        """Whether the returned ``logits`` still hold the head's product bit for bit (nothing in the model
        changed them in place after the head)."""
        # As bits, so that NaN logits compare equal to themselves.
        return torch.equal(logits.view(torch.int32), self._blas_logits(hidden, logits).view(torch.int32))


def _is_view_of_output(logits: torch.Tensor, calls: list) -> bool:
    """Whether the head was called once, on one position per row, and ``logits`` ``[rows, vocab]`` are its float32
    output as it is (a view of the same values in the same order)."""
    if len(calls) != 1 or logits.dim() != 2 or logits.dtype != torch.float32:
        return False
    output = calls[0][1]
    return (output.dtype == torch.float32 and output.is_contiguous() and logits.is_contiguous()
            and output.numel() == logits.numel() and logits.storage_offset() == output.storage_offset()
            and logits.untyped_storage().data_ptr() == output.untyped_storage().data_ptr())


def _has_forward_hooks(module: torch.nn.Module) -> bool:
    """Whether hooks may see or change the head's output (the module's own, or global ones)."""
    from torch.nn.modules import module as module_state

    return bool(module._forward_hooks or module._forward_pre_hooks
                or module_state._global_forward_hooks or module_state._global_forward_pre_hooks)
