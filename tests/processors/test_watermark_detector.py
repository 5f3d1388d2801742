"""Watermark detectors: turbogen's ``WatermarkDetector`` (green list) and ``SynthIDTextWatermarkDetector`` with
its ``BayesianDetectorModel`` against transformers' on the same inputs and weights, bit for bit."""

import numpy as np
import pytest
import torch

import turbogen
from turbogen import (BayesianDetectorConfig, BayesianDetectorModel, SynthIDTextWatermarkDetector,
                      SynthIDTextWatermarkLogitsProcessor, WatermarkDetector, WatermarkingConfig)

transformers = pytest.importorskip("transformers")
from conftest import skip_module_on_transformers_4_45  # noqa: E402

skip_module_on_transformers_4_45("SynthID watermarking, the oracle of these tests, arrived in transformers 4.46")
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor as TheirProcessor  # noqa: E402
from transformers.generation.watermarking import (  # noqa: E402
    BayesianDetectorConfig as TheirBayesianConfig,
    BayesianDetectorModel as TheirBayesianModel,
    SynthIDTextWatermarkDetector as TheirSynthIDDetector,
    WatermarkDetector as TheirDetector,
)

from conftest import skip_on_transformers_5  # noqa: E402
from tiny_models import encode_batch, tiny_model, tiny_model_environment  # noqa: E402,F401

MODEL_CONFIG = transformers.LlamaConfig(vocab_size=60, bos_token_id=1, hidden_size=8, intermediate_size=8,
                                        num_hidden_layers=1, num_attention_heads=1)
SCHEMES = [dict(), dict(seeding_scheme="selfhash", context_width=2), dict(context_width=3, greenlist_ratio=0.5),
           dict(seeding_scheme="selfhash", bias=3.0)]
COUNT_FIELDS = ("num_tokens_scored", "num_green_tokens", "green_fraction", "z_score", "prediction")


