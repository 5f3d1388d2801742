"""turbogen.Engine's surface (issue 10): streaming, abort, the background thread, bad input failing only its own
request, generate_batch (input order, per-request configs, progress bars) and patch(model).generate_batch, the
scheduler's token budget and FIFO order, and the KV memory statistics. Tokens are compared with turbogen.generate
run alone on each request (what test_engine_exactness checks in depth)."""

from __future__ import annotations

import io
import sys
import threading

import pytest
import torch

from conftest import PAGED_ATTENTION_IN_4_45, skip_module_on_transformers_4_45

skip_module_on_transformers_4_45(PAGED_ATTENTION_IN_4_45)

import turbogen  # noqa: E402
from turbogen import UnsupportedByTurbogen  # noqa: E402
from turbogen.generate import generate  # noqa: E402

from tiny_models import PAD_ID, tiny_model, tiny_model_environment, vocab_size  # noqa: E402, F401  (a fixture)

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PROMPTS = [[5, 17, 33, 9], [40, 41], [7] * 19, [100, 3, 88, 12, 61, 9, 14]]
KWARGS = [
    {"max_new_tokens": 9, "do_sample": False},
    {"max_new_tokens": 6, "do_sample": True, "seed": 3, "temperature": 0.9, "top_k": 30},
    {"max_new_tokens": 11, "do_sample": True, "seed": 8, "top_p": 0.8, "repetition_penalty": 1.4},
    {"max_new_tokens": 4, "do_sample": False, "repetition_penalty": 1.5},
]


