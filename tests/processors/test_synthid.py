"""SynthID Text watermarking: turbogen's config, logits processor (as a processor and as a stage) and
generate() against transformers' on the same inputs, bit for bit."""

import dataclasses
import json

import pytest
import torch

import turbogen
from turbogen import GenerationConfig, SynthIDTextWatermarkingConfig, SynthIDTextWatermarkLogitsProcessor
from turbogen.processors.build import build_logits_processor
from turbogen.processors.stages import LogitsStages

transformers = pytest.importorskip("transformers")
from conftest import skip_module_on_transformers_4_45  # noqa: E402

skip_module_on_transformers_4_45("SynthID watermarking, the oracle of these tests, arrived in transformers 4.46")
from transformers.generation.logits_process import (  # noqa: E402
    SynthIDTextWatermarkLogitsProcessor as TheirProcessor,
    TopKLogitsWarper as TheirTopK,
)

from tiny_models import encode_batch, tiny_model, tiny_model_environment  # noqa: E402,F401
from tolerances import assert_same_generation, generate_both  # noqa: E402

OPTIONS = dict(ngram_len=3, keys=[654, 400, 836, 123], sampling_table_size=2**16, sampling_table_seed=0,
               context_history_size=6, device="cpu")


def _pair(**overrides):
    options = {**OPTIONS, **overrides}
    return TheirProcessor(**options), SynthIDTextWatermarkLogitsProcessor(**options)


def _token_stream(rows=3, steps=14, vocab=40, seed=0):
    """A prompt and tokens from a 5-token alphabet, so that contexts repeat (the history check matters)."""
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (rows, 4), generator=generator)
    tokens = torch.randint(0, 5, (rows, steps), generator=generator)
    scores = torch.randn(steps, rows, vocab, generator=generator)
    return prompt, tokens, scores


# -- the processor -------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [False, True], ids=["all-calls", "skip-first"])
@pytest.mark.parametrize("history", [1024, 3])
def test_processor_and_stage_equal_transformers_bit_for_bit(skip, history):
    theirs, ours = _pair(skip_first_ngram_calls=skip, context_history_size=history)
    stage = SynthIDTextWatermarkLogitsProcessor(**{**OPTIONS, "skip_first_ngram_calls": skip,
                                                   "context_history_size": history})
    prompt, tokens, scores = _token_stream()
    input_ids = prompt
    unchanged_rows = 0
    for step in range(tokens.shape[1]):
        expected = theirs(input_ids, scores[step].clone())
        assert torch.equal(ours(input_ids, scores[step].clone()), expected), step
        assert torch.equal(stage.apply(input_ids, scores[step].clone()), expected), step
        unchanged_rows += int((expected == scores[step]).all(dim=1).sum())
        input_ids = torch.cat([input_ids, tokens[:, step:step + 1]], dim=1)
        stage.accept(tokens[:, step])
    assert unchanged_rows > 0  # repeated contexts (and skipped calls) were exercised


def test_debug_mode_equals_transformers():
    theirs, ours = _pair(debug_mode=True)
    prompt, tokens, scores = _token_stream(steps=4)
    input_ids = prompt
    for step in range(4):
        assert torch.equal(ours(input_ids, scores[step]), theirs(input_ids, scores[step]))
        input_ids = torch.cat([input_ids, tokens[:, step:step + 1]], dim=1)


def test_stage_rollback_reset_and_multi_token_accept():
    """The state is a function of the accepted tokens: rolling back equals never accepting them."""
    prompt, tokens, scores = _token_stream(rows=2, steps=10)
    reference = SynthIDTextWatermarkLogitsProcessor(**OPTIONS)
    stage = SynthIDTextWatermarkLogitsProcessor(**OPTIONS)
    reference.accept(tokens[:, :6])
    stage.accept(tokens[:, :9])
    stage.rollback(torch.tensor([0, 1]), torch.tensor([3, 3]))
    assert torch.equal(stage.apply(prompt, scores[0]), reference.apply(prompt, scores[0]))
    # Row 1 rolled back further than row 0: each row is its own history.
    stage.rollback(torch.tensor([1]), torch.tensor([2]))
    short = SynthIDTextWatermarkLogitsProcessor(**OPTIONS)
    short.accept(tokens[:, :4])
    assert torch.equal(stage.apply(prompt, scores[1])[1], short.apply(prompt, scores[1])[1])
    assert torch.equal(stage.apply(prompt, scores[1])[0], reference.apply(prompt, scores[1])[0])
    stage.reset(torch.tensor([0]), prompt[:1])
    fresh = SynthIDTextWatermarkLogitsProcessor(**OPTIONS)
    assert torch.equal(stage.apply(prompt, scores[2])[0], fresh.apply(prompt, scores[2])[0])
    stage.reorder(torch.tensor([1, 0]))  # transformers' state does not follow beams either
    assert torch.equal(stage.apply(prompt, scores[2])[0], fresh.apply(prompt, scores[2])[0])


