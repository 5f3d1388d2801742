"""build_logits_processor against transformers v4.57's GenerationMixin._get_logits_processor, the
merge rule for user-supplied processors, split_fusable_sampling_tail, and torch.compile of the
reference functions."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
import transformers.generation.logits_process as hf
from transformers import GenerationConfig as HFGenerationConfig

import turbogen.processors as tp
from turbogen.processors import SamplingParams, build_logits_processor, split_fusable_sampling_tail
from turbogen.processors import functional as ref

from conftest import TRANSFORMERS_4_45, skip_on_transformers_4_45
from tiny_models import EOS_ID, tiny_model
from tolerances import assert_bit_exact, assert_close_across_compilations

PROMPT_LENGTH = 6
CPU = torch.device("cpu")


def model():
    return tiny_model("llama")


def prompt(batch: int = 2, length: int = PROMPT_LENGTH, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 40, (batch, length), generator=torch.Generator().manual_seed(seed))


def prepared_config(**options) -> HFGenerationConfig:
    """A transformers GenerationConfig after generate's special-token preparation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = HFGenerationConfig(**options)
    model()._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=CPU)
    return config


def both_lists(options, input_ids, custom=(), custom_hf=None, **arguments):
    """``(ours, theirs)`` for the same config and arguments; ``custom_hf`` defaults to ``custom``."""
    ours = build_logits_processor(prepared_config(**options), input_ids.shape[-1], logits_processor=list(custom),
                                  device=CPU, model=model(), **arguments)
    if TRANSFORMERS_4_45:  # 4.45 requires these two (4.57: optional); its generate passes `use_cache` along
        arguments = {"encoder_input_ids": input_ids, "prefix_allowed_tokens_fn": None, **arguments}
    theirs = model()._get_logits_processor(
        generation_config=prepared_config(**options), input_ids_seq_length=input_ids.shape[-1],
        logits_processor=hf.LogitsProcessorList(custom if custom_hf is None else custom_hf), device=CPU,
        model_kwargs={"use_cache": True} if TRANSFORMERS_4_45 else {}, **arguments,
    )
    return ours, theirs


def names(processors) -> list[str]:
    return [type(processor).__name__ for processor in processors]


# Generation options, each a row of the comparison table.
CONFIGS = {
    "greedy": dict(eos_token_id=EOS_ID),
    "sampling-defaults": dict(do_sample=True),
    "sampling": dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05),
    "truncation": dict(do_sample=True, top_k=0, typical_p=0.9, epsilon_cutoff=1e-3, eta_cutoff=1e-3),
    "penalties": dict(repetition_penalty=1.2, no_repeat_ngram_size=3, bad_words_ids=[[5], [6, 7], [3]],
                      min_length=20, min_new_tokens=3, eos_token_id=[2, 3], do_sample=True, temperature=1.3),
    "constraints": dict(sequence_bias=[[[9], 1.5], [[4, 9], -2.0]], encoder_repetition_penalty=1.3,
                        encoder_no_repeat_ngram_size=2, forced_bos_token_id=1, forced_eos_token_id=2, max_length=20,
                        remove_invalid_values=True, exponential_decay_length_penalty=(3, 1.1), suppress_tokens=[4, 5],
                        begin_suppress_tokens=[6], renormalize_logits=True, eos_token_id=EOS_ID),
    "beams": dict(num_beams=3, do_sample=True, top_k=5, top_p=0.5, min_p=0.1, typical_p=0.95, eos_token_id=[2, 3]),
    "beams-no-eos": dict(num_beams=2, do_sample=True, top_p=0.5, eos_token_id=None),
    "guidance-watermark": dict(guidance_scale=1.5, watermarking_config={"greenlist_ratio": 0.3, "bias": 1.0},
                               do_sample=True, top_k=30),
    "selfhash-watermark": dict(watermarking_config={"seeding_scheme": "selfhash", "context_width": 2},
                               renormalize_logits=True),
}


