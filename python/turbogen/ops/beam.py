"""``turbogen.ops.beam_step``: one fused beam-search step (the log-softmax, the candidate selection over
``num_beams * vocab`` scores per batch row, and the running / finished bookkeeping of transformers 4.57's
beam search) in one kernel launch.

Backends: ``ref`` (:mod:`turbogen.ref.beam`, plain torch), ``cpu`` (csrc/cpu/beam_step.cpp: one pass per
logits row for the log-softmax statistics and one for the candidates, threads over (batch row, beam) pairs,
no sort of the vocabulary), ``cuda`` (csrc/cuda/beam_step.cu) and ``triton`` (kernels/beam.py).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple, Optional, Union

import torch

from . import _native
from ._interop import accepts_dlpack
from ._registry import OpSpec, declare
from ._validate import check_logits

_EARLY_STOPPING_CODES = {False: 0, True: 1, "never": 2}


class BeamStepResult(NamedTuple):
    """The outputs of :func:`beam_step`, per batch row ``b`` (``K`` candidates, ``nb`` beams)."""

    candidate_scores: torch.Tensor      # float32 [B, K]: accumulated scores of the candidates, best first
    candidate_flat: torch.Tensor        # int64 [B, K]: beam * vocab + token
    next_scores: torch.Tensor           # float32 [B, nb]: the new running beams' scores
    next_source: torch.Tensor           # int64 [B, nb]: candidate index in [0, K) of each new running beam
    next_finished_scores: torch.Tensor  # float32 [B, nb]: the finished slots' scores, best first
    finished_source: torch.Tensor       # int64 [B, nb]: < nb old slot s, else nb + candidate k
    next_is_finished: torch.Tensor      # bool [B, nb]
    next_may_improve: torch.Tensor      # bool [B]
    row_is_finite: torch.Tensor         # bool [B]: the row's best accumulated score is finite


def candidates_per_row(num_beams: int, num_eos: int) -> int:
    """``K = max(2, 1 + num_eos) * num_beams``: enough candidates that ``num_beams`` of them do not stop."""
    return max(2, 1 + num_eos) * num_beams


@accepts_dlpack
def beam_step(logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
              is_finished: torch.Tensor, may_improve: torch.Tensor, eos: Optional[torch.Tensor] = None, *,
              generated_length: int, max_generated_length: int, length_penalty: float = 1.0,
              early_stopping: Union[bool, str] = False, all_stop: bool = False, normalized: bool = False,
              seeds: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None,
              backend: Optional[str] = None) -> BeamStepResult:
    """One beam-search (or beam-sampling) step for ``B`` batch rows of ``nb`` beams over a vocabulary of ``V``.

    With ``E`` EOS ids and ``K = max(2, 1 + E) * nb``, per batch row ``b``:

    1. ``lp[i, j] = log_softmax(logits[b*nb + i])[j]`` in float32 (with ``normalized``, the logits upcast to
       float32 as they are); ``acc[i*V + j] = lp[i, j] + running_scores[b, i]`` (float32 add).
    2. Candidates: the ``K`` largest ``acc`` (value descending, equal values by lower flat index); with
       ``seeds``, the ``K`` largest ``acc + g``, ``g`` the sampling contract's Gumbel noise for seed ``seeds[b]``,
       offset ``offsets[b]`` and token counter = the flat index (exactly :func:`turbogen.ops.gumbel_noise`).
       ``candidate_scores`` are the unperturbed ``acc``. NaN ranks as -inf here and in every ranking below.
       ``row_is_finite[b]``: the max of ``acc`` over the row is finite (no NaN, no +inf, some finite value).
       The op does not advance ``offsets``.
    3. ``stopped[k] = all_stop or token(k) in eos`` (``token = flat % V``).
    4. Running beams: ``demoted = stopped ? cand - 1e9 : cand``; ``next_source`` = the ``nb`` best demoted
       (ties to the lower ``k``), ``next_scores`` = their demoted values.
    5. Finished beams, only when some candidate of the row stopped (else the inputs are passed through and
       ``finished_source = arange(nb)``): ``newly[k] = stopped[k] and k < nb``; ``fs = cand /
       (float)pow(generated_length, length_penalty)``; ``fs -= 1e9`` if ``early_stopping is True`` and every
       slot ``is_finished``; ``fs -= 1e9`` if not ``may_improve[b]``; ``fs -= 1e9`` where not ``newly`` (float32
       adds, cumulative). The ``nb`` best of ``(finished_scores[b], fs)`` (``nb + K`` values, ties to the lower
       index) are ``next_finished_scores`` / ``finished_source``; ``next_is_finished = (is_finished[b],
       newly)[finished_source]``.
    6. ``best_len = max_generated_length`` if ``early_stopping == "never"`` and ``length_penalty > 0``, else
       ``generated_length``; ``best = next_scores[b, 0] / (float)pow(best_len, length_penalty)``; ``worst =
       min(next_finished_scores[b])``; ``next_may_improve[b] = may_improve[b] and any over slots s of best >
       (next_is_finished[s] ? worst : -1e9)``.

    These are exactly transformers 4.57's beam-search rules (turbogen.generation.beam_search). With
    ``normalized=True`` every backend returns the reference's outputs bit for bit; with ``normalized=False`` the
    log-softmax's sum is reduced in a backend-specific order (integer outputs agree away from near-ties, floats
    within float32 rounding of the scale).

    Args:
        logits: ``[B * nb, V]`` float32, float16 or bfloat16 with contiguous rows: raw logits, or
            log-probabilities when ``normalized``.
        running_scores, finished_scores: float32 ``[B, nb]``.
        is_finished: bool ``[B, nb]``; may_improve: bool ``[B]``.
        eos: int64 ``[E]`` (any ids; ids outside ``[0, V)`` never match) or None for none.
        generated_length: the hypotheses' length after this step's token, prompt excluded, ``>= 1``.
        max_generated_length: the longest possible generated length, ``>= 1``.
        length_penalty: finite float.
        early_stopping: ``False``, ``True`` or ``"never"``.
        all_stop: every candidate stops this step (the length limit is reached).
        normalized: ``logits`` are already log-probabilities.
        seeds, offsets: int64 ``[B]`` each for beam sampling, or both None.
        backend: ``"ref"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or None (``TURBOGEN_BACKEND``, else by device).

    Returns:
        :class:`BeamStepResult` (new tensors, on the logits' device).
    """
    check_logits(logits)
    device = logits.device
    running_scores, finished_scores, is_finished, may_improve = _checked_state(
        logits, running_scores, finished_scores, is_finished, may_improve)
    batch, beams = running_scores.shape
    eos, seeds, offsets = _checked_constants(logits.shape[1], batch, beams, device, eos, seeds, offsets,
                                             max_generated_length, length_penalty, early_stopping)
    _check_step_options(generated_length, all_stop, normalized)
    return BeamStepResult(*BEAM_STEP(logits, running_scores, finished_scores, is_finished, may_improve, eos, seeds,
                                     offsets, normalized, int(generated_length), int(max_generated_length),
                                     float(length_penalty), _EARLY_STOPPING_CODES[early_stopping], all_stop,
                                     backend=backend))


class BeamStep:
    """:func:`beam_step` prepared for a decode loop: what stays fixed over a generation (the batch and beam
    counts, the vocabulary, the EOS ids, the seeds, the length limit and penalty, the early-stopping rule, the
    backend) is validated once, so each step only checks the tensors it is handed and launches.

    ``BeamStep(batch, num_beams, vocab, device, eos, max_generated_length=..., length_penalty=...,
    early_stopping=..., seeds=..., backend=...)`` takes :func:`beam_step`'s arguments of those names;
    ``step(logits, running_scores, finished_scores, is_finished, may_improve, generated_length=...,
    all_stop=..., normalized=..., offsets=...)`` returns what :func:`beam_step` returns for the same inputs,
    bit for bit (``offsets`` is required exactly when ``seeds`` were given). It saves :func:`beam_step`'s
    per-call normalisation of the constant arguments and the backend choice (about 0.03 ms per step on this
    project's CPU); eager calls launch the kernel directly, calls inside ``torch.compile`` go through the
    registered custom op.
    """

    def __init__(self, batch: int, num_beams: int, vocab: int, device: Union[torch.device, str],
                 eos: Optional[torch.Tensor] = None, *, max_generated_length: int, length_penalty: float = 1.0,
                 early_stopping: Union[bool, str] = False, seeds: Optional[torch.Tensor] = None,
                 backend: Optional[str] = None):
        for name, value, low in (("batch", batch, 0), ("num_beams", num_beams, 1), ("vocab", vocab, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.batch, self.num_beams, self.vocab = int(batch), int(num_beams), int(vocab)
        self.device = torch.device(device)
        offsets = None if seeds is None else torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        self._eos, self._seeds, _ = _checked_constants(self.vocab, self.batch, self.num_beams, self.device, eos,
                                                       seeds, offsets, max_generated_length, length_penalty,
                                                       early_stopping)
        self._sampling = seeds is not None
        self._constants = (int(max_generated_length), float(length_penalty), _EARLY_STOPPING_CODES[early_stopping])
        self.backend = BEAM_STEP.select_backend(self.device, backend)

    @property
    def candidates_per_row(self) -> int:
        """``K``, the candidates each step ranks per batch row (the width of ``candidate_*``)."""
        return candidates_per_row(self.num_beams, self._eos.shape[0])

    def step(self, logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
             is_finished: torch.Tensor, may_improve: torch.Tensor, *, generated_length: int, all_stop: bool = False,
             normalized: bool = False, offsets: Optional[torch.Tensor] = None) -> BeamStepResult:
        """One step (see :func:`beam_step`) of the prepared search."""
        check_logits(logits)
        if tuple(logits.shape) != (self.batch * self.num_beams, self.vocab) or logits.device != self.device:
            raise ValueError(f"logits must have shape [{self.batch * self.num_beams}, {self.vocab}] on {self.device} "
                             f"(as the BeamStep was built), got {tuple(logits.shape)} on {logits.device}")
        state = _checked_state(logits, running_scores, finished_scores, is_finished, may_improve)
        if tuple(state[0].shape) != (self.batch, self.num_beams):
            raise ValueError(f"running_scores must have shape [{self.batch}, {self.num_beams}] (as the BeamStep was "
                             f"built), got {tuple(state[0].shape)}")
        if self._sampling:
            if offsets is None:
                raise ValueError("offsets are required: this BeamStep samples (it was given seeds)")
            offsets = _checked(offsets, "offsets", torch.int64, self.device, 1, (self.batch,))
        elif offsets is not None:
            raise ValueError("offsets must be None: this BeamStep was built without seeds (no sampling)")
        else:
            offsets = self._seeds  # the empty tensor that means "no sampling"
        _check_step_options(generated_length, all_stop, normalized)
        max_generated_length, length_penalty, early_stopping = self._constants
        return BeamStepResult(*BEAM_STEP.run(self.backend, logits, *state, self._eos, self._seeds, offsets, normalized,
                                             int(generated_length), max_generated_length, length_penalty,
                                             early_stopping, all_stop))


def _checked_state(logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
                   is_finished: torch.Tensor, may_improve: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-step state tensors checked against the (checked) ``logits``, made contiguous."""
    device = logits.device
    running_scores = _checked(running_scores, "running_scores", torch.float32, device, 2)
    batch, beams = running_scores.shape
    if beams < 1:
        raise ValueError(f"running_scores must have at least one beam (shape [B, nb]), got {tuple(running_scores.shape)}")
    if logits.shape[0] != batch * beams:
        raise ValueError(f"logits must have B * nb = {batch * beams} rows (running_scores is [{batch}, {beams}]), "
                         f"got {logits.shape[0]}")
    return (running_scores,
            _checked(finished_scores, "finished_scores", torch.float32, device, 2, (batch, beams)),
            _checked(is_finished, "is_finished", torch.bool, device, 2, (batch, beams)),
            _checked(may_improve, "may_improve", torch.bool, device, 1, (batch,)))


def _checked_constants(vocab: int, batch: int, beams: int, device: torch.device, eos: Optional[torch.Tensor],
                       seeds: Optional[torch.Tensor], offsets: Optional[torch.Tensor], max_generated_length: int,
                       length_penalty: float, early_stopping: Union[bool, str]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arguments that stay fixed over a search checked: ``(eos, seeds, offsets)`` as the op takes them (empty
    tensors for no EOS id and for no sampling)."""
    if eos is None:
        eos = torch.empty(0, dtype=torch.int64, device=device)
    eos = _checked(eos, "eos", torch.int64, device, 1)
    if (seeds is None) != (offsets is None):
        raise ValueError("seeds and offsets must be given together (beam sampling) or both be None")
    if seeds is None:
        seeds = offsets = torch.empty(0, dtype=torch.int64, device=device)
    else:
        seeds = _checked(seeds, "seeds", torch.int64, device, 1, (batch,))
        offsets = _checked(offsets, "offsets", torch.int64, device, 1, (batch,))
    k = candidates_per_row(beams, eos.shape[0])
    if k > beams * vocab:
        raise ValueError(f"logits must have at least K / nb = {k // beams} columns (K = max(2, 1 + E) * nb "
                         f"candidates per batch row), got {vocab}")
    _check_length("max_generated_length", max_generated_length)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
        raise TypeError(f"length_penalty must be a float, got {type(length_penalty).__name__}")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be finite, got {length_penalty}")
    if not (isinstance(early_stopping, bool) or (isinstance(early_stopping, str) and early_stopping == "never")):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    return eos, seeds, offsets


def _check_length(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_step_options(generated_length: int, all_stop: bool, normalized: bool) -> None:
    _check_length("generated_length", generated_length)
    for name, value in (("all_stop", all_stop), ("normalized", normalized)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _checked(tensor, name: str, dtype: torch.dtype, device: torch.device, dim: int,
             shape: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """``tensor`` checked (type, dtype, device, rank, shape), made contiguous."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {tensor.dtype}")
    if tensor.device != device:
        raise ValueError(f"{name} must be on the logits' device {device}, got {tensor.device}")
    if tensor.dim() != dim or (shape is not None and tuple(tensor.shape) != shape):
        wanted = list(shape) if shape is not None else f"{dim}-D"
        raise ValueError(f"{name} must have shape {wanted}, got {tuple(tensor.shape)}")
    return tensor.contiguous()


# --- the op declaration ------------------------------------------------------------------------------

def _allocate_outputs(logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
                      is_finished: torch.Tensor, may_improve: torch.Tensor, eos: torch.Tensor, seeds: torch.Tensor,
                      offsets: torch.Tensor, normalized: bool, generated_length: int, max_generated_length: int,
                      length_penalty: float, early_stopping: int, all_stop: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                 torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nine outputs (see :class:`BeamStepResult`), contiguous, for validated inputs."""
    batch, beams = running_scores.shape
    k = candidates_per_row(beams, eos.shape[0])
    device = logits.device

    def empty(*shape, dtype):
        return torch.empty(*shape, dtype=dtype, device=device)

    return (empty(batch, k, dtype=torch.float32), empty(batch, k, dtype=torch.int64),
            empty(batch, beams, dtype=torch.float32), empty(batch, beams, dtype=torch.int64),
            empty(batch, beams, dtype=torch.float32), empty(batch, beams, dtype=torch.int64),
            empty(batch, beams, dtype=torch.bool), empty(batch, dtype=torch.bool), empty(batch, dtype=torch.bool))


def _launch_triton(*inputs_and_outputs: torch.Tensor) -> None:
    """kernels.beam.launch_beam_step(<inputs...>, <outputs...>)."""
    from ..kernels import beam as kernels  # imported lazily: needs TRITON_INTERPRET set first on CPU

    kernels.launch_beam_step(*inputs_and_outputs)


BEAM_STEP = declare(OpSpec(
    name="beam_step",
    reference="beam_step",
    allocate_outputs=_allocate_outputs,
    launchers={
        "cpu": functools.partial(_native.launch_beam_step, "cpu"),
        "cuda": functools.partial(_native.launch_beam_step, "cuda"),
        "triton": _launch_triton,
    },
))