def test_rollback_beyond_the_window_raises():
    stage = SynthIDTextWatermarkLogitsProcessor(**OPTIONS, rollback_window=4)
    stage.accept(torch.zeros(2, 10, dtype=torch.long))
    stage.rollback(torch.tensor([0, 1]), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="rollback_window"):
        stage.rollback(torch.tensor([0]), torch.tensor([1]))


def test_the_processor_is_used_as_a_stateful_stage():
    processor = SynthIDTextWatermarkLogitsProcessor(**OPTIONS)
    stages = LogitsStages.from_processors([processor], torch.zeros(2, 3, dtype=torch.long))
    assert stages[0] is processor
    assert not stages.reads_input_ids


def test_helpers_equal_transformers():
    theirs, ours = _pair(context_history_size=4)
    ids = torch.randint(0, 6, (3, 40), generator=torch.Generator().manual_seed(1))
    ids[0, 17] = 5
    assert torch.equal(ours.compute_g_values(ids), theirs.compute_g_values(ids))
    assert torch.equal(ours.compute_context_repetition_mask(ids), theirs.compute_context_repetition_mask(ids))
    assert torch.equal(ours.compute_eos_token_mask(ids, 5), theirs.compute_eos_token_mask(ids, 5))
    assert torch.equal(ours.sampling_table, theirs.sampling_table)
    assert ours.expected_mean_g_value(100) == theirs.expected_mean_g_value(100)


@pytest.mark.parametrize("options,text", [
    (dict(ngram_len=0), "ngram_len"),
    (dict(keys=[]), "keys"),
    (dict(keys=[1.5]), "keys"),
    (dict(sampling_table_size=2**24 + 1), "sampling_table_size"),
    (dict(context_history_size=0), "context_history_size"),
    (dict(skip_first_ngram_calls="yes"), "skip_first_ngram_calls"),
])
def test_processor_bad_arguments_raise_naming_them(options, text):
    with pytest.raises(ValueError, match=text):
        SynthIDTextWatermarkLogitsProcessor(**{**OPTIONS, **options})


def test_processor_bad_inputs_raise():
    processor = SynthIDTextWatermarkLogitsProcessor(**OPTIONS)
    with pytest.raises(ValueError, match="input_ids"):
        processor(torch.zeros(4, dtype=torch.long), torch.zeros(2, 10))
    processor(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 10))
    with pytest.raises(ValueError, match="reset_state"):
        processor.apply(None, torch.zeros(3, 10))


# -- the config -------------------------------------------------------------------------------------------


CONFIG = dict(ngram_len=3, keys=[5, 7, 11], context_history_size=4)


def test_config_fields_dict_and_json_round_trip(tmp_path):
    ours = SynthIDTextWatermarkingConfig(**CONFIG)
    theirs = transformers.SynthIDTextWatermarkingConfig(**CONFIG)
    assert ours.to_dict() == theirs.to_dict()
    assert SynthIDTextWatermarkingConfig.from_dict(theirs.to_dict()) == ours
    assert isinstance(ours, turbogen.BaseWatermarkingConfig)
    assert isinstance(turbogen.WatermarkingConfig(), turbogen.BaseWatermarkingConfig)
    path = tmp_path / "synthid.json"
    ours.to_json_file(path)
    assert json.loads(path.read_text()) == theirs.to_dict()
    assert dict(list(ours)) == ours.to_dict()
    assert SynthIDTextWatermarkingConfig.from_dict(CONFIG, ngram_len=4, unrelated=1).ngram_len == 4


@pytest.mark.parametrize("field,value", [
    ("ngram_len", 0), ("keys", []), ("keys", "abc"), ("keys", [2**63]), ("context_history_size", -1),
    ("sampling_table_seed", 1.5), ("sampling_table_size", 2**24 + 1), ("debug_mode", 1),
])
def test_config_validation_names_the_field(field, value):
    config = SynthIDTextWatermarkingConfig(**{**CONFIG, field: value})
    with pytest.raises(ValueError, match=f"watermarking_config.{field}"):
        config.validate()
    with pytest.raises(ValueError, match=field):
        GenerationConfig(watermarking_config=config)


def test_generation_config_accepts_every_form_of_synthid_config():
    for value in (SynthIDTextWatermarkingConfig(**CONFIG), transformers.SynthIDTextWatermarkingConfig(**CONFIG),
                  dict(CONFIG)):
        config = GenerationConfig(watermarking_config=value)
        assert config.watermarking_config == SynthIDTextWatermarkingConfig(**CONFIG)
    # A saved config loads back (transformers turns every dict into a WatermarkingConfig and fails here).
    saved = GenerationConfig(watermarking_config=SynthIDTextWatermarkingConfig(**CONFIG)).to_dict()
    assert GenerationConfig.from_dict(saved).watermarking_config == SynthIDTextWatermarkingConfig(**CONFIG)
    # Green-list dicts are still WatermarkingConfig, as in transformers.
    assert isinstance(GenerationConfig(watermarking_config={"bias": 1.0}).watermarking_config,
                      turbogen.WatermarkingConfig)
    with pytest.raises(TypeError, match="unknown keys"):
        GenerationConfig(watermarking_config={**CONFIG, "strength": 1})


