"""Regenerate tests/generation/data/dola_oracle_4_45_2.json: transformers 4.45.2's DoLa decoding
(``GenerationMixin._dola_decoding``, the oracle; 4.57 moved it to the Hub) on the in-process tiny models of
tests/generation/data/contrastive_models.py, built with 6 layers so that ``"low"``, ``"high"`` and a list select
one or several candidate layers (several: the Jensen-Shannon choice).

Run it in the transformers 4.45.2 environment (it refuses any other version):

    .venv-hf445/bin/python scripts/make_dola_oracle.py [--output PATH]

Every case stores the greedy DoLa sequences, each step's largest processed score per row (6 decimals) and, as a
guard against a transformers release computing the model differently, the plain greedy sequences of the same
prompt (tests/generation/test_dola.py skips a case, saying so, where that environment's greedy output differs).
"""

from __future__ import annotations

from _v445_oracle import DATA, max_scores_oracle_main

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


def main(argv=None) -> int:
    return max_scores_oracle_main(OUTPUT, argv, CASES, num_layers=NUM_LAYERS)

if __name__ == "__main__":
    raise SystemExit(main())
