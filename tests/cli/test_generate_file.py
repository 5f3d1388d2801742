"""``turbogen generate --input FILE --output FILE [--ray N]``: JSONL in, one result per row out, in order.

Run in-process on the tiny random Llama saved to disk. The expected rows are computed independently: each
prompt generated alone by :func:`turbogen.generate` on the in-memory model, with the per-row seed of
:func:`~turbogen.integrations.batch.stable_row_seed`.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from tiny_models import EOS_ID, tiny_model, tiny_tokenizer
from tiny_models import tiny_model_dir, tiny_model_environment  # noqa: F401  (fixtures)
from turbogen.cli import main
from turbogen.cli.common import RANDOM_WEIGHTS_NOTE
from turbogen.generate import generate
from turbogen.integrations.batch import stable_row_seed
from turbogen.integrations.ray import ray_data_available

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

NEW_TOKENS = 4
ROWS = [
    {"text": "the quick brown", "id": 1},
    {"text": "hello world", "id": 2, "meta": {"tags": ["a", "b"], "score": 0.5}},
    {"input_ids": [1, 40, 41, 42], "id": 3},
    {"text": "once upon a time there was", "id": 4},
    {"text": "the quick brown", "id": 5},
]


def _write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _expected(row: dict, seed_key, **generation) -> dict:
    """``row`` as the command should write it: its prompt generated alone, seeded by its key."""
    tokenizer = tiny_tokenizer()
    ids = row["input_ids"] if "input_ids" in row else tokenizer(row["text"])["input_ids"]
    if generation.get("do_sample"):
        generation["seed"] = [stable_row_seed(generation.pop("base_seed"), seed_key)]
    output = generate(tiny_model("llama"), [ids], max_new_tokens=NEW_TOKENS, **generation)
    new = output[0, len(ids):].tolist()
    if EOS_ID in new:
        new = new[:new.index(EOS_ID) + 1]
    return {**row, "generated_text": tokenizer.decode(new, skip_special_tokens=True), "generated_token_ids": new,
            "finish_reason": "stop" if new[-1] == EOS_ID else "length", "error": ""}


def test_greedy_rows_equal_each_prompt_generated_alone(tiny_model_dir, tmp_path, capsys):
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "out.jsonl"
    status, out, err = _run(capsys, "generate", "--model", tiny_model_dir, "--input", source, "--output", output,
                            "--max-new-tokens", NEW_TOKENS, "--no-do-sample", "--batch-size", 2)
    assert status == 0 and out == ""
    assert _read_jsonl(output) == [_expected(row, None, do_sample=False) for row in ROWS]
    assert f"generating  [########################] {len(ROWS)}/{len(ROWS)}" in err
    assert "warning" not in err and not (tmp_path / "out.jsonl.partial").exists()


def test_sampled_rows_are_seeded_by_their_key_not_their_place(tiny_model_dir, tmp_path, capsys):
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    sampling = ["--model", tiny_model_dir, "--input", source, "--max-new-tokens", NEW_TOKENS, "--do-sample",
                "--temperature", 1.5, "--seed", 11]
    by_prompt, by_id = tmp_path / "by_prompt.jsonl", tmp_path / "by_id.jsonl"
    assert _run(capsys, "generate", *sampling, "--output", by_prompt, "--batch-size", 3)[0] == 0
    assert _run(capsys, "generate", *sampling, "--output", by_id, "--key-field", "id")[0] == 0
    generation = dict(do_sample=True, temperature=1.5, base_seed=11)
    prompt_keys = [row.get("text", row.get("input_ids")) for row in ROWS]
    assert _read_jsonl(by_prompt) == [_expected(row, key, **generation) for row, key in zip(ROWS, prompt_keys)]
    assert _read_jsonl(by_id) == [_expected(row, row["id"], **generation) for row in ROWS]
    # Rows 1 and 5 share their prompt: the same sample when the prompt is the key.
    first, *_, last = _read_jsonl(by_prompt)
    assert first["generated_token_ids"] == last["generated_token_ids"]


def test_bad_prompts_become_error_rows_and_the_run_finishes(tiny_model_dir, tmp_path, capsys):
    rows = [{"text": "the quick brown"}, {"text": ""}, {"text": "once upon a time there was a small model"},
            {"input_ids": [1, 10_000]}]
    source = _write_jsonl(tmp_path / "in.jsonl", rows)
    status, out, err = _run(capsys, "generate", "--model", tiny_model_dir, "--input", source, "--output", "-",
                            "--max-new-tokens", NEW_TOKENS, "--no-do-sample", "--max-prompt-tokens", 8)
    assert status == 0
    written = [json.loads(line) for line in out.splitlines()]
    assert written[0] == _expected(rows[0], None, do_sample=False)
    for row, output, words in zip(rows[1:], written[1:], ["empty", "over max_prompt_tokens=8", "vocabulary"]):
        assert output == {**row, "generated_text": "", "generated_token_ids": [], "finish_reason": "error",
                          "error": output["error"]}
        assert words in output["error"]
    assert ('turbogen generate: warning: 3 of 4 rows failed: written with finish_reason "error" and the reason '
            'in "error"') in err.splitlines()


@pytest.mark.parametrize("line, message", [
    ('{"text": "fine"', "line 3: Expecting ',' delimiter"),
    ('["a", "list"]', "line 3: expected a JSON object, got an array"),
    ('{"prompt": "x"}', "line 3: no prompt: the row has neither 'text' (see --text-field) nor 'input_ids'"),
    ('{"text": 7}', "line 3: field 'text' must be a string, got a number"),
    ('{"text": "x", "error": ""}', "line 3: the row already has the output field 'error'"),
])
def test_a_bad_line_stops_the_run_before_the_model_loads(line, message, tiny_model_dir, tmp_path, capsys):
    source = _write_jsonl(tmp_path / "in.jsonl", [ROWS[0], "", line, ROWS[1]])  # line 2 is blank: skipped
    output = tmp_path / "out.jsonl"
    status, out, err = _run(capsys, "generate", "--model", tiny_model_dir, "--input", source, "--output", output)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"turbogen generate: error: {source}, {message}")
    assert not output.exists() and not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.parametrize("argv, message", [
    (["--input", "{source}"], "--input needs --output FILE (--output - writes to standard output)"),
    (["--prompt", "x", "--output", "o.jsonl"], "--output goes with --input, not --prompt"),
    (["--prompt", "x", "--ray", "2"], "--ray goes with --input, not --prompt"),
    (["--input", "{source}", "--output", "-", "--stream"], "--stream prints one prompt's text as it is generated: "
                                                            "not with --input"),
    (["--input", "{source}", "--output", "{missing}/out.jsonl"], "does not exist"),
    (["--input", "{source}", "--output", "-", "--key-field", "nope"], "line 1: no 'nope' field (--key-field)"),
    (["--input", "{keys}", "--output", "-", "--key-field", "meta"],
     "line 1: field 'meta' (--key-field) must be a string, an integer or a list of integers, got an object"),
    (["--input", "{keys}", "--output", "-", "--key-field", "id"],
     "line 2: field 'id' (--key-field) is a string here but an integer on line 1: keys must all be of one kind"),
])
def test_misused_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    keys = _write_jsonl(tmp_path / "keys.jsonl", [{"text": "a", "id": 1, "meta": {}}, {"text": "b", "id": "2"}])
    argv = [arg.format(source=source, missing=tmp_path / "missing", keys=keys) for arg in argv]
    status, out, err = _run(capsys, "generate", *argv)
    assert status == 2 and out == ""
    assert err.startswith("turbogen generate: error: ") and message in err and err.count("\n") == 1


def test_prompt_and_input_are_mutually_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "x", "--input", str(tmp_path / "in.jsonl")])
    assert exit_info.value.code == 2
    assert "argument --input: not allowed with argument --prompt" in capsys.readouterr().err


def test_ray_missing_says_how_to_install_it(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # find_spec then reports ray as missing
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    status, _, err = _run(capsys, "generate", "--model", tiny_model_dir, "--input", source, "--output", "-",
                          "--ray", 1)
    assert status == 2
    assert err.splitlines()[-1] == "turbogen generate: error: --ray needs Ray Data: pip install 'turbogen[ray]'"


@pytest.mark.skipif(not ray_data_available(), reason="Ray Data is not installed (turbogen[ray])")
@pytest.mark.xdist_group("ray")
def test_ray_with_one_actor_writes_the_local_file(tiny_model_dir, tmp_path, capsys):
    """One Ray start for the whole file: sampling, mixed text and id prompts, and an error row."""
    source = _write_jsonl(tmp_path / "in.jsonl", [*ROWS, {"text": "", "id": 6}])
    argv = ["generate", "--model", tiny_model_dir, "--input", source, "--max-new-tokens", NEW_TOKENS, "--do-sample",
            "--seed", 3, "--batch-size", 2]
    local, distributed = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _run(capsys, *argv, "--output", local)[0] == 0
    status, out, err = _run(capsys, *argv, "--output", distributed, "--ray", 1)
    assert status == 0 and out == ""
    assert distributed.read_text() == local.read_text()
    assert len(_read_jsonl(distributed)) == len(ROWS) + 1
    assert f"generating on 1 Ray actor  [########################] {len(ROWS) + 1}/{len(ROWS) + 1}" in err
    assert "1 of 6 rows failed" in err


def test_file_mode_says_when_the_default_model_has_random_weights(monkeypatch, tmp_path, capsys):
    from turbogen import models

    monkeypatch.setattr(models, "default_model_is_trained", lambda: False)
    monkeypatch.setattr(models, "load_default_model", lambda: (tiny_model("llama"), tiny_tokenizer(), False))
    monkeypatch.setattr(models, "default_generation_config", lambda: tiny_model("llama").generation_config)
    monkeypatch.setattr(models, "default_model_path", lambda: pathlib.Path("/nonexistent/turbogen/default_model"))
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    status, _, err = _run(capsys, "generate", "--input", source, "--output", tmp_path / "out.jsonl",
                          "--max-new-tokens", NEW_TOKENS, "--no-do-sample")
    assert status == 0
    assert err.splitlines()[0] == RANDOM_WEIGHTS_NOTE
    assert _read_jsonl(tmp_path / "out.jsonl") == [_expected(ROWS[0], None, do_sample=False)]
