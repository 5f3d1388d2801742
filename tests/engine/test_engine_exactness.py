"""turbogen.Engine (issue 10): every request's tokens equal turbogen.generate run on it alone, over many random
schedules: arrival order and times, batch composition, block size, cache size (forced preemption), chunked
prefill (max_batched_tokens down to 1), greedy and sampling rows side by side with their own temperature / top-k /
top-p / min-p / seed / max_new_tokens / EOS, the penalties (repetition, presence/frequency), the n-gram ban, a
user processor reading the history, and stop strings. Greedy rows compare their logits too (within the
cross-compilation tolerance: the paged kernel sums in another order than SDPA). The allocator's invariants hold
after every step, and no block is held once every request finished.

The schedules are drawn from fixed seeds (a hypothesis-style loop), so a failure names its seed and replays.
"""

from __future__ import annotations

import random

import pytest
import torch

from conftest import PAGED_ATTENTION_IN_4_45, skip_module_on_transformers_4_45

skip_module_on_transformers_4_45(PAGED_ATTENTION_IN_4_45)

import turbogen  # noqa: E402
from turbogen.generate import generate  # noqa: E402

from tiny_models import (EOS_ID, PAD_ID, tiny_model, tiny_model_environment,  # noqa: E402, F401  (a fixture)
                         tiny_tokenizer, vocab_size)
from tolerances import assert_close_across_compilations  # noqa: E402

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

_REFERENCES: dict = {}


def _key(prompt, kwargs) -> tuple:
    return (tuple(prompt), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))


def alone(model, prompt, kwargs):
    """(generated tokens, logits per token or None) of turbogen.generate on this one prompt."""
    key = (id(model), _key(prompt, kwargs))
    if key not in _REFERENCES:
        # Recording the logits does not change how generate chooses tokens.
        out = generate(model, [list(prompt)], **{**kwargs, "return_dict_in_generate": True, "output_logits": True})
        tokens = out.sequences[0, len(prompt):].tolist()
        _REFERENCES[key] = (tokens, [step[0] for step in out.logits])
    return _REFERENCES[key]


