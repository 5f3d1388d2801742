"""ops.softmax across backends vs torch.softmax, side by side in one run.

    python -m pytest bench/ops/bench_softmax.py --benchmark-group-by=param:shape --benchmark-columns=median,ops

The floor printed per shape is the time to read the logits once at this machine's measured
bandwidth (the op reads them once and writes the same amount).
"""

from __future__ import annotations

import pytest
import torch

from common import read_bandwidth_bytes_per_s, read_floor_seconds
from turbogen import ops

SHAPES = [(1, 32000), (32, 32000), (1, 128256), (32, 128256)]


def _candidates():
    statuses = ops.available_backends()
    runners = {"torch.softmax": lambda x: torch.softmax(x / 0.7, dim=-1),
               "turbogen ref": lambda x: ops.softmax(x, 0.7, backend="ref")}
    if statuses["cpu"]:
        runners["turbogen cpu"] = lambda x: ops.softmax(x, 0.7, backend="cpu")
    return runners


RUNNERS = _candidates()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xV{s[1]}")
@pytest.mark.parametrize("impl", list(RUNNERS))
def test_softmax(benchmark, impl, shape):
    logits = torch.randn(*shape)
    benchmark.group = f"softmax B={shape[0]} V={shape[1]} fp32"
    benchmark.extra_info["floor_us"] = read_floor_seconds(logits) * 1e6
    benchmark.extra_info["read_GBps"] = read_bandwidth_bytes_per_s() / 1e9
    benchmark(RUNNERS[impl], logits)
