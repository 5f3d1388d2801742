"""Contrastive search: turbogen vs transformers 4.45.2's own ``_contrastive_search``, side by side in one run.

    .venv-hf445/bin/python bench/e2e/bench_contrastive.py [--rounds 7] [--new-tokens 32] [--threads 2 1]

transformers 4.57 moved contrastive search to the Hub, so the comparison runs in the transformers 4.45.2
environment (turbogen runs there too; the script refuses another version). The model is ``turbogen bench``'s tiny
Llama (vocabulary 32000, hidden 256, 4 layers), 16-token random prompts, batch 1 and 8, ``penalty_alpha=0.6``,
``top_k=4`` (``--low-memory`` adds the sequential mode).

Both implementations are first checked to return identical sequences; then each (mode, batch, threads) is timed in
interleaved rounds (:func:`bench.common.interleaved_medians`, one whole ``generate`` per call) and the medians, the
speed-up and the load average are printed. On a shared machine the numbers are indicative only.
"""


from __future__ import annotations

import argparse
import os
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench.common import interleaved_medians  # noqa: E402

STRATEGIES = {
    "contrastive": dict(penalty_alpha=0.6, top_k=4),
    "low_memory": dict(penalty_alpha=0.6, top_k=4, low_memory=True),
}


def main(argv=None) -> int:
    import transformers

    import turbogen
    from turbogen.cli import benchmark as e2e

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--strategies", nargs="+", default=["contrastive"], choices=list(STRATEGIES))
    args = parser.parse_args(argv)
    if not transformers.__version__.startswith("4.45."):
        print(f"needs transformers 4.45.x (its own contrastive search), found {transformers.__version__}",
              file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    model = e2e.EndToEndPlan().model.build()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {args.new_tokens} new tokens, "
          f"{args.rounds} interleaved rounds; load average before: {os.getloadavg()}")
    print(f"{'strategy':<12}{'batch':>6}{'threads':>8}{'transformers ms':>17}{'turbogen ms':>13}{'speed-up':>10}")
    with torch.no_grad():
        for strategy in args.strategies:
            for batch in args.batches:
                input_ids, attention_mask = e2e.bench_prompt(batch)
                if strategy == "low_memory" and batch > 1:
                    continue  # 4.45.2's low_memory mode fails with several rows
                kwargs = dict(attention_mask=attention_mask, max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, pad_token_id=0, eos_token_id=2, do_sample=False,
                              **STRATEGIES[strategy])
                calls = {
                    "transformers": lambda: model.generate(input_ids, **kwargs),
                    "turbogen": lambda: turbogen.generate(model, input_ids, **kwargs),
                }
                expected, got = calls["transformers"](), calls["turbogen"]()
                if not torch.equal(expected, got):
                    print(f"{strategy} B={batch}: OUTPUTS DIFFER", file=sys.stderr)
                    return 1
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    medians = interleaved_medians(calls, args.rounds)
                    print(f"{strategy:<12}{batch:>6}{threads:>8}{medians['transformers'] * 1e3:>17.1f}"
                          f"{medians['turbogen'] * 1e3:>13.1f}{medians['transformers'] / medians['turbogen']:>9.2f}x",
                          flush=True)
    print(f"load average after: {os.getloadavg()} (identical sequences checked for every strategy and batch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
