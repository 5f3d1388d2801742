"""CPU time each generate() runner spends outside the model, per decoding step.

    python bench/e2e/generate_overhead.py                 # every mode x batch of the end-to-end plan
    python bench/e2e/generate_overhead.py greedy:1 beam:8
    python bench/e2e/generate_overhead.py --threads=2 sampling:8 sampling_without_penalty:8
    python bench/e2e/generate_overhead.py --threads=2 --clock=wall sampling:8 sampling_without_penalty:8

The runners and settings are those of ``turbogen bench`` (turbogen.cli.benchmark.runner_calls). Forward hooks
on the model accumulate the process CPU time spent inside its forward calls; the rest of each call's
process CPU time, divided by the number of new tokens, is the per-step cost of everything that is not the
model: processors, sampling, stopping checks, cache reordering, bookkeeping. The forward loop's share is
the floor (an argmax and a mask concatenation per step). On a shared machine this number is far steadier
than tokens/s, whose swings are dominated by the model's own time. Median of 5 interleaved rounds, one
torch thread unless ``--threads=N`` (process CPU time then adds up every thread's, including what idle
OpenMP and pool workers burn while they spin). ``--clock=wall`` measures wall-clock time instead, inside and
outside the model alike: with several threads, the time a caller actually waits per step.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from turbogen.cli import benchmark as e2e

ROUNDS = 5


class ModelClock:
    """Time spent inside ``model``'s forward calls since the last :meth:`reset`, by ``clock`` (process CPU
    time by default)."""

    def __init__(self, model, clock=time.process_time):
        self.inside = 0.0
        self.clock = clock
        self._started: list[float] = []
        model.register_forward_pre_hook(lambda *_: self._started.append(self.clock()))
        model.register_forward_hook(lambda *_: self._stop())

    def _stop(self) -> None:
        self.inside += self.clock() - self._started.pop()

    def reset(self) -> None:
        self.inside = 0.0


def main(argv: list[str]) -> int:
    threads = [arg for arg in argv if arg.startswith("--threads=")]
    clocks = [arg for arg in argv if arg.startswith("--clock=")]
    argv = [arg for arg in argv if arg not in threads and arg not in clocks]
    clock_name = clocks[-1].split("=", 1)[1] if clocks else "cpu"
    if clock_name not in ("cpu", "wall"):
        raise SystemExit(f"--clock must be cpu or wall, got {clock_name!r}")
    clock_fn = time.perf_counter if clock_name == "wall" else time.process_time
    torch.set_num_threads(int(threads[-1].split("=", 1)[1]) if threads else 1)
    plan = e2e.EndToEndPlan()
    cases = [(mode, int(batch)) for mode, batch in (arg.split(":") for arg in argv)] if argv else \
        [(mode, batch) for mode in plan.modes for batch in plan.batches]
    model = plan.model.build()
    clock = ModelClock(model, clock_fn)
    print(f"ms per step outside the model (inside it), median of {ROUNDS}; {plan.new_tokens} new tokens, "
          f"{torch.get_num_threads()} torch thread(s), {'wall-clock' if clock_name == 'wall' else 'process CPU'} "
          "time")
    for mode, batch in cases:
        input_ids, attention_mask = e2e.bench_prompt(batch, plan.prompt_length, plan.model.vocab_size)
        calls = e2e.runner_calls(model, input_ids, attention_mask, mode, plan.new_tokens)
        outside = {runner: [] for runner in calls}
        inside = {runner: [] for runner in calls}
        for call in calls.values():
            call()
        for _ in range(ROUNDS):
            for runner, call in calls.items():
                clock.reset()
                start = clock_fn()
                call()
                total = clock_fn() - start
                outside[runner].append((total - clock.inside) / plan.new_tokens * 1e3)
                inside[runner].append(clock.inside / plan.new_tokens * 1e3)
        cells = [f"{runner} {statistics.median(outside[runner]):.2f} ({statistics.median(inside[runner]):.1f})"
                 for runner in calls]
        print(f"{mode:8s} B={batch}: " + "   ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