class _BanLastToken:
    """A user processor that reads the history: the last token may not repeat."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[torch.arange(scores.shape[0]), input_ids[:, -1]] = -float("inf")
        return scores

    def __repr__(self):
        return "BanLastToken()"


def random_request(rng: random.Random):
    """A random prompt and generation kwargs."""
    prompt = [rng.randrange(4, vocab_size()) for _ in range(rng.choice([1, 2, 3, 5, 8, 15, 16, 17, 30]))]
    kwargs = {"max_new_tokens": rng.randint(1, 14), "pad_token_id": PAD_ID}
    # EOS: the tokenizer's, sometimes with a common token so requests do end early.
    kwargs["eos_token_id"] = rng.choice([EOS_ID, [EOS_ID, rng.randrange(4, 40)], [EOS_ID, rng.randrange(4, 12)]])
    if rng.random() < 0.5:
        kwargs.update(do_sample=True, seed=rng.randrange(2**40), temperature=rng.choice([0.6, 1.0, 1.4]),
                      top_k=rng.choice([0, 5, 40]), top_p=rng.choice([1.0, 0.9, 0.6]), min_p=rng.choice([0.0, 0.05]))
    else:
        kwargs["do_sample"] = False
    extra = rng.random()
    if extra < 0.25:
        kwargs["repetition_penalty"] = rng.choice([1.3, 0.7])
    elif extra < 0.35:
        kwargs.update(repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.3)
    elif extra < 0.45:
        kwargs["no_repeat_ngram_size"] = 2
    elif extra < 0.5:
        kwargs["logits_processor"] = [_BanLastToken()]
    elif extra < 0.55:
        kwargs["min_new_tokens"] = 3
    return prompt, kwargs


def random_engine(model, rng: random.Random, requests):
    """An Engine with random block size, a cache from "just the longest request" up, and random limits."""
    block_size = rng.choice([1, 2, 4, 16])
    longest = max(len(p) + kw["max_new_tokens"] - 1 for p, kw in requests)
    blocks = -(-longest // block_size) + rng.choice([0, 0, 1, 3, 20])
    return turbogen.Engine(model, block_size=block_size, num_blocks=blocks, max_num_seqs=rng.randint(1, 6),
                           max_batched_tokens=rng.choice([1, 3, 8, 16, 64]))


def drive(engine, requests, rng: random.Random):
    """Add the requests in random groups between steps; check the allocator after every step. Returns the outputs
    in request order."""
    pending = list(enumerate(requests))
    ids = {}
    streamed = {}
    while pending or engine.has_unfinished_requests():
        if pending and (not engine.has_unfinished_requests() or rng.random() < 0.4):
            for _ in range(rng.randint(1, len(pending))):
                index, (prompt, kwargs) = pending.pop(0)
                ids[engine.add_request(prompt, **kwargs)] = index
        for output in engine.step():
            streamed.setdefault(output.request_id, []).extend(output.new_tokens)
        engine.cache.allocator.check()
        running = engine.scheduler.running
        assert engine.cache.allocator.sequences == [] or set(engine.cache.allocator.sequences) == \
            {r.seq_id for r in running}
    allocator = engine.cache.allocator
    assert allocator.num_free_blocks == allocator.num_blocks and not allocator.sequences, "blocks leaked"
    outputs = [None] * len(requests)
    for request_id, index in ids.items():
        outputs[index] = engine.output(request_id)
        # The steps' new tokens, concatenated, are the request's tokens (streaming).
        assert streamed.get(request_id, []) == outputs[index].generated_tokens
    return outputs


def check_against_generate(model, requests, outputs, compare_logits=True):
    for (prompt, kwargs), output in zip(requests, outputs):
        tokens, logits = alone(model, prompt, kwargs)
        assert output.error is None, output.error
        assert output.generated_tokens == tokens, (prompt, kwargs)
        assert output.prompt_ids == prompt
        eos = kwargs["eos_token_id"]
        eos = set(eos if isinstance(eos, list) else [eos])
        if tokens[-1] in eos:
            assert output.finish_reason == "eos"
        else:
            assert len(tokens) == kwargs["max_new_tokens"] and output.finish_reason == "length"
        if compare_logits and output.logits is not None:
            assert len(output.logits) == len(logits)
            for got, want in zip(output.logits, logits):
                assert_close_across_compilations(got, want)
                # The bound: within 1e-5 of the largest logit (the paged kernel sums in another order).
                assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


@pytest.mark.parametrize("seed", range(10))
def test_random_schedules_equal_generate_alone(seed):
    rng = random.Random(seed)
    model = tiny_model("llama")
    requests = [random_request(rng) for _ in range(rng.randint(2, 7))]
    for _, kwargs in requests:  # greedy rows record their logits for the comparison
        if not kwargs.get("do_sample") and rng.random() < 0.5:
            kwargs.update(return_dict_in_generate=True, output_logits=True)
    engine = random_engine(model, rng, requests)
    outputs = drive(engine, requests, rng)
    check_against_generate(model, requests, outputs)


def test_forced_preemption_resumes_without_changing_the_output():
    """A cache of exactly one longest request's blocks: requests keep preempting each other."""
    rng = random.Random(123)
    model = tiny_model("llama")
    requests = [random_request(rng) for _ in range(6)]
    for _, kwargs in requests:
        kwargs["max_new_tokens"] = 12
        kwargs["eos_token_id"] = EOS_ID
    longest = max(len(p) + 11 for p, _ in requests)
    engine = turbogen.Engine(model, block_size=2, num_blocks=-(-longest // 2), max_num_seqs=6, max_batched_tokens=64)
    outputs = drive(engine, requests, rng)
    assert engine.memory_stats()["num_preemptions"] > 0
    check_against_generate(model, requests, outputs)


def test_chunked_prefill_one_token_per_step():
    """max_batched_tokens=1: every prompt is fed one token per step, interleaved with other requests' decoding."""
    model = tiny_model("llama")
    rng = random.Random(7)
    requests = [([rng.randrange(4, vocab_size()) for _ in range(n)], {"max_new_tokens": 5, "eos_token_id": EOS_ID,
                                                                        "pad_token_id": PAD_ID, "do_sample": False,
                                                                        "return_dict_in_generate": True,
                                                                        "output_logits": True})
                for n in (9, 1, 20)]
    engine = turbogen.Engine(model, block_size=4, num_blocks=16, max_num_seqs=3, max_batched_tokens=1)
    outputs = drive(engine, requests, rng)
    check_against_generate(model, requests, outputs)
    assert engine.num_steps >= sum(len(p) + 4 for p, _ in requests)


@pytest.mark.parametrize("kind", ["gpt2", "mistral", "gemma2"])
def test_other_architectures(kind):
    """GPT-2 (whose 4.57 forward drops extra kwargs), Mistral (a 4-token sliding window) and Gemma 2 (a sliding
    and a full layer, attention-logit softcapping). Gemma 2 runs the reference with eager attention: transformers
    4.57's default SDPA path drops the softcapping (its logits differ by ~3e-3 here), which the paged kernel
    applies, as eager attention (5.x's default for it) does."""
    rng = random.Random(11)
    if kind == "gemma2":
        model = tiny_model(kind, fresh=True)
        model.set_attn_implementation("eager")
    else:
        model = tiny_model(kind)
    requests = [random_request(rng) for _ in range(4)]
    engine = turbogen.Engine(model, block_size=4, num_blocks=24, max_num_seqs=3, max_batched_tokens=8)
    outputs = drive(engine, requests, rng)
    check_against_generate(model, requests, outputs)


def test_stop_strings_per_request():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    prompts = [tokenizer("the quick brown fox")["input_ids"], tokenizer("hello world")["input_ids"]]
    engine = turbogen.Engine(model, block_size=4, num_blocks=32, tokenizer=tokenizer)
    # Stop strings made of pieces the tiny model produces greedily from these prompts (found by generate).
    plain = [generate(model, [p], max_new_tokens=12, do_sample=False, pad_token_id=PAD_ID)[0, len(p):].tolist()
             for p in prompts]
    stops = [tokenizer.decode(tokens[3:5]).strip() or tokenizer.decode(tokens[3:5]) for tokens in plain]
    requests = [(p, {"max_new_tokens": 12, "do_sample": False, "pad_token_id": PAD_ID, "stop_strings": [s]})
                for p, s in zip(prompts, stops)]
    ids = [engine.add_request(p, **kw) for p, kw in requests]
    results = engine.run()
    for (prompt, kwargs), request_id in zip(requests, ids):
        want = generate(model, [prompt], tokenizer=tokenizer, **kwargs)[0, len(prompt):].tolist()
        # generate pads nothing here (one row): its tokens end where the stop string completed.
        assert results[request_id].generated_tokens == want
        if len(want) < 12:
            assert results[request_id].finish_reason == "stop_string"


# One request per processor kind, all in one batch beside plain greedy and sampling rows.
PROCESSOR_KWARGS = [
    {"do_sample": True, "seed": 5, "typical_p": 0.8},
    {"do_sample": True, "seed": 6, "epsilon_cutoff": 3e-3},
    {"do_sample": True, "seed": 7, "eta_cutoff": 1e-3},
    {"do_sample": True, "seed": 8, "temperature": 0.7, "top_k": 10, "output_scores": True,
     "return_dict_in_generate": True},
    {"do_sample": False, "suppress_tokens": [10, 11, 12]},
    {"do_sample": False, "begin_suppress_tokens": [40, 41]},
    {"do_sample": False, "bad_words_ids": [[20], [30, 31]]},
    {"do_sample": False, "sequence_bias": {(25,): 5.0, (26, 27): -2.0}},
    {"do_sample": False, "forced_eos_token_id": EOS_ID},
    {"do_sample": False, "exponential_decay_length_penalty": (3, 1.5)},
    {"do_sample": False, "renormalize_logits": True},
    {"do_sample": True, "seed": 9, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 4},
    {"do_sample": False},
]


def test_every_processor_kind_in_one_batch():
    model = tiny_model("llama")
    rng = random.Random(3)
    requests = []
    for index, extra in enumerate(PROCESSOR_KWARGS):
        prompt = [rng.randrange(4, vocab_size()) for _ in range(3 + index)]
        requests.append((prompt, {"max_new_tokens": 8, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, **extra}))
    engine = turbogen.Engine(model, block_size=4, num_blocks=20, max_num_seqs=5, max_batched_tokens=12)
    outputs = drive(engine, requests, rng)
    check_against_generate(model, requests, outputs)
    for (prompt, kwargs), output in zip(requests, outputs):
        if kwargs.get("output_scores"):
            want = generate(model, [prompt], **kwargs).scores
            assert len(output.scores) == len(want)
            for got, expected in zip(output.scores, want):
                assert_close_across_compilations(got, expected[0])
