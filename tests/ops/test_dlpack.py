"""Arrays from other libraries (turbogen/ops/_interop.py): every public op, called with numpy arrays and with
JAX arrays (CPU), returns what the same call with torch tensors returns, in the caller's array type, without
copying the inputs; arrays an op writes must be writable; torch calls are untouched.

Each comparison runs the same backend on the same values, so results are compared exactly. JAX runs with its
default configuration (no ``jax_enable_x64``): its int64 arrays are int32, so token ids come back as int32,
and inputs an op wants as int64 (per-row seeds, EOS ids) are built under ``jax.enable_x64``."""

from __future__ import annotations

import contextlib
import inspect
import sys
import types

import numpy as np
import pytest
import torch

from turbogen import ops
from turbogen.ops._interop import accepts_dlpack

from conftest import backend_params

BACKENDS = backend_params(("ref", "cpu"))
KINDS = ["numpy", "jax"]


def _jax():
    return pytest.importorskip("jax", reason="jax is not installed: the JAX cases need it")


def as_kind(array: np.ndarray, kind: str):
    """``array`` (numpy) in the caller's library: as it is, or a JAX array (int64 -> int32 without x64)."""
    if kind == "numpy":
        return array
    jnp = _jax().numpy
    return jnp.asarray(array.astype(np.int32) if array.dtype == np.int64 and not _jax_x64() else array)


def _jax_x64() -> bool:
    return bool(_jax().config.jax_enable_x64)


def x64(kind: str):
    """Where JAX must hold int64 inputs (per-row seeds, EOS ids): 64-bit types for the block."""
    return _jax().enable_x64(True) if kind == "jax" else contextlib.nullcontext()


def assert_kind(result, kind: str) -> None:
    if kind == "numpy":
        assert type(result) is np.ndarray
    else:
        assert isinstance(result, _jax().Array)


def assert_same(actual, expected: torch.Tensor, kind: str) -> None:
    """``actual`` (the caller's kind) holds exactly ``expected``'s values, shape and dtype (JAX without x64 holds
    int64 as int32)."""
    assert_kind(actual, kind)
    values = np.asarray(actual)
    wanted = expected.numpy()
    if kind == "jax" and wanted.dtype == np.int64 and not _jax_x64():
        assert values.dtype == np.int32
        wanted = wanted.astype(np.int32)
    assert values.dtype == wanted.dtype and values.shape == wanted.shape
    assert np.array_equal(values, wanted, equal_nan=values.dtype.kind == "f")


