"""Contrastive search (``penalty_alpha`` > 0, ``top_k`` > 1, ``do_sample=False``) against transformers 4.45.2.

4.45.2's ``_contrastive_search`` is the oracle (4.57 moved the strategy to the Hub). It runs in two ways:

* live, in the transformers 4.45.2 environment (``.venv-hf445``): turbogen and 4.45.2's ``generate`` on the same
  models and prompts, compared exactly: sequences, scores, logits, hidden states, attentions and the returned
  cache (skipped elsewhere, with the reason);
* stored, in every environment: turbogen's tokens equal the ones 4.45.2 produced for the in-process models of
  ``data/contrastive_models.py`` (``data/contrastive_oracle_4_45_2.json``, written by
  ``scripts/make_contrastive_oracle.py`` under 4.45.2). A case is skipped, with the reason, where this
  environment's transformers computes the model itself differently (its greedy output differs from 4.45.2's).
"""

from __future__ import annotations

import pytest
import torch

import transformers

from turbogen.generation import packed_head
from turbogen.generation.contrastive import ChosenRowsHead, contrastive_ranking
from turbogen.generation.packed_head import PackedHead

import legacy_oracle
from legacy_oracle import data_module, oracle_model as _model, oracle_test_marks, quiet_transformers  # noqa: F401
from legacy_oracle import stored_oracle

ORACLE = stored_oracle("contrastive_oracle_4_45_2.json")
models = data_module("contrastive_models")
live_oracle = legacy_oracle.live_oracle("contrastive search")
pytestmark = oracle_test_marks()


def turbogen_contrastive(model, input_ids, attention_mask, **arguments):
    """turbogen's contrastive search for a ``generate(model, input_ids, attention_mask=..., **arguments)`` call."""
    from turbogen.generate import generate

    arguments = dict(arguments, pad_token_id=models.PAD_ID, eos_token_id=models.EOS_ID)
    return generate(model, input_ids, attention_mask=attention_mask, **arguments)


def _oracle(model, input_ids, attention_mask, **arguments):
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=attention_mask, do_sample=False, pad_token_id=models.PAD_ID,
                              eos_token_id=models.EOS_ID, **arguments)


CASE_IDS = [name for name, *_ in models.CASES]


def _case(name):
    for case in models.CASES:
        if case[0] == name:
            return case
    raise KeyError(name)


# --------------------------------------------------------------------------------------------------------
# Stored oracle: every environment
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_IDS)
def test_equals_stored_4_45_2_oracle(name):
    _, kind, prompt, arguments = _case(name)
    stored = ORACLE["cases"][name]
    assert stored["arguments"] == arguments, "the cases changed: rerun scripts/make_contrastive_oracle.py"
    model = _model(kind)
    input_ids, attention_mask = models.prompts(prompt)
    greedy = _oracle(model, input_ids, attention_mask, max_new_tokens=arguments["max_new_tokens"])
    if greedy.tolist() != stored["greedy"]:
        pytest.skip(f"transformers {transformers.__version__} computes this model differently from 4.45.2 (its "
                    "greedy output differs), so 4.45.2's contrastive tokens are not expected here")
    out = turbogen_contrastive(model, input_ids, attention_mask, return_dict_in_generate=True, output_scores=True,
                               **arguments)
    assert out.sequences.tolist() == stored["sequences"]
    max_scores = [[float(v) for v in step.max(dim=-1).values] for step in out.scores]
    torch.testing.assert_close(torch.tensor(max_scores), torch.tensor(stored["max_scores"]), atol=1e-4, rtol=0)


def test_stored_oracle_covers_every_case():
    assert sorted(ORACLE["cases"]) == sorted(CASE_IDS)
    assert ORACLE["transformers"].startswith("4.45.")


# --------------------------------------------------------------------------------------------------------
# Live oracle: transformers 4.45.2
# --------------------------------------------------------------------------------------------------------


