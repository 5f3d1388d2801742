"""Constrained beam search (``force_words_ids``, ``constraints``) against transformers 4.45.2, and turbogen's
constraint classes (``turbogen.Constraint``, ``PhrasalConstraint``, ``DisjunctiveConstraint``,
``ConstraintListState``).

4.45.2's ``_constrained_beam_search`` with its ``ConstrainedBeamSearchScorer`` is the oracle (4.57 moved the
strategy to the Hub):

* live, in the transformers 4.45.2 environment (``.venv-hf445``): turbogen and 4.45.2's ``generate`` compared
  (sequences and ``beam_indices`` exactly; ``sequences_scores``, scores and logits within float tolerance, since
  turbogen's LM head is a packed product on CPUs: ``legacy_oracle.assert_same_beams``); skipped elsewhere, with
  the reason;
* stored, in every environment: ``data/beam_strategies_oracle_4_45_2.json`` (``scripts/make_beam_strategies_oracle.py``
  under 4.45.2), cases in ``data/beam_strategies_cases.py``, skipped with the reason where this environment's
  transformers computes the model itself differently.
"""

from __future__ import annotations

import pytest
import torch

import transformers

import turbogen
from turbogen.generation.beam_constraints import DisjunctiveTrie

import legacy_oracle
from legacy_oracle import IS_4_45, applicable_stored_case, assert_same_beams, assert_same_beams_as_stored, beam_call
from legacy_oracle import data_module
from legacy_oracle import oracle_model as _model, oracle_test_marks, quiet_transformers, stored_oracle  # noqa: F401

ORACLE = stored_oracle("beam_strategies_oracle_4_45_2.json")["cases"]
models = data_module("contrastive_models")
cases = data_module("beam_strategies_cases")
HAS_TRANSFORMERS_CONSTRAINTS = hasattr(transformers, "PhrasalConstraint") and hasattr(transformers,
                                                                                       "DisjunctiveConstraint")
live_oracle = legacy_oracle.live_oracle("constrained beam search")
pytestmark = oracle_test_marks()
IDS = [c[0] for c in cases.CONSTRAINED_CASES]


@pytest.mark.parametrize("name,kind,prompt,arguments", cases.CONSTRAINED_CASES, ids=IDS)
def test_stored_oracle(name, kind, prompt, arguments):
    stored = applicable_stored_case(ORACLE, name, kind, prompt, arguments)
    out = turbogen.generate(_model(kind), **beam_call(prompt, cases.build_arguments(arguments, turbogen)))
    assert_same_beams_as_stored(out, stored)


@pytest.mark.skipif(not HAS_TRANSFORMERS_CONSTRAINTS,
                    reason=f"transformers {transformers.__version__} has no PhrasalConstraint/DisjunctiveConstraint")
@pytest.mark.parametrize("name,kind,prompt,arguments", [c for c in cases.CONSTRAINED_CASES if "constraints" in c[3]],
                         ids=[c[0] for c in cases.CONSTRAINED_CASES if "constraints" in c[3]])
def test_transformers_constraint_objects_are_accepted(name, kind, prompt, arguments):
    stored = applicable_stored_case(ORACLE, name, kind, prompt, arguments)
    out = turbogen.generate(_model(kind), **beam_call(prompt, cases.build_arguments(arguments, transformers)))
    assert_same_beams_as_stored(out, stored)


@live_oracle
@pytest.mark.parametrize("name,kind,prompt,arguments", cases.CONSTRAINED_CASES, ids=IDS)
def test_live_oracle(name, kind, prompt, arguments):
    model = _model(kind)
    expected = model.generate(**beam_call(prompt, cases.build_arguments(arguments, transformers), output_logits=True))
    got = turbogen.generate(model, **beam_call(prompt, cases.build_arguments(arguments, turbogen), output_logits=True))
    assert_same_beams(got, expected)


class EndsWithPair(turbogen.Constraint):
    """A user constraint: the tokens ``first, second`` in a row (what ``PhrasalConstraint([first, second])``
    asks, written from scratch on the base class)."""

    def __init__(self, first, second):
        self.pair = (first, second)
        self.seqlen = 2
        self.matched = 0
        super().__init__()  # runs the self-test, which leaves the constraint fulfilled:
        self.reset()

    def advance(self):
        return None if self.matched == 2 else self.pair[self.matched]

    def does_advance(self, token_id):
        return self.matched < 2 and token_id == self.pair[self.matched]

    def update(self, token_id):
        if self.does_advance(token_id):
            self.matched += 1
            return True, self.matched == 2, False
        self.reset()
        return False, False, True

    def reset(self):
        self.matched = 0

    def remaining(self):
        return 2 - self.matched

    def copy(self, stateful=False):
        duplicate = EndsWithPair(*self.pair)
        if stateful:
            duplicate.matched = self.matched
        return duplicate


