"""Paged attention on this CPU: ``ops.paged_attention`` (cpu backend: reads through the block tables) vs gathering
each sequence's keys out of the same paged cache then ``scaled_dot_product_attention`` ("gather+sdpa", what a
paged cache costs without a kernel), vs SDPA over a contiguous padded cache holding the same keys ("dense sdpa",
the floor: no paging at all), and the reference (turbogen.ref.paged: per-token gather + einsum, the oracle),
side by side in one run (issue 10's targets: paged >= gather+sdpa at every shape, within 1.5x of dense sdpa).

    TURBOGEN_NUM_THREADS=2 python -m pytest bench/ops/bench_paged_attention.py -s --benchmark-group-by=group \\
        --benchmark-columns=median,rounds --benchmark-sort=name

The summary (``-s``) prints each implementation's median over rounds that alternate the implementations (so a
change in the load of this shared machine hits all alike) and the ratios. torch's intra-op threads are set to
turbogen's pool size, so both sides use the same cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from common import interleaved_medians
from turbogen import _ext, ops

BLOCK_SIZE = 16
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
# name -> (number of sequences, key-length range, queries per sequence)
SHAPES = {
    "decode-16x512..2048": (16, (512, 2048), 1),
    "decode-64x128..512": (64, (128, 512), 1),
    "prefill-chunk-4x64q-over-512..1024": (4, (512, 1024), 64),
}
IMPLEMENTATIONS = ["paged_cpu", "gather_sdpa", "dense_sdpa", "ref"]
INTERLEAVED_ROUNDS = 15

_CALLS: dict[str, dict[str, object]] = {}


def _threads() -> int:
    return _ext.extension().num_threads()


class Workload:
    """Sequences of random lengths in a shuffled paged cache, and the same keys in a contiguous padded cache."""

    def __init__(self, num_seqs, length_range, q_len, seed=0):
        generator = torch.Generator().manual_seed(seed)
        lo, hi = length_range
        self.lengths = torch.randint(lo, hi + 1, (num_seqs,), generator=generator).tolist()
        self.q_len = q_len
        blocks = [math.ceil(n / BLOCK_SIZE) for n in self.lengths]
        num_blocks = sum(blocks)
        self.max_blocks = max(blocks)
        order = torch.randperm(num_blocks, generator=generator)
        self.block_tables = torch.zeros(num_seqs, self.max_blocks, dtype=torch.int32)
        at = 0
        for s, count in enumerate(blocks):
            self.block_tables[s, :count] = order[at:at + count].to(torch.int32)
            at += count
        shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
        self.key_cache = torch.randn(shape, generator=generator)
        self.value_cache = torch.randn(shape, generator=generator)
        self.query = torch.randn(num_seqs * q_len, HEADS, HEAD_DIM, generator=generator)
        self.cu_seqlens_q = torch.arange(0, num_seqs * q_len + 1, q_len, dtype=torch.int32)
        self.seq_lens = torch.tensor(self.lengths, dtype=torch.int32)
        # The dense cache [seqs, kv_heads, max_len, head_dim] (what a padded HF cache holds) and its mask.
        self.max_len = max(self.lengths)
        self.dense_k, self.dense_v = self._gather()
        self.mask = self._mask()

    def _gather(self):
        """[seqs, kv_heads, max_len, head_dim] keys and values gathered through the block tables."""
        slots = (self.block_tables.to(torch.int64).unsqueeze(-1) * BLOCK_SIZE + torch.arange(BLOCK_SIZE))
        slots = slots.reshape(len(self.lengths), -1)[:, :self.max_len]
        flat_k = self.key_cache.view(-1, KV_HEADS, HEAD_DIM)
        flat_v = self.value_cache.view(-1, KV_HEADS, HEAD_DIM)
        return flat_k[slots].transpose(1, 2), flat_v[slots].transpose(1, 2)

    def _mask(self):
        """bool [seqs, 1, q_len, max_len]: causal within each sequence's last q_len positions."""
        lengths = self.seq_lens.to(torch.int64).view(-1, 1, 1, 1)
        position = lengths - self.q_len + torch.arange(self.q_len).view(1, 1, -1, 1)
        return torch.arange(self.max_len).view(1, 1, 1, -1) <= position

    def queries(self):
        return self.query.view(len(self.lengths), self.q_len, HEADS, HEAD_DIM).transpose(1, 2)

    def paged(self, backend):
        return ops.paged_attention(self.query, self.key_cache, self.value_cache, self.block_tables, self.cu_seqlens_q,
                                   self.seq_lens, backend=backend)

    def gather_sdpa(self):
        k, v = self._gather()
        out = torch.nn.functional.scaled_dot_product_attention(self.queries(), k, v, attn_mask=self.mask,
                                                               enable_gqa=True)
        return out.transpose(1, 2).reshape(-1, HEADS, HEAD_DIM)

    def dense_sdpa(self):
        out = torch.nn.functional.scaled_dot_product_attention(self.queries(), self.dense_k, self.dense_v,
                                                               attn_mask=self.mask, enable_gqa=True)
        return out.transpose(1, 2).reshape(-1, HEADS, HEAD_DIM)


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
        write(f"{'shape':>36} {'paged':>8} {'gather':>8} {'dense':>8} {'ref':>8} {'p/gather':>8} {'p/dense':>8}")
        for shape, calls in _CALLS.items():
            if len(calls) < len(IMPLEMENTATIONS):
                continue
            m = interleaved_medians(calls, INTERLEAVED_ROUNDS)
            write(f"{shape:>36} {m['paged_cpu'] * 1e3:>8.3f} {m['gather_sdpa'] * 1e3:>8.3f} "
                  f"{m['dense_sdpa'] * 1e3:>8.3f} {m['ref'] * 1e3:>8.3f} {m['paged_cpu'] / m['gather_sdpa']:>8.2f} "
                  f"{m['paged_cpu'] / m['dense_sdpa']:>8.2f}")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_paged_attention(benchmark, impl, shape):
    if not ops.available_backends()["cpu"]:
        pytest.skip("the cpu backend is unavailable: " + ops.available_backends()["cpu"].reason)
    w = _workload(shape)
    run = {"paged_cpu": lambda: w.paged("cpu"), "ref": lambda: w.paged("ref"), "gather_sdpa": w.gather_sdpa,
           "dense_sdpa": w.dense_sdpa}[impl]
    expected = w.dense_sdpa()
    torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-4)
    benchmark.group = f"paged attention {shape} threads={_threads()}"
    benchmark.extra_info["threads"] = _threads()
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    _CALLS.setdefault(shape, {})[impl] = run
