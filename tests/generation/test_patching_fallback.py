"""A patched model's ``generate`` falls back to the model's original ``generate`` for the calls turbogen does
not implement (``UnsupportedByTurbogen``), with one ``TurbogenFallbackWarning`` per reason, and returns exactly
what the unpatched model returns; invalid arguments still raise turbogen's error without a retry, and
``turbogen.generate`` itself keeps refusing."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import transformers

import turbogen
import turbogen.generation.prepare as prepare
import turbogen.patching as patching
from conftest import ENCODER_DECODER_IN_4_45, skip_on_transformers_4_45
from tiny_models import encode_batch, tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen import TurbogenFallbackWarning, UnsupportedByTurbogen

pytestmark = pytest.mark.usefixtures("tiny_model_environment")


@pytest.fixture(autouse=True)
def fresh_warning_registry(monkeypatch):
    """Each test sees every refusal reason as not yet reported (the registry is per process)."""
    monkeypatch.setattr(patching, "_warned_reasons", set())


@pytest.fixture
def injected_refusal(monkeypatch):
    """turbogen refuses every call, before it touches the streamer or the model, for the reason
    ``"injected <max_new_tokens>"``; transformers is unaffected."""

    def refuse(config, model_kwargs):
        raise UnsupportedByTurbogen("an injected refusal", reason=f"injected {config.max_new_tokens}")

    monkeypatch.setattr(prepare, "_reject_unsupported_parameters", refuse)


@pytest.fixture(scope="module")
def prompt():
    return encode_batch(["the quick brown fox", "stop"])


def _outcome(call):
    """What a call gives: its result, or the type and message of the error it raises."""
    try:
        return "returned", call()
    except Exception as error:  # noqa: BLE001 - the comparison is the point
        return "raised", (type(error), str(error))


def _assert_same_outcome(patched, original):
    assert patched[0] == original[0], (patched, original)
    if patched[0] == "raised":
        assert patched[1] == original[1]
    elif isinstance(original[1], torch.Tensor):
        assert torch.equal(patched[1], original[1])
    else:
        assert torch.equal(patched[1].sequences, original[1].sequences)


def _fallback_warnings(caught):
    return [w for w in caught if issubclass(w.category, TurbogenFallbackWarning)]


def _embeds(model, ids):
    with torch.no_grad():
        return model.get_input_embeddings()(ids)


# Calls turbogen refuses and transformers serves offline (or refuses too, with its own error), with the refusal
# reason each one is reported under. Each builds its keyword arguments from (model, input_ids, attention_mask).
# A feature turbogen implements later is skipped here; the tests below inject refusals, so the fallback stays
# covered whatever turbogen implements.
UNSUPPORTED_CALLS = {
    # (token healing runs natively now: tests/generation/test_token_healing.py)
    "prompt_lookup_with_hidden_states": (lambda m, ids, mask: dict(input_ids=ids, attention_mask=mask,
                                                                   prompt_lookup_num_tokens=2,
                                                                   return_dict_in_generate=True,
                                                                   output_hidden_states=True),
                                         "assisted generation with output_attentions or output_hidden_states"),
    # transformers fails on this one (its chunked prefill does not take embeddings): its error is what comes out.
    "prefill_chunks_of_inputs_embeds": (lambda m, ids, mask: dict(inputs_embeds=_embeds(m, ids), attention_mask=mask,
                                                                  prefill_chunk_size=2),
                                        "prefill_chunk_size with inputs_embeds"),
    # transformers refuses these too: the patched model raises transformers' own error.
    "low_memory_beam": (lambda m, ids, mask: dict(input_ids=ids, attention_mask=mask, num_beams=2,
                                                  low_memory=True), "low_memory beam search"),
    "streamer_with_beam": (lambda m, ids, mask: dict(input_ids=ids[:1], attention_mask=mask[:1], num_beams=2,
                                                     streamer=transformers.TextStreamer(tiny_tokenizer())),
                           "streamer with beam search"),
    # A transformers 5 parameter: 5.x samples with it, 4.57 rejects it as an unused model kwarg.
    "top_h": (lambda m, ids, mask: dict(input_ids=ids, attention_mask=mask, do_sample=True, top_h=0.5), "top_h"),
}


@pytest.mark.parametrize("case", UNSUPPORTED_CALLS)
def test_unsupported_call_falls_back_to_the_original_generate(prompt, case):
    model = tiny_model("llama", fresh=True)
    make_arguments, reason = UNSUPPORTED_CALLS[case]
    input_ids, attention_mask = prompt
    arguments = make_arguments(model, input_ids, attention_mask)

    refusal = _outcome(lambda: turbogen.generate(model, max_new_tokens=4, **arguments))
    if refusal[0] == "returned":
        pytest.skip(f"turbogen implements {case} now")
    assert issubclass(refusal[1][0], UnsupportedByTurbogen) and issubclass(refusal[1][0], ValueError), refusal
    with pytest.raises(UnsupportedByTurbogen) as refused:
        turbogen.generate(model, max_new_tokens=4, **arguments)
    assert refused.value.reason == reason

    torch.manual_seed(0)
    original = _outcome(lambda: model.generate(max_new_tokens=4, **arguments))
    patching.patch(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # the second call is not reported again
            torch.manual_seed(0)
            _assert_same_outcome(_outcome(lambda: model.generate(max_new_tokens=4, **arguments)), original)
    reported = _fallback_warnings(caught)
    assert len(reported) == 1 and reason in str(reported[0].message)
    assert reported[0].filename == __file__  # attributed to the caller of `generate`
    patching.unpatch(model)


REFUSALS = {
    "contrastive_search": (dict(penalty_alpha=0.6, top_k=4), "generation mode contrastive_search"),
    "dola": (dict(dola_layers="low"), "generation mode dola_generation"),
    "prompt_lookup_with_guidance": (dict(prompt_lookup_num_tokens=3, guidance_scale=1.5),
                                    "assisted generation with guidance_scale"),
    "use_mtp": (dict(use_mtp=True), "use_mtp"),
}


@pytest.mark.filterwarnings("ignore:GenerationConfig has flags")
@pytest.mark.parametrize("case", REFUSALS)
def test_turbogen_generate_refuses_with_the_subclass_and_a_stable_reason(prompt, case):
    # (transformers 4.57 fetches most of these methods from the Hub, so no offline fallback comparison here.)
    options, reason = REFUSALS[case]
    input_ids, attention_mask = prompt
    call = lambda: turbogen.generate(tiny_model("llama"), input_ids, attention_mask=attention_mask,  # noqa: E731
                                     max_new_tokens=3, **options)
    if _outcome(call)[0] == "returned":
        pytest.skip(f"turbogen implements {case} now")
    with pytest.raises(UnsupportedByTurbogen) as refusal:
        call()
    assert isinstance(refusal.value, ValueError) and refusal.value.reason == reason
    assert pickle.loads(pickle.dumps(refusal.value)).reason == reason


def test_one_warning_per_reason(prompt, injected_refusal):
    model = patching.patch(tiny_model("llama", fresh=True))
    input_ids, attention_mask = prompt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for max_new_tokens in (2, 3, 2, 3, 2):
            expected = _outcome(lambda: type(model).generate(model, input_ids, attention_mask=attention_mask,
                                                             max_new_tokens=max_new_tokens))
            _assert_same_outcome(_outcome(lambda: model.generate(input_ids, attention_mask=attention_mask,
                                                                 max_new_tokens=max_new_tokens)), expected)
    assert [str(w.message).rsplit(": ", 1)[-1] for w in _fallback_warnings(caught)] == ["injected 2.",
                                                                                       "injected 3."]


@skip_on_transformers_4_45(ENCODER_DECODER_IN_4_45)
def test_encoder_decoder_model_runs_and_falls_back_where_unsupported():
    config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    input_ids = torch.tensor([[5, 9, 12, 3, 1]])
    # Encoder-decoder generation is implemented; a sliding-window cache is not (for encoder-decoders), and falls back.
    expected = model.generate(input_ids, max_new_tokens=5, num_beams=2)
    assert torch.equal(turbogen.generate(model, input_ids, max_new_tokens=5, num_beams=2), expected)
    unsupported = dict(cache_implementation="sliding_window", max_new_tokens=5, num_beams=2)
    with pytest.raises(UnsupportedByTurbogen, match="encoder-decoder"):
        turbogen.generate(model, input_ids, **unsupported)
    expected = model.generate(input_ids, **unsupported)
    patching.patch(model)
    with pytest.warns(TurbogenFallbackWarning, match="encoder-decoder model"):
        assert torch.equal(model.generate(input_ids, **unsupported), expected)


class _RecordingStreamer(transformers.generation.streamers.BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


def test_streamer_gets_the_prompt_once_when_the_refusal_comes_late(prompt, monkeypatch):
    # turbogen refuses a cache kind only after resolving the whole call; it streams the prompt after every
    # refusal point, so the fallback's streamer receives exactly what the original alone would send.
    import turbogen.cache

    def refuse(*args, **kwargs):
        raise UnsupportedByTurbogen("an injected cache refusal", reason="injected cache")

    monkeypatch.setattr(turbogen.cache, "make_cache", refuse)
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt[0][:1], prompt[1][:1]
    arguments = dict(attention_mask=attention_mask, max_new_tokens=4)
    expected_streamer, streamer = _RecordingStreamer(), _RecordingStreamer()
    expected = model.generate(input_ids, streamer=expected_streamer, **arguments)
    refused = _RecordingStreamer()
    with pytest.raises(UnsupportedByTurbogen):
        turbogen.generate(model, input_ids, streamer=refused, **arguments)
    assert refused.puts == [] and refused.ended == 0
    patching.patch(model)
    with pytest.warns(TurbogenFallbackWarning, match="injected cache"):
        assert torch.equal(model.generate(input_ids, streamer=streamer, **arguments), expected)
    assert len(streamer.puts) == len(expected_streamer.puts) == 1 + 4 and streamer.ended == 1
    assert all(torch.equal(a, b) for a, b in zip(streamer.puts, expected_streamer.puts))


class _Spy:
    """Stands in for the model's original ``generate`` and counts the calls it forwards."""

    def __init__(self, generate):
        self.generate, self.calls = generate, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.generate(*args, **kwargs)


