"""Multinomial sampling and beam-search sampling in turbogen.generate.

Draws come from turbogen's counter-based sampler, not torch.multinomial, so they are compared with
transformers in distribution: many rows of one prompt are sampled in a single call (each row has its own
seed), and the first tokens must pass a chi-square test against the distribution transformers' processors
define (the softmax of its processed scores of the same step), never leaving the set of tokens those
processors keep (tests/tolerances.py: ``assert_draws_follow``)."""

from __future__ import annotations

import inspect

import pytest
import torch

from tiny_models import encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_bit_exact, assert_draws_follow
from turbogen.generate import generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

# Sized so that a chi-square test at a false-alarm rate of 1e-6 rejects a temperature off by 13% or a min_p off by
# 60% with a wide margin (p-values below 1e-50 for the ``hot_min_p`` setting), in a fraction of a second per call.
DRAWS = 8000


def _padded_prompt():
    return encode_batch(["the quick brown fox", "stop", "hello world again"])


def test_seeded_sampling_is_reproducible():
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    def run(seed):
        return generate(model, input_ids, attention_mask=attention_mask, do_sample=True, max_new_tokens=8, seed=seed)

    first = run(1234)
    assert torch.equal(run(1234), first)
    assert not torch.equal(run(1235), first)


def test_unseeded_sampling_follows_torch_manual_seed():
    model = tiny_model("gpt2")
    input_ids, attention_mask = _padded_prompt()
    def run():
        return generate(model, input_ids, attention_mask=attention_mask, do_sample=True, max_new_tokens=8)

    torch.manual_seed(7)
    first, second = run(), run()
    torch.manual_seed(7)
    assert torch.equal(run(), first)
    assert not torch.equal(second, first), "each call should draw a fresh seed from the global RNG"


def test_every_returned_sequence_has_its_own_draws():
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["the quick brown fox"] * 2)
    out = generate(model, input_ids, attention_mask=attention_mask, do_sample=True, num_return_sequences=3,
                   max_new_tokens=8, seed=5, top_k=0)
    assert out.shape == (6, input_ids.shape[1] + 8)
    generated = out[:, input_ids.shape[1]:]
    assert len({tuple(row.tolist()) for row in generated}) == 6


def test_a_list_seed_gives_each_prompt_its_own_seed():
    """``seed=[s0, s1, ...]``: sequence j of prompt p draws with seed[p] + j, which is what the scalar seed S gives
    when seed[p] = S + p * num_return_sequences; and a prompt's samples follow it to another place in the batch."""
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, max_new_tokens=8, num_return_sequences=2, top_k=0, eos_token_id=None)
    scalar = generate(model, input_ids, attention_mask=attention_mask, seed=40, **options)
    listed = generate(model, input_ids, attention_mask=attention_mask, seed=[40, 42, 44], **options)
    assert torch.equal(listed, scalar)

    order = [2, 0, 1]
    moved = generate(model, input_ids[order], attention_mask=attention_mask[order], seed=[44, 40, 42], **options)
    rows = [2 * prompt + sequence for prompt in order for sequence in range(2)]
    assert torch.equal(moved, scalar[rows])


def test_a_list_seed_in_beam_sampling_is_the_rows_seed():
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, num_beams=2, max_new_tokens=6, eos_token_id=None)
    scalar = generate(model, input_ids, attention_mask=attention_mask, seed=7, **options)
    listed = generate(model, input_ids, attention_mask=attention_mask, seed=[7, 8, 9], **options)
    other = generate(model, input_ids, attention_mask=attention_mask, seed=[7, 8, 19], **options)
    assert torch.equal(listed, scalar)
    assert torch.equal(other[:2], scalar[:2]) and not torch.equal(other[2], scalar[2])


@pytest.mark.parametrize("seed, message", [([1, 2], "list of 2 seeds for a batch of 3 prompts"),
                                           ([1, -2, 3], r"`seed\[1\]` must be in \[0, 2\*\*64\)"),
                                           ([], "non-empty list")])
def test_a_bad_list_seed_is_refused(seed, message):
    input_ids, attention_mask = _padded_prompt()
    with pytest.raises(ValueError, match=message):
        generate(tiny_model("llama"), input_ids, attention_mask=attention_mask, do_sample=True, max_new_tokens=2,
                 seed=seed)


