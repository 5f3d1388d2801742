"""The ``turbogen`` command: ``info``, ``generate``, ``demo`` and ``bench`` run in-process on a tiny random
model saved to disk, the console script in a subprocess, and every kind of bad input (one line, status 2,
no traceback)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tiny_models import tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen.cli import bench as _cli_bench, benchmark, demo as _cli_demo
from turbogen.cli.common import RANDOM_WEIGHTS_NOTE, encode_prompts, speed_table
from turbogen.cli.progress import ProgressBar
from turbogen.cli import main
from turbogen.generate import generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PROMPT = "the quick brown"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    """The tiny Llama and its tokenizer as a transformers model directory."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def _expected_text(prompts=(PROMPT,), **generation) -> list[str]:
    """What turbogen.generate itself produces on the same (in-memory) model, decoded like the CLI."""
    tokenizer = tiny_tokenizer()
    input_ids, attention_mask = encode_prompts(tokenizer, list(prompts))
    output = generate(tiny_model("llama"), input_ids=input_ids, attention_mask=attention_mask, **generation)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -------------------------------------------------------------------------------------------------
# info
# -------------------------------------------------------------------------------------------------


def test_info_lists_version_and_every_backend(capsys):
    import turbogen

    status, out, _ = _run(capsys, "info")
    assert status == 0
    assert out.startswith(f"turbogen {turbogen.__version__}\n")
    for backend in turbogen.ops.BACKENDS:
        assert f"\n  {backend}" in out


def test_info_console_script_runs_without_transformers(tmp_path):
    # A package named transformers that fails to import, first on the path: `info` must not need it.
    shadow = tmp_path / "transformers"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('transformers is hidden by test_cli')\n")
    script = pathlib.Path(sys.executable).with_name("turbogen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "turbogen.cli"]
    search_path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(search_path))
    result = subprocess.run([*command, "info"], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("turbogen ")
    assert "backends:" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["info", "demo", "generate", "bench"])
def test_every_command_has_plain_text_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: turbogen {command}")
    assert "``" not in out


# -------------------------------------------------------------------------------------------------
# generate
# -------------------------------------------------------------------------------------------------


def test_generate_greedy_prints_what_generate_returns(model_dir, capsys):
    status, out, err = _run(capsys, "generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", 4,
                            "--no-do-sample")
    assert status == 0
    assert out == _expected_text(max_new_tokens=4, do_sample=False)[0] + "\n"
    assert "warning" not in err


def test_generate_stream_prints_the_same_text(model_dir, capsys):
    argv = ["generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", 4, "--no-do-sample"]
    _, plain, _ = _run(capsys, *argv)
    status, streamed, _ = _run(capsys, *argv, "--stream")
    assert status == 0
    assert streamed == plain


def test_generate_sampling_is_seeded(model_dir, capsys):
    argv = ["generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", 4, "--do-sample",
            "--temperature", 1.5, "--top-k", 40, "--top-p", 0.95, "--min-p", 0.01, "--repetition-penalty", 1.2]
    _, first, _ = _run(capsys, *argv, "--seed", 7)
    _, again, _ = _run(capsys, *argv, "--seed", 7)
    _, other, _ = _run(capsys, *argv, "--seed", 8)
    expected = _expected_text(max_new_tokens=4, do_sample=True, temperature=1.5, top_k=40, top_p=0.95,
                              min_p=0.01, repetition_penalty=1.2, seed=7)
    assert first == again == expected[0] + "\n"
    assert other != first


def test_generate_batch_of_prompts_with_several_sequences(model_dir, capsys):
    prompts = [PROMPT, "hello world"]
    status, out, _ = _run(capsys, "generate", "--model", model_dir, "--prompt", prompts[0], "--prompt", prompts[1],
                          "--max-new-tokens", 3, "--do-sample", "--num-return-sequences", 2, "--seed", 1)
    assert status == 0
    texts = _expected_text(prompts, max_new_tokens=3, do_sample=True, num_return_sequences=2, seed=1)
    headers = ["[prompt 1, sequence 1]", "[prompt 1, sequence 2]", "[prompt 2, sequence 1]", "[prompt 2, sequence 2]"]
    assert out == "".join(f"{header}\n{text}\n" for header, text in zip(headers, texts))


def test_generate_beam_search(model_dir, capsys):
    status, out, _ = _run(capsys, "generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", 3,
                          "--num-beams", 3, "--num-return-sequences", 2, "--no-do-sample")
    assert status == 0
    texts = _expected_text(max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False)
    assert out == f"[prompt 1, sequence 1]\n{texts[0]}\n[prompt 1, sequence 2]\n{texts[1]}\n"


