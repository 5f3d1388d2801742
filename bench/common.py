"""Helpers shared by the benchmarks: the sampling shapes and parameter mixes, the memory-read floor every CPU
kernel is compared with, alternating timing of several implementations, and the side-by-side table of a strategy
against transformers' own (the scripts of the strategies only transformers 4.45 still runs)."""

from __future__ import annotations

import functools
import os
import statistics
import sys
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


def add_side_by_side_arguments(parser) -> None:
    """The options of a side-by-side script (:func:`time_against_transformers`): ``--rounds``, ``--new-tokens``,
    ``--batches``, ``--threads``."""
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])


def transformers_is_4_45(what: str) -> bool:
    """Whether transformers is 4.45.x (for strategies later releases moved to the Hub); if not, says on stderr that
    the script needs it for ``what`` (e.g. ``"its own contrastive search"``)."""
    import transformers

    if transformers.__version__.startswith("4.45."):
        return True
    print(f"needs transformers 4.45.x ({what}), found {transformers.__version__}", file=sys.stderr)
    return False


def time_against_transformers(model, cases, *, new_tokens: int, rounds: int, threads: list[int],
                              title: str = "") -> int:
    """Time ``transformers``' own ``model.generate`` against ``turbogen.generate`` and print the table.

    ``cases`` yields ``(strategy, batch, input_ids, attention_mask, strategy_arguments)`` (it may be a generator: it is
    consumed as the table goes). Steps: print ``title``, the versions and the load average; for each case, greedy
    (``do_sample=False``) generation of exactly ``new_tokens`` tokens (pad id 0, EOS id 2) with the strategy's
    arguments: both outputs must be equal (else "OUTPUTS DIFFER" on stderr and return 1), then for each count of
    ``threads`` one row with the medians of ``rounds`` interleaved rounds (:func:`interleaved_medians`) and the
    speed-up; last the load average after. Returns 0. Call under ``torch.no_grad()``."""
    import transformers

    import turbogen

    print(f"{title}transformers {transformers.__version__}, torch {torch.__version__}, {new_tokens} new tokens, "
          f"{rounds} interleaved rounds; load average before: {os.getloadavg()}")
    print(f"{'strategy':<12}{'batch':>6}{'threads':>8}{'transformers ms':>17}{'turbogen ms':>13}{'speed-up':>10}")
    for strategy, batch, input_ids, attention_mask, strategy_arguments in cases:
        kwargs = dict(attention_mask=attention_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      pad_token_id=0, eos_token_id=2, do_sample=False, **strategy_arguments)
        calls = {
            "transformers": lambda: model.generate(input_ids, **kwargs),
            "turbogen": lambda: turbogen.generate(model, input_ids, **kwargs),
        }
        expected, got = calls["transformers"](), calls["turbogen"]()
        if not torch.equal(expected, got):
            print(f"{strategy} B={batch}: OUTPUTS DIFFER", file=sys.stderr)
            return 1
        for thread_count in threads:
            torch.set_num_threads(thread_count)
            medians = interleaved_medians(calls, rounds)
            print(f"{strategy:<12}{batch:>6}{thread_count:>8}{medians['transformers'] * 1e3:>17.1f}"
                  f"{medians['turbogen'] * 1e3:>13.1f}{medians['transformers'] / medians['turbogen']:>9.2f}x",
                  flush=True)
    print(f"load average after: {os.getloadavg()} (identical sequences checked for every strategy and batch)")
    return 0
