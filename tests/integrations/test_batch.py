"""BatchGenerator (no Ray): per-row seeds, micro-batch independence, bad rows, batch formats, configs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

import turbogen  # noqa: E402
from turbogen import models  # noqa: E402
from turbogen.integrations.batch import OUTPUT_COLUMNS, BatchGenerator, stable_row_seed  # noqa: E402

from tiny_models import EOS_ID, tiny_model, tiny_tokenizer  # noqa: E402
from tiny_models import tiny_model_dir, tiny_model_environment  # noqa: E402,F401  (fixtures)

GREEDY = {"max_new_tokens": 6, "do_sample": False}
SAMPLING = {"max_new_tokens": 6, "do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
TEXTS = ["the quick brown fox", "hello", "once upon a time there was a small model", "stop the fox",
         "a", "the end is near, the end is here"]


def _direct(text: str, config: dict, seed: int) -> list[int]:
    """The expectation: the row alone through turbogen.generate with its own seed."""
    ids = tiny_tokenizer()(text)["input_ids"]
    output = turbogen.generate(tiny_model("llama"), [ids], generation_config=turbogen.GenerationConfig(**config),
                               seed=[seed], pad_token_id=0, eos_token_id=EOS_ID)
    generated = output[0, len(ids):].tolist()
    return generated[:generated.index(EOS_ID) + 1] if EOS_ID in generated else generated


# -- stable_row_seed ------------------------------------------------------------------------------------------


def test_stable_row_seed_follows_its_documented_definition():
    # Hard-coded from the definition: sha256(b"7\0" + b"s" + b"hello")[:8], big-endian, >> 1. A change of the
    # definition (or a salted hash) would change these across processes.
    assert stable_row_seed(7, "hello") == 2362992294582075895
    assert stable_row_seed(0, [1, 5, 9]) == 7301038672973351879
    assert stable_row_seed(7, 42) == 3508200248739339952


def test_stable_row_seed_separates_keys_and_seeds():
    seeds = {stable_row_seed(base, key) for base in (0, 1) for key in ("a", "b", "1", 1, [1], b"a")}
    assert len(seeds) == 12
    assert all(0 <= seed < 2**63 for seed in seeds)
    # The same key in any container or integer type is the same key.
    assert stable_row_seed(3, np.array([1, 5, 9])) == stable_row_seed(3, (1, 5, 9)) == stable_row_seed(3, [1, 5, 9])
    assert stable_row_seed(3, np.int64(42)) == stable_row_seed(3, 42)


@pytest.mark.parametrize("seed, key, error", [(True, "a", TypeError), (-1, "a", ValueError), (1.0, "a", TypeError),
                                              (0, 1.5, TypeError), (0, None, TypeError), (0, [1, "x"], TypeError)])
def test_stable_row_seed_rejects_bad_arguments(seed, key, error):
    with pytest.raises(error):
        stable_row_seed(seed, key)


# -- generation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [GREEDY, SAMPLING], ids=["greedy", "sampling"])
def test_rows_do_not_depend_on_the_micro_batch(tiny_model_dir, tiny_model_environment, config):
    rows = [{"text": text} for text in TEXTS]
    expected = [_direct(text, config, stable_row_seed(11, text)) for text in TEXTS]
    for batch_size in (1, 4, 16):
        generator = BatchGenerator(tiny_model_dir, config, seed=11, batch_size=batch_size)
        results = generator.generate_rows(rows)
        assert [result["generated_token_ids"] for result in results] == expected, batch_size
        # Reversed, every row meets other neighbours and another padding width.
        reversed_results = generator.generate_rows(rows[::-1])
        assert [result["generated_token_ids"] for result in reversed_results] == expected[::-1], batch_size
    assert [result["generated_text"] for result in results] == [tiny_tokenizer().decode(ids, skip_special_tokens=True)
                                                               for ids in expected]
    assert {result["finish_reason"] for result in results} == {"length"}
    assert [result["text"] for result in results] == TEXTS


def test_sampling_seeds_follow_the_key_column(tiny_model_dir, tiny_model_environment):
    generator = BatchGenerator(tiny_model_dir, SAMPLING, seed=5, key_column="id", batch_size=8)
    rows = [{"text": "hello", "id": key} for key in (1, 2, 3, 1)]
    tokens = [result["generated_token_ids"] for result in generator.generate_rows(rows)]
    assert tokens[0] == tokens[3] == _direct("hello", SAMPLING, stable_row_seed(5, 1))
    assert tokens[1] == _direct("hello", SAMPLING, stable_row_seed(5, 2))
    assert len({tuple(ids) for ids in tokens}) == 3


def test_finish_reason_stop_ends_at_eos(tiny_model_dir, tiny_model_environment):
    greedy = _direct("hello", {**GREEDY, "max_new_tokens": 8}, 0)
    stop_token = greedy[2]
    expected = greedy[:greedy.index(stop_token) + 1]
    generator = BatchGenerator(tiny_model_dir, {**GREEDY, "max_new_tokens": 8, "eos_token_id": stop_token},
                               batch_size=4)
    stopped, running = generator.generate_rows([{"text": "hello"}, {"text": "the quick brown fox"}])
    assert stopped["generated_token_ids"] == expected
    assert stopped["finish_reason"] == "stop"
    if stop_token not in running["generated_token_ids"]:
        assert running["finish_reason"] == "length"
        assert len(running["generated_token_ids"]) == 8


def test_bad_rows_get_an_error_and_the_others_are_generated(tiny_model_dir, tiny_model_environment):
    generator = BatchGenerator(tiny_model_dir, GREEDY, batch_size=3, max_prompt_tokens=6)
    too_long = "once upon a time there was a small model that generated text"
    rows = [{"text": "hello"}, {"text": ""}, {"text": "   \n"}, {"text": too_long}, {"input_ids": [1, 5, 10_000]},
            {"input_ids": [1, 2.5]}, {"input_ids": []}, {"other": "x"}, {"text": 17}, {"text": "the end"},
            {"input_ids": [5, 6, 7]}]
    results = generator.generate_rows(rows)
    errors = [result["error"] for result in results]
    for index, fragment in [(1, "empty"), (2, "empty"), (3, "over max_prompt_tokens=6"), (4, "outside the vocabulary"),
                            (5, "integer token ids"), (6, "empty"), (7, "no prompt"), (8, "must be a str")]:
        assert fragment in errors[index], (index, errors[index])
        assert results[index]["finish_reason"] == "error"
        assert results[index]["generated_token_ids"] == [] and results[index]["generated_text"] == ""
    for index in (0, 9, 10):
        assert errors[index] == "" and results[index]["finish_reason"] == "length"
    assert results[0]["generated_token_ids"] == _direct("hello", GREEDY, 0)
    assert results[9]["generated_token_ids"] == _direct("the end", GREEDY, 0)
    ids_alone = BatchGenerator(tiny_model_dir, GREEDY).generate_rows([{"input_ids": [5, 6, 7]}])
    assert results[10]["generated_token_ids"] == ids_alone[0]["generated_token_ids"]


def test_default_prompt_limit_is_positions_minus_new_tokens(tiny_model_dir, tiny_model_environment):
    generator = BatchGenerator(tiny_model_dir, {**GREEDY, "max_new_tokens": 100})
    assert generator.max_prompt_tokens == 128 - 100
    ok, too_long = generator.generate_rows([{"input_ids": [5] * 28}, {"input_ids": [5] * 29}])
    assert ok["error"] == "" and len(ok["generated_token_ids"]) > 0
    assert "29 tokens, over max_prompt_tokens=28" in too_long["error"]


def test_call_keeps_the_batch_format(tiny_model_dir, tiny_model_environment):
    pandas = pytest.importorskip("pandas")
    generator = BatchGenerator(tiny_model_dir, SAMPLING, seed=3, batch_size=2)
    texts = ["hello", "", "the end"]
    expected = generator.generate_rows([{"text": text, "n": n} for n, text in enumerate(texts)])

    batch = {"text": np.array(texts, dtype=object), "n": np.arange(3)}
    output = generator(batch)
    assert list(output) == ["text", "n", *OUTPUT_COLUMNS]
    assert output["n"] is batch["n"]
    for name in OUTPUT_COLUMNS:
        assert isinstance(output[name], np.ndarray) and output[name].dtype == object and len(output[name]) == 3
        assert list(output[name]) == [row[name] for row in expected]

    frame = generator(pandas.DataFrame({"text": texts, "n": range(3)}))
    assert isinstance(frame, pandas.DataFrame)
    assert frame.to_dict("records") == expected


def test_decode_false_omits_the_text(tiny_model_dir, tiny_model_environment):
    results = BatchGenerator(tiny_model_dir, GREEDY, decode=False).generate_rows([{"text": "hello"}])
    assert "generated_text" not in results[0]
    assert results[0]["generated_token_ids"] == _direct("hello", GREEDY, 0)


@pytest.mark.parametrize("config, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 4, "not_a_parameter": 1}, "not_a_parameter"),
    ({"max_new_tokens": 4, "do_sample": True, "num_return_sequences": 2}, "num_return_sequences"),
    ({"max_new_tokens": 200}, "no room for a prompt"),
])
def test_invalid_config_raises_in_the_constructor(tiny_model_dir, config, message):
    with pytest.raises(ValueError, match=message):
        BatchGenerator(tiny_model_dir, config)


@pytest.mark.parametrize("arguments, error", [({"batch_size": 0}, ValueError), ({"seed": -1}, ValueError),
                                              ({"text_column": ""}, TypeError), ({"threads": 1.5}, TypeError),
                                              ({"model": 3}, TypeError)])
def test_invalid_arguments_raise(tiny_model_dir, arguments, error):
    with pytest.raises(error):
        BatchGenerator(**{"model": tiny_model_dir, **arguments})


def test_embedded_default_model(tiny_model_environment):
    generator = BatchGenerator(None, {"max_new_tokens": 4, "do_sample": False, "temperature": None, "top_k": None,
                                      "top_p": None, "repetition_penalty": None})
    (result,) = generator.generate_rows([{"text": "It is a truth universally acknowledged"}])
    model, tokenizer, _ = models.load_default_model()
    ids = tokenizer("It is a truth universally acknowledged")["input_ids"]
    expected = turbogen.generate(model, [ids], generation_config=turbogen.GenerationConfig(max_new_tokens=4),
                                 use_model_defaults=False)
    assert result["generated_token_ids"] == expected[0, len(ids):].tolist()
    assert result["finish_reason"] in ("length", "stop") and result["error"] == ""


def test_a_directory_named_ray_on_the_path_is_not_ray_data(tmp_path, monkeypatch):
    """Ray's session directory /tmp/ray shadows an uninstalled Ray as a namespace package whenever /tmp is on
    sys.path (an editable install of a clone under /tmp puts it there): only a real Ray Data counts."""
    import sys

    from turbogen.integrations.ray import ray_data_available

    (tmp_path / "ray").mkdir()
    saved = {name: module for name, module in sys.modules.items() if name == "ray" or name.startswith("ray.")}
    monkeypatch.setattr(sys, "path", [str(tmp_path), *[entry for entry in sys.path if "site-packages" not in entry]])
    try:
        for name in saved:
            del sys.modules[name]
        assert not ray_data_available()
    finally:
        for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
            del sys.modules[name]
        sys.modules.update(saved)