def test_generate_config_file_and_flags_over_it(model_dir, tmp_path, capsys):
    config_file = tmp_path / "generation_config.json"
    config_file.write_text(json.dumps({"max_new_tokens": 2, "do_sample": False, "repetition_penalty": 1.5}))
    _, from_file, _ = _run(capsys, "generate", "--model", model_dir, "--prompt", PROMPT, "--config", config_file)
    assert from_file == _expected_text(max_new_tokens=2, do_sample=False, repetition_penalty=1.5)[0] + "\n"
    _, overridden, _ = _run(capsys, "generate", "--model", model_dir, "--prompt", PROMPT, "--config", config_file,
                            "--max-new-tokens", 5)
    assert overridden == _expected_text(max_new_tokens=5, do_sample=False, repetition_penalty=1.5)[0] + "\n"


def test_greedy_drops_inherited_sampling_parameters_but_warns_about_given_ones(model_dir, tmp_path, capsys):
    config_file = tmp_path / "sampling.json"
    config_file.write_text(json.dumps({"do_sample": True, "temperature": 0.5, "top_k": 10}))
    argv = ["generate", "--model", model_dir, "--prompt", PROMPT, "--config", config_file, "--max-new-tokens", 2,
            "--no-do-sample"]
    status, out, err = _run(capsys, *argv)
    assert status == 0 and "warning" not in err
    assert out == _expected_text(max_new_tokens=2, do_sample=False)[0] + "\n"
    status, _, err = _run(capsys, *argv, "--temperature", 0.5)
    assert status == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("turbogen generate: warning: ")
    assert "temperature" in warnings[0] and "top_k" not in warnings[0]


