"""The op registry (turbogen/ops/_registry.py): every declared op passes torch.library.opcheck on
every backend it has, compiles with fullgraph=True through its public function, and dispatches
inside torch.compile through its custom op; the declarations are checked; production code reaches
turbogen.ref only through the registry."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import turbogen
from turbogen import ops
from turbogen.ops._registry import OpSpec, declare, registered_ops
from turbogen.ref import sampling as ref_sampling

from conftest import backend_params, device_for
from tolerances import assert_bit_exact, assert_close_across_compilations

def _logits(rows: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    return (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3).to(device)


def _filters(rows: int, device) -> tuple[torch.Tensor, ...]:
    """Validated filter inputs as ops.sampling's _Filters holds them: scalar and per-row mixed."""
    return (torch.full((1,), 0.8, device=device), torch.tensor([5, 0, 1], device=device)[:rows],
            torch.full((rows,), 0.9, dtype=torch.float64, device=device), torch.full((1,), 0.05, device=device))


def _penalty_state(rows: int, vocab: int, device) -> ops.PenaltyState:
    history = torch.randint(0, vocab, (rows, 12), generator=torch.Generator().manual_seed(3)).to(device)
    return ops.PenaltyState(history, vocab, seen_from=0, generated_from=6)


def _penalty_inputs(rows: int, vocab: int, device) -> tuple:
    """apply_penalties' validated inputs after the logits (PenaltyTensors), per-row and scalar mixed."""
    return tuple(_penalty_state(rows, vocab, device).tensors(
        repetition_penalty=torch.linspace(0.8, 1.6, rows, device=device), presence_penalty=0.5,
        frequency_penalty=0.25))


def _beam_state(batch: int, beams: int, device) -> tuple:
    """A beam-search step's running and finished state: running scores, finished scores (one row with a full
    finished set), is_finished, may_improve."""
    running = -torch.arange(batch * beams, dtype=torch.float32, device=device).view(batch, beams) * 0.5
    finished = torch.full((batch, beams), -1e9, device=device)
    finished[0] = -torch.arange(1, beams + 1, dtype=torch.float32, device=device)
    is_finished = finished > -1e8
    return running, finished, is_finished, torch.ones(batch, dtype=torch.bool, device=device)


def _beam_inputs(device) -> tuple:
    """beam_step's validated inputs: 2 batch rows of 2 beams, one EOS id, beam sampling, the fused log-softmax."""
    seeds = torch.tensor([1, 2], device=device)
    return (_logits(4, 40, device), *_beam_state(2, 2, device), torch.tensor([3], device=device), seeds, seeds + 3,
            False, 2, 6, 1.0, 0, False)


def _verify_inputs(device) -> tuple:
    """verify's validated inputs in rejection mode: 2 rows of 2 drafts (one the target's argmax), the filters as
    _filters gives them for 2 rows, seeds and one shared offset."""
    logits = _logits(6, 64, device).view(2, 3, 64)
    drafts = torch.stack([logits[:, 0].argmax(-1), torch.tensor([-1, 70], device=device)], dim=1)
    probs = torch.softmax(_logits(4, 64, device, seed=1), -1).view(2, 2, 64)
    temperature, top_k, top_p, min_p = _filters(2, device)
    return (logits, drafts, probs, True, temperature, top_k, top_p[:2], min_p, torch.tensor([5, 2 ** 40], device=device),
            torch.tensor([2 ** 33 + 1], device=device))


def _paged_inputs(device) -> tuple:
    """paged_attention's validated inputs: 2 sequences (a decode token over 5 keys, a 3-token prefill chunk over 7
    keys), blocks of 4 slots, 4 heads over 2 kv heads, head_dim 8, softcap 30, no window."""
    generator = torch.Generator().manual_seed(0)
    key_cache, value_cache = (torch.randn(6, 4, 2, 8, generator=generator).to(device) for _ in range(2))
    query = torch.randn(4, 4, 8, generator=generator).to(device)
    return (query, key_cache, value_cache, torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device),
            torch.tensor([0, 1, 4], dtype=torch.int32, device=device),
            torch.tensor([5, 7], dtype=torch.int32, device=device), 0.35, 0, 30.0)


def _write_kv_inputs(device) -> tuple:
    """write_kv's validated inputs: 3 tokens (one skipped, slot -1) into caches of 3 blocks of 2 slots."""
    generator = torch.Generator().manual_seed(0)
    key, value = (torch.randn(3, 2, 8, generator=generator).to(device) for _ in range(2))
    return (key, value, torch.zeros(3, 2, 2, 8, device=device), torch.zeros(3, 2, 2, 8, device=device),
            torch.tensor([4, -1, 1], device=device))


