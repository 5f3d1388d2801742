"""GPU timing of turbogen.ops.sample (triton and cuda backends) with CUDA events, against the
HBM read floor and transformers' warper chain on the same GPU.

    python bench/ops/gpu_sampling.py                   # every shape and mix
    python bench/ops/gpu_sampling.py --batch 64 --vocab 128256 --mix t0.7-k50-p0.9

Each measurement replays the op `--iters` times between two CUDA events after a warm-up (Triton
compiles on the first call) and reports the median of `--repeats` such runs, per call. The floor
is bytes read once / the device's measured copy bandwidth (a device-to-device copy of 1 GiB reads
and writes every byte, so bandwidth = 2 x bytes / time). Needs a CUDA GPU; prints a table.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # bench/common.py, when run as a script
from common import SAMPLING_BATCHES as BATCHES
from common import SAMPLING_MIXES as MIXES
from common import SAMPLING_VOCABS as VOCABS
from turbogen.cli.benchmark import transformers_sample


def time_per_call_ms(fn, iters: int, repeats: int) -> float:
    fn()  # warm up: Triton compiles here
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def copy_bandwidth_bytes_per_ms() -> float:
    source = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    target = torch.empty_like(source)
    ms = time_per_call_ms(lambda: target.copy_(source), iters=10, repeats=5)
    return 2 * source.numel() * source.element_size() / ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default: 1 8 32 64)")
    parser.add_argument("--vocab", type=int, action="append", help="vocabulary sizes (default: 32000 128256)")
    parser.add_argument("--mix", action="append", choices=list(MIXES), help="parameter mixes (default: all)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_sampling.py needs a CUDA GPU", file=sys.stderr)
        return 1

    from turbogen import ops
    from turbogen.ops.sampling import sample

    dtype = getattr(torch, args.dtype)
    statuses = ops.available_backends()
    backends = [name for name in ("cuda", "triton") if statuses[name]]
    bandwidth = copy_bandwidth_bytes_per_ms()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e9:.0f} TB/s; {args.dtype} logits; "
          f"times in us per call, (x floor)")
    print(f"{'mix':>14} {'B':>3} {'V':>7} {'floor':>7} " + " ".join(f"{name:>16}" for name in backends)
          + f" {'transformers':>16}")
    for mix in args.mix or list(MIXES):
        temperature, top_k, top_p, min_p = MIXES[mix]
        filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        for batch in args.batch or BATCHES:
            for vocab in args.vocab or VOCABS:
                logits = torch.randn(batch, vocab, device="cuda").to(dtype)
                seeds = torch.arange(batch, device="cuda")
                floor_us = logits.numel() * logits.element_size() / bandwidth * 1e3
                cells = []
                for backend in backends:
                    us = 1e3 * time_per_call_ms(lambda: sample(logits, seed=seeds, backend=backend, **filters),
                                                args.iters, args.repeats)
                    cells.append(f"{us:>8.1f} ({us / floor_us:>4.1f}x)")
                hf_us = 1e3 * time_per_call_ms(lambda: transformers_sample(logits.float(), *MIXES[mix]),
                                               max(args.iters // 5, 1), args.repeats)
                cells.append(f"{hf_us:>8.1f} ({hf_us / floor_us:>4.1f}x)")
                print(f"{mix:>14} {batch:>3} {vocab:>7} {floor_us:>7.1f} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
