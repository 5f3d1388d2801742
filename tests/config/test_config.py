"""turbogen.config.GenerationConfig against its specification, transformers 4.57's GenerationConfig.

Defaults, validation outcomes, generation modes and the generation_config.json format are compared
with transformers itself; the turbogen additions (seed, presence/frequency penalty) on their own.
Under transformers 5 the comparisons cover what 5.x kept; what it changed on purpose is listed here
and skipped (or compared in 5.x's terms) with the reason.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import TRANSFORMERS_5, skip_here_on_transformers_4_45, skip_on_transformers_4_45, skip_on_transformers_5
from turbogen import config as config_module
from turbogen.config import (
    MIRRORED_TRANSFORMERS_VERSION,
    PARAMETER_GROUPS,
    PARAMETERS,
    TURBOGEN_PARAMETERS,
    CompileConfig,
    GenerationConfig,
    GenerationMode,
    WatermarkingConfig,
    as_generation_config,
)
from turbogen.config import parameters as parameters_module
from turbogen.config import validation

# Bookkeeping attributes that are not generation parameters.
METADATA = {"_from_model_config", "_commit_hash", "_original_object_hash", "transformers_version"}
TURBOGEN_EXTRAS = {"seed": 1234, "presence_penalty": 0.5, "frequency_penalty": -0.25}
# GenerationConfig parameters that transformers 5 added and removed; turbogen keeps 4.57's set.
#: Why the comparisons with transformers' GenerationConfig are skipped under transformers 4.45.
CONFIG_SPEC_IN_4_45 = ("turbogen's GenerationConfig follows 4.57's (parameters, defaults, validation and its "
                       "`strict` mode, JSON form, cache configs, CompileConfig, SynthID); 4.45's differs")
ADDED_IN_TRANSFORMERS_5 = {"top_h", "use_mtp", "max_cache_len", "assistant_ensemble_weight", "speculation_type",
                           "continuous_batching_config"}
REMOVED_IN_TRANSFORMERS_5 = {"return_legacy_cache"}


@pytest.fixture(scope="module")
def hf():
    """transformers' generation config module, the oracle."""
    return pytest.importorskip("transformers.generation.configuration_utils")


def outcome_of_ours(kwargs):
    """("error" | "warn" | "ok", message) for GenerationConfig(**kwargs)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            GenerationConfig(**kwargs)
        except ValueError as error:
            return "error", str(error)
    user_warnings = [w for w in caught if issubclass(w.category, UserWarning)]
    if user_warnings:
        assert len(user_warnings) == 1, "validate() must report all its findings in one warning"
        return "warn", str(user_warnings[0].message)
    return "ok", ""


def outcome_of_transformers(hf, kwargs):
    """The same for transformers: its warnings go to a logger, so strict validation detects them."""
    try:
        config = hf.GenerationConfig(**kwargs)
    except ValueError as error:
        return "error", str(error)
    try:
        config.validate(strict=True)
    except ValueError as error:
        return "warn", str(error)
    return "ok", ""


def flagged_fields(message):
    """The field names listed as "- `name`: ..." lines (the format both libraries use)."""
    return set(re.findall(r"^- `(\w+)`", message, flags=re.MULTILINE))


def without_version(config_dict):
    return {key: value for key, value in config_dict.items() if key != "transformers_version"}


def transformers_defaults(hf):
    """{parameter: default} for transformers' parameters that 4.57 has.

    4.57 stores its defaults in ``GenerationConfig()``. transformers 5 leaves every parameter at ``None``
    ("unset") and resolves it inside ``generate()`` from ``_get_default_generation_params()``; a parameter
    that table lacks stays ``None``, which 5.x's generate reads as ``False`` for the boolean flags.
    """
    stored = {key: value for key, value in vars(hf.GenerationConfig()).items() if key not in METADATA}
    if not TRANSFORMERS_5:
        return stored
    resolved = hf.GenerationConfig._get_default_generation_params()
    return {key: resolved.get(key) for key in stored if key not in ADDED_IN_TRANSFORMERS_5}


# ---------------------------------------------------------------------------------------------
# Parameters and defaults
# ---------------------------------------------------------------------------------------------


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_every_transformers_default_is_ours(hf):
    """The parameter table holds transformers' names and defaults, and ``GenerationConfig()`` holds the table."""
    reference = transformers_defaults(hf)
    table = {parameter.name: parameter.default for parameter in PARAMETERS}
    assert len(table) == len(PARAMETERS)
    assert {key: value for key, value in vars(GenerationConfig()).items() if key not in METADATA} == table

    def same_default(ours_value, value):
        return ours_value == value or (TRANSFORMERS_5 and value is None and ours_value is False)

    mismatched = {key: (value, table.get(key, "<missing>"))
                  for key, value in reference.items() if not same_default(table.get(key, "<missing>"), value)}
    assert mismatched == {}
    removed = REMOVED_IN_TRANSFORMERS_5 if TRANSFORMERS_5 else set()
    assert set(table) - set(reference) == set(TURBOGEN_PARAMETERS) | removed


