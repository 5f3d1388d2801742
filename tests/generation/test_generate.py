"""turbogen.generate against transformers 4.57 (the oracle) on tiny random-weight Llama and GPT-2 models:
greedy search and beam search must give identical sequences, and scores / sequence scores / beam indices /
transition scores equal to 1e-5."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers

from conftest import TRANSFORMERS_5
from tiny_models import EOS_ID, MODEL_KINDS, PAD_ID, encode_batch, tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen import GenerationConfig
from turbogen.generate import FINISH_CHECK_LAG, compute_transition_scores, generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PROMPTS = {
    "single": ["the quick brown"],
    "padded": ["the quick brown fox", "stop", "hello world again"],
}
NEW_TOKENS = 8


def _prompt(batch: str):
    return encode_batch(PROMPTS[batch])


def _both(model, input_ids, attention_mask, **kwargs):
    """(transformers' result, turbogen's result) of the same call."""
    expected = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    actual = generate(model, input_ids, attention_mask=attention_mask, **kwargs)
    return expected, actual


def _assert_same_output(expected, actual, beams: bool = False):
    assert torch.equal(actual.sequences, expected.sequences)
    for name in ("scores", "logits"):
        expected_steps, actual_steps = getattr(expected, name), getattr(actual, name)
        assert (expected_steps is None) == (actual_steps is None), name
        if expected_steps is not None:
            assert len(actual_steps) == len(expected_steps), name
            for want, got in zip(expected_steps, actual_steps):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if beams:
        assert torch.equal(actual.beam_indices, expected.beam_indices)
        if expected.sequences_scores is not None:
            torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores, atol=1e-5, rtol=1e-5)
    if expected.past_key_values is not None:
        assert actual.past_key_values.get_seq_length() == expected.past_key_values.get_seq_length()


def _early_eos(model, input_ids, attention_mask, steps=(2, 4, 1)) -> list[int]:
    """EOS ids that make each row stop early: for row ``i``, the token greedy search emits at step
    ``steps[i]`` (so rows finish at different steps)."""
    greedy = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                            eos_token_id=None, do_sample=False)
    new = greedy[:, input_ids.shape[1]:]
    return sorted({int(new[row, steps[row % len(steps)]]) for row in range(new.shape[0])})


@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_greedy_matches_transformers(kind, batch):
    model = tiny_model(kind)
    input_ids, attention_mask = _prompt(batch)
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True,
                             output_scores=True, output_logits=True)
    _assert_same_output(expected, actual)
    assert actual.sequences.shape == (input_ids.shape[0], input_ids.shape[1] + NEW_TOKENS)
    torch.testing.assert_close(
        compute_transition_scores(actual.sequences, actual.scores, normalize_logits=True),
        model.compute_transition_scores(expected.sequences, expected.scores, normalize_logits=True),
        atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lag", [0, 1, 3])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_greedy_rows_stopping_at_eos_are_padded_like_transformers(kind, lag, monkeypatch):
    """Rows finish at different steps on a list of EOS ids; finished rows get the pad token, generation
    ends when the last row finishes. ``lag`` > 0 reads the "all finished" flag late (as on accelerators) and
    must discard the extra steps without a trace, cache included."""
    monkeypatch.setitem(FINISH_CHECK_LAG, "cpu", lag)
    prompt_length, sequences = _assert_early_eos_run_matches_transformers(tiny_model(kind))
    assert (sequences[:, prompt_length:] == PAD_ID).any(), "finished rows should be padded"


def test_late_finish_check_never_crops_a_sliding_window_cache(monkeypatch):
    """A sliding-window cache layer forgets what leaves its window and cannot be cropped back, so with one the
    finish flag is read at once (no steps to discard); results stay transformers'."""
    monkeypatch.setitem(FINISH_CHECK_LAG, "cpu", 2)
    _assert_early_eos_run_matches_transformers(tiny_model("mistral"))  # a 4-token window, which the prompt fills


def _assert_early_eos_run_matches_transformers(model) -> tuple[int, torch.Tensor]:
    """Greedy search on the padded prompts with EOS ids that stop every row early, checked against
    transformers; returns the prompt length and turbogen's sequences."""
    input_ids, attention_mask = _prompt("padded")
    eos = _early_eos(model, input_ids, attention_mask)
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                             return_dict_in_generate=True, output_scores=True)
    _assert_same_output(expected, actual)
    assert actual.sequences.shape[1] < input_ids.shape[1] + NEW_TOKENS, "every row should have stopped early"
    return input_ids.shape[1], actual.sequences