def test_processor_comes_last_before_normalisation_as_in_transformers():
    config = GenerationConfig(do_sample=True, top_k=5, renormalize_logits=True,
                              watermarking_config=SynthIDTextWatermarkingConfig(**CONFIG))
    names = [type(p).__name__ for p in build_logits_processor(config, 4)]
    assert names == ["TopKLogitsWarper", "SynthIDTextWatermarkLogitsProcessor", "LogitNormalization"]


# -- generate() -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,skip", [("llama", False), ("llama", True), ("gpt2", False)],
                         ids=["llama", "llama-skip-first", "gpt2"])
def test_greedy_generate_equals_transformers(tiny_model_environment, kind, skip):
    model = tiny_model(kind)
    input_ids, attention_mask = encode_batch(["hello world", "a b c d e f"])
    config = transformers.SynthIDTextWatermarkingConfig(**CONFIG, skip_first_ngram_calls=skip)
    expected, actual = generate_both(model, input_ids, attention_mask, watermarking_config=config,
                                     do_sample=False, max_new_tokens=10, return_dict_in_generate=True,
                                     output_scores=True)
    assert_same_generation(expected, actual)


def test_generate_with_turbogen_config_and_dict_equals_transformers(tiny_model_environment):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world"])
    expected = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=8,
                              watermarking_config=transformers.SynthIDTextWatermarkingConfig(**CONFIG))
    for value in (SynthIDTextWatermarkingConfig(**CONFIG), dict(CONFIG)):
        actual = turbogen.generate(model, input_ids, attention_mask=attention_mask, do_sample=False,
                                   max_new_tokens=8, watermarking_config=value)
        assert torch.equal(actual, expected)


def test_sampling_scores_equal_transformers_processors(tiny_model_environment):
    """turbogen draws differently from torch.multinomial, so the tokens differ: replay transformers' processors
    (top-k, then SynthID) on turbogen's own logits and tokens, and compare the processed scores step by step."""
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world", "a b c d e f"])
    output = turbogen.generate(model, input_ids, attention_mask=attention_mask, do_sample=True, top_k=20,
                               seed=3, max_new_tokens=8, return_dict_in_generate=True, output_scores=True,
                               output_logits=True, watermarking_config=SynthIDTextWatermarkingConfig(**CONFIG))
    top_k = TheirTopK(top_k=20)
    watermark = TheirProcessor(**{**OPTIONS, **CONFIG, "sampling_table_size": 2**16})
    prompt_length = input_ids.shape[1]
    for step, (logits, scores) in enumerate(zip(output.logits, output.scores)):
        history = output.sequences[:, :prompt_length + step]
        assert torch.equal(scores, watermark(history, top_k(history, logits.clone()))), step


def test_beam_search_generate_equals_transformers(tiny_model_environment):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world"])
    expected, actual = generate_both(model, input_ids, attention_mask, num_beams=2, do_sample=False,
                                     max_new_tokens=6, return_dict_in_generate=True, output_scores=True,
                                     watermarking_config=transformers.SynthIDTextWatermarkingConfig(**CONFIG))
    assert_same_generation(expected, actual, beams=True)


def test_fields_match_transformers_dataclass():
    ours = [field.name for field in dataclasses.fields(SynthIDTextWatermarkingConfig)]
    assert set(ours) == set(transformers.SynthIDTextWatermarkingConfig(**CONFIG).to_dict())


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sample"])
def test_speculative_decoding_keeps_the_watermarked_output(tiny_model_environment, do_sample):
    """The stage's state follows the accepted tokens (drafts rolled back), so prompt lookup changes nothing."""
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world hello world hello", "a b c a b c a b"])
    common = dict(attention_mask=attention_mask, do_sample=do_sample, seed=1, max_new_tokens=12,
                  watermarking_config=SynthIDTextWatermarkingConfig(**CONFIG))
    plain = turbogen.generate(model, input_ids, **common)
    assert torch.equal(turbogen.generate(model, input_ids, prompt_lookup_num_tokens=3, **common), plain)


def test_compiled_decode_step_equals_transformers(tiny_model_environment):
    """The stage updates its state in place without host reads, so the whole compiled step (DecodeStep,
    fullgraph) holds it."""
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world", "a b c d e f"])
    config = transformers.SynthIDTextWatermarkingConfig(**CONFIG)
    expected = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=8,
                              watermarking_config=config)
    actual = turbogen.generate(model, input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=8,
                               watermarking_config=config, cache_implementation="static",
                               compile_config=turbogen.CompileConfig(fullgraph=True, dynamic=False, backend="eager"))
    assert torch.equal(actual, expected)