def test_turbogen_parameter_defaults_are_neutral():
    ours = GenerationConfig()
    assert (ours.seed, ours.presence_penalty, ours.frequency_penalty) == (None, 0.0, 0.0)
    assert ours.to_diff_dict() == {"transformers_version": MIRRORED_TRANSFORMERS_VERSION}


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_every_documented_parameter_exists_and_is_documented(hf):
    documented_by_transformers = set(re.findall(r"^ {8}(\w+)\s*\(", hf.GenerationConfig.__doc__, flags=re.MULTILINE))
    assert len(documented_by_transformers) > 50
    ours = vars(GenerationConfig())
    assert documented_by_transformers - set(ours) - ADDED_IN_TRANSFORMERS_5 == set()
    undocumented = {name for name in ours if not re.search(rf"\b{name}\b", GenerationConfig.__doc__)}
    assert undocumented == set()


def test_docstring_lists_the_table_by_group():
    """The class docstring has one ``name (type, default): doc`` entry per table parameter, under its group's
    title, in table order."""
    doc = GenerationConfig.__doc__
    position = -1
    for group in parameters_module.GROUPS:
        title_words = r"\s+".join(re.escape(word) for word in group.title.split())  # titles may be wrapped
        title = re.compile(rf"^ {{4}}{title_words}:$", flags=re.MULTILINE)
        match = title.search(doc, position + 1)
        assert match is not None, f"no docstring title for the {group.key} group"
        position = match.start()
        for parameter in (parameter for parameter in PARAMETERS if parameter.group is group):
            match = re.compile(rf"^ {{8}}{parameter.name} \(", flags=re.MULTILINE).search(doc, position)
            assert match is not None, f"no docstring entry for {parameter.name}"
            first_line, *next_lines = doc[match.start():].split("\n")
            continuation = itertools.takewhile(lambda line: line.startswith(" " * 12), next_lines)
            entry = " ".join(" ".join([first_line, *continuation]).split())
            shown_default = f'"{parameter.default}"' if isinstance(parameter.default, str) else repr(parameter.default)
            assert entry == f"{parameter.name} ({parameter.kind}, {shown_default}): {' '.join(parameter.doc.split())}"
            position = match.start()
    assert len(re.findall(r"^ {8}\w+ \(", doc, flags=re.MULTILINE)) == len(PARAMETERS)


def test_validation_rules_name_table_parameters():
    """The cross-parameter rules refer to parameters by name: each must be one (a typo would silence a rule)."""
    table = {parameter.name for parameter in PARAMETERS}
    assert set(validation.SAMPLING_ONLY_FLAGS + validation.CACHE_ONLY_FLAGS + validation.OUTPUT_FLAGS) <= table
    assert set(validation.GENERATE_ONLY_ARGUMENTS) & table == set()


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_parameter_groups_are_disjoint_and_complete(hf):
    names = [name for group in PARAMETER_GROUPS.values() for name in group]
    assert len(names) == len(set(names))
    removed = REMOVED_IN_TRANSFORMERS_5 if TRANSFORMERS_5 else set()
    assert set(names) == set(transformers_defaults(hf)) | removed | set(TURBOGEN_PARAMETERS)
    assert set(PARAMETER_GROUPS["legacy_strategy"]) == {
        "penalty_alpha", "num_beam_groups", "diversity_penalty", "constraints", "force_words_ids",
        "dola_layers", "low_memory"}


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_value_types_match_transformers(hf):
    assert {mode.name: mode.value for mode in GenerationMode} == {
        mode.name: mode.value for mode in hf.GenerationMode}
    assert GenerationMode.SAMPLE == "sample"
    assert WatermarkingConfig().to_dict() == vars(hf.WatermarkingConfig())
    assert CompileConfig().to_dict() == hf.CompileConfig().to_dict()
    if TRANSFORMERS_5:  # 5.x dropped the "dynamic_full" cache name, which 4.57 (and turbogen) accept
        ours = tuple(name for name in config_module.ALL_CACHE_IMPLEMENTATIONS if name != "dynamic_full")
        assert ours == hf.ALL_CACHE_IMPLEMENTATIONS
    else:
        assert config_module.ALL_CACHE_IMPLEMENTATIONS == hf.ALL_CACHE_IMPLEMENTATIONS


# ---------------------------------------------------------------------------------------------
# Validation: same outcome as transformers
# ---------------------------------------------------------------------------------------------

