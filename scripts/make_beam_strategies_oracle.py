"""Regenerate tests/generation/data/beam_strategies_oracle_4_45_2.json: transformers 4.45.2's diverse (group) and
constrained beam search (``_group_beam_search`` with ``BeamSearchScorer``, ``_constrained_beam_search`` with
``ConstrainedBeamSearchScorer``: the oracle) on the in-process tiny models of tests/generation/data/
contrastive_models.py, for the cases of tests/generation/data/beam_strategies_cases.py.

Run it in the transformers 4.45.2 environment (it refuses any other version):

    .venv-hf445/bin/python scripts/make_beam_strategies_oracle.py

For every case it stores the sequences, ``sequences_scores`` (as ``float.hex`` of the float32 values, exact),
``beam_indices`` and, as a guard against a transformers release computing the model differently, the greedy
sequences of the same prompt; the tests compare turbogen with them in every environment, and skip a case (saying
so) where that environment's greedy output differs from 4.45.2's.
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "generation" / "data"
OUTPUT = DATA / "beam_strategies_oracle_4_45_2.json"


def main() -> int:
    import transformers

    if not transformers.__version__.startswith("4.45."):
        print(f"needs transformers 4.45.x (the oracle), found {transformers.__version__}", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(DATA))
    import beam_strategies_cases as cases_module
    import contrastive_models as models

    torch.set_num_threads(1)
    built = {}
    stored = {}
    with torch.no_grad():
        for strategy, cases in (("group", cases_module.GROUP_CASES), ("constrained", cases_module.CONSTRAINED_CASES)):
            for name, kind, prompt, arguments in cases:
                model = built.setdefault(kind, models.build_model(kind))
                input_ids, attention_mask = models.prompts(prompt)
                call = dict(dict(eos_token_id=models.EOS_ID), **cases_module.build_arguments(arguments, transformers))
                out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                     return_dict_in_generate=True, output_scores=True, pad_token_id=models.PAD_ID,
                                     **call)
                greedy = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                        max_new_tokens=arguments["max_new_tokens"], pad_token_id=models.PAD_ID,
                                        eos_token_id=models.EOS_ID)
                stored[name] = {
                    "strategy": strategy, "kind": kind, "prompt": prompt, "arguments": arguments,
                    "sequences": out.sequences.tolist(),
                    "sequences_scores": [float(value).hex() for value in out.sequences_scores.tolist()],
                    "beam_indices": None if out.beam_indices is None else out.beam_indices.tolist(),
                    "greedy": greedy.tolist(),
                }
    OUTPUT.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                  "cases": stored}, indent=1) + "\n")
    print(f"wrote {len(stored)} cases to {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