# -------------------------------------------------------------------------------------------------
# Bad input
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "2"], "argument --top-p: must be in (0, 1], got 2"),
    (["--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
    (["--min-p", "-0.1"], "argument --min-p: must be in [0, 1], got -0.1"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: must be >= 1, got 0"),
    (["--max-new-tokens", "2.5"], "argument --max-new-tokens: expected an integer, got '2.5'"),
    (["--temperature", "0"], "argument --temperature: must be > 0, got 0"),
    (["--temperature", "nan"], "argument --temperature: must be finite, got nan"),
    (["--top-k", "-1"], "argument --top-k: must be >= 0, got -1"),
    (["--num-beams", "0"], "argument --num-beams: must be >= 1, got 0"),
    (["--seed", str(2**64)], f"argument --seed: must be in [0, {2**64}), got {2**64}"),
])
def test_bad_flag_values_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", PROMPT, *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"turbogen generate: error: {message}"


def test_missing_prompt_and_unknown_command_are_usage_errors(capsys):
    for argv in (["generate"], ["frobnicate"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing model", "not a model", "missing config", "stream with beams",
                                  "greedy with several sequences", "empty prompt"])
def test_bad_input_is_one_line_and_status_2(case, model_dir, tmp_path, capsys):
    argv = {
        "missing model": ["--model", tmp_path / "missing", "--prompt", PROMPT],
        "not a model": ["--model", tmp_path, "--prompt", PROMPT],
        "missing config": ["--model", model_dir, "--prompt", PROMPT, "--config", tmp_path / "missing.json"],
        "stream with beams": ["--model", model_dir, "--prompt", PROMPT, "--num-beams", 2, "--stream"],
        "greedy with several sequences": ["--model", model_dir, "--prompt", PROMPT, "--no-do-sample",
                                          "--num-return-sequences", 2],
        "empty prompt": ["--model", model_dir, "--prompt", ""],
    }[case]
    status, out, err = _run(capsys, "generate", *argv)
    assert status == 2
    assert out == "" and "Traceback" not in err
    # Before the error, only the progress lines of the steps that completed (loading the model).
    lines = err.splitlines()
    assert all(line.startswith("loading ") for line in lines[:-1]), err
    assert lines[-1].startswith("turbogen generate: error: "), err
    expected_words = {"missing model": "missing", "not a model": "config.json", "missing config": "missing.json",
                      "stream with beams": "--stream", "greedy with several sequences": "num_return_sequences",
                      "empty prompt": "no tokens"}[case]
    assert expected_words in lines[-1]


def test_bench_out_must_be_a_directory(tmp_path, capsys):
    not_a_directory = tmp_path / "results.json"
    not_a_directory.write_text("{}")
    status, _, err = _run(capsys, "bench", "--quick", "--out", not_a_directory)
    assert status == 2
    assert err.strip() == f"turbogen bench: error: --out {str(not_a_directory)!r} exists and is not a directory"


def test_bench_repeats_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--repeats", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "turbogen bench: error: argument --repeats: must be >= 1, got 0"


# -------------------------------------------------------------------------------------------------
# demo
# -------------------------------------------------------------------------------------------------

DEMO_TOKENS = 3


def test_demo_on_a_model_directory(model_dir, capsys):
    status, out, err = _run(capsys, "demo", "--model", model_dir, "--quick", "--max-new-tokens", DEMO_TOKENS)
    assert status == 0
    assert RANDOM_WEIGHTS_NOTE not in out
    assert f"model: {model_dir} (llama: 2 layers" in out
    # The greedy and sampling showcases are streamed: each prints exactly what generate() returns.
    for showcase in _cli_demo.SHOWCASES:
        header = f"== {showcase.title}: "
        assert header in out
        if not showcase.is_beam_search:
            expected = _expected_text([showcase.prompt], **showcase.settings, max_new_tokens=DEMO_TOKENS,
                                      seed=0)[0]
            assert out.split(header, 1)[1].splitlines()[1] == expected
    beam_showcase = next(showcase for showcase in _cli_demo.SHOWCASES if showcase.is_beam_search)
    beams = _expected_text([beam_showcase.prompt], **beam_showcase.settings, max_new_tokens=DEMO_TOKENS)
    for rank, text in enumerate(beams, start=1):
        assert f"\nbeam {rank}: {text}\n" in out
    _assert_speed_table(out, modes=benchmark.DEFAULT_MODES, batches=(1,))
    assert "loading " in err and "measuring speed" in err


def test_demo_says_when_the_default_model_has_random_weights(monkeypatch, capsys):
    from turbogen import models

    monkeypatch.setattr(models, "load_default_model", lambda: (tiny_model("llama"), tiny_tokenizer(), False))
    status, out, _ = _run(capsys, "demo", "--quick", "--max-new-tokens", 2)
    assert status == 0
    assert out.startswith("model: the embedded default model (llama: 2 layers, hidden 32")
    assert out.splitlines()[1] == RANDOM_WEIGHTS_NOTE


def _assert_speed_table(out: str, modes, batches):
    lines = out.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("mode "))
    assert lines[header].split() == ["mode", "batch", "rows", "forward", "tok/s", "turbogen", "tok/s",
                                     "transformers", "tok/s", "turbogen/transformers", "turbogen/forward"]
    rows = [line.split() for line in lines[header + 2: header + 2 + len(modes) * len(batches)]]
    assert [(row[0], int(row[1])) for row in rows] == [(mode, batch) for mode in modes for batch in batches]
    for row in rows:
        forward, turbogen_rate, transformers_rate = map(float, row[3:6])
        assert min(forward, turbogen_rate, transformers_rate) > 0
        # Each ratio reads "R.RRx (median M.MMx)": of the fastest rounds, then of the median rounds.
        assert row[7] == row[10] == "(median"
        vs_transformers, vs_transformers_median, vs_forward, vs_forward_median = (
            float(text.rstrip(")").rstrip("x")) for text in (row[6], row[8], row[9], row[11]))
        # Rates are printed rounded to whole tokens/s, so the printed ratios match them only closely.
        assert vs_transformers == pytest.approx(turbogen_rate / transformers_rate, rel=0.05)
        assert vs_forward == pytest.approx(turbogen_rate / forward, rel=0.05)
        assert vs_transformers_median > 0 and vs_forward_median > 0


# -------------------------------------------------------------------------------------------------
# bench
# -------------------------------------------------------------------------------------------------

TINY_PLAN = benchmark.EndToEndPlan(model=benchmark.ModelSpec(vocab_size=128, hidden_size=32, num_layers=2,
                                                             num_heads=4, num_kv_heads=2),
                                   batches=(1, 2), prompt_length=4, new_tokens=2, repeats=1)
TINY_OP_SHAPES = ((2, 64),)