INVALID_ARGUMENTS = {
    "negative_length": dict(max_new_tokens=-1),
    "negative_temperature": dict(max_new_tokens=3, do_sample=True, temperature=-1.0),
    "unknown_kwarg": dict(max_new_tokens=3, not_a_parameter=1),
}


@pytest.mark.parametrize("case", INVALID_ARGUMENTS)
def test_invalid_arguments_raise_turbogen_error_without_running_the_original(prompt, case):
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    arguments = INVALID_ARGUMENTS[case]
    with pytest.raises(ValueError) as direct:
        turbogen.generate(model, input_ids, attention_mask=attention_mask, **arguments)
    assert not isinstance(direct.value, UnsupportedByTurbogen)
    spy = model.generate = _Spy(model.generate)
    patching.patch(model)
    with pytest.raises(ValueError) as patched:
        model.generate(input_ids, attention_mask=attention_mask, **arguments)
    assert type(patched.value) is type(direct.value) and str(patched.value) == str(direct.value)
    assert spy.calls == 0


def test_the_spy_sees_fallbacks(prompt, injected_refusal):
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    spy = model.generate = _Spy(model.generate)
    patching.patch(model)
    with pytest.warns(TurbogenFallbackWarning):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2)
    assert spy.calls == 1


TURBOGEN_ONLY = {
    "seed_argument": lambda: dict(do_sample=True, seed=3),
    "penalty_argument": lambda: dict(presence_penalty=0.5),
    "seed_in_turbogen_config": lambda: dict(generation_config=turbogen.GenerationConfig(do_sample=True, seed=3)),
}


