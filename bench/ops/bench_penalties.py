"""ops.apply_penalties against transformers' RepetitionPenaltyLogitsProcessor, and the sampler's pass with
the penalties fused against the same pass without them, side by side in one run.

    python -m pytest bench/ops/bench_penalties.py --benchmark-group-by=group --benchmark-columns=median,rounds

The case is the issue's: 64 rows, each with a history of 2048 tokens (prompt + generated), over Llama 3's
vocabulary of 128256. transformers gathers the history's scores, penalises them and scatters them into a
copy of the logits at every step; turbogen reads each row's distinct tokens from its penalty state (a
bitmask and counts updated by ``accept``). ``in place`` writes only the penalised entries
(``out=logits``), which is how the sampler's fused pass sees them; ``copy`` returns a new tensor as the
processor does, so it pays the same copy of the logits.
"""

from __future__ import annotations

import pytest
import torch

from turbogen import ops

ROWS, HISTORY, VOCAB = 64, 2048, 128256
SMALL = (8, 80, 32000)  # the tiny Llama's decode step: batch 8, prompt 16 + 64 new tokens


def _case(rows, history, vocab):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=generator) * 3
    input_ids = torch.randint(0, vocab, (rows, history), generator=generator)
    state = ops.PenaltyState(input_ids, vocab)
    return logits, input_ids, state


def _transformers_processor():
    transformers = pytest.importorskip("transformers")
    return transformers.RepetitionPenaltyLogitsProcessor(1.1)


def _apply_runners():
    runners = {"transformers processor": None}  # filled per case
    for backend in ("ref", "cpu"):
        if ops.available_backends()[backend]:
            runners[f"turbogen {backend} copy"] = backend
            runners[f"turbogen {backend} in place"] = backend
    return runners


@pytest.mark.parametrize("shape", [(ROWS, HISTORY, VOCAB), SMALL], ids=lambda s: f"B{s[0]}-L{s[1]}-V{s[2]}")
@pytest.mark.parametrize("impl", list(_apply_runners()))
def test_repetition_penalty(benchmark, impl, shape):
    logits, input_ids, state = _case(*shape)
    benchmark.group = f"repetition penalty 1.1, B={shape[0]}, history {shape[1]}, V={shape[2]}"
    if impl == "transformers processor":
        processor = _transformers_processor()
        benchmark(processor, input_ids, logits)
        return
    backend = _apply_runners()[impl]
    if impl.endswith("in place"):
        # Penalising the same tensor again and again changes its values, never the work done.
        benchmark(ops.apply_penalties, logits, state, repetition_penalty=1.1, out=logits, backend=backend)
    else:
        benchmark(ops.apply_penalties, logits, state, repetition_penalty=1.1, backend=backend)


def _sampling_runners():
    return [backend for backend in ("cpu",) if ops.available_backends()[backend]]


@pytest.mark.parametrize("shape", [(ROWS, HISTORY, VOCAB), SMALL], ids=lambda s: f"B{s[0]}-L{s[1]}-V{s[2]}")
@pytest.mark.parametrize("penalised", [False, True], ids=["plain", "with penalties"])
@pytest.mark.parametrize("backend", _sampling_runners())
def test_sampling_pass(benchmark, backend, penalised, shape):
    logits, _, state = _case(*shape)
    rows = shape[0]
    benchmark.group = f"sampling pass ({backend}) T=0.8 top_p=0.95, B={shape[0]}, history {shape[1]}, V={shape[2]}"
    sampler = ops.Sampler(rows, "cpu", temperature=0.8, top_p=0.95, seed=1, backend=backend)
    penalties = state.tensors(repetition_penalty=1.1) if penalised else None
    offsets = torch.zeros(rows, dtype=torch.int64)
    benchmark(sampler, logits, offsets, penalties=penalties)