VALIDATION_CASES = [
    # (kwargs, expected outcome, field an error must name)
    pytest.param({}, "ok", None, id="defaults"),
    pytest.param(dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=10, min_p=0.05, typical_p=0.9,
                      epsilon_cutoff=3e-4, eta_cutoff=1e-3), "ok", None, id="sampling-flags-when-sampling"),
    pytest.param(dict(num_beams=4, early_stopping="never", length_penalty=0.8, num_return_sequences=4),
                 "ok", None, id="beam-flags-with-beams"),
    pytest.param(dict(num_beams=2, early_stopping=True), "ok", None, id="early-stopping-true-with-beams"),
    pytest.param(dict(do_sample=True, num_return_sequences=3), "ok", None, id="several-samples"),
    pytest.param(dict(num_beams=2, do_sample=True, num_return_sequences=2), "ok", None, id="beam-sample"),
    pytest.param(dict(max_new_tokens=1), "ok", None, id="one-new-token"),
    pytest.param(dict(cache_implementation="static"), "ok", None, id="static-cache"),
    pytest.param(dict(cache_implementation="hybrid"), "ok", None, id="deprecated-cache-alias"),
    pytest.param(dict(cache_implementation="quantized", cache_config={"nbits": 4}), "ok", None, id="quantized-cache"),
    pytest.param(dict(use_cache=False), "ok", None, id="no-cache"),
    pytest.param(dict(return_dict_in_generate=True, output_scores=True, output_logits=True,
                      output_attentions=True, output_hidden_states=True), "ok", None, id="all-outputs"),
    pytest.param(dict(pad_token_id=0), "ok", None, id="pad-zero"),
    pytest.param(dict(temperature=1.0, top_p=1.0, top_k=50), "ok", None, id="neutral-sampling-values"),
    pytest.param(dict(top_k=None, temperature=None), "ok", None, id="unset-sampling-values"),
    pytest.param(dict(do_sample=0, temperature=0.5), "ok", None, id="do-sample-0-is-not-False"),
    pytest.param(dict(num_return_sequences=2, do_sample=0), "ok", None, id="do-sample-0-several-sequences"),
    pytest.param(dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5), "ok", None, id="group-beam"),
    pytest.param(dict(dola_layers="high", low_memory=True), "ok", None, id="dola"),
    pytest.param(dict(do_sample=True, watermarking_config={"greenlist_ratio": 0.5, "seeding_scheme": "selfhash"}),
                 "ok", None, id="watermark"),
    pytest.param(dict(temperature=0.5), "warn", None, id="temperature-greedy"),
    pytest.param(dict(top_p=0.9), "warn", None, id="top-p-greedy"),
    pytest.param(dict(top_k=10), "warn", None, id="top-k-greedy"),
    pytest.param(dict(min_p=0.1), "warn", None, id="min-p-greedy"),
    pytest.param(dict(typical_p=0.5), "warn", None, id="typical-p-greedy"),
    pytest.param(dict(epsilon_cutoff=0.1), "warn", None, id="epsilon-greedy"),
    pytest.param(dict(eta_cutoff=0.1), "warn", None, id="eta-greedy"),
    pytest.param(dict(penalty_alpha=0.6, top_k=4), "warn", None, id="contrastive-top-k"),
    pytest.param(dict(early_stopping=True), "warn", None, id="early-stopping-one-beam"),
    pytest.param(dict(early_stopping="never"), "warn", None, id="early-stopping-never-one-beam"),
    pytest.param(dict(early_stopping=0), "warn", None, id="early-stopping-0-is-not-False"),
    pytest.param(dict(length_penalty=2.0), "warn", None, id="length-penalty-one-beam"),
    pytest.param(dict(pad_token_id=-1), "warn", None, id="negative-pad"),
    pytest.param(dict(use_cache=False, cache_implementation="static"), "warn", None, id="no-cache-implementation"),
    pytest.param(dict(use_cache=False, cache_config={}), "warn", None, id="no-cache-config"),
    pytest.param(dict(use_cache=False, return_legacy_cache=True), "warn", None, id="no-cache-legacy"),
    pytest.param(dict(output_scores=True), "warn", None, id="scores-without-dict"),
    pytest.param(dict(output_attentions=True, output_hidden_states=True, output_logits=True),
                 "warn", None, id="outputs-without-dict"),
    pytest.param(dict(temperature=0.5, top_p=0.5, length_penalty=1.5, pad_token_id=-3),
                 "warn", None, id="several-issues"),
    pytest.param(dict(early_stopping="always"), "error", "early_stopping", id="early-stopping-string"),
    pytest.param(dict(early_stopping=None), "error", "early_stopping", id="early-stopping-none"),
    pytest.param(dict(max_new_tokens=0), "error", "max_new_tokens", id="zero-new-tokens"),
    pytest.param(dict(max_new_tokens=-5), "error", "max_new_tokens", id="negative-new-tokens"),
    # (not "paged": turbogen accepts it, its paged KV cache: tests/generation/test_paged_generate.py)
    pytest.param(dict(cache_implementation="no_such_cache"), "error", "cache_implementation", id="unknown-cache"),
    pytest.param(dict(compile_config={"fullgraph": True}), "error", "compile_config", id="compile-config-dict"),
    pytest.param(dict(watermarking_config={"seeding_scheme": "hash"}), "error", "seeding_scheme",
                 id="watermark-scheme"),
    pytest.param(dict(watermarking_config={"greenlist_ratio": 1.5}), "error", "greenlist_ratio",
                 id="watermark-ratio"),
    pytest.param(dict(watermarking_config={"context_width": 0}), "error", "context_width", id="watermark-width"),
    pytest.param(dict(num_return_sequences=2), "error", "num_return_sequences", id="greedy-several-sequences"),
    pytest.param(dict(num_beams=2, num_return_sequences=3), "error", "num_return_sequences",
                 id="more-sequences-than-beams"),
    pytest.param(dict(streamer=object()), "error", "streamer", id="streamer-in-config"),
    pytest.param(dict(logits_processor=[]), "error", "logits_processor", id="processors-in-config"),
    pytest.param(dict(use_model_defaults=True), "error", "use_model_defaults", id="use-model-defaults-in-config"),
]


