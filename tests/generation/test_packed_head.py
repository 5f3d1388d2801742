"""The LM head as a oneDNN product over a packed weight (generation/packed_head.py): the values of ``F.linear`` up
to float32 rounding, only where it applies, packed again when the weight changes, installed on the module only
while held, in the holding threads only; and the Engine, speculative decoding, greedy search
(test_certified_argmax.py) and contrastive search (test_contrastive.py) computing through it.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import turbogen
from turbogen.generate import generate
from turbogen.generation import packed_head
from turbogen.generation.packed_head import PackedHead, packed_heads

from conftest import PAGED_ATTENTION_IN_4_45, skip_on_transformers_4_45
from tiny_models import PAD_ID, tiny_model, tiny_model_environment  # noqa: F401  (a fixture)

needs_packed_product = pytest.mark.skipif(
    PackedHead.for_module(torch.nn.Linear(4, 4)) is None,
    reason="this torch has no oneDNN CPU product (torch.ops.mkldnn._linear_pointwise)")
pytestmark = needs_packed_product


class _CountedProducts:
    """Counts the packed products computed (their rows), while patched in."""

    def __init__(self, monkeypatch):
        self.rows: list[int] = []
        real = packed_head._packed_product

        def counted(hidden_rows, packed, bias):
            self.rows.append(hidden_rows.shape[0])
            return real(hidden_rows, packed, bias)

        monkeypatch.setattr(packed_head, "_packed_product", counted)


def _head(out_features: int, in_features: int, bias: bool, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=bias)


def _assert_linear_values(actual: torch.Tensor, hidden: torch.Tensor, head: torch.nn.Linear) -> None:
    """``actual`` equals ``F.linear`` of ``hidden`` up to float32 sums in another order: a few ulps of the
    magnitude summed (|hidden| |weight| over the inputs, plus |bias|)."""
    expected = F.linear(hidden, head.weight, head.bias)
    scale = (hidden.abs() @ head.weight.abs().T).max().item()
    if head.bias is not None:
        scale += head.bias.abs().max().item()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (2, 3, 64), (17, 64)])
@torch.no_grad()
def test_values_are_the_linear_products(shape, bias, monkeypatch):
    head = _head(1000, 64, bias)
    packed = PackedHead.for_module(head)
    counted = _CountedProducts(monkeypatch)
    hidden = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
    _assert_linear_values(packed(hidden), hidden, head)
    assert counted.rows == [hidden.numel() // 64]
    # Each row's logits are its own: computed alone, they agree with the batch within the same rounding bound.
    alone = torch.stack([packed(row) for row in hidden.reshape(-1, 64)]).reshape(packed(hidden).shape)
    _assert_linear_values(alone, hidden, head)


@torch.no_grad()
def test_weight_changed_in_place_or_replaced_is_packed_again():
    head = _head(300, 32, bias=True)
    packed = PackedHead.for_module(head)
    hidden = torch.randn(4, 32)
    _assert_linear_values(packed(hidden), hidden, head)
    head.weight.mul_(-2.0)
    head.bias.add_(1.0)
    _assert_linear_values(packed(hidden), hidden, head)
    head.weight = torch.nn.Parameter(torch.randn(300, 32))
    _assert_linear_values(packed(hidden), hidden, head)


@pytest.mark.parametrize("case", ["autograd", "float64 input", "empty", "traced"])
def test_calls_it_cannot_serve_run_the_modules_own_product(case, monkeypatch):
    head = _head(50, 16, bias=True)
    packed = PackedHead.for_module(head)
    counted = _CountedProducts(monkeypatch)
    hidden = torch.randn(3, 16)
    if case == "autograd":
        result = packed(hidden)
        assert result.requires_grad
        result.sum().backward()
        assert head.weight.grad is not None
    elif case == "float64 input":
        hidden = hidden.double()
        with pytest.raises(RuntimeError):  # what F.linear says of a float64 input to a float32 weight
            packed(hidden)
    elif case == "empty":
        hidden = torch.randn(3, 0, 16)
        with torch.no_grad():
            result = packed(hidden)
        assert result.shape == (3, 0, 50)
    else:
        with torch.no_grad():
            result = torch.compile(packed, backend="eager", fullgraph=True)(hidden)
        torch.testing.assert_close(result, F.linear(hidden, head.weight, head.bias), rtol=0, atol=0)
    assert counted.rows == []


class _LinearWithMore(torch.nn.Linear):
    def forward(self, hidden):
        return super().forward(hidden) * 2.0


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's, on switching oneDNN off
@pytest.mark.parametrize("case", ["subclass", "float64 weight", "bfloat16 weight", "forward replaced",
                                  "not a linear", "oneDNN disabled"])
def test_heads_it_does_not_apply_to(case):
    head = _head(10, 8, bias=False)
    if case == "subclass":
        head = _LinearWithMore(8, 10)
    elif case == "float64 weight":
        head = head.double()
    elif case == "bfloat16 weight":
        head = head.bfloat16()
    elif case == "forward replaced":  # what offloading hooks (accelerate) do
        head.forward = lambda hidden: hidden
    elif case == "not a linear":
        head = torch.nn.Embedding(10, 8)
    if case == "oneDNN disabled":
        with torch.backends.mkldnn.flags(enabled=False):
            assert PackedHead.for_module(head) is None
    else:
        assert PackedHead.for_module(head) is None


@torch.no_grad()
def test_autocast_gets_the_modules_own_product(monkeypatch):
    head = _head(300, 64, bias=True)
    packed = PackedHead.for_module(head)
    counted = _CountedProducts(monkeypatch)
    hidden = torch.randn(3, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = head(hidden)
        with packed.installed():
            actual = head(hidden)
    assert actual.dtype == torch.bfloat16 and torch.equal(actual, expected) and not counted.rows


@torch.no_grad()
def test_recorded_calls_are_this_threads_as_computed(monkeypatch):
    head = _head(200, 32, bias=True)
    packed = PackedHead.for_module(head)
    counted = _CountedProducts(monkeypatch)
    hidden = torch.randn(2, 32)
    other_thread = threading.Thread(target=lambda: head(torch.randn(5, 32)))
    with packed.recorded_calls() as calls:
        own = head(hidden)
        other_thread.start()
        other_thread.join()
        with packed.installed():
            through_packed = head(hidden)
    assert len(calls) == 2 and all(call[0] is hidden for call in calls)  # not the other thread's 5 rows
    assert calls[0][1] is own and torch.equal(own, F.linear(hidden, head.weight, head.bias))
    assert calls[1][1] is through_packed and counted.rows == [2]
    assert "forward" not in vars(head)


@torch.no_grad()
def test_installed_only_while_held_nested_and_in_the_holding_threads(monkeypatch):
    head = _head(200, 32, bias=False)
    packed = PackedHead.for_module(head)
    counted = _CountedProducts(monkeypatch)
    hidden = torch.randn(2, 32)
    own = head(hidden)
    with packed.installed():
        assert head(hidden).shape == own.shape and counted.rows == [2]
        with packed.installed():
            head(hidden)
        head(hidden)  # the inner exit left it installed
        assert counted.rows == [2, 2, 2]
    assert "forward" not in vars(head)
    assert torch.equal(head(hidden), own) and counted.rows == [2, 2, 2]

    with pytest.raises(KeyError):
        with packed.installed():
            raise KeyError("raised inside")
    assert "forward" not in vars(head)

    entered, release = threading.Barrier(3), threading.Event()

    def hold():
        with packed.installed():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    entered.wait()
    # Held by the two other threads only: this thread's call runs the module's own product.
    assert torch.equal(head(hidden), own) and len(counted.rows) == 3
    with packed.installed():
        head(hidden)
    assert counted.rows[-1] == 2 and len(counted.rows) == 4
    release.set()
    for thread in threads:
        thread.join()
    assert "forward" not in vars(head)


@pytest.mark.usefixtures("tiny_model_environment")
@torch.no_grad()
def test_packed_heads_of_a_model_only_within(monkeypatch):
    model = tiny_model("llama")
    input_ids = torch.tensor([[5, 6, 7, 8]])
    own = model(input_ids).logits
    counted = _CountedProducts(monkeypatch)
    with packed_heads(model, None):
        within = model(input_ids).logits
    assert counted.rows == [4]
    torch.testing.assert_close(within, own, rtol=1e-5, atol=1e-5 * own.abs().max().item())
    assert torch.equal(model(input_ids).logits, own)


PROMPTS = [[5, 6, 7, 8, 5, 6, 7], [9, 10, 11]]
GREEDY = {"max_new_tokens": 8, "pad_token_id": PAD_ID, "do_sample": False}


def _plain_tokens(model) -> list:
    return [generate(model, torch.tensor([prompt]), **GREEDY)[0, len(prompt):].tolist() for prompt in PROMPTS]


@pytest.mark.usefixtures("tiny_model_environment")
@skip_on_transformers_4_45(PAGED_ATTENTION_IN_4_45)
def test_engine_computes_through_it_with_plain_decodings_tokens(monkeypatch):
    model = tiny_model("llama")
    plain = _plain_tokens(model)
    counted = _CountedProducts(monkeypatch)
    results = turbogen.generate_batch(model, PROMPTS, progress_bar=False, **GREEDY)
    assert [result.generated_tokens for result in results] == plain
    assert counted.rows, "the Engine's forwards computed the head through the packed weight"
    assert "forward" not in vars(model.get_output_embeddings())


@pytest.mark.usefixtures("tiny_model_environment")
@pytest.mark.parametrize("drafts", [{"prompt_lookup_num_tokens": 3}, {"assistant_early_exit": 1}])
def test_speculative_decoding_computes_through_it_with_plain_decodings_tokens(drafts, monkeypatch):
    model = tiny_model("llama")
    plain = _plain_tokens(model)
    counted = _CountedProducts(monkeypatch)
    speculative = [generate(model, torch.tensor([prompt]), **drafts, **GREEDY)[0, len(prompt):].tolist()
                   for prompt in PROMPTS]
    assert speculative == plain
    assert counted.rows
    assert "forward" not in vars(model.get_output_embeddings())

@pytest.mark.usefixtures("tiny_model_environment")
@pytest.mark.filterwarnings("ignore:GenerationConfig has flags")  # top_k without sampling: contrastive's own
@pytest.mark.parametrize("strategy", ["greedy", "beam", "contrastive", "diverse", "constrained"])
def test_strategies_compute_through_it_where_documented(strategy, monkeypatch):
    """The native v4.45 strategies (contrastive, diverse and constrained beam search) use the packed head, and
    greedy search with its argmax certified (test_certified_argmax.py); beam search keeps the model's own, whose
    scores equal transformers' bit for bit."""
    model = tiny_model("llama")
    arguments = {
        "greedy": {},
        "beam": {"num_beams": 4},
        "contrastive": {"penalty_alpha": 0.6, "top_k": 4},
        "diverse": {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5},
        "constrained": {"num_beams": 4, "force_words_ids": [[40, 41]]},
    }[strategy]
    counted = _CountedProducts(monkeypatch)
    generate(model, torch.tensor([[5, 6, 7, 8]]), max_new_tokens=4, pad_token_id=PAD_ID, do_sample=False,
             **arguments)
    assert bool(counted.rows) == (strategy != "beam")
    assert "forward" not in vars(model.get_output_embeddings())


@pytest.mark.usefixtures("tiny_model_environment")
@torch.no_grad()
def test_packed_heads_of_the_same_model_overlap(monkeypatch):
    """Two holders of the same model's head whose calls overlap without nesting (Engine steps in two threads, a
    draft sharing the target's head): the head stays installed until the last one leaves, whichever entered
    first."""
    model = tiny_model("llama")
    head = model.get_output_embeddings()
    counted = _CountedProducts(monkeypatch)
    input_ids = torch.tensor([[5, 6, 7]])
    first, second = packed_heads(model), packed_heads(model)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    model(input_ids)  # the second holder is still inside its call
    assert counted.rows == [3]
    second.__exit__(None, None, None)
    assert "forward" not in vars(head)
    model(input_ids)
    assert counted.rows == [3]
