"""The Engine's token choice for one step: every request's logits processed by its own stages, then one argmax
for the greedy rows and one fused draw (:func:`turbogen.ops.sample`) for the sampling rows, each row with its
own filters, seed and offset (the number of tokens it generated so far: the determinism contract's per-request
offset, whatever step, batch or recomputation the token is generated in).

What ``generate`` does for one row, row by row: ``scores = stages.apply(history, logits)``; greedy:
``argmax(scores)``; sampling: the scores must be finite where they reach the sampler (else the request fails, as
``generate`` raises :class:`~turbogen.generation.batch_state.NonFiniteScoresError`), then ``sample(scores,
filters, seed, offset)``. A row's result depends only on its own logits and state (batch invariance of the
argmax and of the sampler), so doing all rows at once changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from .. import ops
from .request import Request

__all__ = ["SamplerCache", "Selection", "select_tokens"]


@dataclasses.dataclass
class Selection:
    """``tokens[i]``: request ``i``'s next token (host int), ``token_tensor`` the same ``[k]`` on the device;
    ``errors[i]``: why request ``i`` got no token (None when it did); ``scores``: the processed ``[k, vocab]``."""

    tokens: list
    token_tensor: torch.Tensor
    errors: list
    scores: torch.Tensor


class SamplerCache:
    """The :class:`turbogen.ops.Sampler` of the last step's sampling rows, reused while the same requests sample in
    the same order (steady decoding): a sampler validates and places its per-row filters and seeds once, which
    costs more than the draw of a small batch. Offsets are passed per call."""

    def __init__(self):
        self._key: Optional[tuple] = None
        self._sampler = None

    def get(self, requests: Sequence[Request], device: torch.device) -> "ops.Sampler":
        key = tuple(request.arrival for request in requests)
        if key != self._key:
            specs = [request.spec for request in requests]
            self._sampler = ops.Sampler(
                len(specs), device,
                temperature=torch.tensor([s.filters.temperature for s in specs], dtype=torch.float32, device=device),
                top_k=torch.tensor([s.filters.top_k for s in specs], dtype=torch.int64, device=device),
                top_p=torch.tensor([s.filters.top_p for s in specs], dtype=torch.float64, device=device),
                min_p=torch.tensor([s.filters.min_p for s in specs], dtype=torch.float32, device=device),
                seed=torch.tensor([s.seed for s in specs], dtype=torch.int64, device=device))
            self._key = key
        return self._sampler


def select_tokens(requests: Sequence[Request], logits: torch.Tensor,
                  samplers: Optional[SamplerCache] = None) -> Selection:
    """The next token of each of ``requests`` from their float32 ``logits`` (``[k, vocab]``, row ``i`` of request
    ``i``). Stages and samplers are the requests' own; a processor that raises fails its request only.
    ``samplers``: a cache of the sampler across steps (a fresh one by default)."""
    samplers = samplers if samplers is not None else SamplerCache()
    errors: list = [None] * len(requests)
    rows = []
    processed = False
    for index, request in enumerate(requests):
        row = logits[index:index + 1]
        if request.spec.processors:
            try:
                row = request.process(row)
                processed = True
            except Exception as error:  # noqa: BLE001  (a user processor: that request fails, not the Engine)
                errors[index] = f"a logits processor raised {type(error).__name__}: {error}"
        rows.append(row)
    scores = torch.cat(rows) if processed else logits
    tokens = torch.argmax(scores, dim=-1)
    sampled = [i for i, request in enumerate(requests) if request.samples and errors[i] is None]
    finite = None
    if sampled:
        index = torch.tensor(sampled, dtype=torch.long, device=scores.device) if len(sampled) < len(requests) \
            else None
        chosen = scores if index is None else scores.index_select(0, index)
        sampler = samplers.get([requests[i] for i in sampled], scores.device)
        offsets = torch.tensor([requests[i].num_generated for i in sampled], dtype=torch.int64, device=scores.device)
        draws = sampler(chosen.contiguous(), offsets)
        # generate's check: no NaN, no +inf, a finite maximum per row (amax propagates NaN).
        finite = torch.isfinite(chosen.amax(dim=-1))
        if index is None:
            tokens = draws
        else:
            tokens = tokens.index_copy(0, index, draws)
    host_tokens = tokens.tolist()
    if finite is not None:
        for i, ok in zip(sampled, finite.tolist()):
            if not ok or host_tokens[i] < 0:
                errors[i] = ("the processed scores held NaN or +inf, or no finite score, so no token can be "
                             "sampled (generate raises NonFiniteScoresError)")
    return Selection(host_tokens, tokens, errors, scores)
