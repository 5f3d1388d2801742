"""Greedy search through the packed LM head (generation/certified_argmax.py): the error bound holds for BLAS's
product and the packed one; every token is BLAS's argmax, whether certified or computed again (near ties, NaN);
transformers' tokens on decoder-only and encoder-decoder models; and it stays out of the way where it does not
apply (scores recorded, processors, sampling, models whose logits are not the head's output).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import transformers

from turbogen.generate import generate
from turbogen.generation.certified_argmax import CertifiedGreedyHead, logit_error_bound
from turbogen.generation.packed_head import PackedHead

from conftest import ENCODER_DECODER_IN_4_45, skip_on_transformers_4_45
from test_packed_head import _CountedProducts, needs_packed_product
from tiny_models import EOS_ID, HIDDEN_SIZE, NUM_HEADS, NUM_LAYERS, PAD_ID, tiny_model, vocab_size
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture)

pytestmark = needs_packed_product


class _Heads:
    """The certified heads made while patched in (to read their counters)."""

    def __init__(self, monkeypatch):
        self.made: list[CertifiedGreedyHead] = []
        real = CertifiedGreedyHead.for_run.__func__

        def recorded(cls, *arguments):
            head = real(cls, *arguments)
            if head is not None:
                self.made.append(head)
            return head

        monkeypatch.setattr(CertifiedGreedyHead, "for_run", classmethod(recorded))


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
@torch.no_grad()
def test_the_bound_holds_for_blas_and_packed_products(rows, scale):
    torch.manual_seed(rows)
    head = torch.nn.Linear(96, 500)
    head.weight.mul_(scale)
    head.bias.normal_(0, scale)
    hidden = torch.randn(rows, 96) * torch.logspace(-2, 2, rows)[:, None]
    exact = F.linear(hidden.double(), head.weight.double(), head.bias.double())
    row_norm = torch.linalg.vector_norm(head.weight.double(), dim=1).max().item()
    bound = logit_error_bound(hidden, row_norm, head.bias.abs().max().item())
    for computed in (F.linear(hidden, head.weight, head.bias), PackedHead.for_module(head)(hidden)):
        error = (computed.double() - exact).abs().max(dim=1).values
        assert bool((error <= bound).all())
        assert bool((bound < 1e-3 * exact.abs().max(dim=1).values).all()), "the bound must be tight enough to use"
    assert not torch.isfinite(logit_error_bound(torch.tensor([[float("inf"), 0.0]]), 1.0, 0.0)).any()


class _HeadOnlyModel(torch.nn.Module):
    """A stand-in whose "forward" is its head over given hidden states: logits of the last position."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.lm_head = head

    def get_output_embeddings(self):
        return self.lm_head


class _HiddenRunner:
    """A runner over :class:`_HeadOnlyModel` whose decoding steps feed the next queued hidden states
    ``[rows, 1, hidden]``; ``copy_after_first``: steps after the first return a copy of the head's output."""

    def __init__(self, head: torch.nn.Linear, hidden_states: list, copy_after_first: bool = False):
        self.model = _HeadOnlyModel(head)
        self.hidden_states = list(hidden_states)
        self.copy_after_first = copy_after_first
        self.steps = 0

    def decode(self, tokens):
        logits = self.model.lm_head(self.hidden_states[self.steps])[:, -1, :]
        self.steps += 1
        return logits.clone() if self.copy_after_first and self.steps > 1 else logits


class _NoRecord:
    wants_scores = wants_logits = False


_NO_HISTORY = torch.zeros(0, 0, dtype=torch.long)  # read by logits stages only; these heads have none


def _certified(runner) -> CertifiedGreedyHead:
    """The certified head of ``runner`` after its first (checking) decoding step."""
    head = CertifiedGreedyHead.for_run(runner, None, False, _NoRecord())
    first = runner.hidden_states[0]
    expected = torch.argmax(F.linear(first, head.head.module.weight, head.head.module.bias)[:, -1, :], dim=-1)
    assert torch.equal(head.decode(torch.zeros(first.shape[0], dtype=torch.long), _NO_HISTORY), expected)
    assert head.active
    return head