@pytest.mark.parametrize("case", TURBOGEN_ONLY)
def test_turbogen_parameters_are_not_sent_to_the_original(prompt, injected_refusal, case):
    # transformers has no `seed`: an argument would trade turbogen's refusal for an unused-kwarg error, a config
    # entry would be silently ignored.
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    spy = model.generate = _Spy(model.generate)
    patching.patch(model)
    with pytest.raises(UnsupportedByTurbogen, match="injected refusal"):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2, **TURBOGEN_ONLY[case]())
    assert spy.calls == 0
    with pytest.warns(TurbogenFallbackWarning):  # without them, the same call falls back
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2, seed=None,
                       generation_config=turbogen.GenerationConfig(do_sample=True))
    assert spy.calls == 1


def test_positional_arguments_reach_the_original_by_name(prompt, injected_refusal):
    # turbogen's positional order differs from transformers' after `prefix_allowed_tokens_fn`; the fallback
    # passes everything by name.
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    config = transformers.GenerationConfig(max_new_tokens=3, pad_token_id=0, num_beams=2)
    expected = model.generate(input_ids, config, attention_mask=attention_mask)
    patching.patch(model)
    with pytest.warns(TurbogenFallbackWarning):
        assert torch.equal(model.generate(input_ids, config, None, None, None, attention_mask=attention_mask),
                           expected)


def test_unpatch_after_fallbacks_restores_the_original_exactly(prompt, injected_refusal):
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    before = set(vars(model))
    patching.patch(model)
    with pytest.warns(TurbogenFallbackWarning):
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2)
    patching.unpatch(model)
    assert set(vars(model)) == before
    assert model.generate.__func__ is type(model).generate and model.generate.__self__ is model

    override = model.generate = _Spy(model.generate)
    patching.patch(model)
    model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2)
    assert override.calls == 1
    patching.unpatch(model)
    assert model.generate is override and set(vars(model)) == before | {"generate"}


def test_a_turbogen_config_reaches_the_original_as_a_transformers_config(prompt, injected_refusal):
    # transformers 5 cannot validate turbogen's config (4.57's defaults); the fallback hands over its parameters.
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    settings = dict(max_new_tokens=4, num_beams=2, repetition_penalty=1.3, pad_token_id=0)
    expected = model.generate(input_ids, attention_mask=attention_mask,
                              generation_config=transformers.GenerationConfig(**settings))
    patching.patch(model)
    with pytest.warns(TurbogenFallbackWarning):
        assert torch.equal(model.generate(input_ids, attention_mask=attention_mask,
                                          generation_config=turbogen.GenerationConfig(**settings)), expected)