def logits_array(rows: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    logits[:, ::7] = -np.abs(logits[:, ::7])  # negative logits: the repetition penalty's other branch
    return logits


def history_array(rows: int, length: int, vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (rows, length), dtype=np.int64)


def torch_of(array: np.ndarray) -> torch.Tensor:
    """The torch twin of an input: a copy, so that nothing the torch call does can touch the caller's array."""
    return torch.tensor(array)


# --- the stateless ops ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax(kind, backend):
    logits, temperature = logits_array(3, 40), np.array([0.5, 1.0, 2.0], dtype=np.float32)
    actual = ops.softmax(as_kind(logits, kind), as_kind(temperature, kind), backend=backend)
    assert_same(actual, ops.softmax(torch_of(logits), torch_of(temperature), backend=backend), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_topk(kind, backend):
    scores = np.round(logits_array(4, 60, seed=2))  # ties: the order among them is specified
    values, indices = ops.topk(as_kind(scores, kind), 7, backend=backend)
    expected_values, expected_indices = ops.topk(torch_of(scores), 7, backend=backend)
    assert_same(values, expected_values, kind)
    assert_same(indices, expected_indices, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gumbel_noise(kind, backend):
    seeds, offset = np.array([5, 2**40, -3], dtype=np.int64), np.array(9, dtype=np.int64)
    with x64(kind):
        actual = ops.gumbel_noise(as_kind(seeds, kind), as_kind(offset, kind), 3, 50, backend=backend)
    assert_same(actual, ops.gumbel_noise(torch_of(seeds), torch_of(offset), 3, 50, backend=backend), kind)


def test_gumbel_noise_from_numbers_only_returns_torch():
    """No array argument says which library the caller uses: the result stays torch."""
    assert isinstance(ops.gumbel_noise(1, 0, 2, 3), torch.Tensor)


@pytest.mark.parametrize("kind", KINDS)
def test_row_seeds_and_offsets(kind):
    start = np.array(7, dtype=np.int64)
    assert_same(ops.row_seeds(as_kind(start, kind), 4, "cpu"), torch.arange(7, 11), kind)
    assert_same(ops.row_offsets(as_kind(start, kind), 3, "cpu"), torch.full((3,), 7), kind)


def test_row_seeds_returns_the_callers_array_it_was_given():
    """A ``[rows]`` int64 array is returned as is (the op returns its input): the caller's object, its memory."""
    seeds = np.array([4, 9, 1], dtype=np.int64)
    assert ops.row_seeds(seeds, 3, "cpu") is seeds
    offsets = ops.row_offsets(np.array([2], dtype=np.int64), 3, "cpu")  # a broadcast view leaves as an array
    assert type(offsets) is np.ndarray and offsets.tolist() == [2, 2, 2]


def test_int64_results_that_jax_cannot_hold_raise():
    """JAX without x64 holds int64 as int32: seeds beyond int32 must raise, never wrap silently."""
    jnp = _jax().numpy
    if _jax_x64():
        pytest.skip("jax_enable_x64 is on in this process")
    assert np.asarray(ops.row_seeds(jnp.asarray(2**31 - 3), 2, "cpu")).tolist() == [2**31 - 3, 2**31 - 2]
    with pytest.raises(ValueError, match="jax_enable_x64"):
        ops.row_seeds(jnp.asarray(2**31 - 3), 4, "cpu")


def beam_inputs(batch=2, beams=3, vocab=30, seed=3):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((batch * beams, vocab)) * 3).astype(np.float32)
    running = -np.sort(rng.random((batch, beams), dtype=np.float32) * 6, axis=1)
    finished = np.full((batch, beams), -1e9, dtype=np.float32)
    finished[0, 0] = -4.0
    is_finished = finished > -1e9
    may_improve = np.ones(batch, dtype=bool)
    eos = np.array([int(logits[0].argmax())], dtype=np.int64)  # a likely token, so candidates stop
    return logits, running, finished, is_finished, may_improve, eos


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampling", [False, True], ids=["search", "sampling"])
def test_beam_step(kind, backend, sampling):
    inputs = beam_inputs()
    counters = dict(seeds=np.array([11, 12], dtype=np.int64), offsets=np.array([0, 5], dtype=np.int64)) if sampling else {}
    options = dict(generated_length=3, max_generated_length=9, length_penalty=1.2, backend=backend)
    with x64(kind):
        mine = {name: as_kind(value, kind) for name, value in counters.items()}
        actual = ops.beam_step(*(as_kind(a, kind) for a in inputs), **mine, **options)
        expected = ops.beam_step(*map(torch_of, inputs), **{name: torch_of(v) for name, v in counters.items()},
                                 **options)
        assert type(actual) is ops.BeamStepResult
        for name in ops.BeamStepResult._fields:
            assert_same(getattr(actual, name), getattr(expected, name), kind)
    assert bool(np.asarray(actual.next_is_finished).any())  # the EOS candidates were exercised


def test_beam_step_without_int64_inputs_needs_no_jax_x64():
    """eos=None: every input is float32 or bool, which JAX holds by default; int64 results come back int32."""
    jnp = _jax().numpy
    inputs = beam_inputs()[:5]
    actual = ops.beam_step(*map(jnp.asarray, inputs), generated_length=1, max_generated_length=4, backend="ref")
    expected = ops.beam_step(*map(torch_of, inputs), generated_length=1, max_generated_length=4, backend="ref")
    for name in ops.BeamStepResult._fields:
        assert_same(getattr(actual, name), getattr(expected, name), "jax")


# --- sampling -----------------------------------------------------------------------------------------

def sampling_parameters():
    return dict(temperature=np.array([0.0, 0.7, 1.0, 1.3], dtype=np.float32),
                top_k=np.array([0, 5, 40, 3], dtype=np.int64),
                top_p=np.array([1.0, 0.9, 0.5, 1.0], dtype=np.float64),
                min_p=np.array([0.0, 0.0, 0.05, 0.1], dtype=np.float32))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_and_filter_logits(kind, backend):
    logits, params = logits_array(4, 100, seed=4), sampling_parameters()
    seeds = np.array([3, 1, 4, 1], dtype=np.int64)
    with x64(kind):
        mine = {name: as_kind(value, kind) for name, value in params.items()}
        tokens, logprobs = ops.sample(as_kind(logits, kind), seed=as_kind(seeds, kind), offset=2,
                                      return_logprobs=True, backend=backend, **mine)
        filtered = ops.filter_logits(as_kind(logits, kind), backend=backend, **mine)
        theirs = {name: torch_of(value) for name, value in params.items()}
        expected_tokens, expected_logprobs = ops.sample(torch_of(logits), seed=torch_of(seeds), offset=2,
                                                        return_logprobs=True, backend=backend, **theirs)
        assert_same(tokens, expected_tokens, kind)  # int64 under x64
    assert_same(logprobs, expected_logprobs, kind)
    assert_same(filtered, ops.filter_logits(torch_of(logits), backend=backend, **theirs), kind)
    plain = ops.sample(as_kind(logits, kind), seed=5, top_k=10, backend=backend)
    assert_same(plain, ops.sample(torch_of(logits), seed=5, top_k=10, backend=backend), kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_verify(kind, backend):
    """Both modes, per-row filters and seeds from the caller's library; the result is a VerifyResult of its arrays."""
    logits, params = logits_array(4, 300, seed=6).reshape(4, 3, 100), sampling_parameters()
    seeds = np.array([3, 1, 4, 1], dtype=np.int64)
    drafts = np.argmax(logits[:, :2], axis=-1).astype(np.int64)
    drafts[1, 0] = -1
    probs = np.full((4, 2, 100), 0.01, dtype=np.float32)
    for mode, draft_probs in (("coupled", None), ("rejection", probs)):
        with x64(kind):
            result = ops.verify(as_kind(logits, kind), as_kind(drafts, kind),
                                draft_probs=None if draft_probs is None else as_kind(draft_probs, kind), mode=mode,
                                seed=as_kind(seeds, kind), offset=2, backend=backend,
                                **{name: as_kind(value, kind) for name, value in params.items()})
            expected = ops.verify(torch_of(logits), torch_of(drafts),
                                  draft_probs=None if draft_probs is None else torch_of(draft_probs), mode=mode,
                                  seed=torch_of(seeds), offset=2, backend=backend,
                                  **{name: torch_of(value) for name, value in params.items()})
            assert isinstance(result, ops.VerifyResult)
            assert_same(result.accepted, expected.accepted, kind)
            assert_same(result.tokens, expected.tokens, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sampler(kind, backend):
    logits, params = logits_array(4, 100, seed=5), sampling_parameters()
    seeds = np.array([8, 6, 7, 5], dtype=np.int64)
    with x64(kind):
        sampler = ops.Sampler(4, "cpu", seed=as_kind(seeds, kind), backend=backend,
                              **{name: as_kind(value, kind) for name, value in params.items()})
    reference = ops.Sampler(4, "cpu", seed=torch_of(seeds), backend=backend,
                            **{name: torch_of(value) for name, value in params.items()})
    for offset in range(3):
        assert_same(sampler(as_kind(logits, kind), offset), reference(torch_of(logits), offset), kind)
    # The same sampler called with torch tensors answers in torch: the kind is each call's.
    assert torch.equal(sampler(torch_of(logits), 1), reference(torch_of(logits), 1))


def test_sampler_reads_numpy_seeds_in_place():
    """Seeds are imported without a copy: updating the caller's array in place (as a captured step updates a
    seeds tensor) changes the next draw, exactly as the torch sampler with those seeds draws."""
    logits = logits_array(4, 100, seed=6)
    seeds = np.array([1, 2, 3, 4], dtype=np.int64)
    sampler = ops.Sampler(4, "cpu", seed=seeds, backend="cpu")
    before = sampler(logits, 0)
    seeds += 1000
    after = sampler(logits, 0)
    expected = ops.Sampler(4, "cpu", seed=torch.tensor([1001, 1002, 1003, 1004]), backend="cpu")(torch_of(logits), 0)
    assert np.array_equal(after, expected.numpy()) and not np.array_equal(after, before)


# --- penalties: the state and apply_penalties ---------------------------------------------------------

STATE_FIELDS = ("mask", "seen", "generated", "seen_from", "generated_from", "lengths", "recent", "retained")


def assert_same_state(actual: ops.PenaltyState, expected: ops.PenaltyState) -> None:
    for name in STATE_FIELDS:
        mine, theirs = getattr(actual, name), getattr(expected, name)
        assert isinstance(mine, torch.Tensor), name  # the state stays torch whatever built it
        assert torch.equal(mine, theirs), name


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_state_verbs(kind):
    """Every verb, fed the caller's arrays, leaves the state exactly as the torch-fed twin."""
    vocab, history = 50, history_array(4, 12, 50)
    seen_from = np.array([0, 1, 2, 3], dtype=np.int64)
    state = ops.PenaltyState(as_kind(history, kind), vocab, seen_from=as_kind(seen_from, kind), generated_from=6,
                             rollback_window=8)
    twin = ops.PenaltyState(torch_of(history), vocab, seen_from=torch_of(seen_from), generated_from=6,
                            rollback_window=8)
    assert_same_state(state, twin)
    steps = [("accept", (history_array(4, 3, vocab, seed=7),)),
             ("accept", (history_array(4, 1, vocab, seed=8)[:, 0],)),
             ("rollback", (np.array([2, 0], dtype=np.int64), np.array([3, 1], dtype=np.int64))),
             ("reorder", (np.array([3, 3, 0, 1], dtype=np.int64),)),
             ("reset", (np.array([1], dtype=np.int64), history_array(1, 5, vocab, seed=9)))]
    for verb, arguments in steps:
        assert getattr(state, verb)(*(as_kind(a, kind) for a in arguments)) is None
        getattr(twin, verb)(*map(torch_of, arguments))
        assert_same_state(state, twin)
    assert seen_from.tolist() == [0, 1, 2, 3]  # the state updated a copy, never the caller's array


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_penalties_and_sample_with_a_state(kind, backend):
    vocab, history, logits = 60, history_array(3, 20, 60), logits_array(3, 60, seed=10)
    state = ops.PenaltyState(as_kind(history, kind), vocab, seen_from=0, generated_from=8)
    repetition = np.array([1.3, 0.8, 1.0], dtype=np.float32)
    penalties = dict(presence_penalty=0.5, frequency_penalty=-0.2)
    actual = ops.apply_penalties(as_kind(logits, kind), state, repetition_penalty=as_kind(repetition, kind),
                                 backend=backend, **penalties)
    expected = ops.apply_penalties(torch_of(logits), state, repetition_penalty=torch_of(repetition), backend=backend,
                                   **penalties)
    assert_same(actual, expected, kind)
    assert not np.array_equal(np.asarray(actual), logits)  # the penalties did change the logits
    tokens = ops.sample(as_kind(logits, kind), seed=3, penalty_state=state, repetition_penalty=1.4, backend=backend)
    assert_same(tokens, ops.sample(torch_of(logits), seed=3, penalty_state=state, repetition_penalty=1.4,
                                   backend=backend), kind)
    # The kernel inputs are a handle onto the state's buffers: torch, whatever kind the penalties came in.
    handle = state.tensors(repetition_penalty=as_kind(repetition, kind))
    assert type(handle) is ops.PenaltyTensors and all(isinstance(t, torch.Tensor) for t in handle if t is not None)
    sampler = ops.Sampler(3, "cpu", seed=3, backend=backend)
    assert_same(sampler(as_kind(logits, kind), 0, penalties=handle),
                sampler(torch_of(logits), 0, penalties=state.tensors(repetition_penalty=torch_of(repetition))), kind)


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_penalties_writes_into_numpy_out(backend):
    vocab, logits = 40, logits_array(2, 40, seed=11)
    state = ops.PenaltyState(history_array(2, 10, vocab), vocab, generated_from=0)
    expected = ops.apply_penalties(torch_of(logits), state, frequency_penalty=0.3, backend=backend).numpy()
    out = np.zeros_like(logits)
    assert ops.apply_penalties(logits, state, frequency_penalty=0.3, out=out, backend=backend) is out
    assert np.array_equal(out, expected)
    in_place = logits.copy()
    assert ops.apply_penalties(in_place, state, frequency_penalty=0.3, out=in_place, backend=backend) is in_place
    assert np.array_equal(in_place, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_numpy_is_read_but_never_written(backend):
    vocab, logits = 40, logits_array(2, 40, seed=12)
    state = ops.PenaltyState(history_array(2, 10, vocab), vocab, generated_from=0)
    frozen = logits.copy()
    frozen.flags.writeable = False
    expected = ops.apply_penalties(torch_of(logits), state, presence_penalty=1.0, backend=backend).numpy()
    assert np.array_equal(ops.apply_penalties(frozen, state, presence_penalty=1.0, backend=backend), expected)
    assert_same(ops.softmax(frozen, backend=backend), ops.softmax(torch_of(logits), backend=backend), "numpy")
    with pytest.raises(ValueError, match=r"out must be a writable array.*read-only numpy.ndarray"):
        ops.apply_penalties(frozen, state, presence_penalty=1.0, out=frozen, backend=backend)
    assert np.array_equal(frozen, logits)


def test_jax_out_is_refused():
    jnp = _jax().numpy
    vocab, logits = 40, logits_array(2, 40, seed=13)
    state = ops.PenaltyState(history_array(2, 10, vocab), vocab, generated_from=0)
    with pytest.raises(ValueError, match=r"out must be a writable array.*immutable"):
        ops.apply_penalties(jnp.asarray(logits), state, presence_penalty=1.0, out=jnp.asarray(logits))
    with pytest.raises(ValueError, match=r"out must be a writable array.*immutable"):
        ops.apply_penalties(logits, state, presence_penalty=1.0, out=jnp.asarray(logits))


# --- what the wrapper itself promises -------------------------------------------------------------------

def test_inputs_are_imported_without_a_copy():
    """The op sees tensors over the caller's own memory: numpy's buffer, and JAX's (on CPU)."""
    seen = []

    @accepts_dlpack
    def op(x, *, y=None):
        seen.append((x, y))
        return x + 1

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    jax_array = _jax().numpy.ones((2, 3), dtype=np.float32)
    result = op(array, y=jax_array)
    assert type(result) is np.ndarray and result.tolist() == (array + 1).tolist()
    x, y = seen[-1]
    assert isinstance(x, torch.Tensor) and x.data_ptr() == array.__array_interface__["data"][0]
    assert isinstance(y, torch.Tensor) and y.data_ptr() == jax_array.unsafe_buffer_pointer()


def test_results_come_back_in_the_first_arrays_kind():
    jnp = _jax().numpy
    logits = logits_array(2, 10)
    assert_kind(ops.softmax(jnp.asarray(logits), np.array([1.0, 2.0], dtype=np.float32)), "jax")
    assert_kind(ops.softmax(logits, jnp.asarray([1.0, 2.0])), "numpy")


def test_torch_calls_are_untouched():
    """With torch tensors only the op gets the very same objects and its results come back as they are."""
    calls = []

    @accepts_dlpack(writes=("out",))
    def op(x, scale, *, out=None):
        calls.append((x, out))
        return out

    x, out = torch.zeros(3), torch.ones(3)
    assert op(x, 2.0, out=out) is out
    assert calls[-1][0] is x and calls[-1][1] is out
    for name in ("softmax", "sample", "beam_step", "apply_penalties", "verify"):
        function = getattr(ops, name)
        assert inspect.signature(function) == inspect.signature(function.__wrapped__)
        assert function.__doc__ == function.__wrapped__.__doc__


@pytest.mark.parametrize("kind", KINDS)
def test_objects_that_are_not_arrays_get_the_ops_error(kind):
    logits = as_kind(logits_array(2, 10), kind)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        ops.softmax([[0.0, 1.0]])
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got object"):
        ops.sample(object(), seed=0)
    state = ops.PenaltyState(history_array(2, 4, 10), 10)
    with pytest.raises(TypeError, match="tokens must be an integer torch.Tensor, got list"):
        state.accept([1, 2])
    with pytest.raises(ValueError, match="out must be a contiguous"):
        ops.apply_penalties(logits, state, repetition_penalty=1.2, out=[[0.0] * 10] * 2)


def test_a_dtype_the_op_refuses_gets_the_ops_error():
    with pytest.raises(TypeError, match="logits must be float32, float16 or bfloat16, got torch.float64"):
        ops.softmax(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="scores must be float32, got torch.float16"):
        ops.topk(np.zeros((2, 3), dtype=np.float16), 1)
    with pytest.raises(TypeError, match="tokens must be an integer tensor, got torch.float32"):
        ops.PenaltyState(history_array(2, 4, 10), 10).accept(np.zeros(2, dtype=np.float32))


class _DLPackOnly:
    """An array type that exports DLPack but has no array-API namespace: results cannot be made of it."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __dlpack__(self, *args, **kwargs):
        return self.tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()


class _ArrayAPIArray(_DLPackOnly):
    """The least an array-API library offers (CuPy's arrays, say): DLPack both ways, on any device."""

    def __array_namespace__(self, api_version=None):
        return self

    @staticmethod
    def from_dlpack(array) -> "_ArrayAPIArray":
        return _ArrayAPIArray(torch.from_dlpack(array))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_any_array_api_library_on_any_device(device):
    """The array API's namespace brings results back; CUDA memory is shared both ways, as CPU memory is."""
    logits = torch_of(logits_array(3, 40, seed=14)).to(device)
    state = ops.PenaltyState(torch_of(history_array(3, 10, 40)).to(device), 40, generated_from=0)
    tokens = ops.sample(_ArrayAPIArray(logits), seed=2, top_k=8)
    assert type(tokens) is _ArrayAPIArray and tokens.tensor.device == logits.device
    assert torch.equal(tokens.tensor, ops.sample(logits, seed=2, top_k=8))
    out = _ArrayAPIArray(torch.empty_like(logits))
    assert ops.apply_penalties(_ArrayAPIArray(logits), state, presence_penalty=0.7, out=out) is out
    assert torch.equal(out.tensor, ops.apply_penalties(logits, state, presence_penalty=0.7))
    values, indices = ops.topk(_ArrayAPIArray(logits), 4)
    expected = torch.topk(logits, 4)  # distinct random scores: no ties for torch.topk to order its own way
    assert torch.equal(values.tensor, expected.values) and torch.equal(indices.tensor, expected.indices)


def test_a_kind_without_a_namespace_is_read_but_results_raise():
    history = torch.tensor([[1, 2, 3], [4, 5, 6]])
    state = ops.PenaltyState(history, 10, generated_from=0)
    state.accept(_DLPackOnly(torch.tensor([7, 8])))  # nothing to return: it works
    assert state.lengths.tolist() == [4, 4] and state.generated[0, 7].item() == 1
    with pytest.raises(TypeError, match="cannot return its result as .*_DLPackOnly.*__array_namespace__"):
        ops.softmax(_DLPackOnly(torch.zeros(2, 3)))


def test_jax_bfloat16_logits():
    jnp = _jax().numpy
    logits = jnp.asarray(logits_array(2, 20), dtype=jnp.bfloat16)
    actual = ops.softmax(logits, backend="ref")
    assert actual.dtype == jnp.bfloat16
    expected = ops.softmax(torch.from_dlpack(logits).clone(), backend="ref")
    assert torch.equal(torch.from_dlpack(actual), expected)


def test_tensorflow_tensors_go_through_tf_experimental_dlpack(monkeypatch):
    """TensorFlow tensors have no ``__dlpack__`` (tensorflow/tensorflow#61769), only ``tf.experimental.dlpack``'s
    capsules. TensorFlow is not installed here: a stand-in module with its names checks the wiring."""
    class Tensor:
        __module__ = "tensorflow.python.framework.ops"

        def __init__(self, tensor: torch.Tensor):
            self.tensor = tensor

    def to_dlpack(tensor: Tensor):
        return torch.utils.dlpack.to_dlpack(tensor.tensor)

    def from_dlpack(capsule) -> Tensor:
        return Tensor(torch.from_dlpack(capsule))

    tf = types.ModuleType("tensorflow")
    tf.Tensor = Tensor
    tf.experimental = types.SimpleNamespace(dlpack=types.SimpleNamespace(to_dlpack=to_dlpack, from_dlpack=from_dlpack))
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    logits = torch_of(logits_array(2, 30, seed=15))
    state = ops.PenaltyState(torch_of(history_array(2, 6, 30)), 30, generated_from=0)
    penalised = ops.apply_penalties(Tensor(logits), state, presence_penalty=0.5)
    assert type(penalised) is Tensor
    assert torch.equal(penalised.tensor, ops.apply_penalties(logits, state, presence_penalty=0.5))
    with pytest.raises(ValueError, match=r"out must be a writable array.*immutable"):
        ops.apply_penalties(logits, state, presence_penalty=0.5, out=Tensor(logits.clone()))
