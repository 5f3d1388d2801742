"""DoLa decoding (``dola_layers``) against transformers 4.45.2's ``_dola_decoding``.

4.45.2 is the oracle (4.57 moved DoLa to the Hub). It runs in two ways:

* live, in the transformers 4.45.2 environment (``.venv-hf445``): turbogen and 4.45.2's ``generate`` on the same
  models and prompts, compared exactly (sequences, scores, logits, hidden states, attentions, cache); skipped
  elsewhere with the reason;
* stored, in every environment: turbogen's tokens and per-step top scores equal those 4.45.2 produced
  (``data/dola_oracle_4_45_2.json``, written by ``scripts/make_dola_oracle.py`` under 4.45.2). A case is skipped,
  with the reason, where this environment's transformers computes the model itself differently.

Sampling draws with turbogen's sampler: a step's token is the draw :func:`turbogen.ops.sample` makes from that
step's processed scores with the row's seed at the step's offset (the seed contract of plain sampling).
"""

from __future__ import annotations

import pytest
import torch

import transformers

import turbogen
from turbogen import ops
from turbogen.generation.dola import dola_candidate_layers

import legacy_oracle
from legacy_oracle import IS_4_45, data_module, oracle_model, oracle_test_marks, quiet_transformers  # noqa: F401
from legacy_oracle import stored_oracle

ORACLE = stored_oracle("dola_oracle_4_45_2.json")
models = data_module("contrastive_models")
live_oracle = legacy_oracle.live_oracle("DoLa decoding (4.57 moved it to the Hub)")
pytestmark = oracle_test_marks()

NUM_LAYERS = 6


def _model(kind, num_layers=NUM_LAYERS):
    """The oracle's tiny ``kind`` model, with 6 layers by default (DoLa needs layers to choose from)."""
    return oracle_model(kind, num_layers)


def _generate(model, input_ids, attention_mask, **arguments):
    arguments = dict(arguments, pad_token_id=models.PAD_ID, eos_token_id=models.EOS_ID)
    return turbogen.generate(model, input_ids, attention_mask=attention_mask, **arguments)


# ------------------------------------------------------------------------------------------------------------
# Stored oracle (every environment)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ORACLE["cases"]))
def test_dola_matches_stored_4_45_2_oracle(name):
    case = ORACLE["cases"][name]
    model = _model(case["kind"], case["num_layers"])
    input_ids, attention_mask = models.prompts(case["prompt"])
    arguments = case["arguments"]
    greedy = _generate(model, input_ids, attention_mask, do_sample=False, max_new_tokens=arguments["max_new_tokens"])
    if greedy.tolist() != case["greedy"]:
        pytest.skip(f"transformers {transformers.__version__} computes this model differently from 4.45.2 "
                    "(its greedy output differs), so the stored DoLa tokens do not apply")
    out = _generate(model, input_ids, attention_mask, do_sample=False, return_dict_in_generate=True,
                    output_scores=True, **arguments)
    assert out.sequences.tolist() == case["sequences"]
    maxima = torch.tensor([[float(v) for v in step.max(dim=-1).values] for step in out.scores])
    torch.testing.assert_close(maxima, torch.tensor(case["max_scores"]), rtol=1e-5, atol=1e-4)


def test_candidate_layers_follow_4_45_rules():
    # untied embeddings start at layer 0, tied ones skip the identity-like early layers
    assert dola_candidate_layers("low", 6, tied_embeddings=False) == [0, 2]
    assert dola_candidate_layers("high", 6, tied_embeddings=False) == [3, 5]
    assert dola_candidate_layers("low", 6, tied_embeddings=True) == [2]
    assert dola_candidate_layers("low", 2, tied_embeddings=True) == [1]
    assert dola_candidate_layers("low", 4, tied_embeddings=True) == [2]  # start == N // 2
    assert dola_candidate_layers("low", 1, tied_embeddings=True) == [0]
    assert dola_candidate_layers("low", 48, tied_embeddings=False) == list(range(0, 20, 2))
    assert dola_candidate_layers("high", 48, tied_embeddings=False) == list(range(28, 48, 2))
    assert dola_candidate_layers([0, 3, 6, 9], 6, tied_embeddings=False) == [0, 3]


@pytest.mark.parametrize("bad", ["middle", 3, [1.5], None])
def test_invalid_dola_layers_raise(bad):
    with pytest.raises(ValueError, match="dola_layers"):
        dola_candidate_layers(bad, 6, tied_embeddings=False)


