"""Sampling on this CPU: turbogen's cpu backend vs transformers' warper chain vs turbogen.ref
(eager and torch.compile), side by side in one run, with the read floor of every shape.

    python -m pytest bench/ops/bench_sampling.py -s --benchmark-group-by=group \\
        --benchmark-columns=median,rounds --benchmark-sort=name

transformers' chain is what ``generate(do_sample=True)`` runs per step: TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper, softmax, torch.multinomial. The floor is the
time to read the logits once at this machine's read bandwidth, measured in the same run
(bench/common.py: a 256 MB sum, so memory, not cache). Because that bandwidth varies with whatever
else runs on this shared machine, torch.sum over the same logits (cache-hot, like every
implementation here) is also timed side by side with every shape. With ``-s`` a summary prints
each implementation's median as a multiple of the floor, turbogen cpu's speed-up over transformers
and its time relative to torch.sum.

The logits are standard normal: a flat distribution over the whole vocabulary, the hard case for
top-p (about top_p of the vocabulary stays) and for pure sampling (every token needs its noise).
Language-model logits are far more peaked, which only helps the cpu backend (it prunes tokens
that cannot win); transformers' chain costs the same either way.
"""

from __future__ import annotations

import pytest
import torch

from common import SAMPLING_BATCHES, SAMPLING_MIXES, SAMPLING_VOCABS, read_bandwidth_bytes_per_s, read_floor_seconds
from turbogen import ops
from turbogen.cli.benchmark import transformers_sample
from turbogen.ops.sampling import sample
from turbogen.ref.sampling import sample as reference_sample

BATCHES = SAMPLING_BATCHES
VOCABS = SAMPLING_VOCABS
MIXES = {name: SAMPLING_MIXES[name] for name in ("t0.7-k50-p0.9", "p0.9", "pure")}


_COMPILED = {}


def compiled_reference(mix: str):
    """torch.compile(turbogen.ref.sample) per parameter mix (the scalars are baked into the graph),
    with dynamic shapes so that one compilation serves every batch and vocabulary."""
    if mix not in _COMPILED:
        _COMPILED[mix] = torch.compile(reference_sample, fullgraph=True, dynamic=True)
    return _COMPILED[mix]


def _runners(mix: str):
    temperature, top_k, top_p, min_p = MIXES[mix]
    filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    runners = {
        # Side by side with every shape: torch's sum reads every byte once, with torch's threads
        # (cache-hot here, as every implementation is: the same logits are read round after round).
        "torch.sum": lambda x: x.sum(),
        "transformers": lambda x: transformers_sample(x, temperature, top_k, top_p, min_p),
        "turbogen ref": lambda x: reference_sample(x, seed=0, **filters),
        # Tensor seeds (S + r, as seed=0 means): the graph then serves every batch size.
        "turbogen ref compiled": lambda x: compiled_reference(mix)(x, seed=torch.arange(x.shape[0]), **filters),
    }
    if ops.available_backends()["cpu"]:
        runners["turbogen cpu"] = lambda x: sample(x, seed=0, backend="cpu", **filters)
    return runners


IMPLEMENTATIONS = ["turbogen cpu", "torch.sum", "transformers", "turbogen ref", "turbogen ref compiled"]
_MEDIANS: dict[tuple[str, int, int], dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def compile_every_mix():
    """One compiled graph per mix and shape class exceeds dynamo's default of 8 per function."""
    with torch._dynamo.config.patch(recompile_limit=64):
        yield


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _MEDIANS:
        return
    write = reporter.write_line
    write("")
    write(f"read bandwidth {read_bandwidth_bytes_per_s() / 1e9:.1f} GB/s; times in ms, (x floor)")
    write(f"{'mix':>14} {'B':>3} {'V':>7} {'floor':>7} " + " ".join(f"{name:>22}" for name in IMPLEMENTATIONS)
          + "  cpu speed-up vs transformers")
    for (mix, batch, vocab), medians in sorted(_MEDIANS.items()):
        floor = read_floor_seconds(torch.empty(batch, vocab))
        cells = []
        for name in IMPLEMENTATIONS:
            seconds = medians.get(name)
            cells.append(f"{'-':>22}" if seconds is None else f"{seconds * 1e3:>12.3f} ({seconds / floor:>6.1f}x)")
        speedup = ""
        if "turbogen cpu" in medians and "transformers" in medians:
            speedup = f"  {medians['transformers'] / medians['turbogen cpu']:.1f}x"
        if "turbogen cpu" in medians and "torch.sum" in medians:
            speedup += f"  (cpu / torch.sum {medians['turbogen cpu'] / medians['torch.sum']:.1f})"
        write(f"{mix:>14} {batch:>3} {vocab:>7} {floor * 1e3:>7.3f} " + " ".join(cells) + speedup)


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_sample(benchmark, impl, mix, batch, vocab):
    runners = _runners(mix)
    if impl not in runners:
        pytest.skip("the cpu backend is unavailable: " + ops.available_backends()["cpu"].reason)
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(batch * vocab))
    run = runners[impl]
    run(logits)  # warm up (and compile)
    fast = impl in ("turbogen cpu", "torch.sum")
    benchmark.group = f"sample {mix} B={batch} V={vocab} fp32"
    benchmark.extra_info["floor_ms"] = read_floor_seconds(logits) * 1e3
    benchmark.extra_info["read_GBps"] = read_bandwidth_bytes_per_s() / 1e9
    benchmark.pedantic(run, args=(logits,), rounds=20 if fast else 3, iterations=1, warmup_rounds=1 if fast else 0)
    _MEDIANS.setdefault((mix, batch, vocab), {})[impl] = benchmark.stats.stats.median
