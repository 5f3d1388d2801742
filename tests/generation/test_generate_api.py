"""turbogen.generate's API surface: bad input and conflicting settings raise clear errors naming the argument,
unsupported decoding methods are refused, and patch/unpatch route model.generate."""

from __future__ import annotations

import pytest
import torch
import transformers

import turbogen.patching as patching
from tiny_models import BOS_ID, encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen import GenerationConfig
from turbogen.generate import generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")


@pytest.fixture(scope="module")
def prompt():
    return encode_batch(["the quick brown fox", "stop"])


BAD_INPUTS = {
    "empty_input_ids": (lambda ids, mask: dict(input_ids=torch.empty(2, 0, dtype=torch.long)), "input_ids"),
    "empty_inputs": (lambda ids, mask: dict(inputs=torch.empty(0, 3, dtype=torch.long)), "inputs"),
    "float_ids": (lambda ids, mask: dict(input_ids=ids.float(), attention_mask=mask), "input_ids"),
    "one_dimensional_ids": (lambda ids, mask: dict(input_ids=ids[0]), "input_ids"),
    "id_outside_vocabulary": (lambda ids, mask: dict(input_ids=ids + 1000, attention_mask=mask), "input_ids"),
    "mask_wrong_shape": (lambda ids, mask: dict(input_ids=ids, attention_mask=mask[:, 1:]), "attention_mask"),
    "mask_not_a_tensor": (lambda ids, mask: dict(input_ids=ids, attention_mask=mask.tolist()), "attention_mask"),
    "ragged_without_pad": (lambda ids, mask: dict(inputs=[[5, 6, 7], [8]], pad_token_id=None, eos_token_id=None),
                           "pad_token_id"),
    "prompt_twice": (lambda ids, mask: dict(inputs=ids, input_ids=ids), "input_ids"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(prompt, case):
    make_arguments, name = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=name):
        generate(tiny_model("llama"), max_new_tokens=3, **make_arguments(*prompt))


CONFLICTS = {
    "more_returned_than_beams": (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    "greedy_with_many_returned": (dict(num_return_sequences=2), "num_return_sequences"),
    "non_positive_max_new_tokens": (dict(max_new_tokens=0), "max_new_tokens"),
    "prompt_longer_than_max_length": (dict(max_length=3, max_new_tokens=None), "max_length"),
    "bad_early_stopping": (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    "cache_twice": (dict(cache_implementation="dynamic", past_key_values=transformers.DynamicCache()),
                    "cache_implementation"),
    "typo_in_a_parameter": (dict(max_new_token=3), "max_new_token"),
    "position_ids_of_another_shape": (dict(position_ids=torch.zeros(2, 4, dtype=torch.long)), "position_ids"),
}


@pytest.mark.parametrize("case", CONFLICTS)
def test_conflicting_settings_raise_naming_the_argument(prompt, case):
    options, name = CONFLICTS[case]
    input_ids, attention_mask = prompt
    arguments = {"max_new_tokens": 3, **options}
    with pytest.raises(ValueError, match=name):
        generate(tiny_model("llama"), input_ids, attention_mask=attention_mask, **arguments)


UNSUPPORTED = {
    # (group and constrained beam search run natively now: tests/generation/test_group_beam.py and
    # test_constrained_beam.py; so do DoLa and synced_gpus: test_dola.py, test_synced_gpus.py)
    "prompt_lookup_with_guidance": (dict(prompt_lookup_num_tokens=3, guidance_scale=1.5), "speculative decoding"),
    "inputs_embeds_beside_ids_of_another_length": (dict(inputs_embeds=torch.zeros(2, 4, 32)), "inputs_embeds"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_decoding_methods_are_refused(prompt, case):
    options, name = UNSUPPORTED[case]
    input_ids, attention_mask = prompt
    with pytest.raises(ValueError, match=name):
        generate(tiny_model("llama"), input_ids, attention_mask=attention_mask, max_new_tokens=3, **options)


@pytest.mark.parametrize(("name", "value"), [("top_h", 0.4), ("use_mtp", True), ("speculation_type", "dflash"),
                                           ("assistant_ensemble_weight", 0.5)])
def test_transformers_5_parameters_are_refused_not_ignored(prompt, name, value):
    """Parameters that transformers 5 added and turbogen does not implement raise, however they are given (a
    transformers 4.57 config keeps them as extra attributes, a 5.x config as parameters)."""
    input_ids, attention_mask = prompt
    model = tiny_model("llama")
    for given in (dict(generation_config=GenerationConfig(**{name: value})),
                  dict(generation_config=transformers.GenerationConfig(**{name: value})),
                  {name: value}):
        with pytest.raises(ValueError, match=f"`{name}` is not supported"):
            generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3, **given)


def test_no_prompt_starts_from_bos_like_transformers():
    model = tiny_model("gpt2")
    out = generate(model, max_new_tokens=4)
    assert out[0, 0].item() == BOS_ID
    assert torch.equal(out, model.generate(max_new_tokens=4))


# -- patching ------------------------------------------------------------------------------------------------


def test_patch_routes_generate_to_turbogen_and_unpatch_restores_it(prompt):
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = prompt
    with pytest.raises(ValueError, match="seed"):  # transformers has no `seed` parameter
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=True, seed=1)

    assert patching.patch(model) is model and patching.is_patched(model)
    patching.patch(model)  # idempotent
    sampled = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=True, seed=1)
    assert torch.equal(sampled, generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3,
                                         do_sample=True, seed=1))
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4),
                       generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=4))

    assert patching.unpatch(model) is model and not patching.is_patched(model)
    assert "generate" not in vars(model)
    assert model.generate.__func__ is transformers.GenerationMixin.generate
    patching.unpatch(model)  # a no-op on an unpatched model


def test_unpatch_restores_a_previous_instance_override():
    model = tiny_model("gpt2", fresh=True)

    def custom_generate(*args, **kwargs):
        return "custom"

    model.generate = custom_generate
    patching.patch(model)
    assert model.generate is not custom_generate
    patching.unpatch(model)
    assert model.generate is custom_generate


def test_patching_affects_one_model_only():
    first, second = tiny_model("llama", fresh=True), tiny_model("llama", fresh=True)
    patching.patch(first)
    assert patching.is_patched(first) and not patching.is_patched(second)
    assert not hasattr(type(first), "_turbogen_saved_generate")
