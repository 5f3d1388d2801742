"""The LM head's product: BLAS (the model's own ``F.linear``) vs PackedHead (oneDNN over a packed weight), side
by side in one run.

    python -m pytest bench/ops/bench_packed_head.py --benchmark-group-by=group --benchmark-columns=median,rounds

The heads: the tiny Llama's (vocabulary 32000, hidden 256) and one with Llama 3's vocabulary (128256 x 1024, half
of Llama 3.2-1B's hidden size; a 525 MB weight), at the row counts a decode step, a speculative verification and an
Engine step feed it. Float32, torch's thread count of the run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from turbogen.generation.packed_head import PackedHead

HEADS = {"32000x256": (32000, 256), "128256x1024": (128256, 1024)}
ROWS = {"32000x256": (1, 4, 8, 64), "128256x1024": (1, 8)}
CASES = [(head, rows) for head in HEADS for rows in ROWS[head]]
_MODULES: dict[str, torch.nn.Linear] = {}


def _head(name: str) -> torch.nn.Linear:
    if name not in _MODULES:
        out_features, in_features = HEADS[name]
        torch.manual_seed(0)
        _MODULES[name] = torch.nn.Linear(in_features, out_features, bias=False).requires_grad_(False)
    return _MODULES[name]


def _blas(head: torch.nn.Linear):
    return lambda hidden: F.linear(hidden, head.weight)


def _packed(head: torch.nn.Linear):
    packed = PackedHead.for_module(head)
    if packed is None:
        pytest.skip("no oneDNN CPU product in this torch (torch.ops.mkldnn._linear_pointwise)")
    packed(torch.zeros(1, head.in_features))  # packs the weight once, outside the timing
    return packed


RUNNERS = {"blas F.linear": _blas, "PackedHead": _packed}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-rows{c[1]}")
@pytest.mark.parametrize("impl", list(RUNNERS))
def test_head_product(benchmark, impl, case):
    name, rows = case
    head = _head(name)
    product = RUNNERS[impl](head)
    hidden = torch.randn(rows, head.in_features, generator=torch.Generator().manual_seed(rows))
    benchmark.group = f"LM head {name}, {rows} rows, threads={torch.get_num_threads()}"
    with torch.no_grad():
        logits = benchmark(product, hidden)
    assert logits.shape == (rows, head.out_features)
