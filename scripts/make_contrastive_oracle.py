"""Regenerate tests/generation/data/contrastive_oracle_4_45_2.json: transformers 4.45.2's contrastive search
(``GenerationMixin._contrastive_search``, the oracle) on the in-process tiny models of
tests/generation/data/contrastive_models.py.

Run it in the transformers 4.45.2 environment (it refuses any other version):

    .venv-hf445/bin/python scripts/make_contrastive_oracle.py [--output PATH]

For every case it stores the sequences, each step's largest processed score per row (6 decimals) and, as a guard
against a transformers release computing the model differently, the greedy sequences of the same prompt; the
tests compare turbogen with the sequences in every environment, and skip a case (saying so) where that
environment's greedy output differs from 4.45.2's (the model itself then differs, not the search).
"""

from __future__ import annotations

from _v445_oracle import DATA, max_scores_oracle_main

OUTPUT = DATA / "contrastive_oracle_4_45_2.json"


def main(argv=None) -> int:
    return max_scores_oracle_main(OUTPUT, argv)

if __name__ == "__main__":
    raise SystemExit(main())
