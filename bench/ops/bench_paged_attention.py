"""Paged attention on this CPU: ``ops.paged_attention`` (cpu backend: reads through the block tables) vs gathering
each sequence's keys out of the same paged cache then ``scaled_dot_product_attention`` ("gather+sdpa", what a
paged cache costs without a kernel), vs SDPA over a contiguous padded cache holding the same keys ("dense sdpa",
the floor: no paging at all), and the reference (turbogen.ref.paged: per-token gather + einsum, the oracle),
side by side in one run (issue 10's targets: paged >= gather+sdpa at every shape, within 1.5x of dense sdpa).

    TURBOGEN_NUM_THREADS=2 python -m pytest bench/ops/bench_paged_attention.py -s --benchmark-group-by=group \\
        --benchmark-columns=median,rounds --benchmark-sort=name

The summary (``-s``) prints each implementation's median over rounds that alternate the implementations (so a
change in the load of this shared machine hits all alike), the ratios and the load average. torch's intra-op
threads are set to turbogen's pool size, so both sides use the same cores. ``-k "not reference"`` leaves the (slow)
reference out.

Shapes: the first three are generic (8 heads over 2 KV heads, head_dim 64); the ``engine-*`` ones are what the
continuous-batching Engine asks on the benchmark models (8 heads over 4 KV heads, head_dim 32, steps of up to 512
tokens): decode, packed whole prompts, and decode tokens mixed with prefill chunks. For mixed shapes both SDPA
baselines make one call per distinct query count (the decode tokens in one batch, each prompt length in
another), each over its own padded cache, then write the outputs back in packed order.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from common import interleaved_medians
from turbogen import _ext, ops

BLOCK_SIZE = 16
# name -> (heads, kv heads, head_dim, parts); a part is (number of sequences, key-length range, queries per
# sequence: an int, or None for a whole prompt from an empty prefix). Packed in the order of the parts.
SHAPES = {
    "decode-16x512..2048": (8, 2, 64, [(16, (512, 2048), 1)]),
    "decode-64x128..512": (8, 2, 64, [(64, (128, 512), 1)]),
    "prefill-chunk-4x64q-over-512..1024": (8, 2, 64, [(4, (512, 1024), 64)]),
    # What the Engine asks on the benchmark models (8 heads over 4 KV heads, head_dim 32) with its 512-token step
    # budget: decode steps, packed prompts, and decode tokens mixed with prefill work.
    "engine-decode-64x16..512": (8, 4, 32, [(64, (16, 512), 1)]),
    "engine-prompts-3x4..256": (8, 4, 32, [(3, (4, 256), None)]),
    "engine-mixed-56dec+chunk200q-over-256": (8, 4, 32, [(56, (16, 512), 1), (1, (256, 256), 200)]),
    "engine-mixed-32dec+2prompts": (8, 4, 32, [(32, (16, 512), 1), (2, (4, 256), None)]),
}
IMPLEMENTATIONS = ["paged_cpu", "gather_sdpa", "dense_sdpa", "reference"]
INTERLEAVED_ROUNDS = 15

_CALLS: dict[str, dict[str, object]] = {}


def _threads() -> int:
    return _ext.extension().num_threads()


class Workload:
    """Sequences of random lengths in a shuffled paged cache, and the same keys in contiguous padded caches.

    The SDPA baselines batch the sequences that have the same number of queries (one call per group: decode tokens
    in one, each prefill length in another), each group over its own padded cache ``[seqs, kv_heads, max_len,
    head_dim]`` with a causal mask on its last positions; outputs are written back in packed order."""

    def __init__(self, heads, kv_heads, head_dim, parts, seed=0):
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        generator = torch.Generator().manual_seed(seed)
        self.lengths, self.q_lens = [], []
        for num_seqs, (lo, hi), q_len in parts:
            lengths = torch.randint(lo, hi + 1, (num_seqs,), generator=generator).tolist()
            self.lengths += lengths
            self.q_lens += [n if q_len is None else min(q_len, n) for n in lengths]
        num_seqs = len(self.lengths)
        blocks = [math.ceil(n / BLOCK_SIZE) for n in self.lengths]
        num_blocks = sum(blocks)
        self.max_blocks = max(blocks)
        order = torch.randperm(num_blocks, generator=generator)
        self.block_tables = torch.zeros(num_seqs, self.max_blocks, dtype=torch.int32)
        at = 0
        for s, count in enumerate(blocks):
            self.block_tables[s, :count] = order[at:at + count].to(torch.int32)
            at += count
        shape = (num_blocks, BLOCK_SIZE, kv_heads, head_dim)
        self.key_cache = torch.randn(shape, generator=generator)
        self.value_cache = torch.randn(shape, generator=generator)
        self.query = torch.randn(sum(self.q_lens), heads, head_dim, generator=generator)
        self.cu_seqlens_q = torch.tensor([0] + self.q_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
        self.seq_lens = torch.tensor(self.lengths, dtype=torch.int32)
        # One group per distinct query count: its sequences, packed token indices, dense keys and mask.
        self.groups = []
        for q_len in sorted(set(self.q_lens)):
            seqs = [s for s, n in enumerate(self.q_lens) if n == q_len]
            tokens = torch.cat([torch.arange(int(self.cu_seqlens_q[s]), int(self.cu_seqlens_q[s + 1]))
                                for s in seqs])
            group = dict(seqs=torch.tensor(seqs), q_len=q_len, tokens=tokens,
                         max_len=max(self.lengths[s] for s in seqs))
            group["dense_k"], group["dense_v"] = self._gather(group)
            group["mask"] = self._mask(group)
            self.groups.append(group)

    def _gather(self, group):
        """[seqs, kv_heads, max_len, head_dim] keys and values of ``group`` gathered through the block tables."""
        tables = self.block_tables[group["seqs"]].to(torch.int64)
        slots = tables.unsqueeze(-1) * BLOCK_SIZE + torch.arange(BLOCK_SIZE)
        slots = slots.reshape(len(group["seqs"]), -1)[:, :group["max_len"]]
        flat_k = self.key_cache.view(-1, self.kv_heads, self.head_dim)
        flat_v = self.value_cache.view(-1, self.kv_heads, self.head_dim)
        return flat_k[slots].transpose(1, 2), flat_v[slots].transpose(1, 2)

    def _mask(self, group):
        """bool [seqs, 1, q_len, max_len]: causal within each sequence's last q_len positions."""
        lengths = self.seq_lens[group["seqs"]].to(torch.int64).view(-1, 1, 1, 1)
        q_len = group["q_len"]
        position = lengths - q_len + torch.arange(q_len).view(1, 1, -1, 1)
        return torch.arange(group["max_len"]).view(1, 1, 1, -1) <= position

    def _queries(self, group):
        q = self.query[group["tokens"]] if len(self.groups) > 1 else self.query
        return q.view(len(group["seqs"]), group["q_len"], self.heads, self.head_dim).transpose(1, 2)

    def _sdpa(self, gathered: bool):
        outs = []
        for group in self.groups:
            k, v = self._gather(group) if gathered else (group["dense_k"], group["dense_v"])
            out = torch.nn.functional.scaled_dot_product_attention(self._queries(group), k, v,
                                                                   attn_mask=group["mask"], enable_gqa=True)
            outs.append(out.transpose(1, 2).reshape(-1, self.heads, self.head_dim))
        if len(outs) == 1:
            return outs[0]
        packed = torch.empty_like(self.query)
        for group, out in zip(self.groups, outs):
            packed.index_copy_(0, group["tokens"], out)
        return packed

    def paged(self, backend):
        return ops.paged_attention(self.query, self.key_cache, self.value_cache, self.block_tables, self.cu_seqlens_q,
                                   self.seq_lens, backend=backend)

    def gather_sdpa(self):
        return self._sdpa(gathered=True)

    def dense_sdpa(self):
        return self._sdpa(gathered=False)


