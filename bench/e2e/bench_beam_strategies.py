"""Diverse (group) and constrained beam search: turbogen vs transformers 4.45.2's own, side by side in one run.

    .venv-hf445/bin/python bench/e2e/bench_beam_strategies.py [--rounds 7] [--new-tokens 32] [--threads 2 1]

transformers 4.57 moved both strategies to the Hub, so the comparison runs in the transformers 4.45.2 environment
(turbogen runs there too; the script refuses another version). The model is ``turbogen bench``'s tiny Llama
(vocabulary 32000, hidden 256, 4 layers; ``--model oracle``: the oracle tests' vocabulary-64 Llama, where the
search's bookkeeping rather than the model dominates), 16-token random prompts, batch 1 and 8, 4 beams:

* ``diverse``: ``num_beam_groups=2``, ``diversity_penalty=0.5``;
* ``constrained``: ``force_words_ids`` = one two-token phrase and one disjunction of two words.

Both implementations are first checked to return identical sequences; then each (strategy, batch, threads) is
timed in interleaved rounds (:func:`bench.common.interleaved_medians`, one whole ``generate`` per call) and the
medians, the speed-up and the load average are printed. On a shared machine the numbers are indicative only.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from bench.common import add_side_by_side_arguments, time_against_transformers, transformers_is_4_45  # noqa: E402

STRATEGIES = {
    "diverse": dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
    "constrained": dict(num_beams=4, force_words_ids=[[40, 41], [[50], [60, 61]]]),
}


def _model_and_vocab(name: str):
    """``"bench"``: ``turbogen bench``'s tiny Llama (vocabulary 32000: the model dominates a step); ``"oracle"``: the
    oracle tests' tiny Llama (vocabulary 64, hidden 32: the search's own bookkeeping dominates)."""
    if name == "bench":
        from turbogen.cli import benchmark as e2e

        return e2e.EndToEndPlan().model.build(), 32000
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "generation" / "data"))
    import contrastive_models

    return contrastive_models.build_model("llama"), contrastive_models.VOCAB_SIZE


def main(argv=None) -> int:
    from turbogen.cli import benchmark as e2e

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_side_by_side_arguments(parser)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--model", default="bench", choices=["bench", "oracle"], help=_model_and_vocab.__doc__)
    args = parser.parse_args(argv)
    if not transformers_is_4_45("its own diverse/constrained beam search"):
        return 1
    import transformers

    transformers.logging.set_verbosity_error()
    model, vocab = _model_and_vocab(args.model)

    def cases():
        for strategy in args.strategies:
            for batch in args.batches:
                input_ids, attention_mask = e2e.bench_prompt(batch, vocab_size=vocab)
                yield strategy, batch, input_ids, attention_mask, STRATEGIES[strategy]

    with torch.no_grad():
        return time_against_transformers(model, cases(), new_tokens=args.new_tokens, rounds=args.rounds,
                                         threads=args.threads, title=f"{args.model} model; ")

if __name__ == "__main__":
    raise SystemExit(main())