# Outcomes transformers 5 changed on purpose; turbogen keeps 4.57's, so under 5.x these cases are checked
# against the expected outcome only, not against transformers.
VALIDATION_CHANGED_IN_TRANSFORMERS_5 = {
    "do-sample-0-is-not-False": "sampling-only flags are flagged unless `do_sample is True` (4.57: only when "
                                "`do_sample is False`)",
    "do-sample-0-several-sequences": "several sequences without beams are refused whenever `do_sample` is falsy, "
                                     "0 included (4.57: only when `do_sample is False`)",
    "no-cache-legacy": "`return_legacy_cache` is no longer a parameter",
    "early-stopping-none": "None means 'unset' for every parameter, `early_stopping` included",
    "use-model-defaults-in-config": "generate() no longer takes `use_model_defaults`, so the config does not "
                                    "refuse it",
}


def compared_with_transformers(cases):
    """``cases``, those whose transformers outcome 5.x changed skipped under 5.x with the reason."""
    return [pytest.param(*case.values, id=case.id,
                         marks=skip_on_transformers_5(VALIDATION_CHANGED_IN_TRANSFORMERS_5[case.id]))
            if case.id in VALIDATION_CHANGED_IN_TRANSFORMERS_5 else case
            for case in cases]


@pytest.mark.parametrize(("kwargs", "expected", "error_field"), VALIDATION_CASES)
def test_validation_outcome(kwargs, expected, error_field):
    ours, our_message = outcome_of_ours(kwargs)
    assert ours == expected
    if expected == "error":
        assert f"`{error_field}" in our_message or f".{error_field}`" in our_message
    if expected == "warn":
        assert flagged_fields(our_message) != set()


@pytest.mark.parametrize(("kwargs", "expected", "error_field"), compared_with_transformers(VALIDATION_CASES))
@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_validation_outcome_matches_transformers(hf, kwargs, expected, error_field):
    reference, reference_message = outcome_of_transformers(hf, kwargs)
    assert reference == expected
    if expected == "warn":
        assert flagged_fields(outcome_of_ours(kwargs)[1]) == flagged_fields(reference_message)


@pytest.mark.parametrize(("kwargs", "expected", "error_field"),
                         [case for case in VALIDATION_CASES if case.values[1] == "warn"])
def test_strict_validation_raises_for_warnings(kwargs, expected, error_field):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GenerationConfig(**kwargs)
    with pytest.raises(ValueError, match="GenerationConfig is invalid") as error:
        config.validate(strict=True)
    # The same fields as the warning, hence (test_validation_outcome_matches_transformers) as transformers.
    assert flagged_fields(str(error.value)) == flagged_fields(outcome_of_ours(kwargs)[1])


def test_warning_is_a_user_warning_pointing_at_the_caller():
    with pytest.warns(UserWarning, match="`temperature`: is 0.5") as record:
        GenerationConfig(temperature=0.5)
    assert record[0].filename == __file__
    config = GenerationConfig()
    with pytest.warns(UserWarning, match="`top_p`") as record:
        config.update(top_p=0.5)
    assert record[0].filename == __file__


def test_values_of_the_wrong_type_raise_type_error_naming_the_field():
    with pytest.raises(TypeError, match="`max_new_tokens` must be a number"):
        GenerationConfig(max_new_tokens="5")
    with pytest.raises(TypeError, match="`pad_token_id` must be a number"):
        GenerationConfig(pad_token_id=[0])
    with pytest.raises(TypeError, match="watermarking_config has unknown keys"):
        GenerationConfig(watermarking_config={"ratio": 0.5})


