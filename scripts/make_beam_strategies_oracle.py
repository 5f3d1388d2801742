"""Regenerate tests/generation/data/beam_strategies_oracle_4_45_2.json: transformers 4.45.2's diverse (group) and
constrained beam search (``_group_beam_search`` with ``BeamSearchScorer``, ``_constrained_beam_search`` with
``ConstrainedBeamSearchScorer``: the oracle) on the in-process tiny models of tests/generation/data/
contrastive_models.py, for the cases of tests/generation/data/beam_strategies_cases.py.

Run it in the transformers 4.45.2 environment (it refuses any other version):

    .venv-hf445/bin/python scripts/make_beam_strategies_oracle.py [--output PATH]

For every case it stores the sequences, ``sequences_scores`` (as ``float.hex`` of the float32 values, exact),
``beam_indices`` and, as a guard against a transformers release computing the model differently, the greedy
sequences of the same prompt; the tests compare turbogen with them in every environment, and skip a case (saying
so) where that environment's greedy output differs from 4.45.2's.
"""

from __future__ import annotations

import torch

from _v445_oracle import DATA, ModelCache, generate_with_greedy_guard, oracle_environment, output_path, write_oracle

OUTPUT = DATA / "beam_strategies_oracle_4_45_2.json"


def main(argv=None) -> int:
    output = output_path(OUTPUT, argv)
    environment = oracle_environment("beam_strategies_cases", "contrastive_models")
    if environment is None:
        return 1
    transformers, (cases_module, models) = environment
    model_of_kind = ModelCache(models)
    stored = {}
    with torch.no_grad():
        for strategy, cases in (("group", cases_module.GROUP_CASES), ("constrained", cases_module.CONSTRAINED_CASES)):
            for name, kind, prompt, arguments in cases:
                out, greedy = generate_with_greedy_guard(model_of_kind(kind), models, prompt,
                                                         cases_module.build_arguments(arguments, transformers),
                                                         arguments["max_new_tokens"])
                stored[name] = {
                    "strategy": strategy, "kind": kind, "prompt": prompt, "arguments": arguments,
                    "sequences": out.sequences.tolist(),
                    "sequences_scores": [float(value).hex() for value in out.sequences_scores.tolist()],
                    "beam_indices": None if out.beam_indices is None else out.beam_indices.tolist(),
                    "greedy": greedy.tolist(),
                }
    write_oracle(output, transformers, stored)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
