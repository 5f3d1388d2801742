"""The compiled decode step (:class:`turbogen.DecodeStep`) and when ``turbogen.generate`` compiles.

The oracle is turbogen's own eager run over the same static cache: compiled greedy search must give its tokens
token for token, compiled sampling the same draws for the same seed. Structure checks (one graph, no graph
break, no recompilation across steps, prompt lengths and calls) compile with dynamo's ``"eager"`` backend, which
traces exactly as inductor does but generates no code (seconds); one test compiles with inductor for real.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch._dynamo.utils import counters

import turbogen
from conftest import STATIC_CACHES_IN_4_45, skip_on_transformers_4_45
from tiny_models import encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen import CompileConfig, DecodeStep, GenerationConfig
from turbogen.cache import StaticKVCache
from turbogen.generation import compiled as compiled_module
from turbogen.generation.compiled import capacity_bucket, compile_kwargs

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

#: Structure checks trace with dynamo and run the graph eagerly: fast, and what inductor would be given.
TRACE = CompileConfig(backend="eager", fullgraph=True, dynamic=False)
PADDED = ["the quick brown fox", "stop", "hello world again"]
SHORT = ["stop", "hello"]
SAMPLING = {"do_sample": True, "seed": 11, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.3,
            "no_repeat_ngram_size": 3}


@pytest.fixture(scope="module")
def model():
    """A tiny Llama of its own (the compiled steps and caches are kept on the model)."""
    return tiny_model("llama", fresh=True)


def _generate(model, prompts, new_tokens, compile_config=None, **options):
    input_ids, attention_mask = encode_batch(prompts)
    if compile_config is not None:
        options["compile_config"] = compile_config
    return turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                             cache_implementation="static", **options)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _graph_breaks() -> int:
    """Graph breaks dynamo counted so far in this process (any test's: compare before and after)."""
    return sum(counters["graph_break"].values())


def _stored(model, kind):
    """The compiled callables of ``kind`` (``"step"``: whole steps, ``"model"``: model calls) kept on the caches
    that compiled ``generate`` calls of ``model`` built."""
    caches = getattr(model, "_turbogen_compiled", {}).values()
    return [key for cache in caches for key in getattr(cache, "_turbogen_compiled", {}) if key[0] == kind]


@pytest.mark.parametrize("prompts", [["the quick brown"], PADDED], ids=["single", "padded"])
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_compiled_greedy_search_equals_eager_and_never_recompiles(model, prompts):
    eager = _generate(model, prompts, 10)
    # An EOS that one row meets partway: finished rows are padded on the device, the end read on the host.
    eos = int(eager[0, -7])
    eager = _generate(model, prompts, 10, eos_token_id=eos)
    input_ids, attention_mask = encode_batch(prompts)
    dynamic = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=10, eos_token_id=eos)
    assert torch.equal(dynamic, eager)
    graphs, breaks = _graphs(), _graph_breaks()
    assert torch.equal(_generate(model, prompts, 10, TRACE, eos_token_id=eos), eager)
    assert _stored(model, "step")  # the whole step ran compiled
    # Another prompt length and another max_new_tokens in the same capacity bucket: the same graph.
    longer = [prompt + " the end" for prompt in prompts]
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = _generate(model, longer, 6, TRACE, eos_token_id=eos)
    assert torch.equal(again, _generate(model, longer, 6, eos_token_id=eos))
    assert _graphs() - graphs == 1
    assert _graph_breaks() == breaks


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_compiled_sampling_with_filters_and_penalties_draws_the_eager_tokens(model):
    eager = _generate(model, PADDED, 8, **SAMPLING)
    assert torch.equal(_generate(model, PADDED, 8, TRACE, **SAMPLING), eager)
    with torch._dynamo.config.patch(error_on_recompile=True):  # other seed, prompts and filter values
        options = dict(SAMPLING, seed=5, temperature=1.1, top_k=7, top_p=0.8)
        assert torch.equal(_generate(model, PADDED[::-1], 9, TRACE, **options),
                           _generate(model, PADDED[::-1], 9, **options))


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_only_the_model_call_compiles_when_a_processor_reads_the_history(model, monkeypatch):
    """``min_new_tokens`` reads the history, ``output_scores`` records every step: the model call alone compiles
    (transformers' behaviour), with fixed-shape inputs, and the tokens and scores are those of the eager run."""
    options = {"min_new_tokens": 4, "return_dict_in_generate": True, "output_scores": True}
    eager = _generate(model, PADDED, 7, **options)
    monkeypatch.setattr(importlib.import_module("turbogen.generate"), "shared_decode_step", _fail)
    compiled = _generate(model, PADDED, 7, TRACE, **options)
    assert _stored(model, "model")
    assert torch.equal(compiled.sequences, eager.sequences)
    for got, want in zip(compiled.scores, eager.scores):
        torch.testing.assert_close(got, want)
    assert isinstance(compiled.past_key_values, StaticKVCache)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = _generate(model, PADDED[:2], 5, TRACE, **options)
    assert torch.equal(again.sequences, _generate(model, PADDED[:2], 5, **options).sequences)


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_beam_search_compiles_the_model_call_with_the_eager_results(model):
    options = {"num_beams": 3, "return_dict_in_generate": True, "output_scores": True}
    eager = _generate(model, SHORT, 6, **options)
    compiled = _generate(model, SHORT, 6, TRACE, **options)
    assert _stored(model, "model")
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(compiled.sequences_scores, eager.sequences_scores)
    with torch._dynamo.config.patch(error_on_recompile=True):
        longer = [prompt + " the end" for prompt in SHORT]
        assert torch.equal(_generate(model, longer, 4, TRACE, num_beams=3), _generate(model, longer, 4, num_beams=3))