@pytest.mark.parametrize(("kwargs", "error", "field"), [
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 2**64}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"seed": True}, TypeError, "seed"),
    ({"seed": "7"}, TypeError, "seed"),
    ({"presence_penalty": 2.5}, ValueError, "presence_penalty"),
    ({"presence_penalty": -2.01}, ValueError, "presence_penalty"),
    ({"presence_penalty": math.nan}, ValueError, "presence_penalty"),
    ({"presence_penalty": "0.1"}, TypeError, "presence_penalty"),
    ({"frequency_penalty": 3}, ValueError, "frequency_penalty"),
    ({"frequency_penalty": -math.inf}, ValueError, "frequency_penalty"),
    ({"frequency_penalty": None}, TypeError, "frequency_penalty"),
])
def test_turbogen_parameters_are_validated(kwargs, error, field):
    with pytest.raises(error, match=f"`{field}`"):
        GenerationConfig(**kwargs)
    config = GenerationConfig()
    with pytest.raises(error, match=f"`{field}`"):
        config.update(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"seed": 0}, {"seed": 2**64 - 1}, {"seed": np.int64(5)}, {"seed": None},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0}, {"presence_penalty": np.float32(0.5)},
    {"frequency_penalty": 1}, {"presence_penalty": 0.3, "do_sample": False},
])
def test_valid_turbogen_parameters_are_accepted_silently(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = GenerationConfig(**kwargs)
        config.validate(strict=True)
    assert {key: getattr(config, key) for key in kwargs} == kwargs


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_compile_config(hf):
    ours = GenerationConfig(compile_config=CompileConfig(fullgraph=True, dynamic=False))
    assert "compile_config" not in ours.to_dict()
    converted = GenerationConfig(compile_config=hf.CompileConfig(mode="max-autotune"))
    assert converted.compile_config == CompileConfig(mode="max-autotune")
    with pytest.raises(ValueError, match="`compile_config` must be a CompileConfig"):
        GenerationConfig(compile_config=object())


def test_reserved_names_cannot_be_extra_attributes():
    with pytest.raises(ValueError, match="`to_dict` cannot be a generation parameter"):
        GenerationConfig(to_dict=1)


# ---------------------------------------------------------------------------------------------
# Generation mode
# ---------------------------------------------------------------------------------------------

ASSISTANT = object()


@pytest.mark.parametrize(("kwargs", "assistant", "expected", "warns"), [
    ({}, None, "greedy_search", False),
    ({"do_sample": True}, None, "sample", False),
    ({"num_beams": 3}, None, "beam_search", False),
    ({"num_beams": 3, "do_sample": True}, None, "beam_sample", False),
    ({"num_beams": 4, "num_beam_groups": 2}, None, "group_beam_search", False),
    ({"num_beams": 2, "force_words_ids": [[1, 2]]}, None, "constrained_beam_search", False),
    ({"penalty_alpha": 0.6, "top_k": 4}, None, "contrastive_search", False),
    ({"penalty_alpha": 0.6, "top_k": 1}, None, "greedy_search", False),
    ({"dola_layers": "high"}, None, "dola_generation", False),
    ({"dola_layers": [1, 2], "do_sample": True}, None, "dola_generation", False),
    ({"dola_layers": "low", "num_beams": 2}, None, "beam_search", True),
    ({"prompt_lookup_num_tokens": 3}, None, "assisted_generation", False),
    ({"assistant_early_exit": 2, "do_sample": True}, None, "assisted_generation", False),
    ({}, ASSISTANT, "assisted_generation", False),
    ({"num_beams": 2}, ASSISTANT, "beam_search", True),
])
@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_generation_mode_matches_transformers(hf, kwargs, assistant, expected, warns):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GenerationConfig(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mode = config.get_generation_mode(assistant)
    assert isinstance(mode, GenerationMode)
    assert mode.value == expected
    assert bool(caught) == warns
    reference = hf.GenerationConfig(**kwargs).get_generation_mode(assistant)
    assert reference.value == expected


# ---------------------------------------------------------------------------------------------
# Serialization and files, both ways
# ---------------------------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    pytest.param({}, id="defaults"),
    pytest.param(dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.1,
                      max_new_tokens=32, eos_token_id=[2, 3], pad_token_id=0, bos_token_id=1,
                      stop_strings=["\n\n", "END"]), id="sampling"),
    pytest.param(dict(num_beams=4, num_return_sequences=2, early_stopping="never", length_penalty=0.7,
                      no_repeat_ngram_size=3, bad_words_ids=[[5], [6, 7]], exponential_decay_length_penalty=(5, 1.1),
                      forced_eos_token_id=2), id="beam"),
    pytest.param(dict(suppress_tokens=[1, 2], begin_suppress_tokens=[3], sequence_bias={(1, 2): -1.0},
                      renormalize_logits=True, guidance_scale=1.5), id="processors"),
    pytest.param(dict(cache_implementation="static", cache_config={"max_batch_size": 2}, prefill_chunk_size=16),
                 id="cache"),
    pytest.param(dict(do_sample=True, watermarking_config={"bias": 1.5, "context_width": 2}), id="watermark"),
    pytest.param(dict(num_assistant_tokens=5, num_assistant_tokens_schedule="heuristic",
                      prompt_lookup_num_tokens=4, is_assistant=True), id="assisted"),
    pytest.param(dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, dola_layers="low", low_memory=True),
                 id="legacy-strategies"),
    pytest.param(dict(return_dict_in_generate=True, output_scores=True, output_logits=True), id="outputs"),
    pytest.param(dict(decoder_start_token_id=[0, 1], encoder_no_repeat_ngram_size=2, custom_key="kept"),
                 id="encoder-decoder-and-extra-key"),
]


@pytest.mark.parametrize("kwargs", ROUND_TRIP_CASES)
@pytest.mark.parametrize("use_diff", [True, pytest.param(False, marks=skip_on_transformers_5(
    "GenerationConfig stores unset parameters as None, so its full JSON holds nulls where 4.57's format, which "
    "turbogen writes, holds the defaults"))])
