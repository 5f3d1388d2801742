"""Inductor graph passes of turbogen's compiled paths (``generate``'s compiled step and model call).

:class:`DecodeMatmulPass`: inductor keeps every ``nn.Linear`` of a model as an external ``aten.mm`` (BLAS). For
the few rows of a decode step, BLAS reads an ``[out, in]`` weight at a fraction of the memory bandwidth on CPUs
(a 32000 x 256 LM head: 3.8 ms at one row, 7.4 ms at eight, where 33 MB stream in about 1.4 ms), and each of
the layers' small calls costs tens of microseconds more inside a compiled step than alone. The pass writes
such a product as the elementwise product and sum it is, ``out[m, n] = sum_k x[m, k] * w[n, k]``, laid out
``[out, rows]``, so that inductor generates vectorised loops that read each weight row once for all rows,
split the outputs over its own threads and fuse with their neighbours (the head: 1.4 ms at one row, 2.7 ms at
eight). Measured on the whole compiled step of the tiny Llama (vocabulary 32000, hidden 256, 4 layers, 2
threads): 5.6 -> 2.6 ms per token at batch 1, 14.0 -> 8.3 ms at batch 8 (bench/RESULTS.md, issue 12). The
results differ from BLAS's by float32 rounding, as inductor's own fusions do.

The pass runs on inductor's post-grad graph (``options["post_grad_custom_post_pass"]``, which
:func:`turbogen.generation.compiled.compile_kwargs` sets for CPU compilations with inductor; a
``CompileConfig`` whose ``options`` name that key keeps its own value, and ``None`` there turns the pass off).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__ = ["DECODE_MATMUL_PASS", "DECODE_ROWS", "DecodeMatmulPass"]

#: The most rows a product may have to be rewritten: a decode step's batch (a prefill's products stay BLAS's).
DECODE_ROWS = 16

_aten = torch.ops.aten


class DecodeMatmulPass(CustomGraphPass):
    """Rewrites ``mm(x, permute(w, [1, 0]))`` and ``addmm(b, x, permute(w, [1, 0]))`` (what inductor makes of
    ``F.linear``) into ``permute(sum(w[:, None, :] * x[None, :, :], -1), [1, 0]) (+ b)`` when ``x`` is float32
    on the CPU with at most :data:`DECODE_ROWS` rows and ``w`` is a float32 matrix. Anything else is left as it
    is. Each rewrite counts in ``torch._dynamo.utils.counters["turbogen"]["decode_matmul"]`` (inductor's FX graph
    cache replays a compiled graph without running passes, so a cached graph counts nothing)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        rewritten = False
        for node in list(graph.nodes):
            operands = _product_operands(node)
            if operands is None:
                continue
            rows, weight, bias = operands
            with graph.inserting_before(node):
                replacement = _emit(graph, weight, rows)
                if bias is not None:
                    replacement = graph.call_function(_aten.add.Tensor, (replacement, bias))
                    _set_value(replacement)
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            counters["turbogen"]["decode_matmul"] += 1
            rewritten = True
        if rewritten:  # the weights' transposes the products read
            graph.eliminate_dead_code()

    def uuid(self) -> Optional[object]:
        # Part of inductor's cache key: any change of this file changes it.
        return get_hash_for_files((__file__,))


def _emit(graph: torch.fx.Graph, weight: torch.fx.Node, rows: torch.fx.Node) -> torch.fx.Node:
    """The nodes of ``permute(sum(w[:, None, :] * x[None, :, :], -1), [1, 0])``, at the graph's insertion point."""
    weight_3d = graph.call_function(_aten.unsqueeze.default, (weight, 1))
    rows_3d = graph.call_function(_aten.unsqueeze.default, (rows, 0))
    product = graph.call_function(_aten.mul.Tensor, (weight_3d, rows_3d))
    summed = graph.call_function(_aten.sum.dim_IntList, (product, [-1]))
    out = graph.call_function(_aten.permute.default, (summed, [1, 0]))
    for node in (weight_3d, rows_3d, product, summed, out):
        _set_value(node)
    return out


def _set_value(node: torch.fx.Node) -> None:
    """``node.meta["val"]``: its op run on its inputs' fake values (inductor's lowering reads it)."""
    values = [argument.meta["val"] if isinstance(argument, torch.fx.Node) else argument for argument in node.args]
    fake_mode = next(value.fake_mode for value in values if isinstance(value, torch.Tensor))
    with fake_mode:
        node.meta["val"] = node.target(*values)


def _value(node: object) -> Optional[torch.Tensor]:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _static(value: torch.Tensor) -> bool:
    return all(isinstance(size, int) for size in value.shape)


def _product_operands(node: torch.fx.Node) -> Optional[tuple]:
    """``(x, w, b)`` when ``node`` is a product the pass rewrites (``b`` None for ``mm``), else None."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target is _aten.mm.default:
        bias, rows, transposed = None, *node.args
    elif node.target is _aten.addmm.default:
        bias, rows, transposed = node.args
    else:
        return None
    if not (isinstance(transposed, torch.fx.Node) and transposed.op == "call_function"
            and transposed.target is _aten.permute.default and list(transposed.args[1]) == [1, 0]):
        return None
    weight = transposed.args[0]
    w, x = _value(weight), _value(rows)
    if w is None or x is None or not (_static(w) and _static(x)):  # dynamic shapes: not known to be a decode step
        return None
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.shape[0] > DECODE_ROWS:
        return None
    if w.dtype != torch.float32 or w.dim() != 2:
        return None
    if bias is not None:
        b = _value(bias)
        if b is None or b.dtype != torch.float32 or b.shape != (w.shape[0],):
            return None
    return rows, weight, bias


#: The pass instance the compiled paths use (one object, so that the options of two compilations compare equal).
DECODE_MATMUL_PASS = DecodeMatmulPass()
