"""The turbogen ops as a compiled decode step calls them (issue 12): the prepared :class:`turbogen.ops.Sampler` with
per-row device parameters, device offsets advanced in place and the fused penalties of a
:class:`turbogen.ops.PenaltyState`, the state's ``accept``, and the public penalty paths (``sample`` /
``filter_logits`` with ``penalty_state=``, ``apply_penalty_tensors``) compile with ``fullgraph=True`` into one
graph that is reused step after step and computes what the eager calls compute.

tests/ops/test_registry.py covers each declared op on its own (opcheck of the custom op, including the input
variants a decode step passes, and its public function compiled by inductor). Here the point is tracing, so the
graphs run with ``backend="aot_eager"`` (fake tensors and functionalisation, as inductor sees them, in seconds);
the compiled backends appear in the graph as one opaque call of their custom op and run the same kernel, so
their tokens and logprobs are bit-exact; the reference is traced into torch ops (tolerances.py's policy)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

from turbogen import ops
from turbogen.ops.penalties import apply_penalty_tensors

from conftest import backend_params, device_for
from tolerances import assert_bit_exact, assert_close_across_compilations

ROWS, VOCAB, STEPS = 4, 200, 4


def _step_backends():
    """ref and cpu here; the GPU backends only where a GPU exists (the Triton interpreter is too slow for a
    compiled step and proves nothing about the GPU graph)."""
    names = ("ref", "cpu") + (("triton", "cuda") if torch.cuda.is_available() else ())
    return backend_params(names)


def _logits(step: int, device) -> torch.Tensor:
    return (torch.randn(ROWS, VOCAB, generator=torch.Generator().manual_seed(100 + step)) * 3).to(device)


def _penalty_state(device) -> ops.PenaltyState:
    history = torch.randint(0, VOCAB, (ROWS, 12), generator=torch.Generator().manual_seed(3)).to(device)
    return ops.PenaltyState(history, VOCAB, seen_from=0, generated_from=6)


class _SamplingStep:
    """One decode step's sampling part, as generate() builds it (generation/batch_state.py, decode.py): per-row
    filter tensors (row 1 greedy, temperature 0), per-row seeds, ``[rows]`` offsets advanced in place, the
    fused penalties of the state, then the state accepts the drawn tokens."""

    def __init__(self, backend: str, device):
        column = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device)  # noqa: E731
        self.state = _penalty_state(device)
        self.offsets = torch.zeros(ROWS, dtype=torch.int64, device=device)
        self.sampler = ops.Sampler(ROWS, device, temperature=column([0.7, 0.0, 1.0, 0.7], torch.float32),
                                   top_k=column([50, 0, 0, 20], torch.int64),
                                   top_p=column([0.9, 1.0, 0.8, 1.0], torch.float64),
                                   min_p=column([0.0, 0.0, 0.05, 0.0], torch.float32),
                                   seed=torch.arange(ROWS, device=device) + 11, backend=backend)

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        penalties = self.state.tensors(repetition_penalty=1.3, presence_penalty=0.2, frequency_penalty=0.5)
        tokens, logprobs = self.sampler(logits, self.offsets, return_logprobs=True, penalties=penalties)
        self.offsets.add_(1)
        self.state.accept(tokens)
        return tokens, logprobs


def _assert_floats(actual, expected, backend):
    if backend == "ref":
        assert_close_across_compilations(actual, expected)
    else:  # the graph calls the same kernel
        assert_bit_exact(actual, expected)


def _custom_op_calls(graph: torch.fx.GraphModule) -> list:
    return [node.target for node in graph.graph.nodes
            if node.op == "call_function" and getattr(node.target, "namespace", None) == "turbogen"]


@pytest.mark.parametrize("backend", _step_backends())
def test_sampling_step_with_fused_penalties_compiles_once(backend):
    """Sampler + fused penalties + accept: one graph, no recompilation over the steps (the offsets and the state
    are device buffers updated in place), the eager step's tokens, logprobs and state."""
    torch.compiler.reset()
    device = device_for(backend)
    compiled_step, eager_step = _SamplingStep(backend, device), _SamplingStep(backend, device)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_step, backend=counter, fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(STEPS):
            tokens, logprobs = compiled(_logits(step, device))
            expected_tokens, expected_logprobs = eager_step(_logits(step, device))
            assert torch.equal(tokens, expected_tokens)
            _assert_floats(logprobs, expected_logprobs, backend)
    assert counter.frame_count == 1
    # A compiled backend is one opaque sample (penalties fused into it); the reference is traced into torch ops.
    expected_calls = [] if backend == "ref" else [torch.ops.turbogen.sample.default]
    assert _custom_op_calls(counter.graphs[0]) == expected_calls
    assert torch.equal(compiled_step.offsets, eager_step.offsets) and int(compiled_step.offsets[0]) == STEPS
    for name in ("mask", "seen", "generated", "lengths", "recent", "retained"):
        assert torch.equal(getattr(compiled_step.state, name), getattr(eager_step.state, name)), name


# The public penalty paths a step may take instead of the prepared sampler: (call, the custom ops a compiled
# backend leaves in the graph). Each is given the state (built before compiling) and the logits.
PENALTY_CALLS = {
    "sample-penalty_state": (
        lambda state, logits, backend: ops.sample(
            logits, temperature=0.7, top_k=20, seed=torch.arange(ROWS, device=logits.device) + 3,
            offset=torch.tensor(5, device=logits.device), return_logprobs=True, penalty_state=state,
            repetition_penalty=1.3, frequency_penalty=0.5, backend=backend),
        ["sample"]),
    "filter_logits-penalty_state": (
        lambda state, logits, backend: ops.filter_logits(logits, temperature=0.7, top_p=0.9, penalty_state=state,
                                                         repetition_penalty=1.3, presence_penalty=0.25,
                                                         backend=backend),
        ["filter_logits"]),
    "apply_penalties-presence-only": (
        lambda state, logits, backend: ops.apply_penalties(logits, state, presence_penalty=0.5, backend=backend),
        ["apply_penalties"]),
    "apply_penalty_tensors": (
        lambda state, logits, backend: apply_penalty_tensors(
            logits, state.tensors(repetition_penalty=torch.linspace(0.8, 1.6, ROWS, device=logits.device)),
            backend=backend),
        ["apply_penalties"]),
}


@pytest.mark.parametrize("backend", _step_backends())
@pytest.mark.parametrize("name", sorted(PENALTY_CALLS))
def test_public_penalty_paths_compile_fullgraph(name, backend):
    torch.compiler.reset()
    device = device_for(backend)
    state, logits = _penalty_state(device), _logits(0, device)
    call, ops_in_graph = PENALTY_CALLS[name]
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    actual = torch.compile(lambda x: call(state, x, backend), backend=counter, fullgraph=True)(logits)
    expected = call(state, logits, backend)
    actual, expected = (actual, expected) if isinstance(expected, tuple) else ((actual,), (expected,))
    for actual_part, expected_part in zip(actual, expected, strict=True):
        assert actual_part.dtype == expected_part.dtype and actual_part.shape == expected_part.shape
        if expected_part.is_floating_point():
            _assert_floats(actual_part, expected_part, backend)
        else:
            assert torch.equal(actual_part, expected_part)
    expected_calls = [] if backend == "ref" else [getattr(torch.ops.turbogen, op).default for op in ops_in_graph]
    assert counter.frame_count == 1 and _custom_op_calls(counter.graphs[0]) == expected_calls
