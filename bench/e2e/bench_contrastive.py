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
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench.common import add_side_by_side_arguments, time_against_transformers, transformers_is_4_45  # noqa: E402

STRATEGIES = {
    "contrastive": dict(penalty_alpha=0.6, top_k=4),
    "low_memory": dict(penalty_alpha=0.6, top_k=4, low_memory=True),
}


def main(argv=None) -> int:
    from turbogen.cli import benchmark as e2e

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_side_by_side_arguments(parser)
    parser.add_argument("--strategies", nargs="+", default=["contrastive"], choices=list(STRATEGIES))
    args = parser.parse_args(argv)
    if not transformers_is_4_45("its own contrastive search"):
        return 1
    import transformers

    transformers.logging.set_verbosity_error()
    model = e2e.EndToEndPlan().model.build()

    def cases():
        for strategy in args.strategies:
            for batch in args.batches:
                input_ids, attention_mask = e2e.bench_prompt(batch)
                if strategy == "low_memory" and batch > 1:
                    continue  # 4.45.2's low_memory mode fails with several rows
                yield strategy, batch, input_ids, attention_mask, STRATEGIES[strategy]

    with torch.no_grad():
        return time_against_transformers(model, cases(), new_tokens=args.new_tokens, rounds=args.rounds,
                                         threads=args.threads)

if __name__ == "__main__":
    raise SystemExit(main())
