"""Multinomial sampling and beam-search sampling in turbogen.generate.

Draws come from turbogen's counter-based sampler, not torch.multinomial, so they are compared with
transformers in distribution: many rows of one prompt are sampled in a single call (each row has its own
seed), and the frequency of each first token must match the distribution transformers' processors define
(its processed scores of the same step), never leaving the set of tokens those processors keep."""

from __future__ import annotations

import pytest
import torch

from tiny_models import encode_batch, tiny_model, vocab_size
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen.generate import generate

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

DRAWS = 4000


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


def _first_token_frequencies(model, input_ids, attention_mask, **options):
    """Frequencies over the vocabulary of the first sampled token of ``DRAWS`` copies of the prompt."""
    rows = input_ids.repeat(DRAWS, 1)
    mask = attention_mask.repeat(DRAWS, 1)
    out = generate(model, rows, attention_mask=mask, do_sample=True, max_new_tokens=1, seed=99, **options)
    first = out if isinstance(out, torch.Tensor) else out.sequences
    return torch.bincount(first[:, -1], minlength=vocab_size()).double() / DRAWS


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
    reference = model.generate(input_ids, attention_mask=attention_mask, do_sample=True, max_new_tokens=1,
                               return_dict_in_generate=True, output_scores=True,
                               **{k: v for k, v in options.items() if not k.startswith(("return", "output"))})
    expected = torch.softmax(reference.scores[0][0].double(), dim=-1)
    frequencies = _first_token_frequencies(model, input_ids, attention_mask, **options)

    assert torch.nn.functional.cosine_similarity(frequencies, expected, dim=0) > 0.99
    assert frequencies[expected == 0].sum() == 0, "a token transformers' processors remove was drawn"


def test_trailing_warpers_are_fused_into_the_sampler_unless_scores_are_requested(monkeypatch):
    """Without ``output_scores`` the temperature/top-k/top-p warpers run inside the sampler; with it they run
    as processors (their output is the recorded score). Same seed, same draws either way."""
    import turbogen.ops

    sampler_filters = []
    draws = []
    sampler_class = turbogen.ops.Sampler

    class RecordingSampler(sampler_class):
        def __init__(self, rows, device, **kwargs):
            sampler_filters.append({name: kwargs.get(name) for name in ("temperature", "top_k", "top_p")})
            super().__init__(rows, device, **kwargs)

        def __call__(self, logits, offset=0, **kwargs):
            draws.append(offset)
            return super().__call__(logits, offset, **kwargs)

    monkeypatch.setattr(turbogen.ops, "Sampler", RecordingSampler)
    model = tiny_model("llama")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3,
                   seed=8, eos_token_id=None)
    fused = generate(model, input_ids, attention_mask=attention_mask, **options)
    assert sampler_filters == [dict(temperature=0.7, top_k=20, top_p=0.9)]
    assert draws == list(range(6))
    sampler_filters.clear()
    draws.clear()
    unfused = generate(model, input_ids, attention_mask=attention_mask, return_dict_in_generate=True,
                       output_scores=True, **options)
    assert sampler_filters == [dict(temperature=None, top_k=None, top_p=None)]
    assert draws == list(range(6))
    assert torch.equal(fused, unfused.sequences)


def test_sampling_scores_are_transformers_processed_scores():
    model = tiny_model("gpt2")
    input_ids, attention_mask = _padded_prompt()
    options = dict(do_sample=True, max_new_tokens=1, temperature=0.6, top_k=12, top_p=0.9,
                   return_dict_in_generate=True, output_scores=True, output_logits=True)
    expected = model.generate(input_ids, attention_mask=attention_mask, **options)
    actual = generate(model, input_ids, attention_mask=attention_mask, seed=3, **options)
    torch.testing.assert_close(actual.scores[0], expected.scores[0])
    torch.testing.assert_close(actual.logits[0], expected.logits[0])
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
