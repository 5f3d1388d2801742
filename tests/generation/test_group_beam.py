"""Diverse (group) beam search (``num_beam_groups`` > 1, ``diversity_penalty``) against transformers 4.45.2.

4.45.2's ``_group_beam_search`` with its ``BeamSearchScorer`` is the oracle (4.57 moved the strategy to the Hub):

* live, in the transformers 4.45.2 environment (``.venv-hf445``): turbogen and 4.45.2's ``generate`` on the same
  models and prompts, compared exactly (sequences, ``beam_indices``, attentions, hidden states) and within float
  tolerance (``sequences_scores``, scores, logits: turbogen's LM head is a packed product on CPUs,
  ``legacy_oracle.assert_same_beams``); skipped elsewhere, with the reason;
* stored, in every environment: ``data/beam_strategies_oracle_4_45_2.json`` (written by
  ``scripts/make_beam_strategies_oracle.py`` under 4.45.2) for the cases of ``data/beam_strategies_cases.py``. A
  case is skipped, with the reason, where this environment's transformers computes the model itself differently
  (its greedy output differs from 4.45.2's).
"""

from __future__ import annotations

import pytest
import torch

import transformers

import turbogen
from turbogen.generation.group_beam import HammingDiversityLogitsProcessor

import legacy_oracle
from legacy_oracle import applicable_stored_case, assert_same_beams, assert_same_beams_as_stored, beam_call, data_module
from legacy_oracle import oracle_model as _model, oracle_test_marks, quiet_transformers, stored_oracle  # noqa: F401

ORACLE = stored_oracle("beam_strategies_oracle_4_45_2.json")["cases"]
models = data_module("contrastive_models")
cases = data_module("beam_strategies_cases")
live_oracle = legacy_oracle.live_oracle("group beam search")
pytestmark = oracle_test_marks()


@pytest.mark.parametrize("name,kind,prompt,arguments", cases.GROUP_CASES, ids=[c[0] for c in cases.GROUP_CASES])
def test_stored_oracle(name, kind, prompt, arguments):
    stored = applicable_stored_case(ORACLE, name, kind, prompt, arguments)
    out = turbogen.generate(_model(kind), **beam_call(prompt, arguments))
    assert_same_beams_as_stored(out, stored)


@live_oracle
@pytest.mark.parametrize("name,kind,prompt,arguments", cases.GROUP_CASES, ids=[c[0] for c in cases.GROUP_CASES])
def test_live_oracle(name, kind, prompt, arguments):
    model = _model(kind)
    call = beam_call(prompt, arguments, output_logits=True)
    expected = model.generate(**call)
    got = turbogen.generate(model, **call)
    assert_same_beams(got, expected)


@live_oracle
@pytest.mark.parametrize("kind", cases.KINDS)
def test_live_oracle_attentions_hidden_states_and_plain_output(kind):
    model = _model(kind)
    arguments = dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=5)
    call = beam_call("padded", arguments, output_attentions=True, output_hidden_states=True)
    expected = model.generate(**call)
    got = turbogen.generate(model, **call)
    assert torch.equal(got.sequences, expected.sequences)
    for got_step, expected_step in zip(got.attentions, expected.attentions):
        assert all(torch.equal(a, b) for a, b in zip(got_step, expected_step))
    for got_step, expected_step in zip(got.hidden_states, expected.hidden_states):
        assert all(torch.equal(a, b) for a, b in zip(got_step, expected_step))
    plain = dict(call, return_dict_in_generate=False, output_attentions=False, output_hidden_states=False,
                 output_scores=False)
    assert torch.equal(turbogen.generate(model, **plain), model.generate(**plain))


def test_without_output_scores_there_are_no_sequence_scores_nor_beam_indices():
    arguments = dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, max_new_tokens=4)
    out = turbogen.generate(_model("llama"), **beam_call("single", arguments, output_scores=False))
    assert out.sequences_scores is None and out.beam_indices is None and out.scores is None
    plain = turbogen.generate(_model("llama"), **beam_call("single", arguments, return_dict_in_generate=False))
    assert torch.equal(plain, out.sequences)