# Validated inputs of each declared op (what its public function passes to the registry).
OP_INPUTS = {
    "sample": lambda device: (_logits(3, 64, device), *_filters(3, device), torch.arange(3, device=device) + 7,
                              torch.tensor([2 ** 33 + 1], device=device), True, *_penalty_inputs(3, 64, device)),
    "filter_logits": lambda device: (_logits(3, 64, device), *_filters(3, device), *(None,) * 6),
    "apply_penalties": lambda device: (_logits(3, 64, device), *_penalty_inputs(3, 64, device)),
    "beam_step": _beam_inputs,
    "softmax": lambda device: (_logits(3, 17, device), torch.tensor([0.5, 1.0, 2.0], device=device)),
    "topk": lambda device: (_logits(3, 50, device), 4),
    "gumbel_noise": lambda device: (torch.arange(3, device=device) + 7, torch.tensor([2 ** 33 + 1] * 3, device=device),
                                    40),
    "verify": lambda device: _verify_inputs(device),
    "paged_attention": _paged_inputs,
    "write_kv": _write_kv_inputs,
}

# Made before compiling (a decode step receives it built), one per device, for the logits of the compile test.
PENALTY_STATES = {device: _penalty_state(4, 200, device)
                  for device in ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())}


def _partial_penalty_inputs(rows: int, vocab: int, device, **penalties) -> tuple:
    """PenaltyTensors for only some penalties: the count a penalty leaves unused is None."""
    return tuple(_penalty_state(rows, vocab, device).tensors(**penalties))


# More validated inputs, as a decode step passes them: the outputs' shapes and dtypes (the fake implementation)
# depend on them. (op, inputs for the device)
OP_INPUT_VARIANTS = {
    # generate()'s sampler: per-row [rows] offsets, no logprobs (an empty logprobs output), repetition only.
    "sample-row-offsets-no-logprobs": ("sample", lambda device: (
        _logits(3, 64, device), *_filters(3, device), torch.arange(3, device=device) + 7,
        torch.tensor([4, 2 ** 33, 9], device=device), False,
        *_partial_penalty_inputs(3, 64, device, repetition_penalty=1.3))),
    "sample-float16-no-penalties": ("sample", lambda device: (
        _logits(3, 64, device).half(), *_filters(3, device), torch.arange(3, device=device) + 7,
        torch.tensor([5], device=device), True, *(None,) * 6)),
    "sample-no-rows": ("sample", lambda device: (
        _logits(0, 64, device), *_filters(1, device), torch.zeros(0, dtype=torch.int64, device=device),
        torch.tensor([5], device=device), True, *(None,) * 6)),
    "filter_logits-bfloat16-penalties": ("filter_logits", lambda device: (
        _logits(3, 64, device).bfloat16(), *_filters(3, device), *_penalty_inputs(3, 64, device))),
    "apply_penalties-float16-presence-only": ("apply_penalties", lambda device: (
        _logits(3, 64, device).half(), *_partial_penalty_inputs(3, 64, device, presence_penalty=0.5))),
}


def _variant_backend_params():
    """(variant, backend) for every input variant and each backend of its op, skipped where unavailable."""
    cases = []
    for variant, (name, _) in sorted(OP_INPUT_VARIANTS.items()):
        op = registered_ops()[name]
        for param in backend_params(tuple(b for b in ("ref", "cpu", "triton", "cuda") if b in op.backends)):
            cases.append(pytest.param(variant, *param.values, id=f"{variant}-{param.id}", marks=param.marks))
    return cases


def _paged_attention_call(logits: torch.Tensor, backend: str) -> torch.Tensor:
    """The logits as 4 query tokens of 4 heads (head_dim 50) over caches of 6 blocks of 4 slots made from them: a
    decode token over 5 keys and a 3-token prefill chunk over 7 keys."""
    query = logits.view(4, 4, 50)
    key_cache = logits[:, :50].repeat(6, 2).view(6, 4, 2, 50)
    value_cache = logits[:, 50:100].repeat(6, 2).view(6, 4, 2, 50)
    device = logits.device
    return ops.paged_attention(query, key_cache, value_cache,
                               torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device),
                               torch.tensor([0, 1, 4], dtype=torch.int32, device=device),
                               torch.tensor([5, 7], dtype=torch.int32, device=device), softcap=30.0, backend=backend)