def _fail(*args, **kwargs):
    raise AssertionError("the whole step must not be used here")


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_decode_step_used_directly_decodes_what_generate_does(model):
    input_ids, attention_mask = encode_batch(PADDED)
    cache = StaticKVCache(model.config, batch_size=3, max_cache_len=64)
    step = DecodeStep(model, cache, GenerationConfig(**SAMPLING)).compile(TRACE)
    graphs, breaks = _graphs(), _graph_breaks()
    tokens = step.prefill(input_ids, attention_mask)
    assert tokens is step.tokens and step.length == input_ids.shape[1] + 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(5):
            assert step() is tokens
        expected = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=6, **SAMPLING)
        # generate stops once every row met EOS; the step keeps padding them.
        assert torch.equal(step.sequences[:, : expected.shape[1]], expected)
        assert step.length == input_ids.shape[1] + 6
        # A new prompt of another length: same graph, fresh draws from the same seeds.
        shorter_ids, shorter_mask = encode_batch(["a b", "stop", "the"])
        step.prefill(shorter_ids, shorter_mask)
        for _ in range(3):
            step()
    expected = turbogen.generate(model, shorter_ids, attention_mask=shorter_mask, max_new_tokens=4, **SAMPLING)
    assert torch.equal(step.sequences[:, : expected.shape[1]], expected)
    assert _graphs() - graphs == 1
    assert _graph_breaks() == breaks


class _CompileSpy:
    """Stands in for ``torch.compile``: records the keyword arguments and returns the function uncompiled."""

    def __init__(self):
        self.calls = []

    def __call__(self, function, **kwargs):
        self.calls.append(kwargs)
        return function


@pytest.mark.parametrize("case, compiles", [
    ("cpu_without_compile_config", False),
    ("disable_compile", False),
    ("dynamic_cache", False),
    ("compile_config", True),
    ("transformers_compile_all_devices", True),
])
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_when_generate_compiles(case, compiles, monkeypatch):
    model = tiny_model("llama", fresh=True)
    spy = _CompileSpy()
    monkeypatch.setattr(torch, "compile", spy)
    options = {"cache_implementation": "static"}
    if case == "disable_compile":
        options.update(compile_config=TRACE, disable_compile=True)
    elif case == "dynamic_cache":
        options.update(compile_config=TRACE, cache_implementation=None)
    elif case == "compile_config":
        options.update(compile_config=TRACE)
    elif case == "transformers_compile_all_devices":
        import transformers

        config = transformers.CompileConfig(fullgraph=True, dynamic=False, backend="eager")
        config._compile_all_devices = True
        options.update(compile_config=config)
    input_ids, attention_mask = encode_batch(PADDED)
    result = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=5, **options)
    assert bool(spy.calls) == compiles
    expected = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=5)
    assert torch.equal(result, expected)


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_compile_config_fields_reach_torch_compile(monkeypatch):
    model = tiny_model("llama", fresh=True)
    spy = _CompileSpy()
    monkeypatch.setattr(torch, "compile", spy)
    config = CompileConfig(fullgraph=False, dynamic=True, backend="aot_eager", mode="max-autotune")
    _generate(model, SHORT, 3, config)
    assert spy.calls == [{"backend": "aot_eager", "fullgraph": False, "dynamic": True, "mode": "max-autotune"}]
    # `options` replace `mode` (torch.compile takes one of them); `dynamic=None` means False here.
    assert compile_kwargs(CompileConfig(options={"freezing": True})) == {
        "backend": "inductor", "fullgraph": False, "dynamic": False, "options": {"freezing": True}}
    assert compile_kwargs(None) == {"backend": "inductor", "fullgraph": True, "dynamic": False,
                                    "mode": "reduce-overhead"}