def _first_tokens(model, input_ids, attention_mask, **options) -> torch.Tensor:
    """The first sampled token of each of ``DRAWS`` copies of the prompt, drawn in one call."""
    rows = input_ids.repeat(DRAWS, 1)
    mask = attention_mask.repeat(DRAWS, 1)
    out = generate(model, rows, attention_mask=mask, do_sample=True, max_new_tokens=1, seed=99, **options)
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    return sequences[:, -1]


def _transformers_first_token_distribution(model, input_ids, attention_mask, **options) -> torch.Tensor:
    """The distribution transformers samples the first token from: the softmax of its processed scores."""
    sampling_options = {name: value for name, value in options.items() if not name.startswith(("return", "output"))}
    reference = model.generate(input_ids, attention_mask=attention_mask, do_sample=True, max_new_tokens=1,
                               return_dict_in_generate=True, output_scores=True, **sampling_options)
    return torch.softmax(reference.scores[0][0].double(), dim=-1)


SAMPLING_SETTINGS = {
    "temperature_top_k": dict(temperature=0.7, top_k=20),
    "top_p": dict(top_p=0.8),
    "hot_min_p": dict(temperature=1.5, min_p=0.05, top_k=0),
    "typical_p_not_fusable": dict(typical_p=0.9),
    "scores_requested_not_fused": dict(temperature=0.8, top_k=30, return_dict_in_generate=True,
                                       output_scores=True),
}


@pytest.mark.parametrize("setting", SAMPLING_SETTINGS)
def test_sampled_distribution_matches_transformers_processors(setting):
    options = SAMPLING_SETTINGS[setting]
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world"])
    expected = _transformers_first_token_distribution(model, input_ids, attention_mask, **options)

    assert_draws_follow(_first_tokens(model, input_ids, attention_mask, **options), expected)


# Subtly wrong samplers. With DRAWS draws, the frequencies of each stay at cosine similarity > 0.99 to the right
# distribution (0.991 and 0.994), the check this file used to make.
MISTUNED_SAMPLERS = {
    "temperature_1.3_instead_of_1.5": ("hot_min_p", dict(temperature=1.3)),
    "min_p_scaled_by_1.6": ("hot_min_p", dict(min_p=0.08)),
}


@pytest.mark.parametrize("mistuned", MISTUNED_SAMPLERS)
def test_distribution_check_rejects_a_mistuned_sampler(mistuned):
    """The check above can fail: draws from slightly wrong filter parameters are rejected."""
    setting, change = MISTUNED_SAMPLERS[mistuned]
    options = SAMPLING_SETTINGS[setting]
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(["hello world"])
    expected = _transformers_first_token_distribution(model, input_ids, attention_mask, **options)
    mistuned_tokens = _first_tokens(model, input_ids, attention_mask, **{**options, **change})

    with pytest.raises(AssertionError, match="do not follow the expected distribution"):
        assert_draws_follow(mistuned_tokens, expected)


def _one_value(parameter):
    """A sampler argument as one Python number: it is a scalar, or a per-row tensor holding the same value in
    every row (all rows of these calls share their settings and advance their offsets together)."""
    if not isinstance(parameter, torch.Tensor):
        return parameter
    distinct = parameter.unique()
    assert distinct.numel() == 1, f"rows disagree: {distinct.tolist()}"
    return distinct.item()