BEAM_SETTINGS = {
    "beams2": dict(num_beams=2),
    "beams3_all_returned_early_stop": dict(num_beams=3, num_return_sequences=3, early_stopping=True),
    "beams4_long_bias": dict(num_beams=4, num_return_sequences=2, length_penalty=2.0),
    "beams3_never_short_bias": dict(num_beams=3, num_return_sequences=2, early_stopping="never", length_penalty=-0.7),
    "beams2_never_no_penalty": dict(num_beams=2, early_stopping="never", length_penalty=0.0),
    "beams3_without_eos": dict(num_beams=3, num_return_sequences=3, eos_token_id=None),
}


@pytest.mark.parametrize("setting", BEAM_SETTINGS)
@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_beam_search_matches_transformers(kind, batch, setting):
    model = tiny_model(kind)
    input_ids, attention_mask = _prompt(batch)
    # By default, EOS ids that greedy search hits early, so hypotheses finish at different lengths.
    options = {"eos_token_id": _early_eos(model, input_ids, attention_mask), **BEAM_SETTINGS[setting]}
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True,
                             output_scores=True, output_logits=True, **options)
    _assert_same_output(expected, actual, beams=True)
    torch.testing.assert_close(
        compute_transition_scores(actual.sequences, actual.scores, actual.beam_indices),
        model.compute_transition_scores(expected.sequences, expected.scores, expected.beam_indices),
        atol=1e-5, rtol=1e-5)


def test_beam_transition_scores_rebuild_sequence_scores():
    """The documented identity: summed transition scores / length ** length_penalty == sequences_scores."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("padded")
    eos = _early_eos(model, input_ids, attention_mask)
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, num_beams=3,
                   num_return_sequences=2, length_penalty=1.5, eos_token_id=eos, return_dict_in_generate=True,
                   output_scores=True)
    transition = compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    lengths = (out.beam_indices >= 0).sum(dim=1)
    torch.testing.assert_close(transition.sum(dim=1) / lengths**1.5, out.sequences_scores, atol=1e-4, rtol=1e-5)


def test_plain_tensor_output_and_output_mapping():
    model = tiny_model("gpt2")
    input_ids, attention_mask = _prompt("padded")
    sequences = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3)
    assert isinstance(sequences, torch.Tensor) and sequences.is_contiguous()
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3, return_dict_in_generate=True)
    assert torch.equal(out.sequences, sequences)
    assert torch.equal(out["sequences"], sequences) and torch.equal(out[0], sequences)
    assert "scores" not in out and out.scores is None
    assert list(out.keys()) == ["sequences", "past_key_values"]
    with pytest.raises(KeyError):
        out["scores"]


@pytest.mark.parametrize(
    "options",
    [
        dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
        dict(min_new_tokens=4, eos_token_id=EOS_ID, bad_words_ids=[[5], [6, 7]]),
        dict(suppress_tokens=[10, 11, 12], forced_eos_token_id=EOS_ID),
    ],
    ids=["penalties", "min_new_tokens_bad_words", "suppress_forced_eos"],
)
def test_processors_from_config_match_transformers(options):
    model = tiny_model("llama")
    batch = "padded"
    if TRANSFORMERS_5 and "repetition_penalty" in options:
        # transformers 5 exempts left padding from the repetition penalty (its _get_logits_processor gives
        # RepetitionPenaltyLogitsProcessor the padding lengths as `prompt_ignore_length`); 4.57, turbogen's spec,
        # penalises the pad token like any prompt token. The two agree on prompts without padding.
        batch = "single"
    input_ids, attention_mask = _prompt(batch)
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True,
                             output_scores=True, **options)
    _assert_same_output(expected, actual)


def test_custom_logits_processor_is_applied_like_transformers():
    class BanToken(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.index_fill(1, torch.tensor([int(scores.argmax(-1)[0])]), -float("inf"))

    model = tiny_model("gpt2")
    input_ids, attention_mask = _prompt("padded")
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=5, return_dict_in_generate=True,
                             output_scores=True, logits_processor=transformers.LogitsProcessorList([BanToken()]))
    _assert_same_output(expected, actual)


def test_processor_signatures_are_read_once_per_class_not_per_step(monkeypatch):
    """The processor list checks each processor's call signature for extra arguments; with many steps that must
    be one ``inspect.signature`` per processor class, not one per step."""

    class Identity(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    inspected = []
    signature = inspect.signature

    def counting_signature(obj, *args, **kwargs):
        if isinstance(getattr(obj, "__self__", None), Identity):
            inspected.append(obj)
        return signature(obj, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting_signature)
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("padded")
    processors = transformers.LogitsProcessorList([Identity(), Identity()])
    actual = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=6, logits_processor=processors,
                      eos_token_id=None)
    assert actual.shape[1] == input_ids.shape[1] + 6
    assert len(inspected) == 1


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_without_cache_matches_transformers(kind):
    model = tiny_model(kind)
    input_ids, attention_mask = _prompt("padded")
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=5, use_cache=False, num_beams=2,
                             return_dict_in_generate=True, output_scores=True)
    _assert_same_output(expected, actual, beams=True)
    assert actual.past_key_values is None


def test_attention_mask_is_inferred_from_padding_like_transformers():
    model = tiny_model("llama")
    input_ids, _ = _prompt("padded")
    expected = model.generate(input_ids, max_new_tokens=5)
    actual = generate(model, input_ids, max_new_tokens=5)
    assert torch.equal(actual, expected)



@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_all_ones_mask_is_left_out_of_model_calls_with_the_same_result(kind, monkeypatch):
    """Without padding, the dynamic-cache loop calls the model without a mask (transformers treats an all-ones
    mask as none); with padding, or with a static cache, every call gets the mask. Outputs equal transformers'."""
    model = tiny_model(kind)
    masks_seen = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        masks_seen.append(kwargs.get("attention_mask"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    for batch, cache_implementation, expect_mask in (("single", None, False), ("padded", None, True),
                                                      ("single", "static", True)):
        input_ids, attention_mask = _prompt(batch)
        options = dict(max_new_tokens=4, eos_token_id=None, return_dict_in_generate=True, output_scores=True)
        expected = generate(model, input_ids, attention_mask=attention_mask, **options) if cache_implementation \
            else model.generate(input_ids, attention_mask=attention_mask, **options)
        masks_seen.clear()
        actual = generate(model, input_ids, attention_mask=attention_mask, cache_implementation=cache_implementation,
                          **options)
        assert len(masks_seen) == 4
        assert all((mask is not None) == expect_mask for mask in masks_seen), (batch, cache_implementation)
        _assert_same_output(expected, actual)

def test_ragged_token_lists_are_left_padded():
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("padded")
    rows = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
    assert torch.equal(generate(model, rows, max_new_tokens=4),
                       generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=4))


def test_hidden_states_and_attentions_match_transformers():
    model = tiny_model("gpt2", attn_implementation="eager")  # SDPA attention returns no attention weights
    input_ids, attention_mask = _prompt("padded")
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=3, return_dict_in_generate=True,
                             output_hidden_states=True, output_attentions=True)
    # transformers 5 gives padding tokens position 0 where 4.57 (turbogen's spec) gives 1, which changes what is
    # computed at padding positions only; the prompt step's padding queries are compared under 4.57 alone.
    compared = attention_mask.bool() if TRANSFORMERS_5 else torch.ones_like(attention_mask, dtype=torch.bool)
    for name in ("hidden_states", "attentions"):
        want, got = getattr(expected, name), getattr(actual, name)
        assert len(got) == len(want) == 3
        for step, (want_step, got_step) in enumerate(zip(want, got)):
            assert len(got_step) == len(want_step) == model.config.n_layer + (name == "hidden_states")
            for w, g in zip(want_step, got_step):
                if step == 0:  # [rows, prompt positions, ...]: attention weights have the heads first
                    w, g = (w, g) if name == "hidden_states" else (w.transpose(1, 2), g.transpose(1, 2))
                    w, g = w[compared], g[compared]
                torch.testing.assert_close(g, w)