def test_bench_writes_json_and_chart_or_says_why_not(tmp_path, capsys):
    json_path = _cli_bench.run_bench(tmp_path / "results", TINY_PLAN, TINY_OP_SHAPES, op_repeats=1)
    out = capsys.readouterr().out
    assert json_path.parent == tmp_path / "results" and json_path.suffix == ".json"
    assert f"wrote {json_path}" in out
    results = json.loads(json_path.read_text())

    generation = results["generate"]
    assert len(generation["measurements"]) == TINY_PLAN.num_measurements
    for measurement in generation["measurements"]:
        assert measurement["rows"] == benchmark.decoded_rows(measurement["mode"], measurement["batch"])
        assert measurement["tokens_per_second"] == pytest.approx(
            measurement["rows"] * measurement["new_tokens"] / measurement["seconds"])
    assert [(s["mode"], s["batch"]) for s in generation["speedups"]] == [
        (mode, batch) for mode in TINY_PLAN.modes for batch in TINY_PLAN.batches]
    _assert_speed_table(out, TINY_PLAN.modes, TINY_PLAN.batches)

    ops = results["ops"]
    expected_ops = set(benchmark.op_runners())  # softmax, and sample once turbogen.ops has it
    assert "softmax" in expected_ops
    assert {measurement["op"] for measurement in ops["measurements"]} == expected_ops
    assert all(measurement["seconds"] > 0 for measurement in ops["measurements"])
    assert len(ops["speedups"]) == len(expected_ops) * len(TINY_OP_SHAPES)

    chart = json_path.with_suffix(".png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not chart.exists()
        assert "note: matplotlib is not installed" in out
    else:
        assert chart.read_bytes().startswith(b"\x89PNG")
        assert f"wrote {chart}" in out


def test_speedups_are_turbogen_over_each_other_runner():
    measurements = [benchmark.Measurement("forward", "greedy", 2, 2, 10, 1.0, 2.0),
                    benchmark.Measurement("turbogen", "greedy", 2, 2, 10, 2.0, 4.0),
                    benchmark.Measurement("transformers", "greedy", 2, 2, 10, 4.0, 16.0),
                    benchmark.Measurement("turbogen", "beam", 1, 4, 10, 1.0)]
    assert benchmark.speedups(measurements) == [benchmark.Speedup("greedy", 2, 2.0, 0.5, 4.0, 0.5),
                                                benchmark.Speedup("beam", 1, None, None, None, None)]
    table = speed_table(measurements)
    assert "2.00x (median 4.00x)" in table and "0.50x (median 0.50x)" in table


def test_round_seconds_takes_turns_and_records_every_round(monkeypatch):
    """Runners alternate round by round, so load changes slow them alike."""
    order = []
    clock = iter([0.0, 3.0, 3.0, 4.0, 10.0, 11.0, 11.0, 16.0])  # rounds: a 3 s, b 1 s, then a 1 s, b 5 s
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    rounds = benchmark.round_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2)
    assert order == ["a", "b", "a", "b", "a", "b"]  # one warm-up round, then two timed rounds
    assert rounds == {"a": [3.0, 1.0], "b": [1.0, 5.0]}
    with pytest.raises(ValueError, match="repeats"):
        benchmark.round_seconds({"a": lambda: None}, repeats=0)


def test_plan_rejects_unknown_modes_and_empty_sizes():
    with pytest.raises(ValueError, match="modes must be among"):
        benchmark.EndToEndPlan(modes=("greedy", "contrastive"))
    with pytest.raises(ValueError, match="new_tokens must be at least 1"):
        benchmark.EndToEndPlan(new_tokens=0)
    with pytest.raises(ValueError, match="batches"):
        benchmark.EndToEndPlan(batches=())


# -------------------------------------------------------------------------------------------------
# Progress bar
# -------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_off_a_terminal_writes_only_the_final_line():
    stream = io.StringIO()
    with ProgressBar("timing", total=4, stream=stream, width=8) as progress:
        progress.advance()
        assert stream.getvalue() == ""
        progress.advance(3)
    line = stream.getvalue()
    assert line.startswith("timing  [########] 4/4  ") and line.endswith(" s\n") and line.count("\n") == 1


def test_progress_bar_on_a_terminal_redraws_in_place():
    stream = _Terminal()
    with ProgressBar("timing", total=2, stream=stream, width=4, refresh_seconds=60) as progress:
        progress.advance()
    drawings = stream.getvalue().split("\r")[1:]
    assert [drawing.split("  ")[:2] for drawing in drawings] == [
        ["timing", "[----] 0/2"], ["timing", "[##--] 1/2"], ["timing", "[##--] 1/2"]]
    assert drawings[-1].endswith(" s\n")


def test_progress_bar_leaves_nothing_when_the_step_fails():
    quiet, terminal = io.StringIO(), _Terminal()
    for stream in (quiet, terminal):
        with pytest.raises(ValueError), ProgressBar("loading", stream=stream):
            raise ValueError("boom")
    assert quiet.getvalue() == ""
    assert terminal.getvalue().rsplit("\r", 2)[-2].strip() == ""
