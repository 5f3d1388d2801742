"""turbogen.ops.write_kv and turbogen.ops.paged_attention on every backend, against turbogen.ref.paged and against
torch's scaled_dot_product_attention over each sequence's own dense keys (the definition): block-boundary lengths,
empty prefixes, one-token sequences, sequences without queries, decode and prefill mixed, MHA / GQA / MQA, sliding
windows, softcaps, fp16 / bf16; unused cache slots hold NaN and unused block-table entries hold garbage, neither
of which may reach a result; bad arguments raise errors naming them."""

from __future__ import annotations

import math

import pytest
import torch

from turbogen import ops
from turbogen.ref import paged as ref_paged

from conftest import backend_params, device_for

NAN = float("nan")
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
             torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


class Paged:
    """A paged cache holding ``seq_lens[s]`` random keys per sequence in shuffled blocks (NaN everywhere else),
    block tables whose unused entries are garbage, and packed queries for the last ``q_lens[s]`` positions."""

    def __init__(self, seq_lens, q_lens, *, block_size=4, heads=4, kv_heads=2, head_dim=8, dtype=torch.float32,
                 seed=0, device="cpu", write_backend="ref", spare_blocks=3):
        generator = torch.Generator().manual_seed(seed)
        self.seq_lens, self.q_lens, self.block_size = list(seq_lens), list(q_lens), block_size
        self.heads, self.kv_heads, self.head_dim, self.dtype = heads, kv_heads, head_dim, dtype
        used = [math.ceil(length / block_size) for length in seq_lens]
        num_blocks = sum(used) + spare_blocks
        max_blocks = max(used, default=0) + 1
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.key_cache = torch.full(shape, NAN, dtype=dtype, device=device)
        self.value_cache = torch.full(shape, NAN, dtype=dtype, device=device)
        order = torch.randperm(num_blocks, generator=generator).tolist()
        garbage = [-1, -7, num_blocks, 10 ** 6]
        tables = torch.tensor([[garbage[(s + b) % 4] for b in range(max_blocks)] for s in range(len(seq_lens))],
                              dtype=torch.int32).reshape(len(seq_lens), max_blocks)
        self.keys, self.values = [], []
        slots = []
        for s, length in enumerate(seq_lens):
            for b in range(used[s]):
                tables[s, b] = order.pop()
            self.keys.append((torch.randn(length, kv_heads, head_dim, generator=generator)).to(dtype))
            self.values.append((torch.randn(length, kv_heads, head_dim, generator=generator)).to(dtype))
            slots += [int(tables[s, j // block_size]) * block_size + j % block_size for j in range(length)]
        self.block_tables = tables.to(device)
        if slots:
            ops.write_kv(torch.cat(self.keys).to(device), torch.cat(self.values).to(device), self.key_cache,
                         self.value_cache, torch.tensor(slots, device=device), backend=write_backend)
        self.cu_seqlens_q = torch.tensor([0, *torch.tensor(q_lens, dtype=torch.int64).cumsum(0).tolist()],
                                         dtype=torch.int32, device=device)
        self.seq_lens_tensor = torch.tensor(seq_lens, dtype=torch.int32, device=device)
        self.query = (torch.randn(sum(q_lens), heads, head_dim, generator=generator) * 2).to(dtype).to(device)

    def run(self, backend, **options):
        return ops.paged_attention(self.query, self.key_cache, self.value_cache, self.block_tables, self.cu_seqlens_q,
                                   self.seq_lens_tensor, backend=backend, **options)

    def dense(self, scale=None, sliding_window=None, softcap=None) -> torch.Tensor:
        """float32 [total_q, heads, head_dim]: per sequence, SDPA (or the eager softcapped math) over its own keys."""
        scale = 1.0 / math.sqrt(self.head_dim) if scale is None else scale
        group = self.heads // self.kv_heads
        outs = []
        for s, (length, q_len) in enumerate(zip(self.seq_lens, self.q_lens)):
            if q_len == 0:
                continue
            q = self.query[int(self.cu_seqlens_q[s]):int(self.cu_seqlens_q[s + 1])].cpu().float().transpose(0, 1)
            k = self.keys[s].float().repeat_interleave(group, 1).transpose(0, 1)
            v = self.values[s].float().repeat_interleave(group, 1).transpose(0, 1)
            position = torch.arange(length - q_len, length)[:, None]
            key = torch.arange(length)[None, :]
            mask = key <= position
            if sliding_window:
                mask &= key > position - sliding_window
            if softcap:
                scores = torch.tanh(q @ k.transpose(1, 2) * scale / softcap) * softcap
                out = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v
            else:
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            outs.append(out.transpose(0, 1))
        if not outs:
            return torch.empty(0, self.heads, self.head_dim)
        return torch.cat(outs)


def _boundaries(block_size):
    """Decode tokens and whole prefills at block_size - 1, block_size, block_size + 1 keys."""
    lengths = [max(block_size - 1, 1), block_size, block_size + 1]
    return lengths * 2, [1, 1, 1, *lengths]


CASES = {
    "boundaries-bs4": (*_boundaries(4), 4),
    "boundaries-bs16": (*_boundaries(16), 16),
    "block-size-1": ([1, 3, 5], [1, 2, 5], 1),
    # decode tokens, a chunk in the middle of a prompt, a sequence without queries, a whole prefill
    "mixed": ([1, 7, 9, 16, 2, 6], [1, 1, 4, 3, 0, 6], 4),
    "one-token": ([1, 1, 1], [1, 1, 1], 4),
    "empty-prefix": ([5, 8], [5, 8], 4),
}
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", backend_params())
def test_paged_attention_equals_dense_sdpa(backend, case, heads):
    seq_lens, q_lens, block_size = CASES[case]
    num_heads, kv_heads = HEADS[heads]
    paged = Paged(seq_lens, q_lens, block_size=block_size, heads=num_heads, kv_heads=kv_heads,
                  device=device_for(backend), seed=len(case))
    out = paged.run(backend)
    assert out.dtype == torch.float32 and out.shape == paged.query.shape
    torch.testing.assert_close(out.cpu(), paged.dense(), **TOLERANCE[torch.float32])


OPTIONS = {
    "window-1": dict(sliding_window=1),
    "window-3": dict(sliding_window=3),
    "window-long": dict(sliding_window=100),
    "softcap": dict(softcap=2.0),
    "window-softcap-scale": dict(sliding_window=5, softcap=3.0, scale=0.7),
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("backend", backend_params())
def test_sliding_window_softcap_and_scale(backend, option):
    seq_lens, q_lens, block_size = CASES["mixed"]
    paged = Paged(seq_lens, q_lens, block_size=block_size, head_dim=12, device=device_for(backend), seed=3)
    out = paged.run(backend, **OPTIONS[option])
    torch.testing.assert_close(out.cpu(), paged.dense(**OPTIONS[option]), **TOLERANCE[torch.float32])


# Long prefill chunks: many (query, head) rows per tile and keys over several 64-key panels of the cpu kernel (its
# prefill path), chunks starting mid-block, head_dim off the vector widths, GQA groups of 1, 2 and 4.
LONG_CHUNKS = ([200, 150, 70, 3], [40, 150, 9, 1])
LONG_OPTIONS = {"causal": {}, "window-70": dict(sliding_window=70), "window-3": dict(sliding_window=3),
                "softcap": dict(softcap=2.0)}


@pytest.mark.parametrize("head_dim", [20, 32])
@pytest.mark.parametrize("block_size", [5, 16])
@pytest.mark.parametrize("heads", [(8, 8), (8, 4), (8, 2)], ids=["mha", "gqa2", "gqa4"])
@pytest.mark.parametrize("option", list(LONG_OPTIONS))
@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_long_prefill_chunks(backend, option, heads, block_size, head_dim):
    seq_lens, q_lens = LONG_CHUNKS
    paged = Paged(seq_lens, q_lens, block_size=block_size, heads=heads[0], kv_heads=heads[1], head_dim=head_dim,
                  device=device_for(backend), seed=block_size + head_dim)
    out = paged.run(backend, **LONG_OPTIONS[option])
    torch.testing.assert_close(out.cpu(), paged.dense(**LONG_OPTIONS[option]), **TOLERANCE[torch.float32])


def test_indices_checked_once():
    """check_paged_indices raises what paged_attention raises for bad index values; the checked-indices path gives
    paged_attention's result, and its cpu kernel still refuses an index out of range rather than reading it."""
    import importlib

    if not ops.available_backends()["cpu"]:
        pytest.skip("the cpu backend is unavailable: " + ops.available_backends()["cpu"].reason)
    checked_ops = importlib.import_module("turbogen.ops.paged_attention")  # the module (ops.paged_attention: the op)
    paged = Paged(*LONG_CHUNKS, block_size=16, heads=8, kv_heads=2, head_dim=32, seed=5)
    num_blocks = paged.key_cache.shape[0]
    sizes = dict(total_q=paged.query.shape[0], num_blocks=num_blocks, block_size=16)
    indices = (paged.block_tables, paged.cu_seqlens_q, paged.seq_lens_tensor)
    checked_ops.check_paged_indices(*indices, **sizes)
    out = checked_ops.paged_attention_checked_indices(paged.query, paged.key_cache, paged.value_cache, *indices,
                                                      backend="cpu")
    torch.testing.assert_close(out, paged.run("cpu"), rtol=0, atol=0)
    bad = paged.block_tables.clone()
    bad[0, 0] = num_blocks
    with pytest.raises(ValueError, match=r"block_tables\[0, 0\] = .* out of range"):
        checked_ops.check_paged_indices(bad, *indices[1:], **sizes)
    with pytest.raises(ValueError, match="turbogen._C"):
        checked_ops.paged_attention_checked_indices(paged.query, paged.key_cache, paged.value_cache, bad, *indices[1:],
                                                    backend="cpu")
    with pytest.raises(TypeError, match="seq_lens must be a 1-D int32 tensor"):
        checked_ops.check_paged_indices(*indices[:2], paged.seq_lens_tensor.long(), **sizes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", backend_params())
def test_half_precision(backend, dtype):
    seq_lens, q_lens, block_size = CASES["mixed"]
    paged = Paged(seq_lens, q_lens, block_size=block_size, dtype=dtype, device=device_for(backend), seed=5)
    out = paged.run(backend, softcap=4.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().float(), paged.dense(softcap=4.0), **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", backend_params())
def test_backends_agree_with_the_reference_on_a_decode_batch(backend):
    """A decode batch over longer sequences (several chunks of the kernels' key loops), GQA 4:1."""
    seq_lens = [31, 64, 65, 100]
    paged = Paged(seq_lens, [1] * 4, block_size=8, heads=8, kv_heads=2, head_dim=16, device=device_for(backend),
                  seed=7)
    expected = paged.run("ref")
    torch.testing.assert_close(paged.run(backend), expected, **TOLERANCE[torch.float32])
    torch.testing.assert_close(expected.cpu(), paged.dense(), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", backend_params())
def test_no_queries(backend):
    paged = Paged([3, 0], [0, 0], device=device_for(backend))
    assert paged.run(backend).shape == (0, 4, 8)
    empty = Paged([], [], device=device_for(backend))
    assert paged.run(backend).shape == empty.run(backend).shape


# ---- write_kv -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", backend_params())
def test_write_kv_scatters_and_skips_padding(backend, dtype):
    device = device_for(backend)
    generator = torch.Generator().manual_seed(1)
    key_cache = torch.full((5, 4, 2, 6), NAN, dtype=dtype, device=device)
    value_cache = key_cache.clone()
    key = torch.randn(6, 2, 6, generator=generator).to(device)  # float32 into the caches' dtype
    value = torch.randn(6, 2, 6, generator=generator).to(device)
    slots = torch.tensor([19, -1, 0, 7, -1, 8], device=device)
    ops.write_kv(key, value, key_cache, value_cache, slots, backend=backend)
    expected_k = torch.full((5, 4, 2, 6), NAN, dtype=dtype)
    expected_v = expected_k.clone()
    ref_paged.write_kv(key.cpu(), value.cpu(), expected_k, expected_v, slots.cpu())
    torch.testing.assert_close(key_cache.cpu(), expected_k, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(value_cache.cpu(), expected_v, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(key_cache.view(20, 2, 6)[19].cpu(), key[0].to(dtype).cpu())
    assert int(torch.isnan(key_cache.view(20, 12)).all(-1).sum()) == 20 - 4


@pytest.mark.parametrize("backend", backend_params())
def test_write_then_attend_through_the_same_backend(backend):
    paged = Paged([5, 9], [2, 9], device=device_for(backend), write_backend=backend, seed=11)
    torch.testing.assert_close(paged.run(backend).cpu(), paged.dense(), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_write_kv_opcheck(backend):
    """torch.ops.turbogen.write_kv declares its in-place writes (mutates_args) correctly."""
    key_cache, value_cache = torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4)
    torch.library.opcheck(torch.ops.turbogen.write_kv.default,
                          (torch.randn(2, 1, 4), torch.randn(2, 1, 4), key_cache, value_cache,
                           torch.tensor([5, -1]), backend))


def test_write_kv_compiles_through_its_custom_op():
    key_cache, value_cache = torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4)
    key, value = torch.randn(2, 1, 4), torch.randn(2, 1, 4)

    @torch.compile(fullgraph=True, backend="eager")
    def step(k, v):
        ops.write_kv(k, v, key_cache, value_cache, torch.tensor([4, 1]), backend="cpu")
        return key_cache.sum()

    step(key, value)
    assert torch.equal(key_cache.view(6, 1, 4)[4], key[0]) and torch.equal(value_cache.view(6, 1, 4)[1], value[1])


def _error_case_ids(cases) -> list[str]:
    """Test ids from the overridden arguments and the expected message: the same in every process (an id made from
    a tensor's repr would hold random values, and pytest-xdist workers would disagree on the tests collected)."""
    return [f"{'+'.join(overrides)}:{match}" for overrides, _, match in cases]


WRITE_KV_ERRORS = [
    (dict(slot_mapping=torch.tensor([0, 20])), ValueError, "slot_mapping entries must be in"),
    (dict(slot_mapping=torch.tensor([-2, 0])), ValueError, "slot_mapping entries must be in"),
    (dict(slot_mapping=torch.tensor([0.0, 1.0])), TypeError, "slot_mapping must be an integer"),
    (dict(slot_mapping=torch.tensor([0])), ValueError, "slot_mapping must have shape"),
    (dict(key=torch.randn(2, 2, 5)), ValueError, "key must have shape"),
    (dict(value=torch.randn(3, 2, 6)), ValueError, "value must have key's 2 tokens"),
    (dict(key=torch.zeros(2, 2, 6, dtype=torch.int32)), TypeError, "key must be float32"),
    (dict(value_cache=torch.zeros(5, 4, 2, 6, dtype=torch.float16)), TypeError, "key_cache and value_cache"),
    (dict(value_cache=torch.zeros(5, 4, 2, 7)), ValueError, "value_cache must have key_cache's shape"),
    (dict(key_cache=torch.zeros(5, 2, 4, 6).transpose(1, 2)), ValueError, "contiguous"),
    (dict(key_cache=torch.zeros(20, 2, 6)), ValueError, "key_cache must be 4-D"),
]


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
@pytest.mark.parametrize("overrides,error,match", WRITE_KV_ERRORS, ids=_error_case_ids(WRITE_KV_ERRORS))
def test_write_kv_refuses_bad_arguments(backend, overrides, error, match):
    arguments = dict(key=torch.randn(2, 2, 6), value=torch.randn(2, 2, 6), key_cache=torch.zeros(5, 4, 2, 6),
                     value_cache=torch.zeros(5, 4, 2, 6), slot_mapping=torch.tensor([0, 1]))
    arguments.update(overrides)
    before = arguments["key_cache"].clone()
    with pytest.raises(error, match=match):
        ops.write_kv(**arguments, backend=backend)
    assert torch.equal(arguments["key_cache"], before)


# ---- paged_attention: bad arguments ---------------------------------------------------------------------------

def _valid():
    paged = Paged([5, 9], [1, 3])
    return dict(query=paged.query, key_cache=paged.key_cache, value_cache=paged.value_cache,
                block_tables=paged.block_tables, cu_seqlens_q=paged.cu_seqlens_q, seq_lens=paged.seq_lens_tensor)


def _table_with(entry):
    tables = _valid()["block_tables"].clone()
    tables[1, 2] = entry  # the last block sequence 1 (9 keys, block size 4) reads
    return tables


PAGED_ERRORS = [
    (dict(query=torch.randn(4, 8)), ValueError, "query must be 3-D"),
    (dict(query=torch.randn(4, 3, 8)), ValueError, "multiple of the caches' kv_heads"),
    (dict(query=torch.randn(4, 4, 6)), ValueError, "head_dim"),
    (dict(query=torch.randn(4, 4, 8, dtype=torch.float64)), TypeError, "query must be one of"),
    (dict(query=torch.randn(4, 4, 8, dtype=torch.float16)), TypeError, "must have the query's dtype"),
    (dict(value_cache=torch.zeros(12, 4, 2, 7)), ValueError, "value_cache must have key_cache's shape"),
    (dict(block_tables=torch.zeros(2, 4)), TypeError, "block_tables must be one of"),
    (dict(block_tables=_table_with(-1)), ValueError, r"block_tables\[1, 2\] = -1 is out of range"),
    (dict(block_tables=_table_with(10 ** 6)), ValueError, r"block_tables\[1, 2\] = 1000000 is out of range"),
    (dict(cu_seqlens_q=torch.tensor([0, 1], dtype=torch.int32)), ValueError, "cu_seqlens_q must have shape"),
    (dict(cu_seqlens_q=torch.tensor([0, 1, 3], dtype=torch.int32)), ValueError, "end at total_q"),
    (dict(cu_seqlens_q=torch.tensor([1, 1, 4], dtype=torch.int32)), ValueError, "start at 0"),
    (dict(cu_seqlens_q=torch.tensor([0, 5, 4], dtype=torch.int32)), ValueError, "non-decreasing"),
    (dict(seq_lens=torch.tensor([5, 2], dtype=torch.int32)), ValueError, r"seq_lens\[1\] = 2 is smaller"),
    (dict(seq_lens=torch.tensor([5, 17], dtype=torch.int32)), ValueError, r"seq_lens\[1\] = 17 exceeds"),
    (dict(seq_lens=torch.tensor([5], dtype=torch.int32)), ValueError, "seq_lens must have shape"),
    (dict(sliding_window=0), ValueError, "sliding_window must be None or an int >= 1"),
    (dict(softcap=-1.0), ValueError, "softcap must be None or a finite number > 0"),
    (dict(scale=float("nan")), ValueError, "scale must be a finite number"),
]


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
@pytest.mark.parametrize("overrides,error,match", PAGED_ERRORS, ids=_error_case_ids(PAGED_ERRORS))
def test_paged_attention_refuses_bad_arguments(backend, overrides, error, match):
    arguments = _valid()
    arguments.update(overrides)
    with pytest.raises(error, match=match):
        ops.paged_attention(**arguments, backend=backend)


def test_dispatch_rules():
    paged = Paged([3], [1])
    assert ops.available_backends()["ref"]
    with pytest.raises(ValueError, match="backend must be one of"):
        paged.run("gpu")
    torch.testing.assert_close(paged.run(None), paged.run("ref"), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", backend_params(("ref", "cpu")))
def test_paged_attention_compiles_fullgraph(backend):
    """The public function traces without a graph break: the reference as plain torch ops (no host sync), a
    compiled backend as the registered custom op; the host-side index checks are skipped while compiling."""
    torch.compiler.reset()
    paged = Paged([5, 7], [1, 3], seed=2)
    step = torch.compile(lambda q: paged.run(backend, softcap=30.0), fullgraph=True, backend="eager")
    torch.testing.assert_close(step(paged.query), paged.run(backend, softcap=30.0), **TOLERANCE[torch.float32])