class _PreparesItsOwnInputs(transformers.LlamaForCausalLM):
    """A model overriding prepare_inputs_for_generation: generate must go through it."""

    calls = 0

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        type(self).calls += 1
        return super().prepare_inputs_for_generation(input_ids, **kwargs)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_model_with_own_input_preparation_matches_transformers(num_beams):
    reference = tiny_model("llama")
    model = _PreparesItsOwnInputs(reference.config).eval()
    model.load_state_dict(reference.state_dict())
    input_ids, attention_mask = _prompt("padded")
    expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=5, num_beams=num_beams,
                             return_dict_in_generate=True, output_scores=True)
    _assert_same_output(expected, actual, beams=num_beams > 1)
    calls_before = _PreparesItsOwnInputs.calls
    generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=5)
    assert _PreparesItsOwnInputs.calls - calls_before == 5


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_other_architectures_match_transformers(kind):
    model = tiny_model(kind)
    input_ids, attention_mask = _prompt("padded")
    for options in (dict(), dict(num_beams=2)):
        expected, actual = _both(model, input_ids, attention_mask, max_new_tokens=5, return_dict_in_generate=True,
                                 output_scores=True, **options)
        _assert_same_output(expected, actual, beams="num_beams" in options)


# -- configuration resolution --------------------------------------------------------------------------------


def test_model_generation_config_supplies_defaults():
    model = tiny_model("llama", fresh=True)
    model.generation_config.max_new_tokens = 3
    model.generation_config.num_beams = 2
    input_ids, attention_mask = _prompt("single")
    out = generate(model, input_ids, attention_mask=attention_mask)
    assert torch.equal(out, model.generate(input_ids, attention_mask=attention_mask))
    assert out.shape[1] == input_ids.shape[1] + 3