@live_oracle
@pytest.mark.parametrize("name", CASE_IDS)
def test_sequences_equal_live_4_45_2(name):
    _, kind, prompt, arguments = _case(name)
    model = _model(kind)
    input_ids, attention_mask = models.prompts(prompt)
    expected = _oracle(model, input_ids, attention_mask, **arguments)
    assert torch.equal(turbogen_contrastive(model, input_ids, attention_mask, **arguments), expected)


def _assert_nested_equal(actual, expected, what, close=False):
    """Equal tensors at every leaf; ``close``: within float tolerance (turbogen computes the chosen candidates'
    logits with the head over fewer rows, which may round differently)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), what
        if close:
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=what)
        else:
            assert torch.equal(actual, expected), what
        return
    if expected is None:
        assert actual is None, what
        return
    if hasattr(expected, "to_legacy_cache"):
        expected = expected.to_legacy_cache()
    if hasattr(actual, "to_legacy_cache"):
        actual = actual.to_legacy_cache()
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        _assert_nested_equal(a, e, f"{what}[{i}]", close)


@live_oracle
@pytest.mark.parametrize("name", ["llama-padded", "gpt2-padded", "llama-single-low_memory",
                                  "gpt2-single-low_memory", "llama-padded-k2-alpha0.3-rep"])
def test_return_dict_equals_live_4_45_2(name):
    _, kind, prompt, arguments = _case(name)
    model = _model(kind)
    input_ids, attention_mask = models.prompts(prompt)
    flags = dict(return_dict_in_generate=True, output_scores=True, output_logits=True, output_hidden_states=True,
                 output_attentions=True)
    expected = _oracle(model, input_ids, attention_mask, **flags, **arguments)
    actual = turbogen_contrastive(model, input_ids, attention_mask, **flags, **arguments)
    assert type(actual).__name__ == type(expected).__name__
    for field in ("sequences", "scores", "logits", "hidden_states", "attentions", "past_key_values"):
        _assert_nested_equal(getattr(actual, field), getattr(expected, field), field,
                             close=field in ("scores", "logits"))


@live_oracle
def test_tiny_suite_models_equal_live_4_45_2():
    """The suite's own tiny models (tests/tiny_models.py, tokenizer-built prompts) too."""
    from tiny_models import encode_batch, tiny_model

    input_ids, attention_mask = encode_batch(["the quick brown fox", "hello"])
    for kind in ("llama", "gpt2"):
        model = tiny_model(kind)
        for low_memory, rows in ((False, 2), (True, 1)):
            arguments = dict(penalty_alpha=0.6, top_k=4, max_new_tokens=8, low_memory=low_memory)
            expected = _oracle(model, input_ids[:rows], attention_mask[:rows], **arguments)
            actual = turbogen_contrastive(model, input_ids[:rows], attention_mask[:rows], **arguments)
            assert torch.equal(actual, expected), (kind, low_memory)


# --------------------------------------------------------------------------------------------------------
# turbogen's own properties
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", models.KINDS)
def test_low_memory_batch_equals_batched(kind):
    """With several rows, 4.45.2's ``low_memory`` mixes rows up (it fails); turbogen ranks each row's own
    candidates, so both modes give the same tokens."""
    model = _model(kind)
    input_ids, attention_mask = models.prompts("padded")
    arguments = dict(penalty_alpha=0.6, top_k=4, max_new_tokens=10)
    batched = turbogen_contrastive(model, input_ids, attention_mask, **arguments)
    sequential = turbogen_contrastive(model, input_ids, attention_mask, low_memory=True, **arguments)
    assert torch.equal(sequential, batched)