def test_json_is_the_same_as_transformers(hf, kwargs, use_diff):
    # (4.45: its full JSON holds its own defaults, and its cache configs take other arguments.)
    skip_here_on_transformers_4_45(CONFIG_SPEC_IN_4_45, when=not use_diff or "cache_config" in kwargs)
    reference = hf.GenerationConfig(**kwargs).to_json_string(use_diff=use_diff)
    ours = GenerationConfig(**kwargs)
    if use_diff:
        version_line = '"transformers_version": "{}"'
        expected = reference.replace(version_line.format(hf.__version__),
                                     version_line.format(MIRRORED_TRANSFORMERS_VERSION))
        assert ours.to_json_string(use_diff=True) == expected
    else:
        full = json.loads(ours.to_json_string(use_diff=False))
        assert {key: full.pop(key) for key in TURBOGEN_PARAMETERS} == {
            "seed": None, "presence_penalty": 0.0, "frequency_penalty": 0.0}
        assert without_version(full) == without_version(json.loads(reference))


@pytest.mark.parametrize("kwargs", ROUND_TRIP_CASES)
@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_file_written_by_transformers_loads_with_equal_values(hf, kwargs, tmp_path):
    written = hf.GenerationConfig(**kwargs)
    written.save_pretrained(tmp_path)
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded == GenerationConfig(**kwargs)
    assert loaded == as_generation_config(written)
    reference_values = json.loads(written.to_json_string(use_diff=False, ignore_metadata=True))
    if TRANSFORMERS_5:  # None is "unset" there: the loaded config holds the default instead
        reference_values = {key: value for key, value in reference_values.items() if value is not None}
    loaded_values = json.loads(loaded.to_json_string(use_diff=False, ignore_metadata=True))
    assert {key: loaded_values.get(key, "<missing>") for key in reference_values} == reference_values


@pytest.mark.parametrize("kwargs", ROUND_TRIP_CASES)
def test_file_written_by_turbogen_loads_in_transformers_and_back(hf, kwargs, tmp_path):
    # (4.45: its cache configs take other arguments, and it refuses the legacy strategies' combination.)
    skip_here_on_transformers_4_45(CONFIG_SPEC_IN_4_45, when="cache_config" in kwargs or "num_beam_groups" in kwargs)
    ours = GenerationConfig(**kwargs, **TURBOGEN_EXTRAS)
    ours.save_pretrained(tmp_path / "ours")
    reference = hf.GenerationConfig.from_pretrained(tmp_path / "ours")
    # transformers keeps our additions as plain attributes.
    assert {key: getattr(reference, key) for key in TURBOGEN_EXTRAS} == TURBOGEN_EXTRAS
    assert without_version(json.loads(reference.to_json_string())) == without_version(
        json.loads(ours.to_json_string()))
    reference.save_pretrained(tmp_path / "theirs")
    back = GenerationConfig.from_pretrained(tmp_path / "theirs")
    assert back == ours
    assert back.to_json_string() == ours.to_json_string()


def test_diff_dict_holds_changes_extras_and_version():
    config = GenerationConfig(top_k=None, seed=3, custom_key=[1])
    assert config.to_diff_dict() == {
        "top_k": None, "seed": 3, "custom_key": [1], "transformers_version": MIRRORED_TRANSFORMERS_VERSION}


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_dtype_values_are_serialized_as_names(hf):
    torch = pytest.importorskip("torch")
    kwargs = {"cache_implementation": "quantized",
              "cache_config": {"dtype": torch.float16, "nested": {"dtype": torch.int8}}}
    ours = GenerationConfig(**kwargs).to_dict()["cache_config"]
    assert ours == {"dtype": "float16", "nested": {"dtype": "int8"}}
    assert ours == hf.GenerationConfig(**kwargs).to_dict()["cache_config"]


def test_from_pretrained_accepts_file_names_file_paths_and_subfolders(tmp_path):
    config = GenerationConfig(do_sample=True, top_k=7)
    written = config.save_pretrained(tmp_path / "model" / "nested", config_file_name="custom.json")
    assert written == tmp_path / "model" / "nested" / "custom.json"
    assert GenerationConfig.from_pretrained(tmp_path / "model" / "nested", "custom.json") == config
    assert GenerationConfig.from_pretrained(str(written)) == config
    assert GenerationConfig.from_pretrained(tmp_path / "model", "custom.json", subfolder="nested") == config
    assert GenerationConfig.from_pretrained(written, local_files_only=True) == config


def test_from_pretrained_overrides_match_transformers(hf, tmp_path):
    GenerationConfig(do_sample=True, top_k=3).save_pretrained(tmp_path)
    overrides = dict(top_k=1, foo=False, temperature=0.5)
    ours, our_unused = GenerationConfig.from_pretrained(tmp_path, return_unused_kwargs=True, **overrides)
    reference, reference_unused = hf.GenerationConfig.from_pretrained(tmp_path, return_unused_kwargs=True,
                                                                      **overrides)
    assert (ours.top_k, ours.temperature, ours.foo) == (1, 0.5, False)
    assert our_unused == reference_unused == {}  # like transformers, unknown keys become attributes
    assert without_version(ours.to_diff_dict()) == without_version(reference.to_diff_dict())
    assert GenerationConfig.from_pretrained(tmp_path, seed=9).seed == 9


