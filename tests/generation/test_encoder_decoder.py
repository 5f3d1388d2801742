"""turbogen.generate on encoder-decoder models (tiny random-weight T5 and BART) against transformers' own
``model.generate``: greedy search and beam search give identical sequences, beam indices and bit-equal scores
(the same model calls: one encoder run, then the decoder through transformers' own input preparation over an
``EncoderDecoderCache``); ``decoder_start_token_id`` (int or per row), ``decoder_input_ids``,
``encoder_outputs`` given by the caller, the encoder-side processors, the output classes with encoder and
cross attentions; what is not implemented yet still raises ``UnsupportedByTurbogen``. Encoders reading other
inputs (``input_features``, ``pixel_values``, ``inputs_embeds``): test_encoder_inputs.py."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers

from conftest import ENCODER_DECODER_IN_4_45, TRANSFORMERS_5, skip_on_transformers_4_45
from tiny_models import (BOS_ID, EOS_ID, HIDDEN_SIZE, NUM_HEADS, NUM_LAYERS, PAD_ID, encode_batch,
                         tiny_model_environment, vocab_size)  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_bit_exact, assert_draws_follow, assert_same_generation, generate_both
from turbogen import UnsupportedByTurbogen
from turbogen.generate import generate

pytestmark = [pytest.mark.usefixtures("tiny_model_environment"), skip_on_transformers_4_45(ENCODER_DECODER_IN_4_45)]

KINDS = ("t5", "bart")
PROMPTS = {
    "single": ["the quick brown fox"],
    "padded": ["the quick brown fox jumps", "stop", "hello world again"],
}
NEW_TOKENS = 7


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
    return model.eval()


@functools.lru_cache(maxsize=None)
def _model(kind: str):
    """A tiny T5 (decoder start = pad, as T5's) or BART (decoder start = EOS, as BART's), random weights with a
    large init range so that greedy and beam outputs vary from step to step."""
    if kind == "t5":
        config = transformers.T5Config(
            vocab_size=vocab_size(), d_model=HIDDEN_SIZE, d_kv=HIDDEN_SIZE // NUM_HEADS, d_ff=2 * HIDDEN_SIZE,
            num_layers=NUM_LAYERS, num_decoder_layers=NUM_LAYERS, num_heads=NUM_HEADS, dropout_rate=0.0,
            initializer_factor=8.0, pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
        return _seeded(lambda: transformers.T5ForConditionalGeneration(config))
    config = transformers.BartConfig(
        vocab_size=vocab_size(), d_model=HIDDEN_SIZE, encoder_layers=NUM_LAYERS, decoder_layers=NUM_LAYERS,
        encoder_attention_heads=NUM_HEADS, decoder_attention_heads=NUM_HEADS, encoder_ffn_dim=2 * HIDDEN_SIZE,
        decoder_ffn_dim=2 * HIDDEN_SIZE, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, init_std=0.3, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=EOS_ID, forced_eos_token_id=None)
    return _seeded(lambda: transformers.BartForConditionalGeneration(config))


def _prompt(batch: str):
    # Encoder inputs may be padded on either side; the attention mask says where.
    return encode_batch(PROMPTS[batch])


@pytest.mark.parametrize("batch", PROMPTS)
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_transformers(kind, batch):
    model = _model(kind)
    ids, mask = _prompt(batch)
    expected, actual = generate_both(model, ids, mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                             return_dict_in_generate=True, output_scores=True, output_logits=True)
    assert_same_generation(expected, actual)
    assert actual.sequences.shape[1] > 2, "the test must generate more than a token"
    assert actual.sequences[:, 1:].unique().numel() > 1, "outputs must vary to be discriminating"
    assert isinstance(actual, transformers.generation.utils.GenerateEncoderDecoderOutput)
    # The plain tensor form too.
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=NEW_TOKENS), expected.sequences)


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_matches_transformers(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    expected, actual = generate_both(model, ids, mask, max_new_tokens=NEW_TOKENS, num_beams=3, num_return_sequences=2,
                             length_penalty=1.3, return_dict_in_generate=True, output_scores=True)
    assert_same_generation(expected, actual, beams=True)
    assert isinstance(actual, transformers.generation.utils.GenerateBeamEncoderDecoderOutput)


@pytest.mark.parametrize("kind", KINDS)
def test_attentions_and_hidden_states_match_transformers(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    for beams in (1, 2):
        expected, actual = generate_both(model, ids, mask, max_new_tokens=3, num_beams=beams, return_dict_in_generate=True,
                                 output_attentions=True, output_hidden_states=True)
        assert_same_generation(expected, actual, beams=beams > 1)
        for name in ("encoder_attentions", "encoder_hidden_states"):
            for w, g in zip(getattr(expected, name), getattr(actual, name), strict=True):
                assert_bit_exact(g, w)
        for name in ("decoder_attentions", "cross_attentions", "decoder_hidden_states"):
            want, got = getattr(expected, name), getattr(actual, name)
            assert len(got) == len(want), name
            for step_want, step_got in zip(want, got):
                for w, g in zip(step_want, step_got, strict=True):
                    assert_bit_exact(g, w)


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_start_list_and_decoder_input_ids_match_transformers(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    starts = [5, 9, 17]
    expected, actual = generate_both(model, ids, mask, max_new_tokens=4, decoder_start_token_id=starts,
                             return_dict_in_generate=True, output_scores=True)
    assert_same_generation(expected, actual)
    assert actual.sequences[:, 0].tolist() == starts
    start = model.generation_config.decoder_start_token_id
    # Without the start token (it is put in front, the decoder mask grows a 1) and with it.
    for decoder_ids in (torch.tensor([[20, 21]] * 3), torch.tensor([[start, 20, 21]] * 3)):
        decoder_mask = torch.ones_like(decoder_ids)
        expected, actual = generate_both(model, ids, mask, max_new_tokens=4, decoder_input_ids=decoder_ids,
                                 decoder_attention_mask=decoder_mask, return_dict_in_generate=True,
                                 output_scores=True)
        assert_same_generation(expected, actual)
        assert actual.sequences[0, :3].tolist() == [start, 20, 21]


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_outputs_passed_in_match_transformers(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True)
    kept = encoder_outputs.last_hidden_state.clone()
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=2)
    actual = generate(model, attention_mask=mask, encoder_outputs=encoder_outputs, max_new_tokens=5, num_beams=2)
    assert torch.equal(actual, expected)
    assert torch.equal(encoder_outputs.last_hidden_state, kept), "the caller's encoder outputs are not modified"


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_side_processors_match_transformers(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    plain = generate(model, ids, attention_mask=mask, max_new_tokens=NEW_TOKENS)
    # A strong encoder repetition "penalty" above 1 favours the encoder's tokens, so that the output holds some
    # and the n-gram ban on them (added second) must change it: both processors are then seen to act.
    boosted = {"encoder_repetition_penalty": 50.0}
    for option in (boosted, {**boosted, "encoder_no_repeat_ngram_size": 1},
                   {"encoder_no_repeat_ngram_size": 2}, {"encoder_repetition_penalty": 0.5}):
        expected, actual = generate_both(model, ids, mask, max_new_tokens=NEW_TOKENS, **option)
        assert torch.equal(actual, expected), option
        if option == boosted:
            assert not torch.equal(plain, actual), "the repetition penalty must change this output"
            favoured = actual
        elif "encoder_no_repeat_ngram_size" in option and "encoder_repetition_penalty" in option:
            assert not torch.equal(favoured, actual), "the n-gram ban must change this output"


@pytest.mark.skipif(TRANSFORMERS_5, reason=f"transformers {transformers.__version__} differs from 4.57: it no "
                    "longer infers the encoder's attention mask from padding")
def test_inferred_encoder_attention_mask_matches_transformers():
    model = _model("t5")
    ids, _ = _prompt("padded")
    assert torch.equal(generate(model, ids, max_new_tokens=5), model.generate(ids, max_new_tokens=5))


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_runs_and_is_reproducible(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    for beams in (1, 2):
        first = generate(model, ids, attention_mask=mask, do_sample=True, num_beams=beams, max_new_tokens=5,
                         num_return_sequences=2, seed=3)
        again = generate(model, ids, attention_mask=mask, do_sample=True, num_beams=beams, max_new_tokens=5,
                         num_return_sequences=2, seed=3)
        assert torch.equal(first, again)
        assert first.shape[0] == 6
        start = model.generation_config.decoder_start_token_id
        assert (first[:, 0] == start).all()


@pytest.mark.parametrize("kind", KINDS)
def test_static_cache_and_no_cache_match_transformers(kind):
    model = _model(kind)
    ids, mask = _prompt("padded")
    for arguments in ({"cache_implementation": "static"}, {"use_cache": False}):
        for beams in (1, 3):
            expected, actual = generate_both(model, ids, mask, max_new_tokens=5, num_beams=beams,
                                     return_dict_in_generate=True, output_scores=True, **arguments)
            assert_same_generation(expected, actual, beams=beams > 1)
    assert type(actual.past_key_values) is type(expected.past_key_values)  # noqa: E721  (None without a cache)


def test_unimplemented_parts_still_raise():
    model = _model("t5")
    ids, mask = _prompt("single")
    for arguments in ({"cache_implementation": "offloaded"}, {"prefill_chunk_size": 2}):
        with pytest.raises(UnsupportedByTurbogen):
            generate(model, ids, attention_mask=mask, max_new_tokens=3, **arguments)


def test_invalid_decoder_start_list_raises():
    model = _model("bart")
    ids, mask = _prompt("padded")
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        generate(model, ids, attention_mask=mask, max_new_tokens=3, decoder_start_token_id=[1, 2])


DRAWS = 6000
SAMPLING = dict(temperature=0.8, top_k=40)


def _first_token_draws(model, ids, mask, **options):
    """The first sampled decoder token of ``DRAWS`` sequences of one prompt (one call; the encoder runs once)."""
    out = generate(model, ids, attention_mask=mask, do_sample=True, max_new_tokens=1, num_return_sequences=DRAWS,
                   seed=7, **options)
    return out[:, -1]


def test_sampled_distribution_matches_transformers_processors():
    """Sampling draws the first token from the softmax of transformers' processed scores (temperature, top-k), and
    draws at another temperature are rejected by the same check (it can fail). On the BART-style model: the T5's
    next-token distributions are too peaked to tell temperatures apart."""
    model = _model("bart")
    ids, mask = _prompt("single")
    reference = model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=1,
                               return_dict_in_generate=True, output_scores=True, **SAMPLING)
    expected = torch.softmax(reference.scores[0][0].double(), dim=-1)
    assert int((expected > 0.01).sum()) > 3, "the distribution must spread over several tokens"
    assert_draws_follow(_first_token_draws(model, ids, mask, **SAMPLING), expected)
    with pytest.raises(AssertionError, match="do not follow"):
        assert_draws_follow(_first_token_draws(model, ids, mask, **{**SAMPLING, "temperature": 1.2}), expected)


# --- the fast paths: each must be taken, and the tests above show their outputs equal transformers' ------------


def _direct_runner_class():
    """The runner building the decoder steps' inputs of the installed transformers' generic preparation."""
    from turbogen.generation import runner as runner_module

    return runner_module.StockEncoderDecoderRunner


def test_stock_preparation_is_built_directly(monkeypatch):
    built = []
    direct = _direct_runner_class()
    original = direct.__init__

    def spy(self, *args, **kwargs):
        built.append(type(self))
        original(self, *args, **kwargs)

    monkeypatch.setattr(direct, "__init__", spy)
    model = _model("bart")
    ids, mask = _prompt("padded")
    generate(model, ids, attention_mask=mask, max_new_tokens=3)
    assert built == [direct]
    # A decoder mask makes positions and masks per step, and a static cache makes 5.x's preparation build a 4D
    # mask per step: the general runner.
    generate(model, ids, attention_mask=mask, max_new_tokens=3, decoder_input_ids=torch.tensor([[5]] * 3),
             decoder_attention_mask=torch.ones(3, 1, dtype=torch.long))
    generate(model, ids, attention_mask=mask, max_new_tokens=3, cache_implementation="static")
    assert built == [direct] * (1 if TRANSFORMERS_5 else 2)


def model_calls(model, call) -> list:
    """The keyword arguments of every call of ``model`` itself (not of its encoder) during ``call()``."""
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, dict(kwargs))),
                                             with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return calls


def assert_same_inputs(got: dict, want: dict) -> None:
    """Model inputs equal: the same keywords; tensors (and the encoder outputs' tensors) equal; a cache of the same
    class; anything else equal."""
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for key, expected in want.items():
        actual = got[key]
        if isinstance(expected, torch.Tensor):
            assert isinstance(actual, torch.Tensor) and torch.equal(actual, expected), key
            assert actual.dtype == expected.dtype, key
        elif key == "past_key_values":
            assert type(actual) is type(expected)
        elif hasattr(expected, "keys"):  # the encoder outputs
            assert list(actual.keys()) == list(expected.keys())
            for name, value in expected.items():
                same = torch.equal(actual[name], value) if isinstance(value, torch.Tensor) else actual[name] == value
                assert same, (key, name)
        else:
            assert actual == expected, key


@pytest.mark.parametrize("beams", (1, 3))
@pytest.mark.parametrize("kind", KINDS)
def test_direct_decoder_steps_pass_the_preparations_inputs(kind, beams):
    """Every model call of turbogen's direct decoder step receives what transformers' own preparation passes it
    (the same keywords, equal tensors), and the outputs are equal (bit-exact scores)."""
    model = _model(kind)
    ids, mask = _prompt("padded")
    options = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, num_beams=beams, return_dict_in_generate=True,
                   output_scores=True)
    outputs = {}
    want = model_calls(model, lambda: outputs.setdefault("expected", model.generate(ids, **options)))
    got = model_calls(model, lambda: outputs.setdefault("actual", generate(model, ids, **options)))
    assert_same_generation(outputs["expected"], outputs["actual"], beams=beams > 1)
    assert len(got) == len(want) == NEW_TOKENS
    for (got_args, got_kwargs), (want_args, want_kwargs) in zip(got, want):
        assert got_args == want_args == ()
        assert_same_inputs(got_kwargs, want_kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_beam_reorder_skips_the_cross_attention_cache(kind, monkeypatch):
    """Beam search's reorders leave the cross-attention cache alone (its rows of one input are bitwise equal);
    test_beam_search_matches_transformers shows the output unchanged."""
    from turbogen.generation import runner as runner_module

    skipped = []
    original = runner_module._reorder_self_attention_only

    def spy(*args):
        skipped.append(original(*args))
        return skipped[-1]

    monkeypatch.setattr(runner_module, "_reorder_self_attention_only", spy)
    model = _model(kind)
    ids, mask = _prompt("padded")
    expected, actual = generate_both(model, ids, mask, max_new_tokens=5, num_beams=3, return_dict_in_generate=True,
                                     output_scores=True)
    assert_same_generation(expected, actual, beams=True)
    assert skipped and all(skipped)


def test_cross_attention_rows_are_compared_bitwise():
    from turbogen.generation.runner import _CrossAttentionRows

    keys = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 3.0], [-0.0, 3.0]]).reshape(4, 1, 2)
    rows = _CrossAttentionRows()
    assert rows.unchanged_by([keys], torch.tensor([1, 0, 2, 3]))  # within the first pair: the same bits
    assert not rows.unchanged_by([keys], torch.tensor([0, 1, 3, 2]))  # 0.0 and -0.0 differ in their bits
    assert not rows.unchanged_by([keys], torch.tensor([2, 1, 2, 3]))  # across inputs


def test_cross_attention_rows_follow_the_cache_tensors():
    """The checked tensors (and row groups) are remembered only while the cache's layers hold the same tensors."""
    from transformers import DynamicCache

    from turbogen.generation.runner import _CrossAttentionRows

    same = torch.ones(2, 1, 3, 4)
    cache = DynamicCache()
    cache.update(same.clone(), same.clone(), 0)
    rows = _CrossAttentionRows()
    tensors = rows.tensors(cache)
    assert len(tensors) == 2 and rows.tensors(cache) is tensors
    assert rows.unchanged_by(tensors, torch.tensor([1, 0]))  # both rows hold the same bits
    cache.layers[0].keys = torch.arange(8.0).reshape(2, 1, 1, 4).expand(2, 1, 3, 4).contiguous()
    tensors = rows.tensors(cache)
    assert tensors[0] is cache.layers[0].keys
    assert not rows.unchanged_by(tensors, torch.tensor([1, 0]))  # the rows differ now


@pytest.mark.skipif(TRANSFORMERS_5, reason=f"transformers {transformers.__version__} has no `return_legacy_cache`")
def test_return_legacy_cache_matches_transformers():
    model = _model("t5")
    ids, mask = _prompt("padded")
    expected, actual = generate_both(model, ids, mask, max_new_tokens=3, return_dict_in_generate=True,
                                     return_legacy_cache=True)
    assert isinstance(actual.past_key_values, tuple) and len(actual.past_key_values) == len(expected.past_key_values)
    for want_layer, got_layer in zip(expected.past_key_values, actual.past_key_values, strict=True):
        assert len(got_layer) == len(want_layer) == 4  # self-attention keys, values; cross-attention keys, values
        for want, got in zip(want_layer, got_layer):
            assert_bit_exact(got, want)