@pytest.mark.parametrize("kind", cases.KINDS)
def test_a_user_constraint_subclass_works_like_the_builtin(kind):
    arguments = dict(num_beams=4, max_new_tokens=10)
    builtin = turbogen.generate(_model(kind), **beam_call("padded", dict(arguments, force_words_ids=[[20, 21]])))
    custom = turbogen.generate(_model(kind), **beam_call("padded", dict(arguments, constraints=[EndsWithPair(20, 21)])))
    assert torch.equal(custom.sequences, builtin.sequences)
    assert torch.equal(custom.sequences_scores, builtin.sequences_scores)
    if IS_4_45:  # the same object in transformers 4.45's own constrained beam search
        expected = _model(kind).generate(**beam_call("padded", dict(arguments, constraints=[EndsWithPair(20, 21)])))
        assert torch.equal(custom.sequences, expected.sequences)


def test_a_broken_user_constraint_is_refused_at_construction():
    class NeverAccepts(EndsWithPair):
        def does_advance(self, token_id):
            return False

    with pytest.raises(ValueError, match="does_advance"):
        NeverAccepts(3, 4)


def test_constraint_list_state_tracks_progress_and_banks():
    state = turbogen.ConstraintListState([turbogen.PhrasalConstraint([5, 6, 7]),
                                          turbogen.DisjunctiveConstraint([[9], [10, 11]])])
    assert state.max_seqlen == 3 and state.get_bank() == 0 and sorted(state.advance()) == [5, 9, 10]
    state.add(5)
    assert state.advance() == [6] and state.get_bank() == 1
    state.add(8)  # contradicts the phrase: back to pending
    assert state.get_bank() == 0 and sorted(state.advance()) == [5, 9, 10]
    for token in (5, 6, 7, 10, 11):
        state.add(token)
    assert state.completed and state.get_bank() == 6 and state.advance() is None
    fresh = state.copy(stateful=False)
    assert not fresh.completed and fresh.get_bank() == 0
    fresh.reset([1, 10, 11, 5, 6, 7, 99])
    assert fresh.completed


@pytest.mark.skipif(not HAS_TRANSFORMERS_CONSTRAINTS,
                    reason=f"transformers {transformers.__version__} has no constraint classes to compare with")
def test_constraint_list_state_agrees_with_transformers_on_random_sequences():
    generator = torch.Generator().manual_seed(0)
    definitions = [("phrasal", [3, 4, 5]), ("disjunctive", [[3, 6], [7]]), ("phrasal", [6])]

    def build(library):
        return [getattr(library, "PhrasalConstraint" if kind == "phrasal" else "DisjunctiveConstraint")(ids)
                for kind, ids in definitions]

    for _ in range(200):
        sequence = torch.randint(2, 9, (12,), generator=generator).tolist()
        ours = turbogen.ConstraintListState(build(turbogen))
        theirs = transformers.ConstraintListState(build(transformers))
        for token in sequence:
            ours.add(token)
            theirs.add(token)
            assert (ours.get_bank(), ours.completed, ours.advance()) == (theirs.get_bank(), theirs.completed,
                                                                         theirs.advance())


def test_disjunctive_trie_refuses_a_word_that_prefixes_another():
    with pytest.raises(ValueError, match="prefix"):
        DisjunctiveTrie([[1, 2], [1, 2, 3]])
    assert sorted(DisjunctiveTrie([[1, 2], [1, 3]]).next_tokens([1])) == [2, 3]


BAD = {
    "empty_force_words": (dict(num_beams=2, force_words_ids=[]), ValueError, "force_words_ids"),
    "negative_token": (dict(num_beams=2, force_words_ids=[[-1]]), ValueError, "force_words_ids"),
    "empty_word": (dict(num_beams=2, force_words_ids=[[]]), ValueError, "force_words_ids"),
    "mixed_disjunction": (dict(num_beams=2, force_words_ids=[[[1, 2], 3]]), ValueError, "force_words_ids"),
    "not_a_constraint": (dict(num_beams=2, constraints=[object()]), TypeError, "constraints"),
    "sampling": (dict(num_beams=2, force_words_ids=[[5]], do_sample=True), ValueError, "do_sample"),
    "groups": (dict(num_beams=4, force_words_ids=[[5]], num_beam_groups=2, diversity_penalty=1.0), ValueError,
               "num_beam_groups"),
    "one_beam": (dict(num_beams=1, force_words_ids=[[5]]), ValueError, "num_beams"),
    "too_many_returned": (dict(num_beams=2, force_words_ids=[[5]], num_return_sequences=3), ValueError,
                          "num_return_sequences"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_raise_naming_them(case):
    arguments, error, name = BAD[case]
    input_ids, attention_mask = models.prompts("single")
    with pytest.raises(error, match=name):
        turbogen.generate(_model("llama"), input_ids, attention_mask=attention_mask, max_new_tokens=3,
                          pad_token_id=models.PAD_ID, **arguments)


def test_constraint_classes_validate_their_arguments():
    with pytest.raises(ValueError, match="token_ids"):
        turbogen.PhrasalConstraint([])
    with pytest.raises(ValueError, match="nested_token_ids"):
        turbogen.DisjunctiveConstraint([[1], 2])
    with pytest.raises(TypeError, match="token_id"):
        turbogen.PhrasalConstraint([1, 2]).update("1")
