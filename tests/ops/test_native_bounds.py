"""The C++ entry points of turbogen._C, called directly with bad arguments: each raises a Python
exception (ValueError naming the argument, TypeError for values Python cannot convert) and never
reads or writes out of bounds. The sanitizer stage of `make test` runs this file against an
AddressSanitizer / UndefinedBehaviorSanitizer build, where an out-of-bounds access would abort.

Also: the typed stub python/turbogen/_C.pyi lists exactly the module's names, and the kernels'
portable variants (csrc/cpu/isa.h), which an AVX2 host never runs otherwise, compute what the AVX2
variants compute.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from turbogen import _ext

pytestmark = pytest.mark.skipif(_ext.extension_error() is not None, reason=str(_ext.extension_error()))

STUB = pathlib.Path(_ext.__file__).with_name("_C.pyi")
INT64_MAX = (1 << 63) - 1


def _public(names) -> set[str]:
    return {name for name in names if not name.startswith("_")}


def _stub_names() -> tuple[set[str], dict[str, set[str]]]:
    """(module-level names, {class: field and method names}) declared in _C.pyi."""
    module_names, classes = set(), {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.ClassDef):
            module_names.add(node.name)
            classes[node.name] = {item.target.id if isinstance(item, ast.AnnAssign) else item.name
                                  for item in node.body if isinstance(item, (ast.AnnAssign, ast.FunctionDef))}
        elif isinstance(node, ast.FunctionDef):
            module_names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            module_names.add(node.target.id)
    return module_names, classes


def test_stub_lists_exactly_the_module_names():
    extension = _ext.extension()
    module_names, classes = _stub_names()
    assert module_names == _public(dir(extension))
    for name, members in classes.items():
        assert _public(members) == _public(dir(getattr(extension, name))), name


def test_extension_override_is_the_module_loaded():
    """TURBOGEN_EXTENSION (the sanitizer stage's build) replaces the installed module, never silently."""
    override = os.environ.get("TURBOGEN_EXTENSION")
    if not override:
        pytest.skip("TURBOGEN_EXTENSION is not set: the installed extension is in use")
    assert pathlib.Path(_ext.extension().__file__).resolve() == pathlib.Path(override).resolve()


# ---- one valid call per cpu entry point, then each argument made wrong -----------------------------

class Buffers:
    """Tensors that outlive the argument structs holding their addresses."""

    def __init__(self, rows: int = 3, cols: int = 100, k: int = 4):
        self.rows, self.cols, self.k = rows, cols, k
        self.logits = torch.randn(rows, cols)
        self.out = torch.empty(rows, cols)
        self.temperature = torch.full((rows,), 0.8)
        self.top_k = torch.tensor([5], dtype=torch.int64)
        self.top_p = torch.tensor([0.9], dtype=torch.float64)
        self.min_p = torch.tensor([0.05])
        self.seed = torch.arange(rows, dtype=torch.int64)
        self.offset = torch.tensor([7], dtype=torch.int64)
        self.tokens = torch.empty(rows, dtype=torch.int64)
        self.logprobs = torch.empty(rows)
        self.values = torch.empty(rows, k)
        self.indices = torch.empty(rows, k, dtype=torch.int64)

    def sampling(self):
        args = _ext.extension().SamplingArgs()
        for name, value in dict(
                logits=self.logits.data_ptr(), rows=self.rows, vocab=self.cols, row_stride=self.cols, dtype=0,
                temperature=self.temperature.data_ptr(), temperature_per_row=True,
                top_k=self.top_k.data_ptr(), top_p=self.top_p.data_ptr(), min_p=self.min_p.data_ptr(),
                seed=self.seed.data_ptr(), offset=self.offset.data_ptr(), tokens=self.tokens.data_ptr(),
                logprobs=self.logprobs.data_ptr(), filtered=self.out.data_ptr()).items():
            setattr(args, name, value)
        return args

    def softmax(self):
        args = _ext.extension().SoftmaxArgs()
        for name, value in dict(logits=self.logits.data_ptr(), out=self.out.data_ptr(),
                                temperature=self.temperature.data_ptr(), rows=self.rows, cols=self.cols,
                                row_stride=self.cols, dtype=0, temperature_per_row=True).items():
            setattr(args, name, value)
        return args

    def topk(self):
        args = _ext.extension().TopKArgs()
        for name, value in dict(scores=self.logits.data_ptr(), values=self.values.data_ptr(),
                                indices=self.indices.data_ptr(), rows=self.rows, cols=self.cols,
                                row_stride=self.cols, k=self.k).items():
            setattr(args, name, value)
        return args


def test_valid_arguments_run():
    """The baselines below are valid: each bad-argument case changes one thing."""
    extension, buffers = _ext.extension(), Buffers()
    extension.launch_sample_cpu(buffers.sampling())
    assert ((buffers.tokens >= 0) & (buffers.tokens < buffers.cols)).all()
    extension.launch_softmax_cpu(buffers.softmax())
    torch.testing.assert_close(buffers.out, torch.softmax(buffers.logits / 0.8, dim=-1))
    extension.launch_topk_cpu(buffers.topk())
    assert torch.equal(buffers.indices, torch.topk(buffers.logits, buffers.k).indices)


SAMPLING_CASES = [
    (dict(logits=0), "null.*logits"),
    (dict(temperature=0), "null.*temperature"),
    (dict(top_k=0), "null.*top_k"),
    (dict(top_p=0), "null.*top_p"),
    (dict(min_p=0), "null.*min_p"),
    (dict(seed=0), "null.*seed"),
    (dict(offset=0), "null.*offset"),
    (dict(tokens=0, filtered=0, logprobs=0), "null.*at least one output"),
    (dict(tokens=0), "null.*logprobs needs tokens"),
    (dict(rows=-1), "sizes.*rows"),
    (dict(vocab=-1), "sizes.*vocab"),
    (dict(vocab=1 << 31), "sizes.*vocab"),
    (dict(row_stride=99), "stride"),
    (dict(row_stride=0), "stride"),
    (dict(row_stride=-5), "stride"),
    (dict(rows=1 << 40, row_stride=1 << 40), "sizes"),
    (dict(dtype=3), "dtype"),
    (dict(dtype=-1), "dtype"),
]

# Parameter values live in host memory on the cpu backend: checked before any row runs.
SAMPLING_VALUE_CASES = [
    ("temperature", torch.tensor([-1.0]), "temperature"),
    ("temperature", torch.tensor([float("nan")]), "temperature"),
    ("temperature", torch.tensor([float("inf")]), "temperature"),
    ("top_k", torch.tensor([-1], dtype=torch.int64), "top_k"),
    ("top_p", torch.tensor([0.0], dtype=torch.float64), "top_p"),
    ("top_p", torch.tensor([1.5], dtype=torch.float64), "top_p"),
    ("top_p", torch.tensor([float("nan")], dtype=torch.float64), "top_p"),
    ("min_p", torch.tensor([-0.1]), "min_p"),
    ("min_p", torch.tensor([1.5]), "min_p"),
]

SOFTMAX_CASES = [
    (dict(logits=0), "null.*logits"),
    (dict(out=0), "null.*out"),
    (dict(temperature=0), "null.*temperature"),
    (dict(rows=-1), "sizes.*rows"),
    (dict(cols=-3), "sizes.*cols"),
    (dict(row_stride=50), "stride"),
    (dict(rows=1 << 40, row_stride=1 << 40), "sizes"),
    (dict(dtype=7), "dtype"),
]

TOPK_CASES = [
    (dict(scores=0), "null.*scores"),
    (dict(values=0), "null.*values"),
    (dict(indices=0), "null.*indices"),
    (dict(rows=-2), "sizes.*rows"),
    (dict(cols=-1), "sizes"),
    (dict(k=-1), "sizes.*k must be"),
    (dict(k=101), "sizes.*k must be"),
    (dict(cols=5, k=6), "sizes.*k must be"),
    (dict(row_stride=10), "stride"),
    (dict(rows=1 << 40, row_stride=1 << 40), "sizes"),
]


def _apply(args, overrides: dict):
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


@pytest.mark.parametrize("overrides,match", SAMPLING_CASES, ids=str)
def test_sampling_refuses_bad_arguments(overrides, match):
    buffers = Buffers()
    with pytest.raises(ValueError, match=f"launch_sample_cpu: .*{match}"):
        _ext.extension().launch_sample_cpu(_apply(buffers.sampling(), overrides))


@pytest.mark.parametrize("name,value,match", SAMPLING_VALUE_CASES, ids=str)
def test_sampling_refuses_out_of_range_parameters(name, value, match):
    buffers = Buffers()
    args = _apply(buffers.sampling(), {name: value.data_ptr(), f"{name}_per_row": False})
    with pytest.raises(ValueError, match=f"out of range: {match}"):
        _ext.extension().launch_sample_cpu(args)


def test_sampling_filter_only_needs_no_seed():
    buffers = Buffers()
    args = _apply(buffers.sampling(), dict(tokens=0, logprobs=0, seed=0, offset=0))
    _ext.extension().launch_sample_cpu(args)
    assert torch.isfinite(buffers.out).any(dim=1).all()


@pytest.mark.parametrize("overrides,match", SOFTMAX_CASES, ids=str)
def test_softmax_refuses_bad_arguments(overrides, match):
    buffers = Buffers()
    with pytest.raises(ValueError, match=f"launch_softmax_cpu: .*{match}"):
        _ext.extension().launch_softmax_cpu(_apply(buffers.softmax(), overrides))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_softmax_refuses_out_of_range_temperature(temperature):
    buffers = Buffers()
    buffers.temperature[1] = temperature
    with pytest.raises(ValueError, match="out of range: temperature"):
        _ext.extension().launch_softmax_cpu(buffers.softmax())


@pytest.mark.parametrize("overrides,match", TOPK_CASES, ids=str)
def test_topk_refuses_bad_arguments(overrides, match):
    buffers = Buffers()
    with pytest.raises(ValueError, match=f"launch_topk_cpu: .*{match}"):
        _ext.extension().launch_topk_cpu(_apply(buffers.topk(), overrides))


@pytest.mark.parametrize("build", [lambda b: b.sampling(), lambda b: b.softmax(), lambda b: b.topk()],
                         ids=["sampling", "softmax", "topk"])
@pytest.mark.parametrize("field,value", [("rows", -1 - INT64_MAX - 1), ("rows", INT64_MAX + 1)])
def test_integers_beyond_int64_are_refused(build, field, value):
    with pytest.raises(TypeError):
        setattr(build(Buffers()), field, value)


@pytest.mark.parametrize("build,field", [(lambda b: b.sampling(), "logits"), (lambda b: b.softmax(), "out"),
                                         (lambda b: b.topk(), "indices")], ids=["sampling", "softmax", "topk"])
def test_negative_addresses_are_refused(build, field):
    with pytest.raises(TypeError):
        setattr(build(Buffers()), field, -8)


def test_unknown_fields_are_refused():
    with pytest.raises(AttributeError):
        _ext.extension().SamplingArgs().top_kk = 5


def test_empty_inputs_touch_nothing():
    extension, buffers = _ext.extension(), Buffers()
    extension.launch_sample_cpu(_apply(buffers.sampling(), dict(rows=0, logits=0, tokens=0, filtered=0)))
    extension.launch_softmax_cpu(_apply(buffers.softmax(), dict(cols=0, logits=0, out=0)))
    extension.launch_topk_cpu(_apply(buffers.topk(), dict(k=0, scores=0, values=0, indices=0)))
    tokens = torch.full((3,), 99, dtype=torch.int64)
    extension.launch_sample_cpu(_apply(buffers.sampling(), dict(vocab=0, logits=0, tokens=tokens.data_ptr(),
                                                                 filtered=0)))
    assert tokens.tolist() == [-1, -1, -1]


def test_philox_refuses_bad_rounds():
    with pytest.raises(ValueError, match="rounds"):
        _ext.extension().philox4x32(0, 0, 0, 0, 0, 0, rounds=65)


def test_cuda_launchers_validate_on_the_host_or_say_cuda_is_missing():
    """A CUDA build refuses bad arguments before any launch (no GPU needed); a build without CUDA
    says so."""
    extension, buffers = _ext.extension(), Buffers()
    bad_sampling = _apply(buffers.sampling(), dict(logits=0))
    bad_softmax = _apply(buffers.softmax(), dict(row_stride=1))
    if extension.cuda_compiled:
        with pytest.raises(ValueError, match="launch_sample_cuda: .*logits"):
            extension.launch_sample_cuda(bad_sampling, 0)
        with pytest.raises(ValueError, match="launch_sample_cuda: .*workspace"):
            extension.launch_sample_cuda(_apply(buffers.sampling(), {}), 0)
        with pytest.raises(ValueError, match="launch_softmax_cuda: .*stride"):
            extension.launch_softmax_cuda(bad_softmax, 0)
    else:
        for launch, args in ((extension.launch_sample_cuda, bad_sampling),
                             (extension.launch_softmax_cuda, bad_softmax)):
            with pytest.raises(RuntimeError, match="without CUDA"):
                launch(args, 0)
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.sampling_workspace_bytes(1, 10)


# ---- the portable variants (TURBOGEN_CPU_ISA=portable) against the AVX2 ones -------------------------

_VARIANT_SCRIPT = """
import sys
import torch
from turbogen import _ext, ops

generator = torch.Generator().manual_seed(0)
logits = torch.randn(16, 3000, generator=generator) * 4
outputs = {"isa": _ext.extension().cpu_isa()}
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    x = logits.to(dtype)
    for name, filters in {"none": {}, "top_p": dict(temperature=0.8, top_p=0.9), "min_p": dict(min_p=0.05),
                          "top_k": dict(top_k=5, top_p=0.8), "greedy": dict(temperature=0.0)}.items():
        key = f"{dtype}-{name}"
        outputs[key + "-tokens"], outputs[key + "-logprobs"] = ops.sample(
            x, seed=7, offset=3, return_logprobs=True, backend="cpu", **filters)
        outputs[key + "-filtered"] = ops.filter_logits(x, backend="cpu", **filters)
    outputs[f"{dtype}-softmax"] = ops.softmax(x, temperature=1.3, backend="cpu")
outputs["topk"] = ops.topk(logits, 6, backend="cpu")
torch.save(outputs, sys.argv[1])
"""


def _run_variant(path: pathlib.Path, isa: str | None) -> dict:
    environ = {key: value for key, value in os.environ.items() if key != "TURBOGEN_CPU_ISA"}
    if isa is not None:
        environ["TURBOGEN_CPU_ISA"] = isa
    subprocess.run([sys.executable, "-c", _VARIANT_SCRIPT, str(path)], env=environ, check=True, timeout=300)
    return torch.load(path)


def test_portable_variants_compute_what_the_avx2_variants_compute(tmp_path):
    if _ext.extension().cpu_isa() != "avx2":
        pytest.skip("this CPU runs the portable variants only")
    avx2 = _run_variant(tmp_path / "avx2.pt", None)
    portable = _run_variant(tmp_path / "portable.pt", "portable")
    assert (avx2.pop("isa"), portable.pop("isa")) == ("avx2", "portable")
    # FMA contraction (AVX2 only) moves exp and log by an ulp: a draw or a kept set may change only
    # where a score or a cumulative mass sits exactly at a boundary, which these inputs never do.
    for key, expected in avx2.items():
        actual = portable[key]
        if key.endswith("softmax") or key.endswith("logprobs"):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7, msg=key)
        elif key == "topk":
            assert all(torch.equal(a, e) for a, e in zip(actual, expected)), key
        else:
            assert torch.equal(actual, expected), key
