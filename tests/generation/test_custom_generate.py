"""``custom_generate`` (transformers 4.57's custom generation methods): a local directory, a callable decoding
loop, the Hub repositories of the strategies 4.57 moved out of the library (run natively), other Hub ids (refused:
nothing is downloaded)."""

from __future__ import annotations

import textwrap

import pytest
import torch

import transformers

import turbogen
from turbogen.errors import UnsupportedByTurbogen
from tiny_models import tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)

pytestmark = [pytest.mark.usefixtures("tiny_model_environment"),
              pytest.mark.filterwarnings("ignore:GenerationConfig has flags:UserWarning")]

HAS_CUSTOM_GENERATE = hasattr(transformers.GenerationMixin, "load_custom_generate")
IS_4_57 = transformers.__version__.startswith("4.57.")
live_transformers = pytest.mark.skipif(
    not HAS_CUSTOM_GENERATE, reason=f"transformers {transformers.__version__} has no custom_generate")

# What 4.57's generate() hands a directory's generate() (besides `model`) for the call of `_prompt` below.
DIRECTORY_ARGUMENTS = ["assistant_model", "attention_mask", "generation_config", "inputs", "logits_processor",
                       "max_new_tokens", "negative_prompt_attention_mask", "negative_prompt_ids",
                       "prefix_allowed_tokens_fn", "stopping_criteria", "streamer", "synced_gpus",
                       "use_model_defaults"]


def _prompt():
    encoded = tiny_tokenizer()(["hello wor", "the end"], return_tensors="pt", padding=True)
    return encoded.input_ids, encoded.attention_mask


@pytest.fixture
def custom_directory(tmp_path):
    folder = tmp_path / "repo" / "custom_generate"
    folder.mkdir(parents=True)
    (folder / "helper.py").write_text("def twice(n):\n    return 2 * n\n")
    (folder / "generate.py").write_text(textwrap.dedent("""
        from .helper import twice

        def generate(model, **kwargs):
            # a real method would decode; this one reports what it received
            return {"model": type(model).__name__, "arguments": sorted(kwargs),
                    "twice_new_tokens": twice(kwargs["max_new_tokens"])}
    """))
    return tmp_path / "repo"


def test_local_directory_receives_every_argument(custom_directory):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt()
    result = turbogen.generate(model, input_ids, attention_mask=attention_mask, custom_generate=str(custom_directory),
                               max_new_tokens=3)
    assert result == {"model": type(model).__name__, "arguments": DIRECTORY_ARGUMENTS, "twice_new_tokens": 6}
    # also a path object
    assert turbogen.generate(model, input_ids, attention_mask=attention_mask, custom_generate=custom_directory,
                             max_new_tokens=3) == result


@pytest.mark.skipif(not IS_4_57, reason=f"the argument set is 4.57's; this is transformers {transformers.__version__}")
def test_local_directory_equals_transformers(custom_directory):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt()
    arguments = dict(attention_mask=attention_mask, custom_generate=str(custom_directory), max_new_tokens=3)
    assert turbogen.generate(model, input_ids, **arguments) == model.generate(input_ids, **arguments)


def test_local_directory_without_generate_py_raises(tmp_path):
    (tmp_path / "custom_generate").mkdir()
    with pytest.raises(OSError, match="generate.py"):
        turbogen.generate(tiny_model("llama"), torch.tensor([[5, 6]]), custom_generate=str(tmp_path),
                          max_new_tokens=2)


def test_local_directory_requirements_are_checked(custom_directory):
    (custom_directory / "custom_generate" / "requirements.txt").write_text(
        "# needed\ntorch>=1.0\nsurely-not-an-installed-package-h15d>=1\n")
    with pytest.raises(ImportError, match="surely-not-an-installed-package-h15d"):
        turbogen.generate(tiny_model("llama"), torch.tensor([[5, 6]]), custom_generate=str(custom_directory),
                          max_new_tokens=2)


def greedy_loop(model, input_ids, logits_processor, stopping_criteria, generation_config, boost_token=None,
                **model_kwargs):
    """A decoding loop written against transformers' interface: no cache, the processors and criteria as given,
    an extra argument of its own (``boost_token``)."""
    mask = model_kwargs["attention_mask"]
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool)
    while True:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1, :].float()
        if boost_token is not None:
            logits[:, boost_token] += 2.0
        scores = logits_processor(input_ids, logits)
        tokens = torch.where(unfinished, scores.argmax(-1), generation_config._pad_token_tensor)
        input_ids = torch.cat([input_ids, tokens[:, None]], -1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1)
        unfinished &= ~stopping_criteria(input_ids, scores)
        if not unfinished.any():
            return input_ids, sorted(model_kwargs)


@live_transformers
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_callable_decoding_loop_equals_transformers(kind):
    model = tiny_model(kind)
    input_ids, attention_mask = _prompt()
    arguments = dict(attention_mask=attention_mask, custom_generate=greedy_loop, boost_token=7, max_new_tokens=5,
                     repetition_penalty=1.3)
    expected = model.generate(input_ids, **arguments)
    got = turbogen.generate(model, input_ids, **arguments)
    assert torch.equal(got[0], expected[0])
    if IS_4_57:  # the model inputs handed over are 4.57's (5.x adds `position_ids`)
        assert got[1] == expected[1]


def test_callable_gets_the_sampling_warpers_in_its_processors():
    seen = {}

    def loop(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
        seen["processors"] = [type(p).__name__ for p in logits_processor]
        return input_ids

    turbogen.generate(tiny_model("llama"), torch.tensor([[5, 6]]), custom_generate=loop, do_sample=True,
                      temperature=0.5, top_k=3, max_new_tokens=2)
    assert seen["processors"] == ["TemperatureLogitsWarper", "TopKLogitsWarper"]


def test_hub_repository_is_refused_offline():
    with pytest.raises(UnsupportedByTurbogen, match="does not download") as refusal:
        turbogen.generate(tiny_model("llama"), torch.tensor([[5, 6]]), custom_generate="someone/some-method",
                          max_new_tokens=2)
    assert refusal.value.reason == "custom_generate from the Hub"


def test_custom_generate_of_another_type_raises():
    with pytest.raises(TypeError, match="custom_generate"):
        turbogen.generate(tiny_model("llama"), torch.tensor([[5, 6]]), custom_generate=3, max_new_tokens=2)


@pytest.mark.parametrize("repository, options", [
    ("transformers-community/contrastive-search", dict(penalty_alpha=0.6, top_k=4)),
    ("transformers-community/dola", dict(dola_layers="low", repetition_penalty=1.2)),
])
def test_moved_strategies_run_natively(repository, options):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt()
    expected = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=4, **options)
    got = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=4,
                            custom_generate=repository, trust_remote_code=True, **options)
    assert torch.equal(got, expected)


def test_moved_strategy_needs_its_parameters():
    with pytest.raises(ValueError, match="dola"):
        turbogen.generate(tiny_model("llama"), torch.tensor([[5, 6]]), custom_generate="transformers-community/dola",
                          max_new_tokens=2)