def test_from_dict_matches_transformers(hf):
    for kwargs in ({"foo": 1, "top_k": 3, "do_sample": True}, {"_from_model_config": True, "foo": 1}):
        ours, our_unused = GenerationConfig.from_dict({"max_length": 7}, return_unused_kwargs=True, **kwargs)
        reference, reference_unused = hf.GenerationConfig.from_dict({"max_length": 7}, return_unused_kwargs=True,
                                                                    **kwargs)
        assert our_unused == reference_unused
        assert hasattr(ours, "foo") == hasattr(reference, "foo")
        assert without_version(ours.to_diff_dict()) == without_version(reference.to_diff_dict())
    with pytest.raises(TypeError, match="config_dict must be a mapping"):
        GenerationConfig.from_dict([("top_k", 3)])


@pytest.mark.parametrize(("make_path", "error", "message"), [
    (lambda root: root / "missing", FileNotFoundError, "does not download from the Hugging Face Hub"),
    (lambda root: "openai-community/gpt2", FileNotFoundError, "neither a local directory nor a JSON file"),
    (lambda root: root, FileNotFoundError, "has no generation_config.json"),
])
def test_from_pretrained_reports_missing_files(tmp_path, make_path, error, message):
    with pytest.raises(error, match=message):
        GenerationConfig.from_pretrained(make_path(tmp_path))


def test_from_pretrained_rejects_bad_files_and_hub_options(tmp_path):
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid JSON file"):
        GenerationConfig.from_pretrained(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        GenerationConfig.from_pretrained(tmp_path / "list.json")
    with pytest.raises(ValueError, match="config_file_name"):
        GenerationConfig.from_pretrained(tmp_path / "list.json", "other.json")
    with pytest.raises(TypeError, match=r"\['revision', 'token'\] are Hugging Face Hub download options"):
        GenerationConfig.from_pretrained(tmp_path, revision="main", token="x")


def test_save_pretrained_refuses_what_transformers_refuses(hf, tmp_path):
    with pytest.warns(UserWarning):
        ours = GenerationConfig(temperature=0.5)
    with pytest.raises(ValueError, match="(?s)`temperature`.*Fix these issues"):
        ours.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="temperature"):
        hf.GenerationConfig(temperature=0.5).save_pretrained(tmp_path)
    assert not (tmp_path / "generation_config.json").exists()
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match="save_directory"):
        GenerationConfig().save_pretrained(tmp_path / "a_file")


# ---------------------------------------------------------------------------------------------
# Object behaviour
# ---------------------------------------------------------------------------------------------


def test_equality_hash_and_repr_ignore_metadata():
    config = GenerationConfig(do_sample=True, top_k=3, seed=1)
    twin = GenerationConfig(do_sample=True, top_k=3, seed=1, transformers_version="4.30.0", _commit_hash="abc")
    assert config == twin and hash(config) == hash(twin)
    assert config != GenerationConfig(do_sample=True, top_k=3, seed=2)
    assert config != {"do_sample": True, "top_k": 3}
    assert repr(config).startswith("GenerationConfig {")
    assert json.loads(repr(config).removeprefix("GenerationConfig ")) == {"do_sample": True, "top_k": 3, "seed": 1}


def test_copies_share_nothing():
    config = GenerationConfig(cache_implementation="static", cache_config={"sizes": [1, 2]}, eos_token_id=[1],
                              watermarking_config={"bias": 1.0}, do_sample=True)
    for duplicate in (config.copy(), copy.deepcopy(config)):
        assert duplicate == config and duplicate is not config
        duplicate.cache_config["sizes"].append(3)
        duplicate.eos_token_id.append(2)
        duplicate.watermarking_config.bias = 3.0
        assert config.cache_config == {"sizes": [1, 2]} and config.eos_token_id == [1]
        assert config.watermarking_config.bias == 1.0


def test_update_returns_unused_keys_and_revalidates(hf):
    config = GenerationConfig(custom_key=1)
    unused = config.update(do_sample=True, top_k=5, custom_key=2, unknown=3, watermarking_config={"bias": 0.5})
    assert unused == {"unknown": 3}
    assert (config.do_sample, config.top_k, config.custom_key) == (True, 5, 2)
    assert config.watermarking_config == WatermarkingConfig(bias=0.5)
    assert unused == hf.GenerationConfig(custom_key=1).update(do_sample=True, top_k=5, custom_key=2, unknown=3)
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        config.update(max_new_tokens=0)


def test_watermarking_config_api():
    watermark = WatermarkingConfig.from_dict({"bias": 1.0}, context_width=3, not_a_field=1)
    assert watermark == WatermarkingConfig(bias=1.0, context_width=3)
    assert dict(watermark) == watermark.to_dict()
    assert json.loads(watermark.to_json_string()) == watermark.to_dict()
    watermark.update(seeding_scheme="selfhash", unknown=1)
    watermark.validate()
    watermark.update(context_width="2")
    with pytest.raises(TypeError, match="context_width"):
        watermark.validate()


