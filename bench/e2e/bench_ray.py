"""Throughput of batch generation: the local loop vs 1 Ray actor vs 2 Ray actors, side by side in one run.

    python bench/e2e/bench_ray.py                    # 256 rows, 32 new tokens, greedy, Ray batches of 16
    python bench/e2e/bench_ray.py --rows=64 --new-tokens=16 --rounds=1

The model is turbogen's embedded default (4-layer Llama, hidden 256), the same rows and config in every mode:
``ROWS`` prompts (openings of Austen-like sentences, cycled with a numbered prefix so that no two are the
same; 11 to 26 tokens), greedy search, ``NEW_TOKENS`` new tokens (fewer where a row reaches EOS), micro-
batches of ``BATCH`` rows. The modes:

- local: :class:`~turbogen.integrations.batch.BatchGenerator` in this process, 2 threads, and 1 thread (what
  each of 2 actors has);
- 1 actor: :func:`~turbogen.integrations.ray.generate_dataset` with one actor of 2 CPUs (2 threads);
- 2 actors: the same with two actors of 1 CPU each (1 thread each).

Ray itself is started once (:func:`~turbogen.integrations.ray.init_local_cluster`, 2 CPUs) and its start-up
reported on its own. To tell start-up from steady state, the actors are a subclass of RayBatchGenerator
(swapped in for the run) that stamps each output batch with when and where it was computed and how long its
actor took to build; the local loop times its batches itself. "model load" is each worker's BatchGenerator
construction; "warm" the time from the run's start until every worker has finished its first batch (for
Ray: scheduling, actor start, model load, and the first call's lazy set-up, which takes seconds); rows/s and
tokens/s are the steady state after that (:func:`steady_state`); "end-to-end" is rows over the whole run,
Ray's start-up excluded.
The modes take turns over ``ROUNDS`` rounds (the machine is shared: medians, with the range); every run must
produce the same tokens.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import unittest.mock

from turbogen.cli.common import format_table
from turbogen.integrations import ray as turbogen_ray
from turbogen.integrations.batch import BatchGenerator
from turbogen.integrations.ray import RayBatchGenerator, init_local_cluster

ROWS = 256
NEW_TOKENS = 32
BATCH = 16
ROUNDS = 3
CPUS = 2

_OPENINGS = (
    "It is a truth universally acknowledged, that",
    "Emma Woodhouse, handsome, clever, and rich,",
    "The family of Dashwood had long been settled in",
    "No one who had ever seen Catherine Morland in her infancy",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was",
    "About thirty years ago, Miss Maria Ward, of Huntingdon,",
    "She was not in the habit of",
    "My dear Fanny, said her aunt,",
)


def prompts(count: int) -> list[str]:
    return [f"{index // len(_OPENINGS) + 1}. {_OPENINGS[index % len(_OPENINGS)]}" for index in range(count)]


class TimedRayGenerator(RayBatchGenerator):
    """RayBatchGenerator that stamps each output batch with when and where it was computed, and how long its
    actor took to build (model load included), so the driver can tell start-up from steady state."""

    def __init__(self, *args, **kwargs):
        start = time.time()
        super().__init__(*args, **kwargs)
        self.load_seconds = time.time() - start

    def __call__(self, batch):
        start = time.time()
        output = super().__call__(batch)
        output["bench_start"], output["bench_end"] = start, time.time()
        output["bench_pid"], output["bench_load_s"] = os.getpid(), self.load_seconds
        return output


def steady_state(stamps: list[tuple[int, float, float, int, int]]) -> dict:
    """Rates after warm-up, from ``(worker, start, end, rows, tokens)`` per batch (times from ``time.time()``).

    A worker's first batch pays for lazy initialisation (imports, kernel set-up: seconds), so the window
    starts when the last worker finished its first batch (``warm``) and ends with the last batch; each batch
    counts for the share of its duration inside the window. However unevenly Ray spread the batches, this
    is the rows and tokens produced per second once every worker was running.
    """
    warm = max(min(stamp[2] for stamp in stamps if stamp[0] == worker) for worker in {stamp[0] for stamp in stamps})
    end = max(stamp[2] for stamp in stamps)
    if end <= warm:
        raise ValueError("no batch ran after every worker's first: give more rows to measure a steady state")
    rows = tokens = 0.0
    for _, batch_start, batch_end, batch_rows, batch_tokens in stamps:
        share = max(0.0, batch_end - max(batch_start, warm)) / (batch_end - batch_start)
        rows += share * batch_rows
        tokens += share * batch_tokens
    return {"rows_per_s": rows / (end - warm), "tokens_per_s": tokens / (end - warm), "warm": warm}


def generator_kwargs(new_tokens: int) -> dict:
    # Greedy, with the embedded model's sampling parameters neutralised (they would only draw warnings).
    config = {"max_new_tokens": new_tokens, "do_sample": False, "temperature": 1.0, "top_p": 1.0}
    return dict(model=None, generation_config=config, batch_size=BATCH)


def run_local(texts: list[str], new_tokens: int, threads: int) -> tuple[dict, list]:
    start = time.time()
    generator = BatchGenerator(threads=threads, **generator_kwargs(new_tokens))
    load = time.time() - start
    outputs, stamps = [], []
    for begin in range(0, len(texts), BATCH):
        batch_start = time.time()
        rows = generator.generate_rows([{"text": text} for text in texts[begin:begin + BATCH]])
        ids = [row["generated_token_ids"] for row in rows]
        stamps.append((0, batch_start, time.time(), len(ids), sum(map(len, ids))))
        outputs.extend(ids)
    summary = steady_state(stamps)
    total = time.time() - start
    return {"model_load_s": [load], "warm_s": summary["warm"] - start, "total_s": total,
            "rows_per_s": summary["rows_per_s"], "tokens_per_s": summary["tokens_per_s"],
            "end_to_end_rows_per_s": len(texts) / total}, outputs


def run_ray(texts: list[str], new_tokens: int, actors: int) -> tuple[dict, list]:
    """One generate_dataset run; its actors are TimedRayGenerators (swapped in for the run)."""
    import ray.data

    start = time.time()
    dataset = ray.data.from_items([{"text": text} for text in texts])
    with unittest.mock.patch.object(turbogen_ray, "RayBatchGenerator", TimedRayGenerator):
        dataset = turbogen_ray.generate_dataset(dataset, actors=actors, num_cpus=CPUS // actors,
                                                **generator_kwargs(new_tokens))
    outputs, batches, loads = [], {}, {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        # Each row carries the stamps of the actor call that computed it (an output block may join several).
        for pid, batch_start, batch_end, load, ids in zip(batch["bench_pid"], batch["bench_start"],
                                                          batch["bench_end"], batch["bench_load_s"],
                                                          batch["generated_token_ids"]):
            ids = [int(token) for token in ids]
            outputs.append(ids)
            entry = batches.setdefault((int(pid), float(batch_start)), [float(batch_end), 0, 0])
            entry[1] += 1
            entry[2] += len(ids)
            loads[int(pid)] = float(load)
    total = time.time() - start
    summary = steady_state([(pid, batch_start, *entry) for (pid, batch_start), entry in batches.items()])
    return {"model_load_s": sorted(loads.values()), "warm_s": summary["warm"] - start, "total_s": total,
            "rows_per_s": summary["rows_per_s"], "tokens_per_s": summary["tokens_per_s"],
            "end_to_end_rows_per_s": len(texts) / total}, outputs


MODES = {  # name: (actors, threads per worker); 0 actors: the local loop in this process
    "local loop (2 threads)": (0, 2),
    "local loop (1 thread)": (0, 1),
    "1 actor (2 threads)": (1, 2),
    "2 actors (1 thread each)": (2, 1),
}


def main(argv: list[str]) -> int:
    options = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
    rows, new_tokens = int(options.get("rows", ROWS)), int(options.get("new-tokens", NEW_TOKENS))
    rounds = int(options.get("rounds", ROUNDS))
    texts = prompts(rows)

    start = time.perf_counter()
    init_local_cluster(num_cpus=CPUS, log_to_driver=False)
    ray_start = time.perf_counter() - start
    import ray.data  # after init_local_cluster, which configures Ray before its first import

    ray.data.DataContext.get_current().enable_progress_bars = False
    results: dict[str, list[dict]] = {name: [] for name in MODES}
    reference = None
    try:
        for round_index in range(rounds):
            # Each round starts with another mode, so that a slow spell of the shared machine is spread out.
            names = list(MODES)[round_index % len(MODES):] + list(MODES)[:round_index % len(MODES)]
            for name in names:
                actors, threads = MODES[name]
                result, outputs = (run_local(texts, new_tokens, threads) if actors == 0
                                   else run_ray(texts, new_tokens, actors))
                reference = reference if reference is not None else outputs
                if outputs != reference:
                    raise RuntimeError(f"{name} generated other tokens than the first run")
                results[name].append(result)
    finally:
        ray.shutdown()

    print(f"{rows} rows ({sum(map(len, reference))} generated tokens), up to {new_tokens} new tokens, greedy, "
          f"batches of {BATCH}, embedded default model, {os.cpu_count()} cores; Ray start-up "
          f"(init_local_cluster) {ray_start:.1f} s; median of {rounds} rounds [min-max]")
    header = ["mode", "model load s", "warm s", "total s", "rows/s", "tokens/s", "end-to-end rows/s"]
    table = []
    for name, runs in results.items():
        def median(key):
            return statistics.median(value for run in runs for value in
                                     (run[key] if isinstance(run[key], list) else [run[key]]))

        def spread(key, digits):
            values = [run[key] for run in runs]
            return f"{median(key):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"

        table.append([name, f"{median('model_load_s'):.1f}", f"{median('warm_s'):.1f}", f"{median('total_s'):.1f}",
                      spread("rows_per_s", 1), spread("tokens_per_s", 0), spread("end_to_end_rows_per_s", 1)])
    print(format_table(header, table))
    print("model load: per worker (its BatchGenerator's construction); warm: from the run's start until every "
          "worker finished its first batch; rows/s, tokens/s: steady state, from warm to the last batch's end; "
          "end-to-end: rows / total")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