@torch.no_grad()
def test_near_ties_and_nan_rows_take_blas_argmax():
    """Rows whose two best logits are closer than the bound, or NaN, are computed again by BLAS; the others are
    certified; every token is the argmax of BLAS's product of the same input."""
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 300, bias=False)
    # Rows 7 and 8 of the weight differ in the last bits: whichever leads, its lead is far under the bound.
    head.weight[8] = head.weight[7] * (1 + 2.0 ** -22)
    hidden = torch.randn(6, 1, 64)
    hidden[1, 0] = head.weight[7] * 50  # row 1: tokens 7 and 8 nearly tie at the top
    hidden[4, 0, 3] = float("nan")  # row 4: NaN logits (argmax picks a NaN, as transformers' does)
    runner = _HiddenRunner(head, [hidden, hidden])
    certified = _certified(runner)
    tokens = certified.decode(torch.zeros(6, dtype=torch.long), _NO_HISTORY)
    expected = torch.argmax(F.linear(hidden, head.weight)[:, -1, :], dim=-1)
    assert torch.equal(tokens, expected)
    assert int(tokens[1]) in (7, 8)
    assert certified.recomputed_steps == 1


@torch.no_grad()
def test_every_row_certified_needs_no_blas_product(monkeypatch):
    torch.manual_seed(1)
    head = torch.nn.Linear(64, 300)
    hidden = torch.randn(4, 1, 64)
    runner = _HiddenRunner(head, [hidden, hidden])
    certified = _certified(runner)
    counted = _CountedProducts(monkeypatch)
    tokens = certified.decode(torch.zeros(4, dtype=torch.long), _NO_HISTORY)
    assert torch.equal(tokens, torch.argmax(F.linear(hidden, head.weight, head.bias)[:, -1, :], dim=-1))
    assert counted.rows == [4] and certified.recomputed_steps == 0


@torch.no_grad()
def test_logits_that_stop_being_the_heads_output_raise():
    head = torch.nn.Linear(16, 40)
    hidden = torch.randn(2, 1, 16)
    runner = _HiddenRunner(head, [hidden, hidden], copy_after_first=True)
    certified = _certified(runner)
    with pytest.raises(RuntimeError, match="not its LM head's output"):
        certified.decode(torch.zeros(2, dtype=torch.long), _NO_HISTORY)


def _transformers_greedy(model, input_ids, attention_mask, **kwargs):
    return model.generate(input_ids, attention_mask=attention_mask, do_sample=False, **kwargs)


@pytest.mark.usefixtures("tiny_model_environment")
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@torch.no_grad()
def test_decoder_only_tokens_are_transformers(kind, monkeypatch):
    model = tiny_model(kind)
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [PAD_ID, PAD_ID, 11, 12, 13, 14]])
    attention_mask = (input_ids != PAD_ID).long()
    settings = {"max_new_tokens": 12, "pad_token_id": PAD_ID, "min_length": 0}
    expected = _transformers_greedy(model, input_ids, attention_mask, **settings)
    heads, counted = _Heads(monkeypatch), _CountedProducts(monkeypatch)
    actual = generate(model, input_ids, attention_mask=attention_mask, do_sample=False, **settings)
    assert torch.equal(actual, expected)
    assert len(heads.made) == 1 and heads.made[0].active
    # Every decoding step after the first (the prefill and the first step are BLAS's).
    assert len(counted.rows) == actual.shape[1] - input_ids.shape[1] - 2
    assert "forward" not in vars(model.get_output_embeddings())


@functools.lru_cache(maxsize=None)
def _t5():
    config = transformers.T5Config(
        vocab_size=vocab_size(), d_model=HIDDEN_SIZE, d_kv=HIDDEN_SIZE // NUM_HEADS, d_ff=2 * HIDDEN_SIZE,
        num_layers=NUM_LAYERS, num_decoder_layers=NUM_LAYERS, num_heads=NUM_HEADS, dropout_rate=0.0,
        initializer_factor=8.0, pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.T5ForConditionalGeneration(config).eval()


@pytest.mark.usefixtures("tiny_model_environment")
@skip_on_transformers_4_45(ENCODER_DECODER_IN_4_45)
@torch.no_grad()
def test_encoder_decoder_tokens_are_transformers(monkeypatch):
    model = _t5()
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, PAD_ID, PAD_ID, PAD_ID]])
    attention_mask = (input_ids != PAD_ID).long()
    expected = _transformers_greedy(model, input_ids, attention_mask, max_new_tokens=10)
    heads, counted = _Heads(monkeypatch), _CountedProducts(monkeypatch)
    actual = generate(model, input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=10)
    assert torch.equal(actual, expected)
    assert actual[:, 1:].unique().numel() > 1, "outputs must vary to be discriminating"
    assert heads.made and heads.made[0].active and counted.rows


