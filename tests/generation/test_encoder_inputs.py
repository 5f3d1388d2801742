"""turbogen.generate on encoder-decoder models whose encoder reads something else than token ids, against
transformers' own generate: a tiny Whisper-style speech-to-text model (``input_features``), a tiny
image-to-text ``VisionEncoderDecoderModel`` (ViT + GPT-2, ``pixel_values``), a tiny ``SpeechEncoderDecoderModel``
(Wav2Vec2 + GPT-2, raw ``input_values``) and a text model's encoder fed ``inputs_embeds``. The encoder runs once on that input; greedy search and beam search give identical sequences,
beam indices and bit-equal scores; sampling and beam sampling run and are reproducible.

The oracle for the Whisper-style model is transformers' generic ``GenerationMixin.generate(model,
input_features=...)``: ``WhisperForConditionalGeneration.generate`` overrides it with Whisper-only logic (forced
language and task tokens, timestamps, long-form chunking) that turbogen does not reproduce.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import GenerationMixin

from conftest import ENCODER_DECODER_IN_4_45, skip_on_transformers_4_45
from tiny_models import (BOS_ID, audio_features, encode_batch, images, tiny_model_environment,  # noqa: F401
                         tiny_speech_encoder_decoder, tiny_vision_encoder_decoder, tiny_whisper, waveforms)
from test_encoder_decoder import assert_same_inputs, model_calls
from tolerances import assert_bit_exact, assert_same_generation
from turbogen import UnsupportedByTurbogen
from turbogen.generate import generate

pytestmark = [pytest.mark.usefixtures("tiny_model_environment"), skip_on_transformers_4_45(ENCODER_DECODER_IN_4_45)]

NEW_TOKENS = 6
RECORD = dict(return_dict_in_generate=True, output_scores=True)


def _transformers_generate(model, **kwargs):
    """transformers' generic generate (Whisper's own override adds Whisper-only logic: see the module docstring)."""
    return GenerationMixin.generate(model, **kwargs)


MODELS = {
    "whisper": (tiny_whisper, "input_features", audio_features),
    "vision": (tiny_vision_encoder_decoder, "pixel_values", images),
    # The model's main input is `inputs`, its encoder's `input_values`: 4.57 reads the encoder's name.
    "speech": (tiny_speech_encoder_decoder, "input_values", waveforms),
}


def _model_and_input(kind: str, batch: int):
    build, name, make_input = MODELS[kind]
    return build(), name, make_input(batch)


@pytest.mark.parametrize("batch", (1, 3))
@pytest.mark.parametrize("kind", MODELS)
def test_greedy_matches_transformers(kind, batch):
    model, name, encoder_input = _model_and_input(kind, batch)
    options = dict(max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, **RECORD)
    expected = _transformers_generate(model, **{name: encoder_input}, **options)
    actual = generate(model, **{name: encoder_input}, **options)
    assert_same_generation(expected, actual)
    assert isinstance(actual, transformers.generation.utils.GenerateEncoderDecoderOutput)
    assert actual.sequences.shape == (batch, NEW_TOKENS + 1)
    assert actual.sequences[:, 1:].unique().numel() > 1, "outputs must vary to be discriminating"
    # The encoder input as the positional `inputs` too, and the plain tensor form.
    assert torch.equal(generate(model, encoder_input, max_new_tokens=NEW_TOKENS), expected.sequences)


@pytest.mark.parametrize("kind", MODELS)
def test_beam_search_matches_transformers(kind):
    model, name, encoder_input = _model_and_input(kind, 3)
    options = dict(max_new_tokens=NEW_TOKENS, num_beams=3, num_return_sequences=2, length_penalty=1.3, **RECORD)
    expected = _transformers_generate(model, **{name: encoder_input}, **options)
    actual = generate(model, **{name: encoder_input}, **options)
    assert_same_generation(expected, actual, beams=True)
    assert isinstance(actual, transformers.generation.utils.GenerateBeamEncoderDecoderOutput)


@pytest.mark.parametrize("beams", (1, 2))
@pytest.mark.parametrize("kind", MODELS)
def test_decoder_steps_pass_the_preparations_inputs(kind, beams):
    """Every decoder call receives what transformers' own preparation passes it (the same keywords, equal
    tensors; under 5.x the encoder's input is not passed again after the first call), as for the text models
    (test_encoder_decoder.py), and the outputs are equal."""
    model, name, encoder_input = _model_and_input(kind, 2)
    options = dict(max_new_tokens=NEW_TOKENS, num_beams=beams, **RECORD)
    outputs = {}
    want = model_calls(model, lambda: outputs.setdefault(
        "expected", _transformers_generate(model, **{name: encoder_input}, **options)))
    got = model_calls(model, lambda: outputs.setdefault("actual", generate(model, **{name: encoder_input}, **options)))
    assert_same_generation(outputs["expected"], outputs["actual"], beams=beams > 1)
    assert len(got) == len(want) > 1
    for (got_args, got_kwargs), (want_args, want_kwargs) in zip(got, want):
        assert got_args == want_args == ()
        assert_same_inputs(got_kwargs, want_kwargs)


@pytest.mark.parametrize("kind", MODELS)
def test_sampling_and_beam_sampling_run_and_are_reproducible(kind):
    model, name, encoder_input = _model_and_input(kind, 2)
    for beams in (1, 2):
        options = dict(do_sample=True, num_beams=beams, max_new_tokens=5, num_return_sequences=2, seed=3)
        first = generate(model, **{name: encoder_input}, **options)
        assert torch.equal(first, generate(model, **{name: encoder_input}, **options))
        assert first.shape == (4, 6)
        assert (first[:, 0] == BOS_ID).all()


def test_whisper_attentions_static_cache_and_decoder_prompt_match_transformers():
    model, _, features = _model_and_input("whisper", 2)
    expected = _transformers_generate(model, input_features=features, max_new_tokens=3, output_attentions=True,
                                      output_hidden_states=True, **RECORD)
    actual = generate(model, input_features=features, max_new_tokens=3, output_attentions=True,
                      output_hidden_states=True, **RECORD)
    assert_same_generation(expected, actual)
    for name in ("encoder_attentions", "encoder_hidden_states"):
        for want, got in zip(getattr(expected, name), getattr(actual, name), strict=True):
            assert_bit_exact(got, want)
    for want, got in zip(expected.cross_attentions[-1], actual.cross_attentions[-1], strict=True):
        assert_bit_exact(got, want)
    for beams in (1, 2):
        options = dict(max_new_tokens=4, num_beams=beams, cache_implementation="static", **RECORD)
        assert_same_generation(_transformers_generate(model, input_features=features, **options),
                               generate(model, input_features=features, **options), beams=beams > 1)
    # A decoder prompt, as `decoder_input_ids` or (the encoder not reading them) `input_ids`: 4.57 never puts
    # Whisper's start token in front of it.
    prompt = torch.tensor([[7, 20, 21], [7, 22, 23]])
    for name in ("decoder_input_ids", "input_ids"):
        expected = _transformers_generate(model, input_features=features, max_new_tokens=4, **{name: prompt})
        actual = generate(model, input_features=features, max_new_tokens=4, **{name: prompt})
        assert torch.equal(actual, expected)
        assert actual[:, :3].tolist() == prompt.tolist()


def test_encoder_outputs_passed_in_match_transformers():
    model, _, features = _model_and_input("whisper", 2)
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(features, return_dict=True)
    expected = _transformers_generate(model, input_features=features, max_new_tokens=5, num_beams=2)
    assert torch.equal(generate(model, encoder_outputs=encoder_outputs, max_new_tokens=5, num_beams=2), expected)


def test_missing_or_doubled_encoder_input_raises():
    model, _, features = _model_and_input("whisper", 1)
    with pytest.raises(ValueError, match="input_features"):
        generate(model, max_new_tokens=3)
    with pytest.raises(ValueError, match="only once"):
        generate(model, features, input_features=features, max_new_tokens=3)
    with pytest.raises(ValueError, match="input_features"):
        generate(model, input_features=features[0, 0], max_new_tokens=3)
    # The encoder-side processors read the encoder's token ids, which an audio encoder has none of.
    with pytest.raises(UnsupportedByTurbogen, match="encoder's input token ids"):
        generate(model, input_features=features, max_new_tokens=3, encoder_repetition_penalty=1.5)


# --- a text encoder fed embeddings ------------------------------------------------------------------------------


def _t5():
    from test_encoder_decoder import _model

    return _model("t5")


@pytest.mark.parametrize("beams", (1, 3))
def test_encoder_inputs_embeds_match_transformers(beams):
    model = _t5()
    ids, mask = encode_batch(["the quick brown fox jumps", "stop", "hello world again"])
    embeds = model.get_input_embeddings()(ids).detach()
    options = dict(max_new_tokens=NEW_TOKENS, num_beams=beams, **RECORD)
    for arguments in ({"attention_mask": mask}, {}):  # without a mask: ones over the embeddings (4.57's default)
        expected = model.generate(inputs_embeds=embeds, **arguments, **options)
        actual = generate(model, inputs_embeds=embeds, **arguments, **options)
        assert_same_generation(expected, actual, beams=beams > 1)
    # The embeddings of the ids give the ids' output.
    assert torch.equal(actual.sequences, generate(model, ids, attention_mask=torch.ones_like(ids), **options).sequences)


def test_encoder_inputs_embeds_refusals():
    model = _t5()
    ids, mask = encode_batch(["the quick brown fox"])
    embeds = model.get_input_embeddings()(ids).detach()
    with pytest.raises(ValueError, match="pick one"):
        generate(model, ids, inputs_embeds=embeds, max_new_tokens=3)
    # transformers 4.57 fails too: it feeds the decoder ids beside them, and the model refuses both.
    with pytest.raises(ValueError, match="decoder_inputs_embeds") as refusal:
        generate(model, ids, attention_mask=mask, decoder_inputs_embeds=embeds[:, :1], max_new_tokens=3)
    assert not isinstance(refusal.value, UnsupportedByTurbogen)
    with pytest.raises(ValueError):
        model.generate(ids, attention_mask=mask, decoder_inputs_embeds=embeds[:, :1], max_new_tokens=3)
    with pytest.raises(UnsupportedByTurbogen, match="encoder's input token ids"):
        generate(model, inputs_embeds=embeds, max_new_tokens=3, encoder_no_repeat_ngram_size=2)