# ---------------------------------------------------------------------------------------------
# Interop
# ---------------------------------------------------------------------------------------------


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_as_generation_config_normalises_all_accepted_forms(hf):
    assert as_generation_config(None) == GenerationConfig()
    assert as_generation_config({"do_sample": True, "seed": 4}) == GenerationConfig(do_sample=True, seed=4)
    ours = GenerationConfig(top_k=None)
    assert as_generation_config(ours) is ours

    reference = hf.GenerationConfig(do_sample=True, watermarking_config={"bias": 1.5}, custom_key="x",
                                    compile_config=hf.CompileConfig(fullgraph=True), seed=11)
    converted = as_generation_config(reference)
    assert isinstance(converted, GenerationConfig)
    assert converted.watermarking_config == WatermarkingConfig(bias=1.5)
    assert converted.compile_config == CompileConfig(fullgraph=True)
    assert (converted.custom_key, converted.seed) == ("x", 11)
    reference_json = without_version(json.loads(reference.to_json_string()))
    if TRANSFORMERS_5:  # 5.x serialises compile_config; 4.57, like turbogen, leaves it out
        assert reference_json.pop("compile_config") == CompileConfig(fullgraph=True).to_dict()
    assert without_version(json.loads(converted.to_json_string())) == reference_json

    from_model = hf.GenerationConfig.from_dict({"bos_token_id": 1}, _from_model_config=True)
    assert as_generation_config(from_model)._from_model_config is True

    # transformers' defaults are ours in both versions; an explicit None is a value in 4.57 (top_k=None disables
    # top-k) but means "unset" in 5.x, whose generate() then uses the default.
    assert as_generation_config(hf.GenerationConfig()) == GenerationConfig()
    assert as_generation_config(hf.GenerationConfig(top_k=None)).top_k == (50 if TRANSFORMERS_5 else None)


def test_as_generation_config_rejects_other_types(hf):
    with pytest.raises(TypeError, match="got builtins.list"):
        as_generation_config([("top_k", 3)])
    with pytest.raises(ValueError, match="`watermarking_config` must be a WatermarkingConfig"):
        GenerationConfig(watermarking_config=3)


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_as_generation_config_converts_a_synthid_config(hf):
    from turbogen import SynthIDTextWatermarkingConfig

    synth_id = hf.SynthIDTextWatermarkingConfig(ngram_len=5, keys=[1, 2])
    converted = as_generation_config(hf.GenerationConfig(do_sample=True, watermarking_config=synth_id))
    assert converted.watermarking_config == SynthIDTextWatermarkingConfig(ngram_len=5, keys=[1, 2])


@skip_on_transformers_4_45(CONFIG_SPEC_IN_4_45)
def test_from_model_config_matches_transformers(hf):
    transformers = pytest.importorskip("transformers")
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=100)
    decoder_only = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, max_length=33,
                                           do_sample=True, temperature=0.5, output_hidden_states=True,
                                           bos_token_id=1, eos_token_id=2)
    encoder_decoder = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.BertConfig(**tiny),
        transformers.BertConfig(**tiny, bos_token_id=5, eos_token_id=6, pad_token_id=0))
    # Like transformers, validation runs before `return_dict_in_generate` is switched on, and warns.
    with pytest.warns(UserWarning, match="`output_hidden_states`"):
        from_decoder_only = GenerationConfig.from_model_config(decoder_only)
    for ours, model_config in ((from_decoder_only, decoder_only),
                               (GenerationConfig.from_model_config(encoder_decoder), encoder_decoder)):
        reference = hf.GenerationConfig.from_model_config(model_config)
        assert as_generation_config(reference) == ours
        if not TRANSFORMERS_5:  # 5.x's diff also lists values equal to the defaults (its stored defaults are None)
            assert without_version(ours.to_diff_dict()) == without_version(reference.to_diff_dict())
        assert ours._from_model_config is True
    assert from_decoder_only.return_dict_in_generate is True
    assert from_decoder_only.bos_token_id == 1
    assert GenerationConfig.from_model_config({"eos_token_id": 2, "hidden_size": 8}).to_diff_dict() == {
        "eos_token_id": 2, "_from_model_config": True, "transformers_version": MIRRORED_TRANSFORMERS_VERSION}
    with pytest.raises(TypeError, match="model_config must be"):
        GenerationConfig.from_model_config(42)


def test_importing_the_package_does_not_import_transformers():
    # The package is loaded from its files, as a top-level package: importing it as `turbogen.config` would
    # run turbogen/__init__.py, which imports torch.
    package_directory = os.path.dirname(config_module.__file__)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('turbogen_config', {config_module.__file__!r}, "
        f"submodule_search_locations=[{package_directory!r}])\n"
        "module = sys.modules['turbogen_config'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.as_generation_config({'do_sample': True}).to_json_string()\n"
        "module.EngineConfig(num_speculative_tokens=4).to_dict()\n"
        "print(sorted(name for name in sys.modules if name.startswith('turbogen_config.')))\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('transformers', 'torch')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded_submodules, heavy_modules = result.stdout.strip().splitlines()
    expected_submodules = sorted(f"turbogen_config.{file_name.removesuffix('.py')}"
                                 for file_name in os.listdir(package_directory)
                                 if file_name.endswith(".py") and file_name != "__init__.py")
    assert loaded_submodules == str(expected_submodules)
    assert heavy_modules == "[]"