def test_trailing_warpers_are_fused_into_the_sampler_unless_scores_are_requested(monkeypatch):
    """Without ``output_scores`` the temperature/top-k/top-p warpers run inside the sampler; with it they run
    as processors (their output is the recorded score) and the sampler's filters stay neutral. Same seed, same
    draws either way, at offsets 0, 1, 2, ... (one per generated token)."""
    import turbogen.ops

    sampler_class = turbogen.ops.Sampler
    filter_names = ("temperature", "top_k", "top_p")
    neutral = {name: inspect.signature(sampler_class).parameters[name].default for name in filter_names}
    sampler_filters, draws = [], []

    class RecordingSampler(sampler_class):
        def __init__(self, rows, device, **kwargs):
            sampler_filters.append({name: _one_value(kwargs.get(name, neutral[name])) for name in filter_names})
            super().__init__(rows, device, **kwargs)

        def __call__(self, logits, offset=0, **kwargs):
            draws.append(_one_value(offset))  # read now: the loop may advance an offset tensor in place
            return super().__call__(logits, offset, **kwargs)

    monkeypatch.setattr(turbogen.ops, "Sampler", RecordingSampler)
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3,
                   seed=8, eos_token_id=None)
    fused = generate(model, input_ids, attention_mask=attention_mask, **options)
    assert sampler_filters == [dict(temperature=pytest.approx(0.7), top_k=20, top_p=pytest.approx(0.9))]
    assert draws == list(range(6))
    sampler_filters.clear()
    draws.clear()
    unfused = generate(model, input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                       output_scores=True, **options)
    assert sampler_filters == [neutral]
    assert draws == list(range(6))
    assert torch.equal(fused, unfused.sequences)


@pytest.mark.parametrize("penalties", [dict(repetition_penalty=1.8),
                                       dict(repetition_penalty=1.3, presence_penalty=0.8, frequency_penalty=0.4)],
                         ids=["repetition", "repetition-presence-frequency"])
def test_penalties_are_applied_by_the_sampler_unless_scores_are_requested(monkeypatch, penalties):
    """The penalty stage that ends the processor list runs inside the sampler's pass over the logits (the
    sampler gets the penalty state) unless the processed scores are recorded; the draws are the same."""
    import turbogen.ops

    sampler_class = turbogen.ops.Sampler
    fused_calls = []

    class RecordingSampler(sampler_class):
        def __call__(self, logits, offset=0, **kwargs):
            fused_calls.append(kwargs.get("penalties") is not None)
            return super().__call__(logits, offset, **kwargs)

    monkeypatch.setattr(turbogen.ops, "Sampler", RecordingSampler)
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, max_new_tokens=12, temperature=0.8, seed=21, eos_token_id=None, **penalties)
    fused = generate(model, input_ids, attention_mask=attention_mask, **options)
    assert fused_calls == [True] * 12
    fused_calls.clear()
    unfused = generate(model, input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                       output_scores=True, **options)
    assert fused_calls == [False] * 12
    assert torch.equal(fused, unfused.sequences)
    without = generate(model, input_ids, attention_mask=attention_mask,
                       **{**options, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0})
    assert not torch.equal(fused, without), "the penalties never changed a draw: the test would not see them dropped"


def test_sampling_scores_are_transformers_processed_scores():
    model = tiny_model("gpt2")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, max_new_tokens=1, temperature=0.6, top_k=12, top_p=0.9,
                   return_dict_in_generate=True, output_scores=True, output_logits=True)
    expected = model.generate(input_ids, attention_mask=attention_mask, **options)
    actual = generate(model, input_ids, attention_mask=attention_mask, seed=3, **options)
    # The same model call and the same processors on the same inputs: the same floats, bit for bit.
    assert_bit_exact(actual.logits[0], expected.logits[0])
    assert_bit_exact(actual.scores[0], expected.scores[0])
    chosen = actual.sequences[:, -1]
    assert torch.isfinite(actual.scores[0].gather(1, chosen[:, None])).all()


def test_beam_sampling_is_reproducible_and_stays_in_the_kept_set():
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, num_beams=3, num_return_sequences=2, max_new_tokens=6, top_k=5,
                   return_dict_in_generate=True, output_scores=True)
    first = generate(model, input_ids, attention_mask=attention_mask, seed=11, **options)
    again = generate(model, input_ids, attention_mask=attention_mask, seed=11, **options)
    other = generate(model, input_ids, attention_mask=attention_mask, seed=12, **options)
    assert torch.equal(first.sequences, again.sequences)
    assert not torch.equal(first.sequences, other.sequences)
    # Every generated token was finite under the processed scores of the beam that produced it.
    for step, scores in enumerate(first.scores):
        rows = first.beam_indices[:, step]
        live = rows >= 0
        tokens = first.sequences[live, input_ids.shape[1] + step]
        assert torch.isfinite(scores[rows[live].long(), tokens]).all()
