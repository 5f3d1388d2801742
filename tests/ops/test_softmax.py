"""turbogen.ops.softmax on every backend against turbogen.ref, and the dispatch rules."""

from __future__ import annotations

import pytest
import torch

import turbogen
from turbogen import ops, ref
from turbogen.ops import _dispatch

from conftest import backend_params, device_for
from tolerances import assert_bit_exact, assert_close_across_compilations

# (rtol, atol) between backends, which sum in different orders and may use different exp
# approximations. A softmax's rounding error is relative to each probability (exp errs relatively, and
# the row sum's error scales every element alike), so the bound is per element relative, far tighter for
# small probabilities than tests/tolerances.py's bound scaled to the largest value. float32: a few ulps
# (3.7e-6 measured at vocab 32003); results under 1e-30 lie in exp's underflow range, where hosts flush
# denormals differently. float16 / bfloat16: float32 results that round one ulp apart (relative eps;
# float16's subnormals are 2**-24 apart).
# fp32: exp's result carries the rounding of its argument, |x - max| / temperature (here up to ~150) times fp32's
# epsilon, ~1e-5 relative, and backends (numpy under the Triton interpreter, AVX2, CUDA) round it differently.
TOLERANCE = {torch.float32: dict(rtol=4e-5, atol=1e-30),
             torch.float16: dict(rtol=torch.finfo(torch.float16).eps, atol=2.0 ** -24),
             torch.bfloat16: dict(rtol=torch.finfo(torch.bfloat16).eps, atol=1e-30)}


def _expected(logits, temperature):
    return torch.softmax(logits.float() / torch.as_tensor(temperature).float().reshape(-1, 1), dim=-1)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch,vocab", [(1, 17), (65, 17), (1, 32003), (65, 32003)])
def test_matches_reference(backend, dtype, batch, vocab):
    if backend == "triton" and dtype != torch.float32 and vocab > 1000 and batch > 1:
        pytest.skip("interpreter time: large triton shapes run in fp32 only")
    device = device_for(backend)
    generator = torch.Generator().manual_seed(batch * vocab)
    logits = (torch.randn(batch, vocab, generator=generator) * 4).to(device=device, dtype=dtype)
    temperature = (torch.rand(batch, generator=generator) + 0.25).to(device)
    for temp in (1.0, 0.7, temperature):
        out = ops.softmax(logits, temp, backend=backend)
        assert out.dtype == dtype and out.shape == logits.shape and out.is_contiguous()
        torch.testing.assert_close(out.float(), ref.softmax(logits, temp).float(), **TOLERANCE[dtype])
        torch.testing.assert_close(out.float(), _expected(logits, temp), **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", backend_params())
def test_strided_rows_are_read_correctly(backend):
    device = device_for(backend)
    wide = torch.randn(5, 40, device=device)
    view = wide[:, 3:20]  # rows 40 elements apart, 17 wide
    torch.testing.assert_close(ops.softmax(view, backend=backend), torch.softmax(view, -1), **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", backend_params())
def test_empty_batch(backend):
    out = ops.softmax(torch.empty(0, 17, device=device_for(backend)), backend=backend)
    assert out.shape == (0, 17)


@pytest.mark.parametrize("backend", backend_params())
def test_masked_tokens_get_zero(backend):
    logits = torch.randn(3, 33, device=device_for(backend))
    logits[:, ::2] = float("-inf")
    out = ops.softmax(logits, backend=backend)
    assert torch.all(out[:, ::2] == 0)
    assert_close_across_compilations(out.sum(-1), torch.ones(3, device=logits.device))


@pytest.mark.parametrize("bad,match", [
    (lambda: ops.softmax(torch.randn(4)), "2-D"),
    (lambda: ops.softmax(torch.randn(2, 3).long()), "float32"),
    (lambda: ops.softmax(torch.randn(3, 2).t()), "contiguous rows"),
    (lambda: ops.softmax(torch.randn(2, 3), 0.0), "temperature must be in"),
    (lambda: ops.softmax(torch.randn(2, 3), -1.0), "temperature must be in"),
    (lambda: ops.softmax(torch.randn(2, 3), float("nan")), "temperature must be in"),
    (lambda: ops.softmax(torch.randn(2, 3), torch.ones(3)), r"temperature must be a scalar or a tensor of shape \[2\]"),
    (lambda: ops.softmax(torch.randn(2, 3), "hot"), "temperature must be a number"),
    (lambda: ops.softmax(torch.randn(2, 3), backend="tpu"), "backend must be one of"),
    (lambda: ops.softmax([[1.0]]), "logits must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


def test_unavailable_explicit_backend_names_backend_and_reason(monkeypatch):
    monkeypatch.setattr(_dispatch, "backend_status",
                        lambda name: _dispatch.BackendStatus(name, name == "ref", "" if name == "ref" else "not built"))
    with pytest.raises(ValueError, match=r"backend='cpu' is unavailable: not built"):
        ops.softmax(torch.randn(2, 3), backend="cpu")
    # The automatic choice falls back silently to the reference (torch.softmax itself at temperature 1).
    x = torch.randn(2, 3)
    assert_bit_exact(ops.softmax(x), torch.softmax(x, -1))


def test_environment_variable_selects_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(ref, "softmax", lambda logits, t: calls.append("ref") or torch.softmax(logits, -1))
    monkeypatch.setenv(_dispatch.ENV_VAR, "ref")
    ops.softmax(torch.randn(2, 3))
    assert calls == ["ref"]
    monkeypatch.setenv(_dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="TURBOGEN_BACKEND must be one of"):
        ops.softmax(torch.randn(2, 3))


def test_argument_overrides_environment(monkeypatch):
    calls = []
    monkeypatch.setattr(ref, "softmax", lambda logits, t: calls.append("ref") or torch.softmax(logits, -1))
    monkeypatch.setenv(_dispatch.ENV_VAR, "bogus")
    x = torch.randn(2, 3)
    assert_bit_exact(ops.softmax(x, backend="ref"), torch.softmax(x, -1))
    assert calls == ["ref"]


def test_automatic_choice_by_device():
    expected = "cpu" if ops.available_backends()["cpu"] else "ref"
    assert _dispatch.resolve_backend("softmax", torch.device("cpu")) == expected


def test_cuda_backend_rejects_cpu_tensors():
    statuses = ops.available_backends()
    if not statuses["cuda"]:
        with pytest.raises(ValueError, match="backend='cuda' is unavailable"):
            ops.softmax(torch.randn(2, 3), backend="cuda")
    else:
        with pytest.raises(ValueError, match="takes cuda tensors"):
            ops.softmax(torch.randn(2, 3), backend="cuda")


def test_available_backends_reports_every_backend_with_reason():
    statuses = ops.available_backends()
    assert list(statuses) == ["ref", "cpu", "triton", "cuda"]
    assert statuses["ref"].available
    for status in statuses.values():
        assert status.available or status.reason


# opcheck and compiling ops.softmax: tests/ops/test_registry.py, for every op; the extension's own
# argument checks: tests/ops/test_native_bounds.py.

def test_reference_compiles_fullgraph():
    compiled = torch.compile(ref.softmax, fullgraph=True)
    x, t = torch.randn(4, 33), torch.rand(4) + 0.5
    # Inductor sums in another order and may use another exp: per element relative, as between backends.
    torch.testing.assert_close(compiled(x, t), ref.softmax(x, t), **TOLERANCE[torch.float32])


def test_version_matches_extension():
    if not ops.available_backends()["cpu"]:
        pytest.skip(ops.available_backends()["cpu"].reason)
    from turbogen import _ext

    assert _ext.extension().version == turbogen.__version__
