"""The cases of the diverse / constrained beam search oracle (tests/generation/test_group_beam.py,
tests/generation/test_constrained_beam.py and scripts/make_beam_strategies_oracle.py), on the tiny in-process models
and prompts of ``contrastive_models.py`` (weights independent of the transformers release, prompts as ids).

A case is ``(name, kind, prompt, arguments)``; ``arguments`` are plain JSON: constraint objects are written
``{"constraints": [["phrasal", [ids]], ["disjunctive", [[ids], ...]]]}`` and built by :func:`build_arguments`
with the classes of whichever library is given (transformers' for the oracle, turbogen's or transformers' for
turbogen). Every case records ``output_scores``, so ``sequences_scores`` and ``beam_indices`` exist.
"""

from __future__ import annotations

from typing import Any

# Token ids these models often choose (so EOS ends hypotheses early and finished lists fill up).
FREQUENT_EOS = {"llama": [5, 56], "gpt2": [31, 11]}
KINDS = ("llama", "gpt2")
PROMPTS = ("single", "padded")


def _group_cases(kind: str) -> list[tuple[str, dict]]:
    eos = FREQUENT_EOS[kind]
    return [
        ("g2", dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=10)),
        ("g3-eos-lp-nrs3", dict(num_beams=6, num_beam_groups=3, diversity_penalty=0.3, max_new_tokens=8,
                                num_return_sequences=3, length_penalty=0.7, eos_token_id=eos)),
        ("g4-size1-early", dict(num_beams=4, num_beam_groups=4, diversity_penalty=2.0, max_new_tokens=8,
                                early_stopping=True, eos_token_id=eos, num_return_sequences=2)),
        ("g2-never-rep", dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.8, max_new_tokens=9,
                              early_stopping="never", length_penalty=1.5, eos_token_id=eos[:1],
                              repetition_penalty=1.2)),
    ]


def _constrained_cases(kind: str) -> list[tuple[str, dict]]:
    eos = FREQUENT_EOS[kind]
    return [
        ("phrase", dict(num_beams=4, force_words_ids=[[20, 21]], max_new_tokens=10)),
        ("disjunctive-nrs2", dict(num_beams=3, force_words_ids=[[[20, 21], [20, 30, 31]], [44]], max_new_tokens=10,
                                  num_return_sequences=2)),
        ("eos-early", dict(num_beams=4, force_words_ids=[[7, 8, 9], [11]], max_new_tokens=9, early_stopping=True,
                           eos_token_id=eos, num_return_sequences=2)),
        ("objects-eos-lp", dict(num_beams=4, constraints=[["phrasal", [33, 12]], ["disjunctive", [[40], [41, 42]]]],
                                max_new_tokens=10, eos_token_id=eos, length_penalty=0.8, no_repeat_ngram_size=3)),
    ]


def _all(strategy_cases) -> list[tuple[str, str, str, dict]]:
    cases = []
    for kind in KINDS:
        for prompt in PROMPTS:
            for name, arguments in strategy_cases(kind):
                cases.append((f"{kind}-{prompt}-{name}", kind, prompt, arguments))
    return cases


GROUP_CASES = _all(_group_cases)
CONSTRAINED_CASES = _all(_constrained_cases)


def build_arguments(arguments: dict, library: Any) -> dict:
    """``arguments`` with ``constraints`` built from ``library.PhrasalConstraint`` / ``library.DisjunctiveConstraint``
    (``library``: the ``transformers`` or ``turbogen`` module)."""
    arguments = dict(arguments)
    if "constraints" in arguments:
        build = {"phrasal": library.PhrasalConstraint, "disjunctive": library.DisjunctiveConstraint}
        arguments["constraints"] = [build[kind](ids) for kind, ids in arguments["constraints"]]
    return arguments