def test_dola_sampling_draws_turbogens_sampler_from_the_final_scores():
    model = _model("llama")
    input_ids, attention_mask = models.prompts("padded")
    out = _generate(model, input_ids, attention_mask, dola_layers=[0, 2, 4], repetition_penalty=1.2,
                    do_sample=True, temperature=300.0, top_k=20, seed=123, max_new_tokens=8,
                    return_dict_in_generate=True, output_scores=True)
    prompt_length = input_ids.shape[1]
    for step, scores in enumerate(out.scores):
        drawn = ops.sample(scores, seed=123, offset=step)
        assert out.sequences[:, prompt_length + step].tolist() == drawn.tolist(), step
    # (the tiny models' logits span hundreds: a high temperature makes the draws depend on the seed)
    # reproducible, and a different seed draws differently
    again = _generate(model, input_ids, attention_mask, dola_layers=[0, 2, 4], repetition_penalty=1.2,
                      do_sample=True, temperature=300.0, top_k=20, seed=123, max_new_tokens=8)
    assert torch.equal(again, out.sequences)
    other = _generate(model, input_ids, attention_mask, dola_layers=[0, 2, 4], repetition_penalty=1.2,
                      do_sample=True, temperature=300.0, top_k=20, seed=7, max_new_tokens=8)
    assert not torch.equal(other, out.sequences)


def test_dola_sampling_without_recorded_scores_draws_the_same_tokens():
    # the sampler applies temperature / top-k itself when nothing records the scores: same draws
    model = _model("gpt2")
    input_ids, attention_mask = models.prompts("padded")
    arguments = dict(dola_layers="high", do_sample=True, temperature=300.0, top_k=10, seed=5, max_new_tokens=8)
    plain = _generate(model, input_ids, attention_mask, **arguments)
    recorded = _generate(model, input_ids, attention_mask, return_dict_in_generate=True, output_scores=True,
                         **arguments)
    assert torch.equal(plain, recorded.sequences)


def test_dola_without_cache_equals_cached():
    model = _model("llama")
    input_ids, attention_mask = models.prompts("padded")
    cached = _generate(model, input_ids, attention_mask, dola_layers="high", max_new_tokens=6)
    uncached = _generate(model, input_ids, attention_mask, dola_layers="high", max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.skipif(IS_4_45, reason="turbogen's encoder-decoder preparation does not run under transformers 4.45 "
                                     "(T5's decoder prompt helper differs)")
def test_dola_refuses_encoder_decoder_models():
    config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="decoder-only"):
        turbogen.generate(model, torch.tensor([[5, 6, 7]]), dola_layers="low", max_new_tokens=2)


# ------------------------------------------------------------------------------------------------------------
# Live oracle (transformers 4.45.2)
# ------------------------------------------------------------------------------------------------------------


def _assert_nested_equal(a, b, what):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
        return
    assert type(a) is type(b) or (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list))), what
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        _assert_nested_equal(x, y, what)


@live_oracle
@pytest.mark.parametrize("kind", models.KINDS)
@pytest.mark.parametrize("prompt", ["single", "padded"])
@pytest.mark.parametrize("dola_layers", ["low", "high", [0, 2, 4]])
def test_dola_equals_live_4_45_2(kind, prompt, dola_layers):
    model = _model(kind)
    input_ids, attention_mask = models.prompts(prompt)
    arguments = dict(dola_layers=dola_layers, repetition_penalty=1.2, max_new_tokens=8, do_sample=False,
                     pad_token_id=models.PAD_ID, eos_token_id=models.EOS_ID)
    expected = model.generate(input_ids, attention_mask=attention_mask, **arguments)
    assert torch.equal(turbogen.generate(model, input_ids, attention_mask=attention_mask, **arguments), expected)


@live_oracle
@pytest.mark.parametrize("kind", models.KINDS)
def test_dola_return_dict_equals_live_4_45_2(kind):
    model = _model(kind)
    input_ids, attention_mask = models.prompts("padded")
    arguments = dict(dola_layers=[0, 2, 4], repetition_penalty=1.2, max_new_tokens=6, do_sample=False,
                     pad_token_id=models.PAD_ID, eos_token_id=models.EOS_ID, return_dict_in_generate=True,
                     output_scores=True, output_logits=True, output_hidden_states=True, output_attentions=True)
    expected = model.generate(input_ids, attention_mask=attention_mask, **arguments)
    got = turbogen.generate(model, input_ids, attention_mask=attention_mask, **arguments)
    for field in ("sequences", "scores", "logits", "hidden_states", "attentions"):
        _assert_nested_equal(getattr(got, field), getattr(expected, field), field)
    expected_cache, got_cache = expected.past_key_values, got.past_key_values
    assert type(got_cache) is type(expected_cache)
    if not isinstance(expected_cache, tuple):
        expected_cache, got_cache = expected_cache.to_legacy_cache(), got_cache.to_legacy_cache()
    _assert_nested_equal(got_cache, expected_cache, "past_key_values")


@live_oracle
def test_dola_without_cache_equals_live_4_45_2():
    model = _model("gpt2")
    input_ids, attention_mask = models.prompts("padded")
    arguments = dict(dola_layers="high", max_new_tokens=5, do_sample=False, use_cache=False,
                     pad_token_id=models.PAD_ID, eos_token_id=models.EOS_ID)
    expected = model.generate(input_ids, attention_mask=attention_mask, **arguments)
    assert torch.equal(turbogen.generate(model, input_ids, attention_mask=attention_mask, **arguments), expected)
