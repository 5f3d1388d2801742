"""ops.topk (beam search's candidate selection) vs torch.topk, side by side in one run.

    python -m pytest bench/ops/bench_topk.py --benchmark-group-by=group --benchmark-columns=median,rounds

The scores are what beam search ranks at a step: per batch row, the log-probabilities of
``num_beams`` beams over a vocabulary plus each beam's running score, flattened to
``num_beams * vocab``; k is 2 candidates per beam. The floor is the time to read the scores once
at this machine's measured bandwidth.
"""

from __future__ import annotations

import pytest
import torch

from common import read_floor_seconds
from turbogen import ops

CASES = [  # (batch rows, beams, vocab)
    (1, 4, 32000),
    (8, 4, 32000),
    (1, 4, 128256),
    (8, 8, 32000),
]


def beam_scores(batch: int, beams: int, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * beams)
    log_probs = torch.log_softmax(torch.randn(batch * beams, vocab, generator=generator) * 3, dim=-1)
    running = -torch.rand(batch, beams, 1, generator=generator) * 10
    return (log_probs.view(batch, beams, vocab) + running).view(batch, beams * vocab)


def _runners():
    runners = {"torch.topk": torch.topk}
    if ops.available_backends()["cpu"]:
        runners["turbogen cpu"] = lambda scores, k: ops.topk(scores, k, backend="cpu")
    return runners


RUNNERS = _runners()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-beams{c[1]}-V{c[2]}")
@pytest.mark.parametrize("impl", list(RUNNERS))
def test_topk(benchmark, impl, case):
    batch, beams, vocab = case
    scores = beam_scores(batch, beams, vocab)
    benchmark.group = f"topk B={batch} {beams} beams x V={vocab}, k={2 * beams}"
    benchmark.extra_info["floor_us"] = read_floor_seconds(scores) * 1e6
    benchmark(RUNNERS[impl], scores, 2 * beams)
