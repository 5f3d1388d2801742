"""Helpers shared by the benchmarks: the sampling shapes and parameter mixes, the memory-read floor every CPU
kernel is compared with, and alternating timing of several implementations."""

from __future__ import annotations

import functools
import statistics
import time
from typing import Callable

import torch

SAMPLING_BATCHES = [1, 8, 32, 64]
SAMPLING_VOCABS = [32000, 128256]
SAMPLING_MIXES = {  # name: (temperature, top_k, top_p, min_p)
    "t0.7-k50-p0.9": (0.7, 50, 0.9, 0.0),
    "p0.9": (1.0, 0, 0.9, 0.0),
    "pure": (1.0, 0, 1.0, 0.0),
    "minp0.05": (1.0, 0, 1.0, 0.05),
}


@functools.lru_cache(maxsize=None)
def read_bandwidth_bytes_per_s(nbytes: int = 256 << 20, repeats: int = 7) -> float:
    """Measured single-pass read bandwidth of this machine (best of ``repeats`` sums over ``nbytes``).

    A reduction is the cheapest op that must read every byte, so this is the rate any kernel that
    reads the logits once can hope for, using torch's own threads.
    """
    data = torch.ones(nbytes // 4, dtype=torch.float32)
    data.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def read_floor_seconds(tensor: torch.Tensor) -> float:
    """Time to read ``tensor`` once at the measured bandwidth."""
    return tensor.numel() * tensor.element_size() / read_bandwidth_bytes_per_s()


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each implementation, timed in alternation for ``rounds`` rounds (a load change
    during the run then hits every implementation alike)."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, run in calls.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