#: Why a comparison of sampling with a watermark is skipped under transformers 4.45.
WATERMARK_BEFORE_WARPERS_IN_4_45 = ("it puts the watermark processor before the sampling warpers (4.57, the spec, "
                                    "after)")


@pytest.mark.parametrize("options", [
    pytest.param(options, marks=skip_on_transformers_4_45(WATERMARK_BEFORE_WARPERS_IN_4_45))
    if "watermarking_config" in options and options.get("do_sample") else options
    for options in CONFIGS.values()], ids=CONFIGS.keys())
def test_builds_what_transformers_builds(options):
    input_ids = prompt()
    arguments = dict(encoder_input_ids=input_ids, negative_prompt_ids=prompt(seed=1, length=3))
    ours, theirs = both_lists(options, input_ids, **arguments)
    assert names(ours) == names(theirs)
    scores = torch.randn(2, model().config.vocab_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_bit_exact(ours(input_ids, scores), theirs(input_ids, scores))


def test_build_passes_the_same_parameters():
    input_ids = prompt(length=1)
    options = dict(CONFIGS["constraints"], **CONFIGS["beams"])
    ours, theirs = both_lists(options, input_ids, encoder_input_ids=input_ids)
    assert names(ours) == names(theirs)
    for mine, reference in zip(ours, theirs):
        for attribute in ("penalty", "ngram_size", "min_length", "max_length", "regulation_start",
                          "regulation_factor", "begin_index", "top_k", "top_p", "min_p", "mass",
                          "min_tokens_to_keep", "temperature", "sequence_bias", "bos_token_id"):
            if hasattr(reference, attribute):
                assert getattr(mine, attribute) == getattr(reference, attribute), (type(mine).__name__, attribute)


def test_begin_index_skips_a_forced_bos_after_a_lone_start_token():
    options = dict(begin_suppress_tokens=[6], forced_bos_token_id=1)
    for length, expected in ((1, 2), (3, 3)):
        ours, theirs = both_lists(options, prompt(length=length))
        assert ours[-1].begin_index == theirs[-1].begin_index == expected


def test_prefix_constraint_uses_num_beams():
    def allowed(batch_id, ids):
        return [batch_id + 5]

    ours, theirs = both_lists(dict(num_beams=2), prompt(), prefix_allowed_tokens_fn=allowed)
    assert names(ours) == names(theirs) == ["PrefixConstrainedLogitsProcessor"]
    assert ours[0]._num_beams == 2


@skip_on_transformers_4_45("it raises for a custom processor of a default's type (4.57 lets it take the default's "
                           "place)")
def test_user_processors_replace_defaults_of_their_kind_and_the_rest_are_appended():
    """transformers 4.57's rule: a custom processor of a default's type takes its place; the others
    go after the defaults (and before the sampling warpers). transformers' classes stand in for
    turbogen's of the same name."""
    class Custom(hf.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores * 2

    repetition = hf.RepetitionPenaltyLogitsProcessor(1.5)
    min_length = hf.MinLengthLogitsProcessor(4, EOS_ID)
    custom = Custom()
    top_k = hf.TopKLogitsWarper(3)
    options = dict(repetition_penalty=1.2, no_repeat_ngram_size=2, do_sample=True, top_k=10, eos_token_id=EOS_ID)
    ours, theirs = both_lists(options, prompt(), custom=[top_k, repetition, custom, min_length])
    assert names(ours) == names(theirs) == [
        "RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor", "TopKLogitsWarper", "Custom",
        "MinLengthLogitsProcessor", "TopKLogitsWarper",
    ]
    assert ours[0] is repetition and ours[2] is top_k and ours[3] is custom and ours[4] is min_length
    assert isinstance(ours[1], tp.NoRepeatNGramLogitsProcessor) and isinstance(ours[5], tp.TopKLogitsWarper)


def test_turbogen_processors_replace_defaults_too():
    mine = tp.RepetitionPenaltyLogitsProcessor(1.9)
    built = build_logits_processor(prepared_config(repetition_penalty=1.2, remove_invalid_values=True),
                                   PROMPT_LENGTH, logits_processor=[mine])
    assert list(built) == [mine, built[1]] and isinstance(built[1], tp.InfNanRemoveLogitsProcessor)


def test_presence_frequency_penalty_follows_the_repetition_penalty():
    config = types.SimpleNamespace(repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.0,
                                   no_repeat_ngram_size=2, do_sample=True, top_p=0.8)
    built = build_logits_processor(config, input_ids_seq_length=7)
    assert names(built) == ["RepetitionPenaltyLogitsProcessor", "PresenceFrequencyPenaltyLogitsProcessor",
                            "NoRepeatNGramLogitsProcessor", "TopPLogitsWarper"]
    assert (built[1].presence_penalty, built[1].frequency_penalty, built[1].prompt_length) == (0.5, 0.0, 7)
    only_frequency = types.SimpleNamespace(frequency_penalty=-0.3)
    assert names(build_logits_processor(only_frequency, 3)) == ["PresenceFrequencyPenaltyLogitsProcessor"]
    zero = types.SimpleNamespace(presence_penalty=0.0, frequency_penalty=0.0)
    assert names(build_logits_processor(zero, 3)) == []


@skip_on_transformers_4_45(WATERMARK_BEFORE_WARPERS_IN_4_45)
def test_accepts_turbogen_generation_config():
    from turbogen.config import GenerationConfig

    options = dict(repetition_penalty=1.2, no_repeat_ngram_size=3, min_new_tokens=2, eos_token_id=EOS_ID,
                   do_sample=True, temperature=0.8, top_k=40, top_p=0.95, min_p=0.02,
                   watermarking_config={"greenlist_ratio": 0.5})
    built = build_logits_processor(GenerationConfig(frequency_penalty=0.4, **options), PROMPT_LENGTH, model=model())
    expected = names(both_lists(options, prompt())[1])
    expected.insert(1, "PresenceFrequencyPenaltyLogitsProcessor")
    assert names(built) == expected
    assert built[-1].greenlist_size == int(model().config.vocab_size * 0.5)


def test_encoder_options_without_a_prompt_warn_and_are_skipped():
    """transformers crashes on a missing prompt here; it already warns for a prompt that is not 2-D."""
    config = prepared_config(encoder_repetition_penalty=1.2, encoder_no_repeat_ngram_size=2)
    with pytest.warns(UserWarning, match="encoder_repetition_penalty"):
        with pytest.warns(UserWarning, match="encoder_no_repeat_ngram_size"):
            assert list(build_logits_processor(config, PROMPT_LENGTH)) == []


@pytest.mark.parametrize("options,text", [
    (dict(guidance_scale=2.0), "model"),
    (dict(watermarking_config={"bias": 1.0}), "model"),
    (dict(exponential_decay_length_penalty=(2, 1.1), eos_token_id=None), "eos_token_id"),
])
def test_missing_requirements_raise_naming_them(options, text):
    with pytest.raises(ValueError, match=text):
        build_logits_processor(prepared_config(**options), PROMPT_LENGTH)


def test_unknown_watermarking_keys_raise():
    config = types.SimpleNamespace(watermarking_config={"greenlist_ratio": 0.3, "strength": 2})
    with pytest.raises(ValueError, match="strength"):
        build_logits_processor(config, PROMPT_LENGTH, model=model())


# --------------------------------------------------------------------------------------------
# split_fusable_sampling_tail
# --------------------------------------------------------------------------------------------


def _sampling_chain(scores, params: SamplingParams):
    """The fused step's filters, spelled with the reference functions."""
    scores = ref.temperature(scores, params.temperature)
    return ref.min_p(ref.top_p(ref.top_k(scores, params.top_k), params.top_p), params.min_p)


def test_split_of_a_built_sampling_list_reproduces_it():
    options = dict(repetition_penalty=1.3, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)
    built = build_logits_processor(prepared_config(**options), PROMPT_LENGTH)
    head, params = split_fusable_sampling_tail(built)
    assert names(head) == ["RepetitionPenaltyLogitsProcessor"] and isinstance(head, tp.LogitsProcessorList)
    assert params == SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)
    input_ids = prompt()
    scores = torch.randn(2, 120, generator=torch.Generator().manual_seed(0))
    assert_bit_exact(_sampling_chain(head(input_ids, scores), params), built(input_ids, scores))


@pytest.mark.parametrize("processors,head_length,params", [
    ([], 0, None),
    ([tp.TemperatureLogitsWarper(0.5)], 0, SamplingParams(temperature=0.5)),
    ([hf.TopKLogitsWarper(4), hf.MinPLogitsWarper(0.2)], 0, SamplingParams(top_k=4, min_p=0.2)),
    ([tp.TopKLogitsWarper(2, min_tokens_to_keep=6)], 0, SamplingParams(top_k=6)),
    ([tp.TopPLogitsWarper(0.8), tp.TypicalLogitsWarper(0.9)], 2, None),
    ([tp.TopKLogitsWarper(5), tp.LogitNormalization()], 2, None),
    ([tp.TopPLogitsWarper(0.8), tp.TemperatureLogitsWarper(0.5)], 1, SamplingParams(temperature=0.5)),
    ([tp.TopKLogitsWarper(5), tp.TopKLogitsWarper(3)], 1, SamplingParams(top_k=3)),
    ([tp.TemperatureLogitsWarper(0.5), tp.TopPLogitsWarper(0.8, min_tokens_to_keep=2), tp.MinPLogitsWarper(0.1)],
     2, SamplingParams(min_p=0.1)),
    ([tp.TopPLogitsWarper(0.8, filter_value=-100.0)], 1, None),
    ([tp.RepetitionPenaltyLogitsProcessor(1.1), hf.TemperatureLogitsWarper(0.9), tp.TopPLogitsWarper(0.95)],
     1, SamplingParams(temperature=0.9, top_p=0.95)),
], ids=range(11))
def test_split_fusable_sampling_tail(processors, head_length, params):
    head, fused = split_fusable_sampling_tail(processors)
    assert list(head) == processors[:head_length]
    assert fused == params


def test_subclassed_warpers_are_not_fused():
    class ShiftedTopK(tp.TopKLogitsWarper):
        def __call__(self, input_ids, scores):
            return super().__call__(input_ids, scores) + 1

    head, fused = split_fusable_sampling_tail([ShiftedTopK(3)])
    assert len(head) == 1 and fused is None


# --------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of the reference functions
# --------------------------------------------------------------------------------------------


def _per_row_sampling_chain(scores, temperature, top_k, top_p, min_p):
    scores = ref.temperature(scores, temperature)
    return ref.min_p(ref.top_p(ref.top_k(scores, top_k), top_p), min_p)


def _penalties(input_ids, scores, repetition, presence, frequency):
    scores = ref.repetition_penalty(input_ids, scores, repetition)
    scores = ref.presence_frequency_penalty(input_ids, scores, presence, frequency, prompt_length=4)
    return ref.no_repeat_ngram(input_ids, scores, 3)


def test_compiled_sampling_chain_equals_eager():
    compiled = torch.compile(_per_row_sampling_chain, fullgraph=True, dynamic=False)
    generator = torch.Generator().manual_seed(0)
    parameters = (torch.tensor([0.5, 1.0, 1.7, 0.9]), torch.tensor([0, 5, 40, 200]),
                  torch.tensor([0.9, 1.0, 0.5, 0.99], dtype=torch.float64), torch.tensor([0.0, 0.1, 0.02, 0.3]))
    for _ in range(2):
        scores = torch.randn(4, 200, generator=generator) * 4
        # Inductor fuses and reorders the float operations: equal up to their rounding.
        assert_close_across_compilations(compiled(scores, *parameters), _per_row_sampling_chain(scores, *parameters))


_IDS = torch.randint(0, 6, (3, 10), generator=torch.Generator().manual_seed(5))
_EOS = torch.tensor([2, 3])
_SEQUENCES = torch.tensor([[-1, -1, 4], [-1, 1, 2], [3, 4, 5]])
_REST_OF_THE_REFERENCE = {
    "typical": lambda ids, s: ref.typical(s, 0.8, min_tokens_to_keep=2),
    "epsilon": lambda ids, s: ref.epsilon(s, 0.01, min_tokens_to_keep=2),
    "eta": lambda ids, s: ref.eta(s, 0.01),
    "top_k-scalar": lambda ids, s: ref.top_k(s, 7, min_tokens_to_keep=3),
    "top_p-scalar": lambda ids, s: ref.top_p(s, 0.7, min_tokens_to_keep=2),
    "min_p-scalar": lambda ids, s: ref.min_p(s, 0.1, min_tokens_to_keep=2),
    "encoder_repetition_penalty": lambda ids, s: ref.encoder_repetition_penalty(s, ids[:1, :4], 1.3),
    "encoder_no_repeat_ngram": lambda ids, s: ref.encoder_no_repeat_ngram(ids, s, ids[:, :6].flip(-1), 2),
    "sequence_bias": lambda ids, s: ref.sequence_bias(ids, s, _SEQUENCES, torch.tensor([1.0, -2.0, 0.5])),
    "exponential_decay_length_penalty": lambda ids, s: ref.exponential_decay_length_penalty(ids, s, _EOS, 4, 1.2),
    "min_length": lambda ids, s: ref.min_length(ids, s, _EOS, 20),
    "min_new_tokens": lambda ids, s: ref.min_new_tokens(ids, s, _EOS, 8, 5),
    "suppress_tokens_at_begin": lambda ids, s: ref.suppress_tokens_at_begin(ids, s, _EOS, 10),
    "forced_bos": lambda ids, s: ref.forced_bos(ids[:, :1], s, 3),
    "forced_eos": lambda ids, s: ref.forced_eos(ids, s, _EOS, 11),
    "prefix_constrained": lambda ids, s: ref.prefix_constrained(s, s > 0),
    "inf_nan_remove": lambda ids, s: ref.inf_nan_remove(s.masked_fill(s > 2, float("nan"))),
    "classifier_free_guidance": lambda ids, s: ref.classifier_free_guidance(s, s.flip(-1), 1.5),
    "watermark": lambda ids, s: ref.watermark(s, s < 0, 2.0),
}


@pytest.mark.parametrize("function", _REST_OF_THE_REFERENCE.values(), ids=_REST_OF_THE_REFERENCE.keys())
def test_every_reference_function_captures_as_one_graph(function):
    """fullgraph capture (no graph break, no host sync) of the remaining functions; the cheap
    aot_eager backend suffices to prove that and keeps this suite fast."""
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(2)) * 3
    compiled = torch.compile(function, fullgraph=True, backend="aot_eager", dynamic=False)
    assert_bit_exact(compiled(_IDS, scores), function(_IDS, scores))  # aot_eager runs the same eager kernels


def test_compiled_penalties_equal_eager():
    compiled = torch.compile(_penalties, fullgraph=True, dynamic=False)
    generator = torch.Generator().manual_seed(1)
    parameters = (torch.tensor([1.2, 0.8, 1.0]), torch.tensor([0.5, 0.0, 1.0]), torch.tensor([0.1, 0.3, -0.2]))
    for _ in range(2):
        input_ids = torch.randint(0, 6, (3, 16), generator=generator)
        scores = torch.randn(3, 100, generator=generator) * 4
        assert_close_across_compilations(compiled(input_ids, scores, *parameters),
                                         _penalties(input_ids, scores, *parameters))
