"""End-to-end generate(): turbogen vs transformers vs the bare forward loop, side by side in one run.

    python -m pytest bench/e2e/bench_generate.py --benchmark-group-by=group --benchmark-columns=median,rounds

The settings are those of ``turbogen bench`` (:mod:`turbogen.cli.benchmark`): a tiny Llama (vocabulary 32000,
hidden 256, 4 layers, 8 heads over 4 KV heads), 16-token prompts, 64 new tokens, batch 1 and 8; greedy
search, sampling (temperature 0.7, top-k 50, top-p 0.9, repetition penalty 1.1), beam search (4 beams).
Each group is one (mode, batch) with the three runners in it; ``forward`` is the floor (prefill + one
forward and an argmax per token), so turbogen's distance to it is its overhead. Rounds are few (a round
is a whole generation) so the file runs in a few minutes on a small CPU.
"""

from __future__ import annotations

import functools

import pytest

from turbogen.cli import benchmark as e2e

PLAN = e2e.EndToEndPlan()
ROUNDS = 3


@functools.lru_cache(maxsize=None)
def _model():
    return PLAN.model.build()


@pytest.mark.parametrize("batch", PLAN.batches, ids=lambda batch: f"B{batch}")
@pytest.mark.parametrize("mode", PLAN.modes)
@pytest.mark.parametrize("runner", PLAN.runners)
def test_generate(benchmark, runner, mode, batch):
    input_ids, attention_mask = e2e.bench_prompt(batch, PLAN.prompt_length, PLAN.model.vocab_size)
    call = e2e.runner_calls(_model(), input_ids, attention_mask, mode, PLAN.new_tokens)[runner]
    rows = e2e.decoded_rows(mode, batch)
    benchmark.group = f"generate {mode} B={batch}"
    benchmark.extra_info.update(rows=rows, new_tokens=PLAN.new_tokens)
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = rows * PLAN.new_tokens / benchmark.stats.stats.min