def test_groups_are_diverse_and_the_penalty_matters():
    """Groups of one beam: the first group is greedy search; with a large penalty each later group avoids the
    tokens the earlier ones chose at the same step, so the four hypotheses differ at every step."""
    arguments = dict(num_beams=4, num_beam_groups=4, diversity_penalty=50.0, max_new_tokens=4, num_return_sequences=4,
                     eos_token_id=None)
    out = turbogen.generate(_model("llama"), **beam_call("single", arguments))
    new = out.sequences[:, 7:]
    assert all(len(set(new[:, step].tolist())) == 4 for step in range(new.shape[1]))
    greedy = turbogen.generate(_model("llama"), **beam_call("single", dict(max_new_tokens=4, eos_token_id=None),
                                                            return_dict_in_generate=False))
    assert greedy[0, 7:].tolist() in new.tolist()


def test_hamming_diversity_processor_matches_transformers_where_it_exists():
    reference = getattr(transformers, "HammingDiversityLogitsProcessor", None)
    ours = HammingDiversityLogitsProcessor(0.7, num_beams=6, num_beam_groups=3)
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2 * 2, 11, generator=generator)  # 2 prompts x group of 2
    current = torch.randint(0, 11, (2 * 6,), generator=generator)
    for group in range(3):
        got = ours(None, scores.clone(), current_tokens=current, beam_group_idx=group)
        expected = scores.clone()
        for b in range(2):
            counts = torch.bincount(current[b * 6: b * 6 + group * 2], minlength=11)
            expected[b * 2:(b + 1) * 2] -= 0.7 * counts
        assert torch.equal(got, expected)
        if reference is not None:
            try:
                theirs = reference(diversity_penalty=0.7, num_beams=6, num_beam_groups=3)
            except Exception as error:  # (a release that deprecates it with an error)
                pytest.skip(f"transformers' HammingDiversityLogitsProcessor cannot be built: {error}")
            assert torch.equal(got, theirs(None, scores.clone(), current_tokens=current, beam_group_idx=group))


BAD = {
    "not_divisible": (dict(num_beams=4, num_beam_groups=3, diversity_penalty=1.0), "num_beam_groups"),
    "more_groups_than_beams": (dict(num_beams=2, num_beam_groups=4, diversity_penalty=1.0), "num_beam_groups"),
    "no_penalty": (dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.0), "diversity_penalty"),
    "sampling": (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=True), "do_sample"),
    "too_many_returned": (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=5),
                          "num_return_sequences"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_raise_naming_them(case):
    arguments, name = BAD[case]
    input_ids, attention_mask = models.prompts("single")
    with pytest.raises(ValueError, match=name):
        turbogen.generate(_model("llama"), input_ids, attention_mask=attention_mask, max_new_tokens=3,
                          pad_token_id=models.PAD_ID, **arguments)


def test_hamming_processor_rejects_bad_parameters():
    with pytest.raises(ValueError, match="diversity_penalty"):
        HammingDiversityLogitsProcessor(0, 4, 2)
    with pytest.raises(ValueError, match="num_beam_groups"):
        HammingDiversityLogitsProcessor(1.0, 4, 8)


@pytest.mark.parametrize("arguments", [dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
                                       dict(num_beams=2, force_words_ids=[[5]])], ids=["group", "constrained"])
def test_a_streamer_is_refused_as_in_transformers_4_45(arguments):
    input_ids, attention_mask = models.prompts("single")
    with pytest.raises(ValueError, match="streamer"):
        turbogen.generate(_model("llama"), input_ids, attention_mask=attention_mask, max_new_tokens=3,
                          pad_token_id=models.PAD_ID, streamer=turbogen.BaseStreamer(), **arguments)