def _texts(rows=3, length=30, high=60, seed=0):
    ids = torch.randint(2, high, (rows, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = MODEL_CONFIG.bos_token_id
    return ids


def _detectors(options, **kwargs):
    return (TheirDetector(MODEL_CONFIG, "cpu", transformers.WatermarkingConfig(**options), **kwargs),
            WatermarkDetector(MODEL_CONFIG, "cpu", WatermarkingConfig(**options), **kwargs))


# -- green list -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", SCHEMES, ids=lambda options: str(options) or "default")
def test_green_list_counts_and_z_scores_equal_transformers(options):
    theirs, ours = _detectors(options)
    ids = _texts()
    expected, actual = theirs(ids, return_dict=True), ours(ids, return_dict=True)
    for field in COUNT_FIELDS:
        assert np.array_equal(getattr(actual, field), getattr(expected, field)), field
    assert np.array_equal(ours(ids, z_threshold=0.5), theirs(ids, z_threshold=0.5))


@skip_on_transformers_5("5.x computes the p-value with erfc instead of 4.57's closed-form approximation")
@pytest.mark.parametrize("options", SCHEMES[:2], ids=["lefthash", "selfhash"])
def test_green_list_p_values_equal_transformers_4_57(options):
    theirs, ours = _detectors(options)
    ids = _texts()
    expected, actual = theirs(ids, return_dict=True), ours(ids, return_dict=True)
    for field in ("p_value", "confidence"):
        assert np.array_equal(getattr(actual, field), getattr(expected, field)), field


def test_a_dict_config_and_transformers_config_work():
    ids = _texts(rows=2)
    expected = TheirDetector(MODEL_CONFIG, "cpu", {"greenlist_ratio": 0.3, "bias": 1.0, "hashing_key": 7,
                                                   "seeding_scheme": "lefthash", "context_width": 1})
    for config in ({"greenlist_ratio": 0.3, "bias": 1.0, "hashing_key": 7},
                   transformers.WatermarkingConfig(greenlist_ratio=0.3, bias=1.0, hashing_key=7)):
        actual = WatermarkDetector(MODEL_CONFIG, "cpu", config)
        assert np.array_equal(actual(ids, return_dict=True).z_score, expected(ids, return_dict=True).z_score)


def test_ignore_repeated_ngrams_counts_each_ngram_once():
    """transformers 4.57 documents the flag but counts every n-gram (it keys them by tensor identity);
    turbogen counts each distinct n-gram once, as transformers 5 does."""
    ids = torch.tensor([[1, 5, 7, 5, 7, 5, 7, 5, 7, 9, 9]])
    theirs, ours = _detectors({}, ignore_repeated_ngrams=True)
    actual = ours(ids, return_dict=True)
    assert actual.num_tokens_scored.tolist() == [4.0]  # (5,7) (7,5) (7,9) (9,9)
    _, plain = _detectors({})
    assert plain(ids, return_dict=True).num_tokens_scored.tolist() == [9.0]
    expected = theirs(ids, return_dict=True)
    if int(transformers.__version__.split(".")[0]) >= 5:
        for field in COUNT_FIELDS:
            assert np.array_equal(getattr(actual, field), getattr(expected, field)), field
    else:
        assert expected.num_tokens_scored.tolist() == [9.0]


def test_watermarked_generation_is_detected(tiny_model_environment):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world", "a b c"])
    config = WatermarkingConfig(bias=8.0)
    common = dict(attention_mask=attention_mask, do_sample=False, max_new_tokens=30)
    marked = turbogen.generate(model, input_ids, watermarking_config=config, **common)[:, input_ids.shape[1]:]
    plain = turbogen.generate(model, input_ids, **common)[:, input_ids.shape[1]:]
    detector = WatermarkDetector(model.config, "cpu", config)
    assert detector(marked).tolist() == [True, True]
    assert detector(plain).tolist() == [False, False]


@pytest.mark.parametrize("arguments,error,text", [
    (dict(input_ids=torch.tensor([[1, 5]])), ValueError, "at least 1 token"),
    (dict(input_ids=torch.ones(2, 5)), TypeError, "integer token ids"),
    (dict(input_ids=torch.ones(5, dtype=torch.long)), ValueError, "batch, length"),
])
def test_green_list_bad_inputs_raise(arguments, error, text):
    _, ours = _detectors({})
    with pytest.raises(error, match=text):
        ours(**arguments)


def test_green_list_bad_config_raises_naming_the_field():
    with pytest.raises(ValueError, match="seeding_scheme"):
        WatermarkDetector(MODEL_CONFIG, "cpu", {"seeding_scheme": "middlehash"})
    with pytest.raises(TypeError, match="unknown keys"):
        WatermarkDetector(MODEL_CONFIG, "cpu", {"strength": 1})
    with pytest.raises(TypeError, match="watermarking_config"):
        WatermarkDetector(MODEL_CONFIG, "cpu", 3)


# -- SynthID Text -------------------------------------------------------------------------------------------


SYNTHID = dict(ngram_len=3, keys=[654, 400, 836, 123], sampling_table_size=2**16, sampling_table_seed=0,
               context_history_size=8, device="cpu")


class _Tokenizer:
    eos_token_id = 7


def _their_model(depth=4, seed=0):
    torch.manual_seed(seed)
    model = TheirBayesianModel(TheirBayesianConfig(watermarking_depth=depth))
    with torch.no_grad():  # weights away from their initial values, so that every parameter matters
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("rows", [1, 3])
def test_synthid_detector_equals_transformers(rows):
    theirs_model = _their_model()
    ours_model = BayesianDetectorModel.from_transformers(theirs_model)
    ids = torch.randint(0, 9, (rows, 25), generator=torch.Generator().manual_seed(rows))
    expected = TheirSynthIDDetector(theirs_model, TheirProcessor(**SYNTHID), _Tokenizer())(ids)
    for module in (ours_model, theirs_model):
        for processor in (SynthIDTextWatermarkLogitsProcessor(**SYNTHID), TheirProcessor(**SYNTHID)):
            actual = SynthIDTextWatermarkDetector(module, processor, _Tokenizer())(ids)
            assert len(actual) == 1 and torch.equal(actual[0], expected[0])


def test_bayesian_model_loss_and_outputs_equal_transformers():
    theirs = _their_model(depth=3, seed=1)
    ours = BayesianDetectorModel.from_transformers(theirs)
    generator = torch.Generator().manual_seed(2)
    g_values = torch.randint(0, 2, (4, 10, 3), generator=generator)
    mask = torch.rand(4, 10, generator=generator) > 0.2
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = theirs(g_values, mask, labels=labels, loss_batch_weight=0.5, return_dict=True)
    actual = ours(g_values, mask, labels=labels, loss_batch_weight=0.5, return_dict=True)
    assert torch.equal(actual.posterior_probabilities, expected.posterior_probabilities)
    assert torch.equal(actual.loss, expected.loss)
    actual.loss.backward()
    assert ours.likelihood_model_watermarked.delta.grad is not None
    assert {name for name, _ in ours.named_parameters()} == {name for name, _ in theirs.named_parameters()}


def test_synthid_masks_and_g_values_equal_transformers_helpers():
    processor = TheirProcessor(**SYNTHID)
    ids = torch.randint(0, 9, (2, 30), generator=torch.Generator().manual_seed(5))
    ids[1, 12] = _Tokenizer.eos_token_id
    mask, g_values = SynthIDTextWatermarkDetector(_their_model(), processor, _Tokenizer()).masks_and_g_values(ids)
    expected_mask = (processor.compute_context_repetition_mask(ids)
                     * processor.compute_eos_token_mask(ids, _Tokenizer.eos_token_id)[:, 2:])
    assert torch.equal(mask, expected_mask)
    assert torch.equal(g_values, processor.compute_g_values(ids))
    assert not bool(mask[1, 12:].any())


def test_synthid_watermarked_generation_has_high_g_values(tiny_model_environment):
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world", "a b c", "x y", "once upon"])
    options = dict(ngram_len=3, keys=[11, 22, 33, 44, 55], context_history_size=64)
    processor = SynthIDTextWatermarkLogitsProcessor(**options, sampling_table_size=2**16, sampling_table_seed=0)
    means = []
    for config in (turbogen.SynthIDTextWatermarkingConfig(**options), None):
        output = turbogen.generate(model, input_ids, attention_mask=attention_mask, do_sample=True, seed=0,
                                   max_new_tokens=40, watermarking_config=config)
        text = output[:, input_ids.shape[1]:]
        mask, g_values = SynthIDTextWatermarkDetector(BayesianDetectorModel(BayesianDetectorConfig(5)), processor,
                                                      _Tokenizer()).masks_and_g_values(text)
        means.append(float(g_values[mask].float().mean()))
    assert means[0] > 0.6 and abs(means[1] - 0.5) < 0.1, means


def test_synthid_detector_bad_arguments_raise():
    processor = SynthIDTextWatermarkLogitsProcessor(**SYNTHID)
    module = BayesianDetectorModel(BayesianDetectorConfig(watermarking_depth=4))
    with pytest.raises(TypeError, match="logits_processor"):
        SynthIDTextWatermarkDetector(module, object(), _Tokenizer())
    with pytest.raises(TypeError, match="eos_token_id"):
        SynthIDTextWatermarkDetector(module, processor, object())
    detector = SynthIDTextWatermarkDetector(module, processor, _Tokenizer())
    with pytest.raises(ValueError, match="at least ngram_len"):
        detector(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="integer token ids"):
        detector(torch.ones(2, 5))
    with pytest.raises(ValueError, match="watermarking_depth"):
        BayesianDetectorModel(BayesianDetectorConfig())


def test_bayesian_model_saves_and_loads_in_transformers_format(tmp_path):
    theirs = _their_model(depth=3, seed=4)
    theirs.config.set_detector_information("tiny", {"ngram_len": 3, "keys": [1, 2, 3]})
    theirs.save_pretrained(tmp_path / "theirs")
    ours = BayesianDetectorModel.from_pretrained(tmp_path / "theirs")
    assert ours.config.watermarking_config == {"ngram_len": 3, "keys": [1, 2, 3]}
    assert ours.config.model_name == "tiny"
    g_values = torch.randint(0, 2, (2, 6, 3), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert torch.equal(ours(g_values, mask)[0], theirs(g_values, mask)[0])
    ours.save_pretrained(tmp_path / "ours")
    reloaded = TheirBayesianModel.from_pretrained(tmp_path / "ours")
    assert torch.equal(reloaded(g_values, mask)[0], theirs(g_values, mask)[0])
    with pytest.raises(FileNotFoundError, match="config.json"):
        BayesianDetectorModel.from_pretrained(tmp_path / "missing")