def test_model_defaults_fill_only_values_left_at_global_defaults():
    """transformers' rule: with a user config, model defaults replace only the fields the user left at the
    global default, so an explicit value (even the global default passed as a kwarg) wins."""
    model = tiny_model("llama", fresh=True)
    model.generation_config.max_new_tokens = 3
    model.generation_config.repetition_penalty = 1.5
    input_ids, attention_mask = _prompt("single")
    user = GenerationConfig(max_new_tokens=5)
    expected = model.generate(input_ids, attention_mask=attention_mask,
                              generation_config=transformers.GenerationConfig(max_new_tokens=5))
    actual = generate(model, input_ids, attention_mask=attention_mask, generation_config=user)
    assert torch.equal(actual, expected) and actual.shape[1] == input_ids.shape[1] + 5
    without_penalty = generate(model, input_ids, attention_mask=attention_mask, generation_config=user,
                               repetition_penalty=1.0)
    assert torch.equal(without_penalty, model.generate(input_ids, attention_mask=attention_mask,
                                                       max_new_tokens=5, repetition_penalty=1.0))
    assert not torch.equal(without_penalty, actual), "the model's repetition penalty should have mattered"
    # use_model_defaults=False: only the special tokens come from the model.
    no_defaults = generate(model, input_ids, attention_mask=attention_mask, generation_config=user,
                           use_model_defaults=False)
    assert torch.equal(no_defaults, without_penalty)


def test_generation_config_forms_are_equivalent():
    model = tiny_model("gpt2")
    input_ids, attention_mask = _prompt("padded")
    parameters = {"max_new_tokens": 4, "num_beams": 2}
    forms = [GenerationConfig(**parameters), transformers.GenerationConfig(**parameters), dict(parameters)]
    results = [generate(model, input_ids, attention_mask=attention_mask, generation_config=form) for form in forms]
    assert all(torch.equal(result, results[0]) for result in results)


@pytest.mark.parametrize(
    "lengths",
    [dict(max_length=9), dict(max_length=30, max_new_tokens=3), dict(min_length=9, eos_token_id=EOS_ID, max_length=12),
     dict(min_new_tokens=3, max_new_tokens=5, eos_token_id=EOS_ID), dict()],
    ids=["max_length", "max_new_tokens_wins", "min_length", "min_new_tokens", "default_20_new"],
)
def test_length_resolution_matches_transformers(lengths):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("padded")
    expected, actual = _both(model, input_ids, attention_mask, **lengths)
    assert torch.equal(actual, expected)


def test_default_length_is_capped_by_max_position_embeddings():
    model = tiny_model("gpt2", n_positions=12)
    input_ids, attention_mask = _prompt("padded")
    assert generate(model, input_ids, attention_mask=attention_mask).shape[1] == 12


def test_user_cache_is_continued():
    """A cache holding the start of the prompt is extended, not recomputed, as in transformers."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    with torch.no_grad():
        prefix_cache = model(input_ids[:, :2], use_cache=True).past_key_values
    expected = model.generate(input_ids, max_new_tokens=4)
    actual = generate(model, input_ids, max_new_tokens=4, past_key_values=prefix_cache)
    assert torch.equal(actual, expected)
    assert prefix_cache.get_seq_length() == input_ids.shape[1] + 3


def test_legacy_tuple_cache_is_accepted_and_returned_on_request():
    """transformers 4.57's legacy cache format, a tuple of ``(keys, values)`` per layer, works with either
    transformers (5.x removed it from its own API)."""
    model = tiny_model("llama")
    input_ids, _ = _prompt("single")
    with torch.no_grad():
        prefix_cache = model(input_ids[:, :2], use_cache=True).past_key_values
    legacy = tuple((layer.keys, layer.values) for layer in prefix_cache.layers)
    out = generate(model, input_ids, max_new_tokens=4, past_key_values=legacy, return_dict_in_generate=True,
                   return_legacy_cache=True)
    assert torch.equal(out.sequences, model.generate(input_ids, max_new_tokens=4))
    assert isinstance(out.past_key_values, tuple) and len(out.past_key_values) == model.config.num_hidden_layers
    for keys, values in out.past_key_values:
        assert keys.shape[-2] == values.shape[-2] == input_ids.shape[1] + 3


def test_tokenizer_round_trip_sanity():
    """The shared tokenizer and models agree on the vocabulary (guards the builders themselves)."""
    tokenizer = tiny_tokenizer()
    for kind in MODEL_KINDS:
        assert tiny_model(kind).config.vocab_size == len(tokenizer)
    assert tokenizer.decode(tokenizer("hello world").input_ids) == "hello world"