def test_ranking_is_the_degeneration_penalty():
    torch.manual_seed(0)
    rows, top_k, context, hidden = 2, 3, 5, 8
    context_hidden = torch.randn(rows, context, hidden)
    next_hidden = torch.randn(rows * top_k, 1, hidden)
    probs = torch.softmax(torch.randn(rows, top_k), dim=-1)
    mask = torch.ones(rows, context, dtype=torch.long)
    mask[1, :2] = 0
    alpha = 0.6
    selected = contrastive_ranking(context_hidden.repeat_interleave(top_k, dim=0), next_hidden, probs,
                                   mask.repeat_interleave(top_k, dim=0), alpha, top_k)
    for row in range(rows):
        best = []
        for k in range(top_k):
            candidate = next_hidden[row * top_k + k, 0]
            similarity = torch.nn.functional.cosine_similarity(context_hidden[row], candidate[None], dim=-1)
            penalty = similarity[mask[row].bool()].max()
            best.append(float((1 - alpha) * probs[row, k] - alpha * penalty))
        assert int(selected[row]) == max(range(top_k), key=best.__getitem__)


@pytest.mark.parametrize("kind", models.KINDS)
@pytest.mark.parametrize("low_memory", [False, True])
def test_head_runs_on_the_chosen_candidates_only(kind, low_memory):
    """The candidates' forwards skip the LM head (zero positions reach it) and the head then runs on one row per
    prompt row (through the packed product where it applies, else the module); the tokens equal those of a run
    that computes every candidate's logits."""
    model = _model(kind)
    input_ids, attention_mask = models.prompts("padded")
    rows = input_ids.shape[0] if not low_memory else 1
    input_ids, attention_mask = input_ids[:rows], attention_mask[:rows]
    arguments = dict(penalty_alpha=0.6, top_k=4, max_new_tokens=6, low_memory=low_memory,
                     return_dict_in_generate=True, output_scores=True)
    head = model.get_output_embeddings()
    head_rows, packed_rows = [], []
    # (a forward hook: it sees what the head computed, after turbogen's pre-hook cut its input)
    handle = head.register_forward_hook(lambda module, args, output: head_rows.append(tuple(output.shape[:2])))
    real_product = packed_head._packed_product

    def counted_product(hidden_rows, packed, bias):
        packed_rows.append(hidden_rows.shape[0])
        return real_product(hidden_rows, packed, bias)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(packed_head, "_packed_product", counted_product)
            skipped = turbogen_contrastive(model, input_ids, attention_mask, **arguments)
    finally:
        handle.remove()
    steps = head_rows[2:]  # after the prompt's forward and the check of its logits
    assert head_rows[1] == (rows, 1) and steps
    assert all(shape == (rows, 1) or shape[1] == 0 for shape in steps), head_rows  # chosen rows, or skipped
    assert bool(packed_rows) == (PackedHead.for_module(head) is not None)
    assert all(count == rows for count in packed_rows), packed_rows
    chosen = sum(shape[1] != 0 for shape in steps) + len(packed_rows)
    skipped_forwards = 4 + 1 if low_memory else 1  # per step: each candidate (and the rerun), or all at once
    assert sum(shape[1] == 0 for shape in steps) == chosen * skipped_forwards, head_rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ChosenRowsHead, "for_model", classmethod(lambda cls, model, outputs: None))
        whole = turbogen_contrastive(model, input_ids, attention_mask, **arguments)
    assert torch.equal(skipped.sequences, whole.sequences)
    _assert_nested_equal(skipped.scores, whole.scores, "scores", close=True)


def test_head_is_whole_for_models_that_transform_logits():
    """A config that caps or scales logits after the head, or a forward whose logits are not the head of the last
    hidden state, keeps every candidate's logits."""
    import types

    model = _model("llama")
    input_ids, attention_mask = models.prompts("padded")
    with torch.no_grad():
        outputs = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    assert ChosenRowsHead.for_model(model, outputs) is not None
    scaled = types.SimpleNamespace(logits=outputs.logits * 2, hidden_states=outputs.hidden_states)
    assert ChosenRowsHead.for_model(model, scaled) is None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
        assert ChosenRowsHead.for_model(model, outputs) is None
