"""Speculative verification on this CPU: ``ops.verify`` (cpu backend, coupled mode) vs one ``ops.sample`` call
over the same ``[rows x (k + 1), vocab]`` logits, side by side in one run (issue 11's target: verify <= 1.2x).

    TURBOGEN_NUM_THREADS=1 python -m pytest bench/ops/bench_verify.py -s --benchmark-group-by=group \\
        --benchmark-columns=median,rounds --benchmark-sort=name
    TURBOGEN_NUM_THREADS=2 python -m pytest bench/ops/bench_verify.py -s ...   (the same, 2 threads)

turbogen's thread pool is sized once per process (``TURBOGEN_NUM_THREADS``), so each thread count is one
run; the summary (``-s``) prints the pool's size and, per shape and mix, verify's and sample's medians over
rounds that alternate the two calls (so a change in the load of this shared machine hits both alike), and
their ratio.

The drafts are the target's own tokens (a draft that always agrees, the worst case for verify: every
position is drawn, as sample draws every row). A row that rejects early costs verify less, sample the same.
The logits are standard normal (flat: every token needs its noise on the full-row path), as in
bench_sampling.py.
"""

from __future__ import annotations

import pytest
import torch

from common import SAMPLING_MIXES, interleaved_medians
from turbogen import _ext, ops

ROWS = [1, 8]
DRAFTS = [4, 8]
VOCABS = [2048, 32000]
MIXES = {name: SAMPLING_MIXES[name] for name in ("t0.7-k50-p0.9", "pure")}
IMPLEMENTATIONS = ["verify", "sample"]

_CALLS: dict[tuple[str, int, int, int], dict[str, object]] = {}
INTERLEAVED_ROUNDS = 40




def _threads() -> int:
    return _ext.extension().num_threads()


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _CALLS:
        return
    write = reporter.write_line
    write("")
    write(f"turbogen pool: {_threads()} thread(s); median ms per call over {INTERLEAVED_ROUNDS} alternating rounds; "
          f"verify / sample (target <= 1.2)")
    write(f"{'mix':>14} {'rows':>4} {'k':>2} {'vocab':>6} {'verify':>9} {'sample':>9} {'ratio':>6}")
    for (mix, rows, k, vocab), calls in sorted(_CALLS.items()):
        if len(calls) < 2:
            continue
        medians = interleaved_medians(calls, INTERLEAVED_ROUNDS)
        ratio = medians["verify"] / medians["sample"]
        write(f"{mix:>14} {rows:>4} {k:>2} {vocab:>6} {medians['verify'] * 1e3:>9.3f} "
              f"{medians['sample'] * 1e3:>9.3f} {ratio:>6.2f}")


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("k", DRAFTS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_verify_vs_sample(benchmark, impl, mix, rows, k, vocab):
    if not ops.available_backends()["cpu"]:
        pytest.skip("the cpu backend is unavailable: " + ops.available_backends()["cpu"].reason)
    temperature, top_k, top_p, min_p = MIXES[mix]
    filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    logits = torch.randn(rows, k + 1, vocab, generator=torch.Generator().manual_seed(rows * vocab + k))
    flat = logits.view(rows * (k + 1), vocab)
    seeds = torch.arange(rows) + 11
    offsets = torch.arange(rows) * 100
    # What sample draws for the same rows: every position of row r with row r's seed and offset + i.
    flat_seeds = seeds.repeat_interleave(k + 1)
    flat_offsets = (offsets.unsqueeze(1) + torch.arange(k + 1)).reshape(-1)
    target = ops.sample(flat, seed=flat_seeds, offset=flat_offsets, backend="cpu", **filters).view(rows, k + 1)
    drafts = target[:, :k].contiguous()
    if impl == "verify":
        def run():
            return ops.verify(logits, drafts, seed=seeds, offset=offsets, backend="cpu", **filters)

        result = run()
        assert result.accepted.tolist() == [k] * rows and torch.equal(result.tokens, target)
    else:
        def run():
            return ops.sample(flat, seed=flat_seeds, offset=flat_offsets, backend="cpu", **filters)

        run()
    benchmark.group = f"verify vs sample {mix} rows={rows} k={k} V={vocab} threads={_threads()}"
    benchmark.extra_info["threads"] = _threads()
    benchmark.pedantic(run, rounds=30, iterations=1, warmup_rounds=2)
    _CALLS.setdefault((mix, rows, k, vocab), {})[impl] = run