@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_compiled_generate_buckets_the_cache_and_reuses_the_step(monkeypatch):
    model = tiny_model("llama", fresh=True)
    monkeypatch.setattr(torch, "compile", _CompileSpy())
    first = _generate(model, SHORT, 3, TRACE, return_dict_in_generate=True)
    second = _generate(model, SHORT, 40, TRACE, return_dict_in_generate=True)
    assert first.past_key_values is second.past_key_values  # one cache per bucket, kept on the model
    assert first.past_key_values.max_cache_len == 64
    assert len(_stored(model, "step")) == 1
    assert [capacity_bucket(n) for n in (2, 65, 66, 129, 200)] == [64, 64, 128, 128, 256]


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_a_given_static_cache_is_compiled_over(model, monkeypatch):
    spy = _CompileSpy()
    monkeypatch.setattr(torch, "compile", spy)
    input_ids, attention_mask = encode_batch(PADDED)
    cache = StaticKVCache(model.config, batch_size=3, max_cache_len=20)
    result = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=5,
                               past_key_values=cache, compile_config=TRACE, return_dict_in_generate=True)
    assert spy.calls and result.past_key_values is cache
    expected = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=5)
    assert torch.equal(result.sequences, expected)


def test_every_compiled_callable_has_a_code_object_of_its_own():
    """dynamo's recompile_limit (8) counts per code object: two compiled steps must never share one."""
    def add_one(value, *, step=1):
        return value + step

    copy = compiled_module.fresh_function(add_one)
    assert copy.__code__ is not add_one.__code__
    assert copy.__code__ is not compiled_module.fresh_function(add_one).__code__
    assert copy(2) == 3 and copy(2, step=5) == 7


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_decode_step_rejects_bad_input(model):
    from transformers import DynamicCache

    with pytest.raises(ValueError, match="`cache`"):
        DecodeStep(model, DynamicCache())
    cache = StaticKVCache(model.config, batch_size=2, max_cache_len=8)
    step = DecodeStep(model, cache, GenerationConfig(do_sample=False))
    with pytest.raises(ValueError, match="prefill"):
        step()
    input_ids, attention_mask = encode_batch(PADDED)
    with pytest.raises(ValueError, match="`input_ids`.*3 rows"):
        step.prefill(input_ids, attention_mask)
    with pytest.raises(ValueError, match="`input_ids`"):
        step.prefill(torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="`generation_config`.*history"):
        DecodeStep(model, cache, GenerationConfig(min_new_tokens=3)).prefill(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="`compile_config`"):
        step.compile({"backend": "eager"})
    step.prefill(torch.ones(2, 6, dtype=torch.long))
    step()
    step()
    with pytest.raises(ValueError, match="cache is full"):
        step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_captured_step_replays_the_eager_tokens():
    model = tiny_model("llama", fresh=True).cuda()
    input_ids, attention_mask = (tensor.cuda() for tensor in encode_batch(PADDED))
    expected = turbogen.generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=8, **SAMPLING)
    cache = StaticKVCache(model.config, batch_size=3, max_cache_len=64, device="cuda")
    step = DecodeStep(model, cache, GenerationConfig(**SAMPLING))
    step.prefill(input_ids, attention_mask)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # the warm-up step torch recommends before a capture
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()  # recorded, not run: the replays below decode tokens 3 ... 8
    for _ in range(6):
        graph.replay()
    torch.cuda.synchronize()
    length = input_ids.shape[1] + 8
    assert torch.equal(step.sequences[:, :expected.shape[1]], expected[:, :length])


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_inductor_compiles_the_embedded_model_whole_step():
    """The one real inductor compilation (20-60 s here): the embedded model's greedy step over a left-padded
    batch, with turbogen's pass rewriting the step's products (generation/compile_passes.py; the FX graph cache is
    off so that the pass runs), the eager tokens, and no recompilation for other prompt lengths."""
    from turbogen import models

    model, tokenizer, _ = models.load_default_model()
    tokenizer.padding_side = "left"
    batch = tokenizer(["Once upon a time", "The"], return_tensors="pt", padding=True)
    options = {"max_new_tokens": 8, "do_sample": False, "cache_implementation": "static"}
    eager = turbogen.generate(model, **batch, **options)
    config = CompileConfig(fullgraph=True, dynamic=False)
    rewrites = counters["turbogen"]["decode_matmul"]
    with torch._inductor.config.patch(fx_graph_cache=False):
        compiled = turbogen.generate(model, **batch, **options, compile_config=config)
    assert counters["turbogen"]["decode_matmul"] > rewrites
    assert torch.equal(compiled, eager)
    with torch._dynamo.config.patch(error_on_recompile=True):
        longer = tokenizer(["Once upon a time there was", "A"], return_tensors="pt", padding=True)
        again = turbogen.generate(model, **longer, max_new_tokens=3, do_sample=False, cache_implementation="static",
                                  compile_config=config)
    assert torch.equal(again, turbogen.generate(model, **longer, max_new_tokens=3, do_sample=False))
