"""Regenerate tests/generation/data/dola_oracle_4_45_2.json: transformers 4.45.2's DoLa decoding
(``GenerationMixin._dola_decoding``, the oracle; 4.57 moved it to the Hub) on the in-process tiny models of
tests/generation/data/contrastive_models.py, built with 6 layers so that ``"low"``, ``"high"`` and a list select
one or several candidate layers (several: the Jensen-Shannon choice).

Run it in the transformers 4.45.2 environment (it refuses any other version):

    .venv-hf445/bin/python scripts/make_dola_oracle.py

Every case stores the greedy DoLa sequences, each step's largest processed score per row (6 decimals) and, as a
guard against a transformers release computing the model differently, the plain greedy sequences of the same
prompt (tests/generation/test_dola.py skips a case, saying so, where that environment's greedy output differs).
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "generation" / "data"
OUTPUT = DATA / "dola_oracle_4_45_2.json"
NUM_LAYERS = 6

#: (name, kind, prompt, generation arguments); `eos_token_id` is the models' EOS everywhere.
CASES = []
for _kind in ("llama", "gpt2"):
    for _prompt in ("single", "padded"):
        CASES.append((f"{_kind}-{_prompt}-high-rep", _kind, _prompt,
                      dict(dola_layers="high", repetition_penalty=1.2, max_new_tokens=10)))
        CASES.append((f"{_kind}-{_prompt}-low", _kind, _prompt, dict(dola_layers="low", max_new_tokens=10)))
        CASES.append((f"{_kind}-{_prompt}-list-rep", _kind, _prompt,
                      dict(dola_layers=[0, 2, 4], repetition_penalty=1.2, max_new_tokens=10)))


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
        for name, kind, prompt, arguments in CASES:
            model = built.setdefault(kind, models.build_model(kind, num_layers=NUM_LAYERS))
            input_ids, attention_mask = models.prompts(prompt)
            out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                 return_dict_in_generate=True, output_scores=True, pad_token_id=models.PAD_ID,
                                 eos_token_id=models.EOS_ID, **arguments)
            greedy = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                    max_new_tokens=arguments["max_new_tokens"], pad_token_id=models.PAD_ID,
                                    eos_token_id=models.EOS_ID)
            cases[name] = {
                "kind": kind, "prompt": prompt, "num_layers": NUM_LAYERS, "arguments": arguments,
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