_WORKLOADS: dict[str, Workload] = {}


def _workload(shape: str) -> Workload:
    if shape not in _WORKLOADS:
        _WORKLOADS[shape] = Workload(*SHAPES[shape])
    return _WORKLOADS[shape]




@pytest.fixture(scope="module", autouse=True)
def summary(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(_threads())
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _CALLS:
        write = reporter.write_line
        write("")
        write(f"turbogen pool: {_threads()} thread(s), torch: {torch.get_num_threads()}; median ms per call over "
              f"{INTERLEAVED_ROUNDS} alternating rounds (targets: paged/gather <= 1, paged/dense <= 1.5)")
        write(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        write(f"{'shape':>40} {'paged':>8} {'gather':>8} {'dense':>8} {'ref':>8} {'p/gather':>8} {'p/dense':>8}")
        for shape, calls in _CALLS.items():
            if not {"paged_cpu", "gather_sdpa", "dense_sdpa"} <= set(calls):
                continue  # the reference is optional (-k "not reference": it is slow)
            m = interleaved_medians(calls, INTERLEAVED_ROUNDS)
            ref = f"{m['reference'] * 1e3:>8.3f}" if "reference" in m else f"{'-':>8}"
            write(f"{shape:>40} {m['paged_cpu'] * 1e3:>8.3f} {m['gather_sdpa'] * 1e3:>8.3f} "
                  f"{m['dense_sdpa'] * 1e3:>8.3f} {ref} {m['paged_cpu'] / m['gather_sdpa']:>8.2f} "
                  f"{m['paged_cpu'] / m['dense_sdpa']:>8.2f}")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_paged_attention(benchmark, impl, shape):
    if not ops.available_backends()["cpu"]:
        pytest.skip("the cpu backend is unavailable: " + ops.available_backends()["cpu"].reason)
    w = _workload(shape)
    run = {"paged_cpu": lambda: w.paged("cpu"), "reference": lambda: w.paged("ref"), "gather_sdpa": w.gather_sdpa,
           "dense_sdpa": w.dense_sdpa}[impl]
    expected = w.dense_sdpa()
    torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-4)
    benchmark.group = f"paged attention {shape} threads={_threads()}"
    benchmark.extra_info["threads"] = _threads()
    benchmark.pedantic(run, rounds=3 if impl == "reference" else 10, iterations=1, warmup_rounds=1)
    _CALLS.setdefault(shape, {})[impl] = run
