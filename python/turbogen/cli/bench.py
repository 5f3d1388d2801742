"""``turbogen bench``: the op benchmarks and the end-to-end generate() benchmark, side by side in one run.

Ops: each ``turbogen.ops`` kernel on the compiled CPU backend next to the torch / transformers code it
replaces. End to end: a tiny Llama (vocabulary 32000, hidden 256, 4 layers, 8 heads over 4 KV heads),
16-token prompts, 64 new tokens, batch 1 and 8, greedy search, sampling (temperature 0.7, top-k 50,
top-p 0.9, repetition penalty 1.1) and beam search (4 beams): turbogen vs transformers vs the bare forward
loop. The numbers go to a JSON file and, when matplotlib is installed, a PNG chart of the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
from typing import Any, Sequence

from .common import format_table, help_text, positive_int, speed_table
from .progress import ProgressBar

DEFAULT_OUT = pathlib.Path("bench") / "results"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="benchmark the ops and generate() against transformers",
                                 description=help_text(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer shapes, batch 1 only, 16 new tokens, one timed run each (a smoke test)")
    parser.add_argument("--repeats", type=positive_int, metavar="N",
                        help="timed rounds per end-to-end case, the runners taking turns (default: 3; 1 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where to write the JSON results and the chart (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from . import benchmark

    if args.quick:
        plan = benchmark.EndToEndPlan(batches=(1,), new_tokens=16, repeats=args.repeats or 1)
        op_shapes, op_repeats = benchmark.OP_SHAPES_QUICK, 2
    else:
        plan = benchmark.EndToEndPlan(repeats=args.repeats or benchmark.EndToEndPlan.repeats)
        op_shapes, op_repeats = benchmark.OP_SHAPES, 5
    run_bench(args.out, plan, op_shapes, op_repeats)
    return 0


def run_bench(out_dir: pathlib.Path, plan: Any, op_shapes: Sequence[tuple[int, int]],
              op_repeats: int) -> pathlib.Path:
    """Runs both benchmarks, prints their tables, writes ``bench-<UTC time>.json`` (and ``.png``) under
    ``out_dir`` and returns the JSON file's path."""
    from . import benchmark

    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {str(out_dir)!r} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)  # now, so that a bad --out fails before minutes of timing
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = _machine()
    print(f"machine: {machine['processor']}, {machine['cpu_count']} cores, torch {machine['torch']} "
          f"(torch threads: {machine['torch_threads']}), transformers {machine['transformers']}")

    cases = benchmark.op_cases(op_shapes)
    with ProgressBar("ops", total=len(cases)) as progress:
        ops = benchmark.run_ops(op_shapes, op_repeats, on_measurement=lambda _: progress.advance())
    op_speedups = benchmark.op_speedups(ops)
    print("\n" + _op_table(ops, op_speedups) + "\n")

    with ProgressBar("generate", total=plan.num_measurements) as progress:
        generation = benchmark.run_end_to_end(plan, on_measurement=lambda _: progress.advance())
    print(f"\n{speed_table(generation)}\n")
    print(f"model {_describe_model(plan.model)}, prompt {plan.prompt_length} tokens, {plan.new_tokens} new "
          f"tokens, best of {plan.repeats} rounds (runners taking turns; ratios of the best rounds, and of the median "
          f"rounds); forward is the bare model forward loop (the floor).")

    results = {
        "turbogen": _turbogen_version(),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "ops": {
            "shapes": [list(shape) for shape in op_shapes],
            "repeats": op_repeats,
            "measurements": [measurement.as_dict() for measurement in ops],
            "speedups": [dict(dataclasses.asdict(speedup), shape=list(speedup.shape)) for speedup in op_speedups],
        },
        "generate": {
            "plan": dataclasses.asdict(plan),
            "settings": benchmark.SETTINGS,
            "measurements": [measurement.as_dict() for measurement in generation],
            "speedups": [dataclasses.asdict(speedup) for speedup in benchmark.speedups(generation)],
        },
    }
    stem = out_dir / f"bench-{started:%Y%m%d-%H%M%S}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {json_path}")
    chart_path = stem.with_suffix(".png")
    if draw_chart(results, chart_path):
        print(f"wrote {chart_path}")
    else:
        print("note: matplotlib is not installed, so no chart was drawn (pip install matplotlib); "
              "the JSON file has every number.")
    return json_path


def draw_chart(results: dict, path: pathlib.Path) -> bool:
    """Draws turbogen's speed ratios from ``results`` into the PNG ``path``; False if matplotlib is missing.

    Left: generate(), turbogen's tokens/s over transformers' and over the forward loop's, per mode and
    batch. Right: each op's speedup over its baseline, per shape. A line marks 1x (parity).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False

    # A bare Figure (no pyplot): no global state and no GUI backend, whatever the environment says.
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    generate_axes, ops_axes = figure.subplots(1, 2, width_ratios=(3, 2))

    speedups = results["generate"]["speedups"]
    labels = [f"{speedup['mode']}\nbatch {speedup['batch']}" for speedup in speedups]
    series = {"turbogen / transformers": [speedup["vs_transformers"] or 0 for speedup in speedups],
              "turbogen / forward loop": [speedup["vs_forward"] or 0 for speedup in speedups]}
    _grouped_bars(generate_axes, labels, series, "generate(): tokens/s ratio")

    op_speedups = results["ops"]["speedups"]
    labels = [f"{speedup['op']}\n{speedup['shape'][0]}x{speedup['shape'][1]}\nvs {speedup['baseline']}"
              for speedup in op_speedups]
    series = {"baseline time / turbogen time": [speedup["speedup"] for speedup in op_speedups]}
    _grouped_bars(ops_axes, labels, series, "ops: turbogen's speedup")

    figure.suptitle(f"turbogen {results['turbogen']} on {results['machine']['processor']} "
                    f"(torch threads: {results['machine']['torch_threads']}), {results['date']}")
    figure.savefig(path, dpi=120)
    return True


def _grouped_bars(axes: Any, labels: Sequence[str], series: dict[str, Sequence[float]], title: str) -> None:
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [slot + (index - (len(series) - 1) / 2) * width for slot in range(len(labels))]
        bars = axes.bar(positions, values, width, label=name)
        axes.bar_label(bars, labels=[f"{value:.2f}" if value else "" for value in values], fontsize=7)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylabel("ratio (x)")
    axes.set_title(title)
    axes.legend(fontsize=8)


def _op_table(ops: Sequence[Any], op_speedups: Sequence[Any]) -> str:
    speedup_of = {(speedup.op, speedup.shape, speedup.runner): speedup for speedup in op_speedups}
    rows = []
    for measurement in ops:
        speedup = speedup_of.get((measurement.op, measurement.shape, measurement.runner))
        rows.append([measurement.op, "x".join(map(str, measurement.shape)), measurement.runner,
                     f"{measurement.seconds * 1e6:.1f}",
                     f"{speedup.speedup:.2f}x vs {speedup.baseline}" if speedup else ""])
    return format_table(["op", "logits", "runner", "us/call", "speedup"], rows, align="lllrl")


def _describe_model(spec: Any) -> str:
    return (f"Llama vocab {spec.vocab_size}, hidden {spec.hidden_size}, {spec.num_layers} layers, "
            f"{spec.num_heads} heads / {spec.num_kv_heads} KV heads")


def _machine() -> dict:
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
    }


def _cpu_name() -> str:
    """The CPU's model name where the OS tells it (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _turbogen_version() -> str:
    import turbogen

    return turbogen.__version__