def _write_kv_call(logits: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits as 4 tokens of 2 kv heads (head_dim 50) written into fresh caches of 3 blocks of 2 slots (one
    token skipped); the caches are the result."""
    key_cache = torch.zeros(3, 2, 2, 50, device=logits.device)
    value_cache = torch.zeros_like(key_cache)
    ops.write_kv(logits[:, :100].reshape(4, 2, 50), logits[:, 100:].reshape(4, 2, 50), key_cache, value_cache,
                 torch.tensor([5, -1, 0, 2], device=logits.device), backend=backend)
    return key_cache, value_cache


def _row_seeds(logits: torch.Tensor) -> torch.Tensor:
    return torch.arange(logits.shape[0], device=logits.device) + 3


# Each op called through its public function, as a compiled decode step would call it.
PUBLIC_CALLS = {
    "sample": lambda logits, backend: ops.sample(logits, temperature=0.7, top_k=20, top_p=0.9, min_p=0.02,
                                                 seed=_row_seeds(logits), offset=5, return_logprobs=True,
                                                 backend=backend),
    "filter_logits": lambda logits, backend: ops.filter_logits(logits, temperature=0.7, top_k=20, top_p=0.9,
                                                               min_p=0.02, backend=backend),
    "apply_penalties": lambda logits, backend: ops.apply_penalties(logits, PENALTY_STATES[logits.device.type],
                                                                   repetition_penalty=1.3,
                                                                   frequency_penalty=0.5, backend=backend),
    "beam_step": lambda logits, backend: ops.beam_step(logits, *_beam_state(2, 2, logits.device),
                                                       torch.tensor([7], device=logits.device), generated_length=3,
                                                       max_generated_length=9, early_stopping="never",
                                                       backend=backend),
    "softmax": lambda logits, backend: ops.softmax(logits, 0.5, backend=backend),
    "topk": lambda logits, backend: ops.topk(logits, 4, backend=backend),
    "gumbel_noise": lambda logits, backend: ops.gumbel_noise(_row_seeds(logits), 5, logits.shape[0], logits.shape[1],
                                                             backend=backend),
    # Two rows of one draft each, the first draft the target's greedy token.
    "verify": lambda logits, backend: ops.verify(logits.view(2, 2, -1), logits.view(2, 2, -1)[:, :1].argmax(-1),
                                                 seed=_row_seeds(logits)[:2], offset=5, temperature=0.7, top_k=20,
                                                 backend=backend),
    "paged_attention": _paged_attention_call,
    "write_kv": _write_kv_call,
}


def _op_backend_params(backends=("ref", "cpu", "triton", "cuda")):
    """(op, backend) for every declared op and each of its backends, skipped where the backend is unavailable."""
    cases = []
    for name, op in sorted(registered_ops().items()):
        for param in backend_params(tuple(b for b in backends if b in op.backends)):
            cases.append(pytest.param(name, *param.values, id=f"{name}-{param.id}", marks=param.marks))
    return cases


def test_every_declared_op_is_exercised_here():
    assert set(registered_ops()) == set(OP_INPUTS) == set(PUBLIC_CALLS) == {"sample", "filter_logits", "softmax",
                                                                            "topk", "gumbel_noise",
                                                                            "apply_penalties", "beam_step", "verify",
                                                                            "paged_attention", "write_kv"}


@pytest.mark.parametrize("name,backend", _op_backend_params())
def test_custom_op_passes_opcheck(name, backend):
    """Schema, fake implementation (the output allocation) and the real outputs agree."""
    torch.library.opcheck(getattr(torch.ops.turbogen, name).default, (*OP_INPUTS[name](device_for(backend)), backend))


@pytest.mark.parametrize("variant,backend", _variant_backend_params())
def test_custom_op_input_variants_pass_opcheck(variant, backend):
    name, make_inputs = OP_INPUT_VARIANTS[variant]
    torch.library.opcheck(getattr(torch.ops.turbogen, name).default, (*make_inputs(device_for(backend)), backend))


def _assert_same(actual, expected, assert_same_floats):
    """Outputs (a tensor or a tuple of them) with the same dtypes and shapes, integers equal, floats passing
    ``assert_same_floats``."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for actual_part, expected_part in zip(actual, expected):
            _assert_same(actual_part, expected_part, assert_same_floats)
    elif expected.is_floating_point():
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert_same_floats(actual, expected)
    else:
        assert torch.equal(actual, expected)


# The GPU backends where a GPU exists (the Triton interpreter is too slow to compile every op through inductor).
@pytest.mark.parametrize("name,backend", _op_backend_params(
    ("ref", "cpu") + (("triton", "cuda") if torch.cuda.is_available() else ())))
def test_public_function_compiles_fullgraph(name, backend):
    # Every case compiles the same lambda: start from empty caches so no recompilation limit is reached.
    torch.compiler.reset()
    logits = _logits(4, 200, device_for(backend), seed=1)
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    call = PUBLIC_CALLS[name]
    recorded = torch.compile(lambda x: call(x, backend), fullgraph=True, backend=recording_backend)(logits)
    compiled = torch.compile(lambda x: call(x, backend), fullgraph=True)(logits)
    expected = call(logits, backend)
    _assert_same(recorded, expected, assert_bit_exact)  # the captured graph, run as it is: the same kernels
    # Inductor may fuse and reorder the reference's float arithmetic; a compiled backend's kernel is called as it is.
    _assert_same(compiled, expected, assert_close_across_compilations if backend == "ref" else assert_bit_exact)
    # A compiled backend is an opaque call to the registered custom op; the reference is traced into plain torch ops.
    custom_op = getattr(torch.ops.turbogen, name).default
    calls = [node for node in graphs[0].graph.nodes if node.op == "call_function" and node.target is custom_op]
    assert len(calls) == (0 if backend == "ref" else 1)


def test_eager_calls_launch_without_the_dispatcher(monkeypatch):
    """Outside torch.compile a compiled backend's launcher is called directly: the custom op (about
    30 us of dispatch per call) only serves compiled graphs."""
    if not ops.available_backends()["cpu"]:
        pytest.skip(ops.available_backends()["cpu"].reason)
    softmax_op = registered_ops()["softmax"]
    monkeypatch.setattr(softmax_op, "_compiled_entry", None)  # calling it would raise
    x = _logits(2, 9, "cpu")
    assert_close_across_compilations(ops.softmax(x, backend="cpu"), torch.softmax(x, -1))


def test_reference_is_looked_up_by_name_in_turbogen_ref(monkeypatch):
    calls = []
    monkeypatch.setattr(turbogen.ref, "topk", lambda scores, k: calls.append(k) or torch.topk(scores, k))
    ops.topk(_logits(2, 9, "cpu"), 3, backend="ref")
    assert calls == [3]


def _allocate_like(logits: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(logits)


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="unknown backends"):
        OpSpec(name="identity", reference="softmax", allocate_outputs=_allocate_like, launchers={"gpu": print})
    with pytest.raises(ValueError, match="already declared"):
        declare(OpSpec(name="softmax", reference="softmax", allocate_outputs=_allocate_like, launchers={}))


def test_an_op_refuses_a_backend_it_has_no_kernel_for():
    with pytest.raises(ValueError, match="turbogen.ops.topk has no triton implementation"):
        ops.topk(_logits(2, 9, "cpu"), 3, backend="triton")
    with pytest.raises(ValueError, match="to launch turbogen::topk"):
        registered_ops()["topk"].launch("triton", _logits(2, 9, "cpu"), 3)


def _absolute_imports(path: pathlib.Path, package: tuple[str, ...]) -> list[str]:
    """The absolute names of the modules that the module at ``path``, inside ``package``, imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) + 1 - node.level] if node.level else ()
            if node.module is None:  # from .. import ref
                names += [".".join((*base, alias.name)) for alias in node.names]
            else:
                names.append(".".join((*base, node.module)))
    return names


def test_production_code_reaches_the_reference_only_through_the_registry():
    library = pathlib.Path(turbogen.__file__).parent
    for path in sorted(library.rglob("*.py")):
        relative = path.relative_to(library)
        if relative.parts[0] == "ref":
            continue
        package = ("turbogen", *relative.parts[:-1])  # the package a relative import starts from
        reaching_ref = [name for name in _absolute_imports(path, package) if name.split(".")[:2] == ["turbogen", "ref"]]
        if relative == pathlib.Path("ops", "_registry.py"):
            assert reaching_ref == ["turbogen.ref"]
        elif relative == pathlib.Path("__init__.py"):
            assert reaching_ref == ["turbogen.ref"]  # re-exported as turbogen.ref for tests and users
        else:
            assert reaching_ref == [], f"{relative} imports {reaching_ref}"


def test_gumbel_noise_is_the_noise_the_sampler_adds():
    logits = _logits(4, 300, "cpu")
    seeds, offset = torch.tensor([3, 2 ** 40, -5, 11]), 2 ** 33 + 7
    noise = ops.gumbel_noise(seeds, offset, 4, 300)
    assert noise.dtype == torch.float32 and noise.shape == (4, 300)
    expected = ops.sample(logits, seed=seeds, offset=offset, backend="ref")
    assert torch.equal((logits + noise).argmax(dim=-1), expected)
    assert not torch.equal(noise, ops.gumbel_noise(seeds, offset + 1, 4, 300))  # the offset moves the counter


def test_counter_helpers_are_shared_by_ops_and_reference():
    assert ref_sampling.row_seeds is ops.row_seeds and ref_sampling.row_offsets is ops.row_offsets
    assert ops.row_seeds(2 ** 64 - 2, 4, "cpu").tolist() == [-2, -1, 0, 1]  # S + r modulo 2**64, as int64
    assert ops.row_seeds(torch.tensor(5), 3, "cpu").tolist() == [5, 6, 7]
    assert ops.row_seeds(torch.tensor([9, 4]), 2, "cpu").tolist() == [9, 4]
    assert ops.row_offsets(2 ** 63, 2, "cpu").tolist() == [-(2 ** 63)] * 2
    assert ops.row_offsets(torch.tensor([3, 1]), 2, "cpu").tolist() == [3, 1]
