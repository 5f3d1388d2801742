"""turbogen.config.EngineConfig: defaults, per-setting and cross-setting validation, dict round trips."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from turbogen.config import EngineConfig

DEFAULTS = {
    "block_size": 16,
    "num_blocks": None,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 2048,
    "max_model_len": None,
    "num_speculative_tokens": 0,
    "enable_prefix_caching": False,
    "finish_check_lag": None,
}
NON_DEFAULT = {
    "block_size": 32,
    "num_blocks": 100,
    "max_num_seqs": 8,
    "max_num_batched_tokens": 512,
    "max_model_len": 3200,
    "num_speculative_tokens": 4,
    "enable_prefix_caching": True,
    "finish_check_lag": 0,
}


def test_defaults():
    assert EngineConfig().to_dict() == DEFAULTS


def test_dict_and_json_round_trips():
    config = EngineConfig(**NON_DEFAULT)
    assert config.to_dict() == NON_DEFAULT
    assert EngineConfig.from_dict(config.to_dict()) == config
    assert EngineConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert EngineConfig.from_dict({"max_num_seqs": 8}) == EngineConfig(max_num_seqs=8)


def test_from_dict_rejects_unknown_settings_and_non_mappings():
    with pytest.raises(TypeError, match=r"unknown EngineConfig settings \['block_sise'\]"):
        EngineConfig.from_dict({"block_sise": 8})
    with pytest.raises(TypeError, match="settings must be a mapping"):
        EngineConfig.from_dict([("block_size", 8)])


def test_repr_names_every_setting_and_evaluates_back():
    config = EngineConfig(**NON_DEFAULT)
    assert repr(config).startswith("EngineConfig(")
    assert eval(repr(config), {"EngineConfig": EngineConfig}) == config


def test_is_immutable_and_copies_are_validated():
    config = EngineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.block_size = 8
    assert dataclasses.replace(config, block_size=8).block_size == 8
    with pytest.raises(ValueError, match="`block_size`"):
        dataclasses.replace(config, block_size=0)


@pytest.mark.parametrize(("settings", "error", "name"), [
    ({"block_size": 0}, ValueError, "block_size"),
    ({"block_size": 1.5}, TypeError, "block_size"),
    ({"block_size": True}, TypeError, "block_size"),
    ({"block_size": None}, TypeError, "block_size"),
    ({"num_blocks": 0}, ValueError, "num_blocks"),
    ({"num_blocks": "8"}, TypeError, "num_blocks"),
    ({"max_num_seqs": -1}, ValueError, "max_num_seqs"),
    ({"max_num_seqs": 64.0}, TypeError, "max_num_seqs"),
    ({"max_num_batched_tokens": 0}, ValueError, "max_num_batched_tokens"),
    ({"max_num_batched_tokens": "2048"}, TypeError, "max_num_batched_tokens"),
    ({"max_model_len": 0}, ValueError, "max_model_len"),
    ({"num_speculative_tokens": -1}, ValueError, "num_speculative_tokens"),
    ({"num_speculative_tokens": None}, TypeError, "num_speculative_tokens"),
    ({"enable_prefix_caching": 1}, TypeError, "enable_prefix_caching"),
    ({"enable_prefix_caching": None}, TypeError, "enable_prefix_caching"),
    ({"finish_check_lag": -1}, ValueError, "finish_check_lag"),
    ({"finish_check_lag": 0.5}, TypeError, "finish_check_lag"),
])
def test_each_setting_is_validated(settings, error, name):
    with pytest.raises(error, match=f"`{name}` must be"):
        EngineConfig(**settings)


@pytest.mark.parametrize(("settings", "names"), [
    ({"max_num_seqs": 128, "max_num_batched_tokens": 64}, ("max_num_batched_tokens", "max_num_seqs")),
    ({"max_num_seqs": 1, "max_num_batched_tokens": 4, "num_speculative_tokens": 4},
     ("max_num_batched_tokens", "num_speculative_tokens")),
    ({"num_blocks": 4, "block_size": 16, "max_model_len": 65}, ("num_blocks", "block_size", "max_model_len")),
])
def test_settings_must_be_consistent(settings, names):
    with pytest.raises(ValueError) as error:
        EngineConfig(**settings)
    for name in names:
        assert f"`{name}`" in str(error.value)


@pytest.mark.parametrize("settings", [
    {"max_num_seqs": 64, "max_num_batched_tokens": 64},
    {"max_num_seqs": 1, "max_num_batched_tokens": 5, "num_speculative_tokens": 4},
    {"num_blocks": 4, "block_size": 16, "max_model_len": 64},
    {"num_blocks": 1, "block_size": 1},
    {"finish_check_lag": 0, "num_speculative_tokens": 0},
])
def test_boundary_values_are_accepted(settings):
    assert {key: getattr(EngineConfig(**settings), key) for key in settings} == settings


def test_numpy_integers_are_stored_as_python_ints():
    config = EngineConfig(block_size=np.int64(32), num_blocks=np.int32(10), finish_check_lag=np.uint8(2))
    assert [type(value) for value in (config.block_size, config.num_blocks, config.finish_check_lag)] == [int] * 3
    assert json.loads(json.dumps(config.to_dict()))["block_size"] == 32


def test_docstring_documents_every_setting_with_its_default():
    for name, default in DEFAULTS.items():
        assert f"        {name} (" in EngineConfig.__doc__
        assert f", {default!r}): " in EngineConfig.__doc__.split(f"        {name} (", 1)[1].split("\n", 1)[0]
