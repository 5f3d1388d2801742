"""Regenerate tests/generation/data/contrastive_oracle_4_45_2.json: transformers 4.45.2's contrastive search
(``GenerationMixin._contrastive_search``, the oracle) on the in-process tiny models of
tests/generation/data/contrastive_models.py.

Run it in the transformers 4.45.2 environment (it refuses any other version):

    .venv-hf445/bin/python scripts/make_contrastive_oracle.py

For every case it stores the sequences, each step's largest processed score per row (6 decimals) and, as a guard
against a transformers release computing the model differently, the greedy sequences of the same prompt; the
tests compare turbogen with the sequences in every environment, and skip a case (saying so) where that
environment's greedy output differs from 4.45.2's (the model itself then differs, not the search).
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "generation" / "data"
OUTPUT = DATA / "contrastive_oracle_4_45_2.json"


def main() -> int:
    import transformers

    if not transformers.__version__.startswith("4.45."):
        print(f"needs transformers 4.45.x (the oracle), found {transformers.__version__}", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(DATA))
    import contrastive_models as models

    torch.set_num_threads(1)
    cases = {}
    built = {}
    with torch.no_grad():
        for name, kind, prompt, arguments in models.CASES:
            model = built.setdefault(kind, models.build_model(kind))
            input_ids, attention_mask = models.prompts(prompt)
            out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                 return_dict_in_generate=True, output_scores=True, pad_token_id=models.PAD_ID,
                                 eos_token_id=models.EOS_ID, **arguments)
            greedy = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                    max_new_tokens=arguments["max_new_tokens"], pad_token_id=models.PAD_ID,
                                    eos_token_id=models.EOS_ID)
            cases[name] = {
                "kind": kind, "prompt": prompt, "arguments": arguments,
                "sequences": out.sequences.tolist(),
                "max_scores": [[round(float(v), 6) for v in step.max(dim=-1).values] for step in out.scores],
                "greedy": greedy.tolist(),
            }
    OUTPUT.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                  "cases": cases}, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
