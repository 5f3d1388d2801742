"""The embedded model's draft (speculative decoding): it loads offline with the default model's tokenizer, agrees
with the target's greedy tokens, falls back to random weights in a stripped install; and the command's
``--prompt-lookup`` / ``--assistant`` flags: they reach generate(), leave the output unchanged, and bad values
are one-line errors."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")

from tiny_models import tiny_model, tiny_tokenizer  # noqa: E402
from tiny_models import tiny_model_environment  # noqa: E402,F401  (a fixture, applied by pytestmark)
from turbogen import models  # noqa: E402
from turbogen.cli import main  # noqa: E402
from turbogen.cli import demo as _cli_demo  # noqa: E402
from turbogen.cli.common import encode_prompts  # noqa: E402
from turbogen.config import as_generation_config  # noqa: E402
from turbogen.generate import generate  # noqa: E402

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

MAX_DRAFT_WEIGHTS_BYTES = 4 * 1024 * 1024
PROMPT = "It is a truth universally acknowledged"
# The draft must predict at least this share of the target's greedy tokens (teacher-forced) on the demo prompts;
# the shipped one predicts about 0.7 (assets/draft_model/README.md).
MIN_GREEDY_AGREEMENT = 0.5
SPECULATION_TESTS_TOKENS = 24


@pytest.fixture(scope="module")
def target():
    return models.load_default_model()


@pytest.fixture(scope="module")
def draft():
    return models.load_default_draft_model()


def _architecture(config) -> dict:
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings",
              "pad_token_id", "bos_token_id", "eos_token_id")
    rope_theta = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
    return {"rope_theta": rope_theta, **{field: getattr(config, field) for field in fields}}


def _greedy_tokens(model, tokenizer, prompt: str, new_tokens: int) -> list[int]:
    input_ids, attention_mask = encode_prompts(tokenizer, [prompt])
    output = generate(model, input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                      do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=None)
    return output[0].tolist()


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -------------------------------------------------------------------------------------------------
# The shipped draft
# -------------------------------------------------------------------------------------------------


def test_default_draft_path_is_the_package_assets_dir():
    path = models.default_draft_path()
    assert path.parts[-3:] == ("turbogen", "assets", "draft_model")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    # No tokenizer of its own: it uses the default model's, so the two cannot drift apart.
    assert not list(path.glob("tokenizer*")) and not (path / "special_tokens_map.json").exists()
    assert models.default_draft_is_trained()


def test_draft_loads_offline_as_a_one_layer_llama_with_the_target_tokenizer(draft, target):
    model, tokenizer, is_trained = draft
    target_model, target_tokenizer, _ = target
    assert is_trained is True
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert _architecture(model.config) == _architecture(models.default_draft_config(vocab_size=len(tokenizer)))
    assert model.config.num_hidden_layers == 1
    assert model.config.vocab_size == target_model.config.vocab_size == len(target_tokenizer)
    assert tokenizer.get_vocab() == target_tokenizer.get_vocab()
    assert tokenizer(PROMPT)["input_ids"] == target_tokenizer(PROMPT)["input_ids"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)


def test_draft_generation_config_carries_the_speculation_settings(draft):
    model, _, _ = draft
    shipped = as_generation_config(model.generation_config)
    expected = as_generation_config(models.default_draft_generation_config())
    fields = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
              "pad_token_id", "bos_token_id", "eos_token_id")
    assert {name: getattr(shipped, name) for name in fields} == {name: getattr(expected, name) for name in fields}
    assert shipped.num_assistant_tokens == models.DRAFT_NUM_ASSISTANT_TOKENS >= 1


def test_draft_loads_in_requested_dtype():
    model, _, is_trained = models.load_default_draft_model(dtype=torch.bfloat16)
    assert is_trained
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_shipped_draft_weights_are_bfloat16_safetensors_within_budget():
    weights = models.default_draft_path() / "model.safetensors"
    assert weights.stat().st_size <= MAX_DRAFT_WEIGHTS_BYTES
    with safetensors.safe_open(str(weights), framework="pt") as archive:
        names = list(archive.keys())
        dtypes = {archive.get_tensor(name).dtype for name in names}
    assert dtypes == {torch.bfloat16}
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied
    assert not any(name.startswith("model.layers.1.") for name in names)


@pytest.mark.parametrize("prompt", [showcase.prompt for showcase in _cli_demo.SHOWCASES])
def test_draft_predicts_most_of_the_target_greedy_tokens(draft, target, prompt):
    # The oracle is the target's own greedy continuation: teacher-forced, the draft's argmax at each generated
    # position is the draft greedy speculation would propose there (exact while the drafts agree).
    target_model, tokenizer, _ = target
    sequence = _greedy_tokens(target_model, tokenizer, prompt, 64)
    prompt_length = len(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        predicted = draft[0](input_ids=torch.tensor([sequence])).logits[0].argmax(-1)
    agreement = (predicted[prompt_length - 1: -1] == torch.tensor(sequence[prompt_length:])).float().mean().item()
    assert agreement >= MIN_GREEDY_AGREEMENT


def test_untrained_draft_never_agrees_as_well(target):
    # The agreement test above can fail: the same architecture with random weights predicts almost nothing.
    target_model, tokenizer, _ = target
    sequence = _greedy_tokens(target_model, tokenizer, PROMPT, 64)
    prompt_length = len(tokenizer(PROMPT)["input_ids"])
    torch.manual_seed(0)
    untrained = transformers.LlamaForCausalLM(models.default_draft_config(len(tokenizer))).eval()
    with torch.no_grad():
        predicted = untrained(input_ids=torch.tensor([sequence])).logits[0].argmax(-1)
    agreement = (predicted[prompt_length - 1: -1] == torch.tensor(sequence[prompt_length:])).float().mean().item()
    assert agreement < MIN_GREEDY_AGREEMENT / 2


# -------------------------------------------------------------------------------------------------
# The random-weights fallback
# -------------------------------------------------------------------------------------------------


def test_missing_draft_falls_back_to_random_weights_over_the_target_tokenizer(monkeypatch, target):
    monkeypatch.setattr(models, "default_draft_path", lambda: pathlib.Path("/nonexistent/turbogen/draft_model"))
    assert not models.default_draft_is_trained()
    state = torch.random.get_rng_state()
    model, tokenizer, is_trained = models.load_default_draft_model()
    again, _, _ = models.load_default_draft_model()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert is_trained is False
    assert model.config.num_hidden_layers == 1
    assert model.config.vocab_size == len(tokenizer) == len(target[1])
    assert tokenizer.get_vocab() == target[1].get_vocab()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded


def test_stripped_install_pairs_the_fallback_draft_with_the_fallback_model(monkeypatch):
    monkeypatch.setattr(models, "default_draft_path", lambda: pathlib.Path("/nonexistent/turbogen/draft_model"))
    monkeypatch.setattr(models, "default_model_path", lambda: pathlib.Path("/nonexistent/turbogen/default_model"))
    model, tokenizer, is_trained = models.load_default_draft_model()
    target_model, target_tokenizer, target_trained = models.load_default_model()
    assert (is_trained, target_trained) == (False, False)
    assert model.config.vocab_size == target_model.config.vocab_size == len(tokenizer) == len(target_tokenizer)


@pytest.mark.parametrize("dtype, error, message", [
    (torch.int64, ValueError, "floating-point"),
    ("float32", TypeError, "torch.dtype"),
])
def test_bad_dtype_raises_clear_errors(dtype, error, message):
    with pytest.raises(error, match=message):
        models.load_default_draft_model(dtype=dtype)


# -------------------------------------------------------------------------------------------------
# The command's flags
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def recorded_generate(monkeypatch):
    """Replaces the generate() the command calls by one that records its arguments and returns plain generate's
    output without the speculation arguments (so these tests do not depend on speculative decoding)."""
    calls = []
    module = sys.modules["turbogen.generate"]
    real = module.generate

    def record(model, *args, **kwargs):
        calls.append(dict(kwargs, model=model))
        plain = {name: value for name, value in kwargs.items()
                 if name not in ("assistant_model", "tokenizer", "assistant_tokenizer")}
        config = plain.get("generation_config")
        if config is not None:
            config = config.copy()
            config.prompt_lookup_num_tokens = None
            plain["generation_config"] = config
        return real(model, *args, **plain)

    monkeypatch.setattr(module, "generate", record)
    return calls


def test_prompt_lookup_flag_reaches_generate(model_dir, recorded_generate, capsys):
    status, _, err = _run(capsys, "generate", "--model", model_dir, "--prompt", "the quick brown",
                          "--max-new-tokens", 3, "--no-do-sample", "--prompt-lookup", 5)
    assert status == 0, err
    (call,) = recorded_generate
    assert call["generation_config"].prompt_lookup_num_tokens == 5
    assert "assistant_model" not in call


def test_assistant_default_passes_the_embedded_draft(recorded_generate, capsys):
    status, _, err = _run(capsys, "generate", "--prompt", PROMPT, "--max-new-tokens", 3, "--no-do-sample",
                          "--assistant", "default")
    assert status == 0, err
    (call,) = recorded_generate
    assistant = call["assistant_model"]
    assert assistant.config.num_hidden_layers == 1
    assert assistant.config.vocab_size == call["model"].config.vocab_size
    assert call["generation_config"].prompt_lookup_num_tokens is None
    assert "assistant_tokenizer" not in call


def test_assistant_directory_with_the_same_vocabulary(model_dir, recorded_generate, tmp_path, capsys):
    # A smaller model of the same vocabulary, saved without tokenizer files: taken to share the target's.
    assistant_dir = tmp_path / "assistant"
    tiny_model("llama").save_pretrained(assistant_dir)
    status, _, err = _run(capsys, "generate", "--model", model_dir, "--prompt", "the quick brown",
                          "--max-new-tokens", 2, "--no-do-sample", "--assistant", assistant_dir)
    assert status == 0, err
    (call,) = recorded_generate
    assert isinstance(call["assistant_model"], transformers.LlamaForCausalLM)
    assert "assistant_tokenizer" not in call


def test_assistant_with_another_tokenizer_gets_both_tokenizers(model_dir, recorded_generate, capsys):
    # The embedded draft's directory lacks a tokenizer; the default model's has one, unlike the tiny model's.
    status, _, err = _run(capsys, "generate", "--model", model_dir, "--prompt", "the quick brown",
                          "--max-new-tokens", 2, "--no-do-sample", "--assistant", models.default_model_path())
    assert status == 0, err
    (call,) = recorded_generate
    assert len(call["assistant_tokenizer"]) == len(models.load_default_model()[1])
    assert len(call["tokenizer"]) == len(tiny_tokenizer())


@pytest.mark.parametrize("flags, message", [
    (["--prompt-lookup", "0"], "argument --prompt-lookup: must be >= 1, got 0"),
    (["--prompt-lookup", "two"], "argument --prompt-lookup: expected an integer, got 'two'"),
    (["--prompt-lookup", "3", "--assistant", "default"],
     "argument --assistant: not allowed with argument --prompt-lookup"),
])
def test_bad_speculation_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", PROMPT, *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"turbogen generate: error: {message}"


@pytest.mark.parametrize("case", ["nonexistent path", "not a model", "default with --model", "vocabulary mismatch",
                                  "with --input"])
def test_bad_assistant_is_one_line_and_status_2(case, model_dir, tmp_path, capsys):
    mismatched = tmp_path / "mismatched"
    transformers.LlamaForCausalLM(models.default_draft_config(vocab_size=300)).save_pretrained(mismatched)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "the quick brown"}\n')
    argv, expected = {
        "nonexistent path": (["--prompt", PROMPT, "--assistant", tmp_path / "nonexistent"],
                             f"--assistant {str(tmp_path / 'nonexistent')!r}: not 'default' and not a model "
                             "directory"),
        "not a model": (["--prompt", PROMPT, "--assistant", tmp_path],
                        f"--assistant {str(tmp_path)!r} has no config.json"),
        "default with --model": (["--model", model_dir, "--prompt", PROMPT, "--assistant", "default"],
                                 "--assistant default is the embedded model's draft"),
        "vocabulary mismatch": (["--model", model_dir, "--prompt", PROMPT, "--assistant", mismatched],
                                "its vocabulary (300 tokens) is not the model's"),
        "with --input": (["--model", model_dir, "--input", prompts, "--output", tmp_path / "out.jsonl",
                          "--assistant", "default"], "--assistant goes with --prompt, not --input"),
    }[case]
    capsys.readouterr()  # transformers 5 draws a bar when saving the mismatched model
    status, out, err = _run(capsys, "generate", *argv)
    assert status == 2
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert all(line.startswith("loading ") for line in lines[:-1]), err
    assert lines[-1].startswith("turbogen generate: error: ") and expected in lines[-1], err


# -------------------------------------------------------------------------------------------------
# End to end: speculation leaves the output unchanged
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--assistant", "default"], ["--prompt-lookup", "3"]])
def test_speculative_greedy_prints_the_same_text(flags, capsys):
    argv = ["generate", "--prompt", PROMPT, "--no-do-sample", "--repetition-penalty", 1,
            "--max-new-tokens", SPECULATION_TESTS_TOKENS]
    status, plain, _ = _run(capsys, *argv)
    assert status == 0
    model, tokenizer, _ = models.load_default_model()
    expected = tokenizer.decode(_greedy_tokens(model, tokenizer, PROMPT, SPECULATION_TESTS_TOKENS),
                                skip_special_tokens=True)
    assert plain == expected + "\n"
    status, speculative, err = _run(capsys, *argv, *flags)
    assert status == 0, err
    assert speculative == plain


def test_speculative_greedy_batch_prints_the_same_text(capsys):
    argv = ["generate", "--prompt", PROMPT, "--prompt", "She was", "--no-do-sample",
            "--max-new-tokens", SPECULATION_TESTS_TOKENS]
    status, plain, _ = _run(capsys, *argv)
    assert status == 0
    for flags in (["--assistant", "default"], ["--prompt-lookup", "3"]):
        status, speculative, err = _run(capsys, *argv, *flags)
        assert status == 0, err
        assert speculative == plain


def test_demo_shows_speculation_with_the_draft(capsys):
    status, out, err = _run(capsys, "demo", "--quick", "--max-new-tokens", 12)
    assert status == 0, err
    section = out.split("== speculative decoding: greedy search, 12 new tokens ==\n", 1)[1]
    lines = section.splitlines()
    model, tokenizer, _ = models.load_default_model()
    expected = tokenizer.decode(_greedy_tokens(model, tokenizer, _cli_demo.SHOWCASES[0].prompt, 12),
                                skip_special_tokens=True)
    assert lines[0] == expected
    header = next(index for index, line in enumerate(lines) if line.startswith("method "))
    rows = lines[header + 2: header + 5]
    assert [row.split("  ")[0] for row in rows] == [
        "plain greedy search", f"prompt lookup, {_cli_demo.PROMPT_LOOKUP_TOKENS} drafts per step",
        f"draft model (1 layer), {models.DRAFT_NUM_ASSISTANT_TOKENS} drafts per step"]
    for row in rows:
        assert row.split()[-1] == "yes"  # the same tokens as plain greedy search
    # Plain greedy calls the target once per token; a speculative run at most as often.
    calls = [int(row.split()[-3]) for row in rows]
    assert calls[0] == 12 and max(calls[1:]) <= 12


@pytest.mark.parametrize("flags", [["--assistant", "default"], ["--prompt-lookup", "4"]])
def test_speculative_sampling_with_the_shipped_defaults_prints_the_same_text(flags, capsys):
    # The model's generation config: sampling with a repetition penalty; coupled verification keeps each seed's text.
    argv = ["generate", "--prompt", "Mr. Darcy", "--seed", 3, "--max-new-tokens", SPECULATION_TESTS_TOKENS]
    status, plain, _ = _run(capsys, *argv)
    assert status == 0
    status, speculative, err = _run(capsys, *argv, *flags)
    assert status == 0, err
    assert speculative == plain
    _, other_seed, _ = _run(capsys, *argv[:3], "--seed", 4, *argv[5:], *flags)
    assert other_seed != plain  # the comparison can fail: the text depends on the seed
