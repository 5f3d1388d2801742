"""The embedded default model, its random-weights fallback, and loading of local model dirs."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")

from turbogen import models  # noqa: E402
from turbogen.config import as_generation_config  # noqa: E402

from tolerances import assert_close_across_compilations  # noqa: E402

MAX_WEIGHTS_BYTES = 20 * 1024 * 1024
GREEDY = dict(do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=None)
COMMON_ENGLISH_WORDS = {"the", "a", "an", "and", "of", "to", "in", "was", "is", "be", "it", "he", "she", "her",
                        "his", "not", "that", "with", "for", "as", "at", "by", "had", "very", "so"}
ROUND_TRIP_TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "  leading spaces,\ttabs,\nnewlines\n\nand trailing spaces  ",
    "Unicode: café, naïve, 東京, emoji 🙂 -- and <angle brackets>",
    "",
]


@pytest.fixture(scope="module")
def default_model():
    return models.load_default_model()


@pytest.fixture(scope="module")
def fallback_model():
    # The fixture cannot use the function-scoped monkeypatch, so patch by hand around one load.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "default_model_path", lambda: pathlib.Path("/nonexistent/turbogen/default_model"))
        return models.load_default_model()


def _architecture(config) -> dict:
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings",
              "pad_token_id", "bos_token_id", "eos_token_id")
    # transformers 5 moved `rope_theta` into the `rope_parameters` dict.
    rope_theta = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
    return {"rope_theta": rope_theta, **{field: getattr(config, field) for field in fields}}


def _sampling_defaults(generation_config) -> dict:
    """The values generate() uses. Through turbogen's conversion, since transformers 5 leaves a parameter that
    the file does not set (e.g. ``top_k`` at its default 50) at None."""
    fields = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
              "pad_token_id", "bos_token_id", "eos_token_id")
    config = as_generation_config(generation_config)
    return {field: getattr(config, field) for field in fields}


def _sequence_loss(model, token_ids: list[int]) -> float:
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


# ---------------------------------------------------------------------------------------------
# The shipped, trained model
# ---------------------------------------------------------------------------------------------


def test_default_model_path_is_the_package_assets_dir():
    path = models.default_model_path()
    assert path.parts[-3:] == ("turbogen", "assets", "default_model")
    assert (path / "config.json").is_file()


def test_default_model_loads_offline_as_trained_llama(default_model):
    model, tokenizer, is_trained = default_model
    assert is_trained is True
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert 2048 <= len(tokenizer) <= 4096
    assert _architecture(model.config) == _architecture(models.default_model_config(vocab_size=len(tokenizer)))
    assert _sampling_defaults(model.generation_config) == _sampling_defaults(models.default_generation_config())


def test_default_model_loads_in_requested_dtype():
    model, _, is_trained = models.load_default_model(dtype=torch.bfloat16)
    assert is_trained
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_shipped_weights_are_safetensors_within_budget():
    weights = models.default_model_path() / "model.safetensors"
    assert weights.stat().st_size <= MAX_WEIGHTS_BYTES
    with safetensors.safe_open(str(weights), framework="pt") as archive:
        names = list(archive.keys())
    assert "model.embed_tokens.weight" in names
    assert "lm_head.weight" not in names  # tied: the vocabulary matrix is stored once


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_default_tokenizer_round_trips_text(default_model, text):
    _, tokenizer, _ = default_model
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_default_tokenizer_special_tokens(default_model):
    model, tokenizer, _ = default_model
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
        models.PAD_TOKEN, models.BOS_TOKEN, models.EOS_TOKEN)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id)


def test_greedy_generation_reads_as_english(default_model):
    model, tokenizer, _ = default_model
    inputs = tokenizer("She was", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=32, min_new_tokens=32, **GREEDY)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    visible = [character for character in continuation if not character.isspace()]
    letters = sum(character.isalpha() for character in visible)
    assert len(visible) >= 40, continuation
    assert letters / len(visible) >= 0.8, continuation
    words = re.findall(r"[A-Za-z]+", continuation.lower())
    assert len(words) >= 10, continuation
    # An untrained model can emit letters too (one long token over and over); English uses
    # its function words.
    assert len(set(words) & COMMON_ENGLISH_WORDS) >= 3, continuation


def test_trained_model_prefers_english_to_the_same_tokens_shuffled(default_model):
    model, tokenizer, _ = default_model
    ids = tokenizer("She could not help smiling at the idea of his being so very happy in the country.")["input_ids"]
    shuffled = [ids[0]] + [ids[1:][index] for index in torch.randperm(len(ids) - 1, generator=torch.Generator().manual_seed(0))]
    assert _sequence_loss(model, ids) < _sequence_loss(model, shuffled) - 1.0


# ---------------------------------------------------------------------------------------------
# Fallback when the assets are missing
# ---------------------------------------------------------------------------------------------


def test_fallback_is_an_untrained_model_of_the_default_architecture(fallback_model):
    model, tokenizer, is_trained = fallback_model
    assert is_trained is False
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert not model.training
    assert len(tokenizer) == model.config.vocab_size == 259
    assert _architecture(model.config) == _architecture(models.default_model_config(vocab_size=259))
    assert _sampling_defaults(model.generation_config) == _sampling_defaults(models.default_generation_config())


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_fallback_tokenizer_round_trips_text(fallback_model, text):
    _, tokenizer, _ = fallback_model
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_fallback_generates_and_decodes(fallback_model):
    model, tokenizer, _ = fallback_model
    inputs = tokenizer("Hello", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, **GREEDY)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 8)
    assert isinstance(tokenizer.decode(output[0], skip_special_tokens=True), str)


def test_fallback_is_seeded_and_leaves_global_rng_alone(fallback_model, monkeypatch, tmp_path):
    monkeypatch.setattr(models, "default_model_path", lambda: tmp_path)
    (tmp_path / "config.json").write_text("{}")  # incomplete assets also mean fallback
    rng_before = torch.get_rng_state()
    model, _, is_trained = models.load_default_model()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not is_trained
    first = dict(fallback_model[0].named_parameters())
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, first[name]), name


# ---------------------------------------------------------------------------------------------
# load_model and argument checking
# ---------------------------------------------------------------------------------------------


def test_load_model_reads_any_saved_causal_lm(fallback_model, tmp_path, capfd):
    model, tokenizer, _ = fallback_model
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    loaded, loaded_tokenizer = models.load_model(str(tmp_path), dtype=torch.float64)
    assert capfd.readouterr() == ("", "")  # quiet: no progress bar (transformers 5 draws one by default)
    assert transformers.utils.logging.is_progress_bar_enabled()  # and the setting is restored
    assert next(loaded.parameters()).dtype == torch.float64
    assert loaded_tokenizer("abc")["input_ids"] == tokenizer("abc")["input_ids"]
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    with torch.no_grad():
        # The same weights run in float64 and in float32: equal up to float32's rounding.
        assert_close_across_compilations(loaded(ids).logits.float(), model(ids).logits, torch.float32)


def test_load_model_rejects_a_missing_directory(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        models.load_model(missing)


def test_load_model_rejects_a_file(tmp_path):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match="not a directory"):
        models.load_model(file)


def test_load_model_rejects_a_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*config.json"):
        models.load_model(tmp_path)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: models.load_model(42), TypeError, "path"),
        (lambda: models.load_default_model(dtype="float32"), TypeError, "dtype"),
        (lambda: models.load_default_model(dtype=torch.int64), ValueError, "dtype"),
        (lambda: models.default_model_config(vocab_size=2.5), TypeError, "vocab_size"),
        (lambda: models.default_model_config(vocab_size=3), ValueError, "vocab_size"),
        (lambda: models.build_byte_level_tokenizer("some text"), TypeError, "texts"),
        (lambda: models.build_byte_level_tokenizer(vocab_size=100), ValueError, "vocab_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_tokenizer_learns_merges_from_texts():
    tokenizer = models.build_byte_level_tokenizer(["the cat sat on the mat"] * 50, vocab_size=300)
    assert 259 < len(tokenizer) <= 300
    assert len(tokenizer("the cat")["input_ids"]) < 1 + len("the cat")
