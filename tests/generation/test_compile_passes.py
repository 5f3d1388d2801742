"""The inductor pass of turbogen's compiled CPU paths (generation/compile_passes.py): a decode step's float32
products as inductor loops instead of BLAS calls, where and only where they apply, with the same values up to
float32 rounding; and ``compile_kwargs`` putting it in (or leaving it out of) the options."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch.fx.experimental.proxy_tensor import make_fx

from turbogen import CompileConfig
from turbogen.generation.compile_passes import DECODE_MATMUL_PASS, DECODE_ROWS
from turbogen.generation.compiled import compile_kwargs

aten = torch.ops.aten
PRODUCTS = (aten.mm.default, aten.addmm.default)


def _linear(x, w):
    return aten.mm(x, aten.permute(w, [1, 0]))


def _affine(x, w, b):
    return aten.addmm(b, x, aten.permute(w, [1, 0]))


def _rewritten(function, *inputs):
    """``function`` traced at the aten level with fake values (as in inductor's post-grad graph), the pass
    applied; returns (graph module, products left)."""
    module = make_fx(function, tracing_mode="fake")(*inputs)
    DECODE_MATMUL_PASS(module.graph)
    module.recompile()
    return module, sum(node.target in PRODUCTS for node in module.graph.nodes)


@pytest.mark.parametrize("rows", [1, 3, DECODE_ROWS])
@pytest.mark.parametrize("out_features, in_features", [(37, 19), (256, 64), (1000, 8)])
def test_products_of_a_decode_step_become_loops_with_the_same_values(rows, out_features, in_features):
    generator = torch.Generator().manual_seed(rows * 1000 + out_features)
    x = torch.randn(rows, in_features, generator=generator)
    w = torch.randn(out_features, in_features, generator=generator)
    b = torch.randn(out_features, generator=generator)
    before = counters["turbogen"]["decode_matmul"]
    linear, left = _rewritten(_linear, x, w)
    assert left == 0
    affine, left = _rewritten(_affine, x, w, b)
    assert left == 0
    assert counters["turbogen"]["decode_matmul"] == before + 2
    # float32 sums in another order: within a few ulps of the magnitude summed (|x| |w| summed over in_features).
    scale = (x.abs() @ w.abs().T).max().item()
    torch.testing.assert_close(linear(x, w), x @ w.T, rtol=0, atol=1e-6 * scale)
    bias_scale = scale + b.abs().max().item()
    torch.testing.assert_close(affine(x, w, b), torch.addmm(b, x, w.T), rtol=0, atol=1e-6 * bias_scale)


@pytest.mark.parametrize("case", ["prefill rows", "float64", "weight not transposed", "scaled addmm", "2-D bias"])
def test_other_products_are_left_to_blas(case):
    x, w, b = torch.randn(2, 8), torch.randn(5, 8), torch.randn(5)
    function, inputs = _linear, (x, w)
    if case == "prefill rows":
        inputs = (torch.randn(DECODE_ROWS + 1, 8), w)
    elif case == "float64":
        inputs = (x.double(), w.double())
    elif case == "weight not transposed":
        function, inputs = (lambda x, v: aten.mm(x, v)), (x, torch.randn(8, 5))
    elif case == "scaled addmm":
        function, inputs = (lambda x, w, b: aten.addmm(b, x, aten.permute(w, [1, 0]), beta=2.0)), (x, w, b)
    else:
        function, inputs = _affine, (x, w, torch.randn(2, 5))
    module, left = _rewritten(function, *inputs)
    assert left == 1
    torch.testing.assert_close(module(*inputs), function(*inputs))


def test_compile_kwargs_add_the_pass_for_inductor_on_a_cpu():
    from torch._inductor import list_mode_options

    pass_option = "post_grad_custom_post_pass"
    # `mode` (turbogen's default: "reduce-overhead") becomes the options it stands for, so the pass can join them.
    assert compile_kwargs(None, torch.device("cpu"))["options"] == {**list_mode_options("reduce-overhead"),
                                                                    pass_option: DECODE_MATMUL_PASS}
    kwargs = compile_kwargs(CompileConfig(mode="max-autotune-no-cudagraphs"), "cpu")
    assert "mode" not in kwargs
    assert kwargs["options"] == {**list_mode_options("max-autotune-no-cudagraphs"), pass_option: DECODE_MATMUL_PASS}
    assert compile_kwargs(CompileConfig(options={"freezing": True}), "cpu")["options"] == {
        "freezing": True, pass_option: DECODE_MATMUL_PASS}
    # The user's own value of the key wins (None turns the pass off); other backends and devices get none.
    assert compile_kwargs(CompileConfig(options={pass_option: None}), "cpu")["options"] == {pass_option: None}
    assert compile_kwargs(CompileConfig(backend="eager", mode=None), "cpu") == {
        "backend": "eager", "fullgraph": False, "dynamic": False}
    assert compile_kwargs(CompileConfig(), "cuda") == {"backend": "inductor", "fullgraph": False,
                                                       "dynamic": False, "mode": "reduce-overhead"}
