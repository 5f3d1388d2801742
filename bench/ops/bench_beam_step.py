"""ops.beam_step (the fused beam-search step) vs the torch step it replaces, side by side in one run.

    python -m pytest bench/ops/bench_beam_step.py --benchmark-group-by=group --benchmark-columns=median,rounds

One decode step of generate()'s beam search after the model call, bookkeeping included: the torch path
is log_softmax + the beams' scores added in place + ops.topk over num_beams * vocab per batch row + the EOS
check + BeamSearchState.advance (two small top-ks, gathers); the fused path is BeamSearchState.fused_step
(one ops.beam_step on the raw logits, then the same gathers of the sequences). One EOS id, so K = 2 * beams.
"""

from __future__ import annotations

import pytest
import torch

from turbogen import ops
from turbogen.generation.beam_search import BeamSearchParams, BeamSearchState

CASES = [  # (batch rows, beams, vocab)
    (1, 4, 32000),
    (8, 4, 32000),
]
PROMPT, MAX_LENGTH, EOS = 8, 64, 2


def make_state(batch: int, beams: int, vocab: int) -> tuple[BeamSearchState, torch.Tensor]:
    """A state one step into the search (every beam alive) and the next step's logits."""
    params = BeamSearchParams(batch_size=batch, num_beams=beams, vocab_size=vocab, max_length=MAX_LENGTH,
                              prompt_length=PROMPT, length_penalty=1.0, early_stopping=False, num_eos_tokens=1,
                              do_sample=False)
    state = BeamSearchState(torch.zeros(batch * beams, PROMPT, dtype=torch.int64), params, EOS)
    generator = torch.Generator().manual_seed(batch * beams)
    state.running_scores = -torch.rand(batch, beams, generator=generator) * 5
    logits = torch.randn(batch * beams, vocab, generator=generator) * 3
    return state, logits


def torch_step(state: BeamSearchState, logits: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
    candidates = state.candidates(log_probs, PROMPT + 1, overwrite=True)
    stopped = torch.isin(candidates.sequences[:, :, PROMPT + 1], eos)
    return state.advance(candidates, stopped)


def fused_step(state: BeamSearchState, logits: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    return state.fused_step(logits, False, PROMPT + 1, eos, False)


RUNNERS = {"torch step": torch_step}
if ops.available_backends()["cpu"]:
    RUNNERS["turbogen beam_step cpu"] = fused_step


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-beams{c[1]}-V{c[2]}")
@pytest.mark.parametrize("impl", list(RUNNERS))
def test_beam_step(benchmark, impl, case):
    batch, beams, vocab = case
    state, logits = make_state(batch, beams, vocab)
    eos = torch.tensor([EOS])
    benchmark.group = f"beam step B={batch} {beams} beams x V={vocab}"
    benchmark(RUNNERS[impl], state, logits, eos)
