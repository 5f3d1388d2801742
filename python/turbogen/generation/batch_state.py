"""Per-row batch state of the greedy / sampling loop: every per-sequence quantity in a device tensor row.

The sampling parameters flow one way: generation config -> :class:`BatchState` -> sampling kernel
(:class:`turbogen.ops.Sampler`, which takes per-row tensors). Nothing is recovered from processor objects.
The Philox offset of every row is a device tensor advanced in place after each draw, so a step builds no
host tensor and a captured step draws fresh numbers at every replay. By the sampling contract
(docs/design.md) a row's offset for its ``n``-th generated token is ``n``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .. import ops
from ..config import GenerationConfig
from ..ops._counters import wrap_int64
from ..processors.build import SamplingParams

__all__ = ["BatchState", "NonFiniteScoresError", "draw_seed", "raise_non_finite_scores", "sequence_seeds"]


class NonFiniteScoresError(RuntimeError):
    """The processed scores reaching the sampler held NaN or +inf, or a row with no finite score, so no token
    can be drawn (transformers' ``torch.multinomial`` raises there too)."""


def draw_seed(config: GenerationConfig) -> int:
    """The call's base seed for a scalar ``config.seed``: the seed itself, else (``None``) one number from
    torch's global RNG (so ``torch.manual_seed`` makes unseeded runs reproducible)."""
    if config.seed is not None:
        return config.seed
    return int(torch.randint(0, 2**63 - 1, ()))


def sequence_seeds(config: GenerationConfig, rows: int, device: torch.device) -> torch.Tensor:
    """int64 ``[rows]`` seeds of the sampling contract for ``rows`` sequences, prompt-major (each prompt's
    sequences side by side, as ``generate`` expands them).

    A scalar (or ``None``) ``config.seed`` ``S`` gives row ``r`` the seed ``S + r``. A list holds one seed
    per prompt (its length was checked against the batch by ``prepare_call``): sequence ``j`` of prompt
    ``p`` gets ``seed[p] + j``. Sums wrap modulo 2**64.
    """
    if not isinstance(config.seed, (list, tuple)):
        return ops.row_seeds(draw_seed(config), rows, device)
    prompts = len(config.seed)
    per_prompt = rows // prompts
    firsts = torch.tensor([wrap_int64(seed) for seed in config.seed], dtype=torch.int64, device=device)
    # Two's-complement int64 addition wraps modulo 2**64, as the contract wants.
    return (firsts.repeat_interleave(per_prompt)
            + torch.arange(per_prompt, dtype=torch.int64, device=device).repeat(prompts))


@dataclasses.dataclass
class BatchState:
    """The per-row state of a greedy or sampling batch (``[rows]`` device tensors unless noted).

    Attributes:
        unfinished: bool; cleared when a row's stopping criteria fire.
        seeds: int64 per-row seeds (:func:`sequence_seeds`); ``None`` for greedy search.
        offsets: int64 Philox offset of the next draw (0 for the first generated token); ``None`` for greedy.
        temperature, top_k, top_p, min_p: the sampler's filters (float32, int64, float64, float32); neutral
            (1, 0, 1, 0) when the processors apply the config's warpers instead.
        scores_are_finite: 0-d bool, whether every score that reached the sampler so far was a number below
            +inf with a finite maximum per row; accumulated on the device and read with the finish flag.
    """

    unfinished: torch.Tensor
    seeds: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    temperature: Optional[torch.Tensor] = None
    top_k: Optional[torch.Tensor] = None
    top_p: Optional[torch.Tensor] = None
    min_p: Optional[torch.Tensor] = None
    scores_are_finite: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, config: GenerationConfig, rows: int, device: torch.device,
                    sampler_filters: Optional[SamplingParams]) -> "BatchState":
        """The state of ``rows`` fresh sequences. ``sampler_filters``: the filters the sampler applies (from
        :func:`turbogen.processors.build.sampler_filter_params` of ``config``), ``None`` when the processors
        apply them."""
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        if not config.do_sample:
            return cls(unfinished)
        filters = sampler_filters if sampler_filters is not None else SamplingParams()

        def column(value, dtype):
            return torch.full((rows,), value, dtype=dtype, device=device)

        return cls(
            unfinished=unfinished,
            seeds=sequence_seeds(config, rows, device),
            offsets=torch.zeros(rows, dtype=torch.int64, device=device),
            temperature=column(filters.temperature, torch.float32),
            top_k=column(filters.top_k, torch.int64),
            top_p=column(filters.top_p, torch.float64),
            min_p=column(filters.min_p, torch.float32),
            scores_are_finite=torch.ones((), dtype=torch.bool, device=device),
        )

    @property
    def samples(self) -> bool:
        return self.seeds is not None

    def sampler(self) -> "ops.Sampler":
        """A :class:`turbogen.ops.Sampler` reading these rows' seeds and filters (validated once here)."""
        return ops.Sampler(self.unfinished.shape[0], self.unfinished.device, temperature=self.temperature,
                           top_k=self.top_k, top_p=self.top_p, min_p=self.min_p, seed=self.seeds)

    def check_scores(self, scores: torch.Tensor) -> None:
        """Fold into ``scores_are_finite`` whether ``scores`` (``[rows, vocab]``) can be sampled: no NaN, no
        +inf, some finite score per row. One reduction, no host sync (``amax`` propagates NaN)."""
        row_max = scores.amax(dim=-1)
        self.scores_are_finite.logical_and_(torch.isfinite(row_max).all())

    def finish(self, done: torch.Tensor) -> None:
        """Mark the rows where ``done`` (bool ``[rows]``) holds as finished, in place."""
        self.unfinished.logical_and_(~done)

    def advance(self) -> None:
        """After a draw: every row's next draw uses the next offset (in place, on the device)."""
        self.offsets.add_(1)


def raise_non_finite_scores() -> None:
    """Raise :class:`NonFiniteScoresError` (the loops call this when they read a device flag saying so)."""
    raise NonFiniteScoresError(
        "the processed scores of a sampling step hold NaN or +inf, or a row whose scores are all -inf, so no "
        "token can be drawn (transformers raises as well). Check the model's logits and the logits processors "
        "(`remove_invalid_values=True` replaces NaN and inf).")