@pytest.mark.usefixtures("tiny_model_environment")
# Each masks tokens the unmasked greedy output of these prompts has (row 1 ends with EOS at its fifth token).
@pytest.mark.parametrize("masking", [
    {"min_new_tokens": 10},
    {"bad_words_ids": [[22], [187, 189]], "suppress_tokens": [60], "begin_suppress_tokens": [49]},
    {"no_repeat_ngram_size": 2},
], ids=["min_new_tokens", "bad_words_suppress", "no_repeat_ngram"])
@torch.no_grad()
def test_processors_that_only_mask_tokens_keep_it(masking, monkeypatch):
    """Processors that set scores to -inf on tokens chosen from the ids alone mask the same tokens in both
    products: the certificate holds over the scores left, and the tokens are transformers'."""
    model = tiny_model("llama")
    input_ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8], [PAD_ID, PAD_ID, 9, 10, 11, 9, 10, 11]])
    attention_mask = (input_ids != PAD_ID).long()
    settings = {"max_new_tokens": 12, "pad_token_id": PAD_ID, **masking}
    expected = _transformers_greedy(model, input_ids, attention_mask, **settings)
    heads, counted = _Heads(monkeypatch), _CountedProducts(monkeypatch)
    actual = generate(model, input_ids, attention_mask=attention_mask, do_sample=False, **settings)
    assert torch.equal(actual, expected)
    assert len(heads.made) == 1 and heads.made[0].active and counted.rows
    unmasked = generate(model, input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=12,
                        pad_token_id=PAD_ID)
    assert actual.shape != unmasked.shape or not torch.equal(actual, unmasked), "the masks must change the output"


@pytest.mark.usefixtures("tiny_model_environment")
@pytest.mark.parametrize("case", ["logits halved in place", "a hook on the head", "autocast"])
@torch.no_grad()
def test_stands_aside_for_changed_logits_hooks_and_autocast(case, monkeypatch):
    """A model whose logits are changed in place after the head (here by a hook on the model: the first step's
    check compares them with the head's product), a hook on the head, and autocast (the model's product runs in
    bfloat16): BLAS's head throughout, transformers' tokens."""
    model = tiny_model("llama", fresh=True)
    if case == "logits halved in place":
        def halve_logits(module, args, output):
            output.logits.mul_(0.5)

        model.register_forward_hook(halve_logits)
    elif case == "a hook on the head":
        model.get_output_embeddings().register_forward_hook(lambda module, args, output: None)
    input_ids = torch.tensor([[5, 6, 7, 8]])
    settings = {"max_new_tokens": 6, "pad_token_id": PAD_ID, "min_length": 0}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        expected = _transformers_greedy(model, input_ids, torch.ones_like(input_ids), **settings)
        heads, counted = _Heads(monkeypatch), _CountedProducts(monkeypatch)
        actual = generate(model, input_ids, do_sample=False, **settings)
    assert torch.equal(actual, expected)
    assert not counted.rows
    assert not heads.made if case == "a hook on the head" else (len(heads.made) == 1 and not heads.made[0].active)


@pytest.mark.usefixtures("tiny_model_environment")
@pytest.mark.parametrize("case", ["scores", "logits", "processor", "sampling", "softcapped logits"])
@torch.no_grad()
def test_not_used_where_logits_are_observed_or_transformed(case, monkeypatch):
    model = tiny_model("gemma2" if case == "softcapped logits" else "llama")
    arguments = {
        "scores": {"return_dict_in_generate": True, "output_scores": True},
        "logits": {"return_dict_in_generate": True, "output_logits": True},
        "processor": {"repetition_penalty": 1.3},
        "sampling": {"do_sample": True, "top_k": 0, "seed": 3},
        "softcapped logits": {},
    }[case]
    input_ids = torch.tensor([[5, 6, 7, 8]])
    settings = {"max_new_tokens": 6, "pad_token_id": PAD_ID, "min_length": 0}
    heads, counted = _Heads(monkeypatch), _CountedProducts(monkeypatch)
    generate(model, input_ids, **{"do_sample": False, **settings, **arguments})
    assert not counted.rows
    if case == "softcapped logits":  # the prefill showed the logits are not the head's output
        assert len(heads.made) == 1 and not heads.made[0].active
        expected = _transformers_greedy(model, input_ids, torch.ones_like(input_ids), **settings)
        assert torch.equal(generate(model, input_ids, do_sample=False, **settings), expected)
    else:
        assert not heads.made