def alone(model, prompt, kwargs):
    return generate(model, [prompt], pad_token_id=PAD_ID, **kwargs)[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def expected():
    model = tiny_model("llama")
    return [alone(model, p, kw) for p, kw in zip(PROMPTS, KWARGS)]


def _engine(**options):
    options = {"block_size": 4, "num_blocks": 24, "max_num_seqs": 4, "max_batched_tokens": 16, **options}
    return turbogen.Engine(tiny_model("llama"), **options)


def test_stream_yields_each_requests_tokens(expected):
    engine = _engine()
    ids = [engine.add_request(p, pad_token_id=PAD_ID, **kw) for p, kw in zip(PROMPTS, KWARGS)]
    assert list(engine.stream(ids[2])) == expected[2]
    # The others progressed meanwhile; their streams continue where they are.
    for request_id, want in zip(ids, expected):
        assert list(engine.stream(request_id)) == want
    assert not engine.has_unfinished_requests()


def test_abort_frees_the_request_and_leaves_the_others_exact(expected):
    engine = _engine()
    ids = [engine.add_request(p, pad_token_id=PAD_ID, **kw) for p, kw in zip(PROMPTS, KWARGS)]
    engine.step()
    engine.step()
    engine.abort(ids[2])
    outputs = engine.step()
    aborted = [o for o in outputs if o.request_id == ids[2]]
    assert aborted and aborted[0].finished and aborted[0].finish_reason == "aborted"
    engine.abort(ids[2])  # finished: nothing happens
    results = engine.run()
    assert results[ids[2]].finish_reason == "aborted"
    assert len(results[ids[2]].generated_tokens) < len(expected[2])
    assert results[ids[2]].generated_tokens == expected[2][:len(results[ids[2]].generated_tokens)]
    for index in (0, 1, 3):
        assert results[ids[index]].generated_tokens == expected[index]
    allocator = engine.cache.allocator
    allocator.check()
    assert allocator.num_free_blocks == allocator.num_blocks
    with pytest.raises(ValueError, match="request_id"):
        engine.abort("no such request")


def test_bad_input_fails_only_its_request(expected):
    engine = _engine(num_blocks=12)  # 48 slots
    good = engine.add_request(PROMPTS[0], pad_token_id=PAD_ID, **KWARGS[0])
    with pytest.raises(ValueError, match="input_ids"):
        engine.add_request([], max_new_tokens=3)
    with pytest.raises(ValueError, match="input_ids"):
        engine.add_request([1, vocab_size() + 5], max_new_tokens=3)
    with pytest.raises(ValueError, match="input_ids"):
        engine.add_request([[1, 2], [3, 4]], max_new_tokens=3)
    with pytest.raises(ValueError, match="input_ids"):
        engine.add_request([1.5, 2], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):  # longer than the cache can ever hold
        engine.add_request([5] * 30, max_new_tokens=40)
    with pytest.raises(ValueError, match="temperature"):
        engine.add_request([5, 6], do_sample=True, temperature=-1.0, max_new_tokens=3)
    with pytest.raises(UnsupportedByTurbogen, match="beam"):
        engine.add_request([5, 6], num_beams=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request([5, 6], request_id=good, max_new_tokens=3)
    with pytest.raises(ValueError, match="request_id"):
        engine.abort(12345)

    def failing_processor(input_ids, scores):
        raise RuntimeError("boom")

    def nan_processor(input_ids, scores):
        return torch.full_like(scores, float("nan"))

    class FailingCriterion:
        def __call__(self, input_ids, scores, **kwargs):
            raise RuntimeError("criterion broke")

    late = engine.add_request([9, 9, 9], max_new_tokens=5, logits_processor=[failing_processor])
    stopped = engine.add_request([9, 7], max_new_tokens=5, stopping_criteria=[FailingCriterion()])
    nan = engine.add_request([9, 8], max_new_tokens=5, do_sample=True, seed=1, logits_processor=[nan_processor])
    other = engine.add_request(PROMPTS[1], pad_token_id=PAD_ID, **KWARGS[1])
    results = engine.run()
    assert results[late].finish_reason == "error" and "boom" in results[late].error
    assert results[stopped].finish_reason == "error" and "criterion broke" in results[stopped].error
    assert results[nan].finish_reason == "error" and "NaN" in results[nan].error
    assert results[good].generated_tokens == expected[0]
    assert results[other].generated_tokens == expected[1]
    assert engine.cache.allocator.num_free_blocks == engine.cache.allocator.num_blocks


def test_failing_forward_fails_that_steps_requests_only(expected, monkeypatch):
    engine = _engine()
    first = engine.add_request(PROMPTS[0], pad_token_id=PAD_ID, **KWARGS[0])
    from turbogen.serving import engine as engine_module

    real = engine_module.paged_forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "paged_forward", flaky)
    engine.step()
    outputs = engine.step()
    assert outputs[0].finish_reason == "error" and "device lost" in outputs[0].error
    later = engine.add_request(PROMPTS[3], pad_token_id=PAD_ID, **KWARGS[3])
    results = engine.run()
    assert results[first].finish_reason == "error"
    assert results[later].generated_tokens == expected[3]
    assert engine.cache.allocator.num_free_blocks == engine.cache.allocator.num_blocks


def test_background_thread_serves_several_submitting_threads(expected):
    engine = _engine()
    failures = []

    def client(index):
        try:
            for repeat in range(2):
                handle = engine.submit(PROMPTS[index], pad_token_id=PAD_ID, **KWARGS[index])
                if repeat:
                    streamed = list(handle)
                    assert streamed == expected[index]
                result = handle.result(timeout=60)
                assert result.generated_tokens == expected[index], (index, result)
        except BaseException as error:  # noqa: BLE001
            failures.append(error)

    with engine:
        with pytest.raises(RuntimeError, match="background"):
            engine.step()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        with pytest.raises(ValueError, match="input_ids"):
            engine.submit([], max_new_tokens=2)
    assert not failures, failures
    assert engine._thread is None


def test_shutdown_aborts_what_is_left_and_never_hangs():
    engine = _engine(max_num_seqs=1, max_batched_tokens=1)
    engine.start()
    handles = [engine.submit([5 + i] * 10, max_new_tokens=30, do_sample=False) for i in range(3)]
    handles[1].abort()
    engine.shutdown(timeout=60)
    for handle in handles:
        result = handle.result(timeout=10)
        assert result.finished and result.finish_reason in ("aborted", "length")
    assert handles[1].result().finish_reason == "aborted"
    with pytest.raises(RuntimeError):
        engine.submit([5], max_new_tokens=2)
    engine.shutdown()  # idempotent


def test_generate_batch_in_input_order_with_per_request_configs(expected, capsys):
    model = tiny_model("llama")
    configs = [turbogen.GenerationConfig(pad_token_id=PAD_ID, **kw) for kw in KWARGS]
    inputs = PROMPTS[:2] + [[]] + PROMPTS[2:] + [[5, 6]]
    configs = configs[:2] + [configs[0]] + configs[2:] + [{"max_new_tokens": "many"}]
    results = turbogen.generate_batch(model, inputs, configs, progress_bar=False)
    stats = results.kv_stats
    assert capsys.readouterr().err == ""
    assert [r.prompt_ids for r in results] == inputs
    assert results[2].finish_reason == "error" and "input_ids" in results[2].error
    assert results[-1].finish_reason == "error" and "max_new_tokens" in results[-1].error
    for result, want in zip(results[:2] + results[3:-1], expected):
        assert result.generated_tokens == want
        assert result.finish_reason in ("eos", "length")
    assert stats["peak_blocks_used"] > 0 and stats["num_steps"] > 0
    # One config for all plus keyword arguments over it.
    results = turbogen.generate_batch(model, PROMPTS, {"do_sample": False}, max_new_tokens=3, progress_bar=False,
                                      pad_token_id=PAD_ID)
    assert [r.generated_tokens for r in results] == [alone(model, p, {"max_new_tokens": 3, "do_sample": False})
                                                     for p in PROMPTS]
    with pytest.raises(ValueError, match="generation_config"):
        turbogen.generate_batch(model, PROMPTS, configs[:2], progress_bar=False)
    # Per-prompt values of a per-request parameter (a list seed is one seed per prompt, as in generate).
    limits, seeds = [2, 5, 1, 3], [11, 12, 13, 14]
    results = turbogen.generate_batch(model, PROMPTS, max_new_tokens=limits, do_sample=True, seed=seeds,
                                      pad_token_id=PAD_ID, progress_bar=False)
    assert [r.generated_tokens for r in results] == [
        alone(model, p, {"max_new_tokens": n, "do_sample": True, "seed": s}) for p, n, s in zip(PROMPTS, limits, seeds)]
    with pytest.raises(ValueError, match="max_new_tokens"):
        turbogen.generate_batch(model, PROMPTS, max_new_tokens=[1, 2], progress_bar=False)


def test_generate_batch_progress_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    results = turbogen.generate_batch(tiny_model("llama"), PROMPTS[:2], max_new_tokens=3, do_sample=False,
                                      pad_token_id=PAD_ID)
    assert len(results) == 2
    assert "2/2 requests" in err.getvalue()


def test_patch_provides_generate_batch_and_unpatch_removes_it():
    model = tiny_model("llama", fresh=True)
    had = hasattr(model, "generate_batch")
    turbogen.patch(model)
    try:
        results = model.generate_batch(PROMPTS[:2], max_new_tokens=3, do_sample=False, pad_token_id=PAD_ID,
                                       progress_bar=False)
        assert [r.generated_tokens for r in results] == [alone(model, p, {"max_new_tokens": 3, "do_sample": False})
                                                         for p in PROMPTS[:2]]
    finally:
        turbogen.unpatch(model)
    assert "generate_batch" not in vars(model)
    assert hasattr(model, "generate_batch") == had


def test_scheduler_respects_the_token_budget_and_fifo_order(monkeypatch):
    engine = _engine(max_num_seqs=3, max_batched_tokens=5, num_blocks=12)
    steps = []
    schedule = engine.scheduler.schedule

    def recording():
        plan = schedule()
        steps.append([(r.arrival, n) for r, n in zip(plan.requests, plan.counts)])
        return plan

    monkeypatch.setattr(engine.scheduler, "schedule", recording)
    ids = [engine.add_request([5 + i] * (3 + 4 * i), max_new_tokens=6, do_sample=False) for i in range(5)]
    finished = []
    while engine.has_unfinished_requests():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert all(sum(n for _, n in step) <= 5 for step in steps)
    # Every step serves the oldest request left first.
    assert all([a for a, _ in step] == sorted(a for a, _ in step) for step in steps)
    # The oldest request is never overtaken: requests finish in arrival order here (same max_new_tokens).
    assert finished == ids


def test_memory_stats_report_blocks_against_tokens_held():
    engine = _engine(block_size=4, num_blocks=40)
    for prompt in PROMPTS:
        engine.add_request(prompt, max_new_tokens=8, do_sample=False)
    engine.run()
    stats = engine.memory_stats()
    assert stats["kv_bytes_per_token"] == engine.cache.bytes_per_token
    assert stats["peak_kv_bytes"] == stats["peak_blocks_used"] * 4 * stats["kv_bytes_per_token"]
    # Each sequence wastes less than one block: peak blocks cover the tokens held then.
    held = stats["tokens_held_at_peak"]
    assert held <= stats["peak_blocks_used"] * 4 < held + 4 * len(PROMPTS)


def test_engine_built_in_inference_mode_runs_outside_it_and_in_its_thread(expected):
    """The step runs under torch.inference_mode (thread-local): an Engine built inside it (its cache then holds
    inference tensors) is driven outside it, and from its background thread."""
    with torch.inference_mode():
        engine = _engine()
    request_id = engine.add_request(PROMPTS[2], pad_token_id=PAD_ID, **KWARGS[2])
    assert engine.run()[request_id].generated_tokens == expected[2]
    with engine:
        handle = engine.submit(PROMPTS[3], pad_token_id=PAD_ID, **KWARGS[3])
        assert handle.result(timeout=60).generated_tokens == expected[3]
