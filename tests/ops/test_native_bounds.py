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


# ---- launch_gumbel_noise_cpu ----------------------------------------------------------------------

class NoiseBuffers:
    """A valid GumbelNoiseArgs (3 rows, 100 columns) and the tensors behind its addresses."""

    def __init__(self, rows: int = 3, columns: int = 100):
        self.seed = torch.arange(rows, dtype=torch.int64)
        self.offset = torch.full((rows,), 1 << 33, dtype=torch.int64)
        self.out = torch.full((rows, columns), float("nan"))
        self.args = _ext.extension().GumbelNoiseArgs()
        for name, value in dict(seed=self.seed.data_ptr(), offset=self.offset.data_ptr(), out=self.out.data_ptr(),
                                rows=rows, columns=columns).items():
            setattr(self.args, name, value)


GUMBEL_NOISE_CASES = [
    (dict(seed=0), "null.*seed"),
    (dict(offset=0), "null.*offset"),
    (dict(out=0), "null.*out"),
    (dict(rows=-1), "sizes.*rows"),
    (dict(columns=-1), "sizes.*columns"),
    (dict(rows=1 << 40, columns=1 << 40), "sizes.*out"),
    (dict(rows=2, columns=(1 << 61) + 1), "sizes.*out"),
]


def test_gumbel_noise_valid_arguments_run():
    from turbogen.ref import philox

    buffers = NoiseBuffers()
    _ext.extension().launch_gumbel_noise_cpu(buffers.args)
    torch.testing.assert_close(buffers.out, philox.gumbel_noise(buffers.seed, buffers.offset, 100))


@pytest.mark.parametrize("overrides,match", GUMBEL_NOISE_CASES, ids=str)
def test_gumbel_noise_refuses_bad_arguments(overrides, match):
    buffers = NoiseBuffers()
    with pytest.raises(ValueError, match=f"launch_gumbel_noise_cpu: .*{match}"):
        _ext.extension().launch_gumbel_noise_cpu(_apply(buffers.args, overrides))
    assert buffers.out.isnan().all()


def test_gumbel_noise_empty_touches_nothing():
    extension, buffers = _ext.extension(), NoiseBuffers()
    extension.launch_gumbel_noise_cpu(_apply(buffers.args, dict(rows=0, seed=0, offset=0, out=0)))
    extension.launch_gumbel_noise_cpu(_apply(NoiseBuffers().args, dict(columns=0, seed=0, offset=0, out=0)))
    with pytest.raises((TypeError, ValueError)):
        buffers.args.rows = INT64_MAX + 1
    with pytest.raises(TypeError):
        buffers.args.out = -8


def test_gumbel_noise_cuda_validates_on_the_host_or_says_cuda_is_missing():
    extension, buffers = _ext.extension(), NoiseBuffers()
    bad = _apply(buffers.args, dict(out=0))
    if extension.cuda_compiled:
        with pytest.raises(ValueError, match="launch_gumbel_noise_cuda: .*out"):
            extension.launch_gumbel_noise_cuda(bad, 0)
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.launch_gumbel_noise_cuda(bad, 0)


# ---- the penalty entry points (csrc/include/turbogen/penalties.h) ----------------------------------

class PenaltyBuffers:
    """A valid penalty state (rows x vocab) and the apply / sample / accept structs over it."""

    def __init__(self, rows: int = 3, vocab: int = 100, window: int = 4):
        self.rows, self.vocab, self.window = rows, vocab, window
        words = (vocab + 31) // 32
        self.logits = torch.randn(rows, vocab)
        # A sentinel, not torch.empty: uninitialised memory may hold NaN, and NaN != NaN breaks "left untouched".
        self.out = torch.full((rows, vocab), -7.0)
        self.mask = torch.full((rows, words), -1, dtype=torch.int32)  # every bit, past the vocabulary too
        self.seen = torch.randint(0, 3, (rows, vocab), dtype=torch.int32)
        self.generated = torch.randint(0, 3, (rows, vocab), dtype=torch.int32)
        self.repetition = torch.tensor([1.3])
        self.presence = torch.full((rows,), 0.5)
        self.frequency = torch.tensor([0.25])
        self.seen_from = torch.zeros(rows, dtype=torch.int64)
        self.generated_from = torch.full((rows,), 2, dtype=torch.int64)
        self.lengths = torch.full((rows,), 3, dtype=torch.int64)
        self.recent = torch.zeros(rows, window, dtype=torch.int64)
        self.retained = torch.zeros(rows, dtype=torch.int64)
        self.tokens = torch.randint(0, vocab, (rows, 2))

    def penalty_fields(self) -> dict:
        return dict(penalty_mask=self.mask.data_ptr(), penalty_seen=self.seen.data_ptr(),
                    penalty_generated=self.generated.data_ptr(), repetition_penalty=self.repetition.data_ptr(),
                    presence_penalty=self.presence.data_ptr(), presence_penalty_per_row=True,
                    frequency_penalty=self.frequency.data_ptr())

    def apply(self):
        return _apply(_ext.extension().PenaltyArgs(),
                      dict(logits=self.logits.data_ptr(), out=self.out.data_ptr(), rows=self.rows, vocab=self.vocab,
                           row_stride=self.vocab, dtype=0, **self.penalty_fields()))

    def sampling(self):
        buffers = Buffers(self.rows, self.vocab)
        self.keep = buffers  # the sampling buffers must outlive the struct
        return _apply(buffers.sampling(), self.penalty_fields())

    def accept(self):
        return _apply(_ext.extension().PenaltyAcceptArgs(),
                      dict(mask=self.mask.data_ptr(), seen=self.seen.data_ptr(), generated=self.generated.data_ptr(),
                           seen_from=self.seen_from.data_ptr(), generated_from=self.generated_from.data_ptr(),
                           lengths=self.lengths.data_ptr(), recent=self.recent.data_ptr(),
                           retained=self.retained.data_ptr(), tokens=self.tokens.data_ptr(), rows=self.rows,
                           vocab=self.vocab, window=self.window, n=self.tokens.shape[1]))

    def state(self) -> list[torch.Tensor]:
        return [t.clone() for t in (self.mask, self.seen, self.generated, self.lengths, self.recent, self.retained)]


def test_penalty_entry_points_run():
    """The baselines below are valid: every marked token with a count is penalised, nothing else moves."""
    extension, buffers = _ext.extension(), PenaltyBuffers()
    extension.launch_apply_penalties_cpu(buffers.apply())
    x, seen, generated = buffers.logits, buffers.seen, buffers.generated
    expected = torch.where(seen > 0, torch.where(x < 0, x * 1.3, x / 1.3), x)
    expected = torch.where(generated > 0, expected - 0.25 * generated - 0.5, expected)
    assert torch.equal(buffers.out, expected)
    sampling = buffers.sampling()
    extension.launch_sample_cpu(sampling)
    assert ((buffers.keep.tokens >= 0) & (buffers.keep.tokens < buffers.vocab)).all()
    before = buffers.state()
    extension.launch_accept_penalty_tokens_cpu(buffers.accept())
    assert buffers.lengths.tolist() == [5] * buffers.rows and buffers.retained.tolist() == [2] * buffers.rows
    assert torch.equal(buffers.seen.sum(), before[1].sum() + buffers.tokens.numel())


PENALTY_CASES = [
    (dict(logits=0), "null.*logits"),
    (dict(out=0), "null.*out"),
    (dict(penalty_mask=0), "null.*penalty_mask"),
    (dict(repetition_penalty=0), "null.*repetition_penalty"),
    (dict(presence_penalty=0), "null.*presence_penalty"),
    (dict(frequency_penalty=0), "null.*frequency_penalty"),
    (dict(rows=-1), "sizes.*rows"),
    (dict(vocab=-1), "sizes.*vocab"),
    (dict(vocab=1 << 31), "sizes.*vocab"),
    (dict(row_stride=99), "stride"),
    (dict(rows=1 << 40, row_stride=1 << 40), "sizes"),
    (dict(dtype=3), "dtype"),
]

# A penalty mask set without counts is fine; counts without a mask are not.
SAMPLING_PENALTY_CASES = [
    (dict(penalty_mask=0), "null.*penalty_mask"),
    (dict(repetition_penalty=0), "null.*repetition_penalty"),
    (dict(presence_penalty=0), "null.*presence_penalty"),
    (dict(frequency_penalty=0), "null.*frequency_penalty"),
]

PENALTY_VALUE_CASES = [
    ("repetition_penalty", 0.0, "repetition_penalty"),
    ("repetition_penalty", -1.0, "repetition_penalty"),
    ("repetition_penalty", float("nan"), "repetition_penalty"),
    ("presence_penalty", float("inf"), "presence_penalty"),
    ("presence_penalty", float("nan"), "presence_penalty"),
    ("frequency_penalty", float("-inf"), "frequency_penalty"),
]

ACCEPT_CASES = [
    (dict(tokens=0), "null.*tokens"),
    (dict(mask=0), "null.*mask"),
    (dict(lengths=0), "null.*lengths"),
    (dict(retained=0), "null.*retained"),
    (dict(recent=0), "null.*recent"),
    (dict(seen_from=0), "null.*seen_from"),
    (dict(generated_from=0), "null.*generated_from"),
    (dict(rows=-1), "sizes.*rows"),
    (dict(vocab=-1), "sizes.*vocab"),
    (dict(vocab=0), "out of range.*tokens"),
    (dict(window=-1), "sizes.*window"),
    (dict(n=-1), "sizes.*n must be"),
    (dict(rows=1 << 62), "sizes"),
    (dict(vocab=1 << 31), "sizes.*vocab"),
]


@pytest.mark.parametrize("overrides,match", PENALTY_CASES, ids=str)
def test_apply_penalties_refuses_bad_arguments(overrides, match):
    buffers = PenaltyBuffers()
    with pytest.raises(ValueError, match=f"launch_apply_penalties_cpu: .*{match}"):
        _ext.extension().launch_apply_penalties_cpu(_apply(buffers.apply(), overrides))


def test_apply_penalties_in_place_needs_contiguous_rows():
    buffers = PenaltyBuffers()
    wide = torch.randn(buffers.rows, 2 * buffers.vocab)
    args = _apply(buffers.apply(), dict(logits=wide.data_ptr(), out=wide.data_ptr(), row_stride=2 * buffers.vocab))
    with pytest.raises(ValueError, match="stride.*out == logits"):
        _ext.extension().launch_apply_penalties_cpu(args)


@pytest.mark.parametrize("overrides,match", SAMPLING_PENALTY_CASES, ids=str)
def test_sampling_refuses_bad_penalty_arguments(overrides, match):
    buffers = PenaltyBuffers()
    with pytest.raises(ValueError, match=f"launch_sample_cpu: .*{match}"):
        _ext.extension().launch_sample_cpu(_apply(buffers.sampling(), overrides))


@pytest.mark.parametrize("name,value,match", PENALTY_VALUE_CASES, ids=str)
@pytest.mark.parametrize("launcher", ["launch_apply_penalties_cpu", "launch_sample_cpu"])
def test_penalty_values_are_checked(launcher, name, value, match):
    buffers = PenaltyBuffers()
    bad = torch.full((buffers.rows,), 1.0)
    bad[-1] = value  # only the last row's value is wrong
    args = buffers.apply() if launcher == "launch_apply_penalties_cpu" else buffers.sampling()
    _apply(args, {name: bad.data_ptr(), f"{name}_per_row": True})
    out = buffers.out.clone()
    with pytest.raises(ValueError, match=f"{launcher}: .*out of range: {match}"):
        getattr(_ext.extension(), launcher)(args)
    assert torch.equal(buffers.out, out)  # refused before any row ran


@pytest.mark.parametrize("overrides,match", ACCEPT_CASES, ids=str)
def test_accept_refuses_bad_arguments(overrides, match):
    buffers = PenaltyBuffers()
    before = buffers.state()
    with pytest.raises(ValueError, match=f"launch_accept_penalty_tokens_cpu: .*{match}"):
        _ext.extension().launch_accept_penalty_tokens_cpu(_apply(buffers.accept(), overrides))
    assert all(torch.equal(a, b) for a, b in zip(buffers.state(), before))


@pytest.mark.parametrize("bad_id", [100, -1, 1 << 40, -(1 << 62)])
def test_accept_refuses_out_of_range_tokens_before_writing(bad_id):
    buffers = PenaltyBuffers()
    buffers.tokens[-1, -1] = bad_id  # the last token: every other one would be counted first
    before = buffers.state()
    with pytest.raises(ValueError, match="launch_accept_penalty_tokens_cpu: .*tokens"):
        _ext.extension().launch_accept_penalty_tokens_cpu(buffers.accept())
    assert all(torch.equal(a, b) for a, b in zip(buffers.state(), before))


@pytest.mark.parametrize("length", [-1, INT64_MAX])
def test_accept_refuses_lengths_that_would_index_out_of_the_ring(length):
    buffers = PenaltyBuffers()
    buffers.lengths[1] = length
    before = buffers.state()
    with pytest.raises(ValueError, match="launch_accept_penalty_tokens_cpu: .*lengths"):
        _ext.extension().launch_accept_penalty_tokens_cpu(buffers.accept())
    assert all(torch.equal(a, b) for a, b in zip(buffers.state(), before))


def test_penalty_empty_inputs_touch_nothing():
    extension, buffers = _ext.extension(), PenaltyBuffers()
    extension.launch_apply_penalties_cpu(_apply(buffers.apply(), dict(rows=0, logits=0, out=0, penalty_mask=0)))
    extension.launch_apply_penalties_cpu(_apply(buffers.apply(), dict(vocab=0, logits=0, out=0, penalty_mask=0)))
    extension.launch_accept_penalty_tokens_cpu(_apply(buffers.accept(), dict(n=0, tokens=0, mask=0)))
    extension.launch_accept_penalty_tokens_cpu(_apply(buffers.accept(), dict(window=0, recent=0)))
    assert buffers.lengths.tolist() == [5] * buffers.rows  # window 0: counted, no ring to write


def test_penalty_cuda_launcher_validates_on_the_host_or_says_cuda_is_missing():
    extension, buffers = _ext.extension(), PenaltyBuffers()
    bad = _apply(buffers.apply(), dict(penalty_mask=0))
    if extension.cuda_compiled:
        with pytest.raises(ValueError, match="launch_apply_penalties_cuda: .*penalty_mask"):
            extension.launch_apply_penalties_cuda(bad, 0)
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.launch_apply_penalties_cuda(bad, 0)


# ---- beam_step (launch_beam_step_cpu / _cuda) ---------------------------------------------------------

class BeamBuffers:
    """Inputs and outputs of one valid beam step: 2 batch rows, 3 beams, 50 tokens, 1 EOS id (K = 6), sampling."""

    def __init__(self, batch: int = 2, beams: int = 3, vocab: int = 50):
        self.batch, self.beams, self.vocab, self.k = batch, beams, vocab, 2 * beams
        self.logits = torch.randn(batch * beams, vocab)
        self.running = -torch.rand(batch, beams)
        self.finished = torch.full((batch, beams), -1e9)
        self.is_finished = torch.zeros(batch, beams, dtype=torch.bool)
        self.may_improve = torch.ones(batch, dtype=torch.bool)
        self.eos = torch.tensor([7])
        self.seeds = torch.arange(batch, dtype=torch.int64)
        self.offsets = torch.zeros(batch, dtype=torch.int64)
        self.outputs = dict(
            candidate_scores=torch.empty(batch, self.k), candidate_flat=torch.empty(batch, self.k, dtype=torch.int64),
            next_scores=torch.empty(batch, beams), next_source=torch.empty(batch, beams, dtype=torch.int64),
            next_finished_scores=torch.empty(batch, beams),
            finished_source=torch.empty(batch, beams, dtype=torch.int64),
            next_is_finished=torch.empty(batch, beams, dtype=torch.bool),
            next_may_improve=torch.empty(batch, dtype=torch.bool), row_is_finite=torch.empty(batch, dtype=torch.bool))

    def beam_step(self):
        return _apply(_ext.extension().BeamStepArgs(), dict(
            logits=self.logits.data_ptr(), rows=self.batch * self.beams, vocab=self.vocab, row_stride=self.vocab,
            dtype=0, running_scores=self.running.data_ptr(), finished_scores=self.finished.data_ptr(),
            is_finished=self.is_finished.data_ptr(), may_improve=self.may_improve.data_ptr(),
            eos=self.eos.data_ptr(), num_eos=1, seeds=self.seeds.data_ptr(), offsets=self.offsets.data_ptr(),
            batch=self.batch, beams=self.beams, k=self.k, normalized=False, generated_length=1,
            max_generated_length=5, length_penalty=1.0, early_stopping=0, all_stop=False,
            **{name: tensor.data_ptr() for name, tensor in self.outputs.items()}))


BEAM_STEP_CASES = [
    (dict(logits=0), "null.*logits"),
    (dict(running_scores=0), "null.*running_scores"),
    (dict(finished_scores=0), "null.*finished_scores"),
    (dict(is_finished=0), "null.*is_finished"),
    (dict(may_improve=0), "null.*may_improve"),
    (dict(eos=0), "null.*eos"),
    (dict(seeds=0), "null.*seeds and offsets"),
    (dict(offsets=0), "null.*seeds and offsets"),
    (dict(candidate_scores=0), "null.*candidate_scores"),
    (dict(candidate_flat=0), "null.*candidate_flat"),
    (dict(next_scores=0), "null.*next_scores"),
    (dict(next_source=0), "null.*next_source"),
    (dict(next_finished_scores=0), "null.*next_finished_scores"),
    (dict(finished_source=0), "null.*finished_source"),
    (dict(next_is_finished=0), "null.*next_is_finished"),
    (dict(next_may_improve=0), "null.*next_may_improve"),
    (dict(row_is_finite=0), "null.*row_is_finite"),
    (dict(batch=-1), "sizes.*batch"),
    (dict(beams=0), "sizes.*beams"),
    (dict(vocab=0), "sizes.*vocab"),
    (dict(vocab=INT64_MAX), "sizes.*vocab"),
    (dict(rows=5), "sizes.*rows must equal"),
    (dict(batch=3), "sizes.*rows must equal"),
    (dict(num_eos=-1), "sizes.*num_eos"),
    (dict(num_eos=2), "sizes.*k must be max"),
    (dict(k=5), "sizes.*k must be max"),
    (dict(vocab=1, row_stride=1), "sizes.*k must be <= beams"),
    (dict(batch=1 << 61, rows=3 << 61), "sizes"),
    (dict(row_stride=49), "stride"),
    (dict(row_stride=INT64_MAX), "sizes"),
    (dict(generated_length=0), "out of range.*generated_length"),
    (dict(max_generated_length=0), "out of range.*max_generated_length"),
    (dict(early_stopping=3), "out of range.*early_stopping"),
    (dict(early_stopping=-1), "out of range.*early_stopping"),
    (dict(dtype=3), "dtype"),
]


def test_beam_step_valid_arguments_run():
    buffers = BeamBuffers()
    _ext.extension().launch_beam_step_cpu(buffers.beam_step())
    flat = buffers.outputs["candidate_flat"]
    assert ((flat >= 0) & (flat < buffers.beams * buffers.vocab)).all()
    assert ((buffers.outputs["next_source"] >= 0) & (buffers.outputs["next_source"] < buffers.k)).all()


@pytest.mark.parametrize("overrides,match", BEAM_STEP_CASES, ids=str)
def test_beam_step_refuses_bad_arguments(overrides, match):
    buffers = BeamBuffers()
    with pytest.raises(ValueError, match=f"launch_beam_step_cpu: .*{match}"):
        _ext.extension().launch_beam_step_cpu(_apply(buffers.beam_step(), overrides))


@pytest.mark.parametrize("eos", [-1, 50, 149, INT64_MAX, -INT64_MAX - 1])
def test_beam_step_eos_ids_outside_the_vocabulary_never_match(eos):
    buffers = BeamBuffers()
    buffers.eos[0] = eos
    _ext.extension().launch_beam_step_cpu(_apply(buffers.beam_step(), dict(seeds=0, offsets=0)))
    assert buffers.outputs["finished_source"].tolist() == [[0, 1, 2]] * 2, "no candidate stopped"


def test_beam_step_empty_batch_touches_nothing():
    buffers = BeamBuffers()
    fields = dict(batch=0, rows=0, logits=0, running_scores=0, finished_scores=0, is_finished=0, may_improve=0,
                  candidate_scores=0, candidate_flat=0, next_scores=0, next_source=0, next_finished_scores=0,
                  finished_source=0, next_is_finished=0, next_may_improve=0, row_is_finite=0, eos=0, seeds=0,
                  offsets=0, num_eos=0, k=6)
    _ext.extension().launch_beam_step_cpu(_apply(buffers.beam_step(), fields))


def test_beam_step_cuda_launcher_validates_on_the_host_or_says_cuda_is_missing():
    extension, buffers = _ext.extension(), BeamBuffers()
    bad = _apply(buffers.beam_step(), dict(k=5))
    if extension.cuda_compiled:
        with pytest.raises(ValueError, match="launch_beam_step_cuda: .*k must be"):
            extension.launch_beam_step_cuda(bad, 0)
        with pytest.raises(ValueError, match="launch_beam_step_cuda: .*beams must be <= 1024"):
            extension.launch_beam_step_cuda(_apply(buffers.beam_step(), dict(beams=1025, batch=1, rows=1025,
                                                                             k=2050)), 0)
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.launch_beam_step_cuda(bad, 0)


# ---- launch_verify_cpu (csrc/include/turbogen/verify.h) ------------------------------------------------

class VerifyBuffers:
    """A valid VerifyArgs (3 rows, k = 2 drafts, vocab 50, rejection mode) and the tensors behind its addresses."""

    def __init__(self, rows: int = 3, k: int = 2, vocab: int = 50):
        self.logits = torch.randn(rows, k + 1, vocab)
        self.drafts = torch.tensor([[0, 1], [-1, 2], [vocab, 3]], dtype=torch.int64)[:rows, :k].contiguous()
        self.probs = torch.softmax(torch.randn(rows, k, vocab), -1)
        self.temperature = torch.full((rows,), 0.8)
        self.top_k = torch.tensor([5], dtype=torch.int64)
        self.top_p = torch.tensor([0.9], dtype=torch.float64)
        self.min_p = torch.tensor([0.05])
        self.seed = torch.arange(rows, dtype=torch.int64)
        self.offset = torch.tensor([7], dtype=torch.int64)
        self.accepted = torch.full((rows,), 99, dtype=torch.int64)
        self.tokens = torch.full((rows, k + 1), 99, dtype=torch.int64)
        self.args = _apply(_ext.extension().VerifyArgs(), dict(
            logits=self.logits.data_ptr(), rows=rows, positions=k + 1, vocab=vocab, row_stride=vocab, dtype=0,
            draft_tokens=self.drafts.data_ptr(), draft_probs=self.probs.data_ptr(), rejection=True,
            temperature=self.temperature.data_ptr(), temperature_per_row=True, top_k=self.top_k.data_ptr(),
            top_p=self.top_p.data_ptr(), min_p=self.min_p.data_ptr(), seed=self.seed.data_ptr(),
            offset=self.offset.data_ptr(), accepted=self.accepted.data_ptr(), tokens=self.tokens.data_ptr()))


VERIFY_CASES = [
    (dict(logits=0), "null.*logits"),
    (dict(draft_tokens=0), "null.*draft_tokens"),
    (dict(draft_probs=0), "null.*draft_probs"),
    (dict(temperature=0), "null.*temperature"),
    (dict(top_k=0), "null.*top_k"),
    (dict(top_p=0), "null.*top_p"),
    (dict(min_p=0), "null.*min_p"),
    (dict(seed=0), "null.*seed"),
    (dict(offset=0), "null.*offset"),
    (dict(accepted=0), "null.*accepted"),
    (dict(tokens=0), "null.*tokens"),
    (dict(rows=-1), "sizes.*rows"),
    (dict(positions=0), "sizes.*positions"),
    (dict(vocab=0), "sizes.*vocab"),
    (dict(vocab=1 << 31), "sizes.*vocab"),
    (dict(row_stride=49), "stride"),
    (dict(rows=1 << 40, positions=1 << 30), "sizes.*overflows"),
    (dict(rows=1 << 30, row_stride=1 << 40), "sizes.*logits"),
    (dict(dtype=3), "dtype"),
]


def test_verify_valid_arguments_run():
    buffers = VerifyBuffers()
    _ext.extension().launch_verify_cpu(buffers.args)
    assert ((buffers.accepted >= 0) & (buffers.accepted <= 2)).all()
    assert buffers.accepted[1] == 0 and buffers.accepted[2] == 0  # no draft / a draft outside the vocabulary
    for r in range(3):
        n = int(buffers.accepted[r])
        assert 0 <= buffers.tokens[r, n] < 50 and (buffers.tokens[r, n + 1:] == -1).all()


@pytest.mark.parametrize("overrides,match", VERIFY_CASES, ids=str)
def test_verify_refuses_bad_arguments(overrides, match):
    buffers = VerifyBuffers()
    with pytest.raises(ValueError, match=f"launch_verify_cpu: .*{match}"):
        _ext.extension().launch_verify_cpu(_apply(buffers.args, overrides))
    assert (buffers.tokens == 99).all() and (buffers.accepted == 99).all()


@pytest.mark.parametrize("name,value,match", SAMPLING_VALUE_CASES, ids=str)
def test_verify_refuses_out_of_range_parameters(name, value, match):
    buffers = VerifyBuffers()
    args = _apply(buffers.args, {name: value.data_ptr(), f"{name}_per_row": False})
    with pytest.raises(ValueError, match=f"launch_verify_cpu: .*out of range: {match}"):
        _ext.extension().launch_verify_cpu(args)
    assert (buffers.tokens == 99).all()


def test_verify_coupled_mode_and_no_drafts_need_no_draft_buffers():
    buffers = VerifyBuffers()
    _ext.extension().launch_verify_cpu(_apply(buffers.args, dict(rejection=False, draft_probs=0)))
    k_zero = VerifyBuffers(k=0)
    _ext.extension().launch_verify_cpu(_apply(k_zero.args, dict(draft_tokens=0, draft_probs=0)))
    assert k_zero.accepted.tolist() == [0, 0, 0] and bool((k_zero.tokens[:, 0] >= 0).all())


def test_verify_empty_batch_touches_nothing():
    buffers = VerifyBuffers()
    _ext.extension().launch_verify_cpu(_apply(buffers.args, dict(rows=0, logits=0, draft_tokens=0, draft_probs=0,
                                                                 seed=0, accepted=0, tokens=0)))


def test_verify_cuda_launcher_validates_on_the_host_or_says_cuda_is_missing():
    extension, buffers = _ext.extension(), VerifyBuffers()
    bad = _apply(VerifyBuffers().args, dict(logits=0))
    if extension.cuda_compiled:
        with pytest.raises(ValueError, match="launch_verify_cuda: .*logits"):
            extension.launch_verify_cuda(bad, 0)
        with pytest.raises(ValueError, match="launch_verify_cuda: .*workspace"):
            extension.launch_verify_cuda(buffers.args, 0)
        assert extension.verify_workspace_bytes(3, 3, 50, True) > extension.verify_workspace_bytes(3, 3, 50, False) > 0
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.launch_verify_cuda(bad, 0)
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.verify_workspace_bytes(1, 2, 10, False)


# ---- the paged KV cache entry points (csrc/include/turbogen/paged_attention.h) ----------------------------------

class PagedBuffers:
    """A valid WriteKVArgs and PagedAttentionArgs: 2 sequences (a decode token over 5 keys, a 3-token chunk over 7
    keys), 6 blocks of 4 slots, 4 heads over 2 kv heads, head_dim 8; the output is a sentinel until written."""

    def __init__(self):
        self.key_cache = torch.randn(6, 4, 2, 8)
        self.value_cache = torch.randn(6, 4, 2, 8)
        self.query = torch.randn(4, 4, 8)
        self.tables = torch.tensor([[0, 1, 5], [2, 3, -1]], dtype=torch.int32)
        self.cu = torch.tensor([0, 1, 4], dtype=torch.int32)
        self.lens = torch.tensor([5, 7], dtype=torch.int32)
        self.out = torch.full((4, 4, 8), -7.0)
        self.key = torch.randn(3, 2, 8)
        self.value = torch.randn(3, 2, 8)
        self.slots = torch.tensor([23, -1, 0], dtype=torch.int64)

    def attention(self):
        return _apply(_ext.extension().PagedAttentionArgs(), dict(
            query=self.query.data_ptr(), key_cache=self.key_cache.data_ptr(), value_cache=self.value_cache.data_ptr(),
            block_tables=self.tables.data_ptr(), cu_seqlens_q=self.cu.data_ptr(), seq_lens=self.lens.data_ptr(),
            out=self.out.data_ptr(), total_q=4, heads=4, kv_heads=2, head_dim=8, num_blocks=6, block_size=4,
            num_seqs=2, max_blocks_per_seq=3, dtype=0, scale=0.35, sliding_window=0, softcap=0.0))

    def write_kv(self):
        return _apply(_ext.extension().WriteKVArgs(), dict(
            key=self.key.data_ptr(), value=self.value.data_ptr(), key_cache=self.key_cache.data_ptr(),
            value_cache=self.value_cache.data_ptr(), slot_mapping=self.slots.data_ptr(), tokens=3, kv_heads=2,
            head_dim=8, num_slots=24, dtype=0))


def test_paged_entry_points_run():
    from turbogen.ref import paged

    buffers = PagedBuffers()
    _ext.extension().launch_paged_attention_cpu(buffers.attention())
    expected = paged.paged_attention(buffers.query, buffers.key_cache, buffers.value_cache, buffers.tables,
                                     buffers.cu, buffers.lens, 0.35)
    torch.testing.assert_close(buffers.out, expected, rtol=1e-5, atol=1e-5)
    key_cache = buffers.key_cache.clone()
    _ext.extension().launch_write_kv_cpu(buffers.write_kv())
    assert torch.equal(buffers.key_cache.view(24, 2, 8)[23], buffers.key[0])
    assert torch.equal(buffers.key_cache.view(24, 2, 8)[0], buffers.key[2])
    assert torch.equal(buffers.key_cache.view(24, 2, 8)[1:23], key_cache.view(24, 2, 8)[1:23])


PAGED_ATTENTION_CASES = [
    (dict(query=0), "null.*query"),
    (dict(key_cache=0), "null.*key_cache"),
    (dict(value_cache=0), "null.*value_cache"),
    (dict(block_tables=0), "null.*block_tables"),
    (dict(cu_seqlens_q=0), "null.*cu_seqlens_q"),
    (dict(seq_lens=0), "null.*seq_lens"),
    (dict(out=0), "null.*out"),
    (dict(total_q=-1), "sizes.*total_q"),
    (dict(num_seqs=-1), "sizes.*num_seqs"),
    (dict(num_seqs=0), "sizes.*num_seqs >= 1"),
    (dict(heads=3), "sizes.*multiple of kv_heads"),
    (dict(heads=0), "sizes.*multiple of kv_heads"),
    (dict(kv_heads=0), "sizes.*kv_heads"),
    (dict(head_dim=0), "sizes.*head_dim"),
    (dict(num_blocks=-1), "sizes.*num_blocks"),
    (dict(block_size=0), "sizes.*block_size"),
    (dict(max_blocks_per_seq=-1), "sizes.*max_blocks_per_seq"),
    (dict(max_blocks_per_seq=1 << 40), "sizes.*int32"),
    (dict(total_q=1 << 40), "sizes"),
    (dict(head_dim=1 << 62), "sizes.*overflows"),
    (dict(num_blocks=1 << 60), "sizes.*key_cache"),
    (dict(dtype=3), "dtype"),
    (dict(scale=float("nan")), "out of range.*scale"),
    (dict(scale=float("inf")), "out of range.*scale"),
    (dict(softcap=-1.0), "out of range.*softcap"),
    (dict(softcap=float("nan")), "out of range.*softcap"),
    (dict(sliding_window=-1), "out of range.*sliding_window"),
    # index values in host memory
    (dict(total_q=3), "out of range.*cu_seqlens_q"),
    (dict(total_q=5), "out of range.*cu_seqlens_q"),
    (dict(num_blocks=3), "out of range.*block_tables entry"),
    (dict(max_blocks_per_seq=1), "out of range.*seq_lens"),
    (dict(block_size=2), "out of range.*seq_lens"),
]


@pytest.mark.parametrize("overrides,match", PAGED_ATTENTION_CASES, ids=str)
def test_paged_attention_refuses_bad_arguments(overrides, match):
    buffers = PagedBuffers()
    with pytest.raises(ValueError, match=f"launch_paged_attention_cpu: .*{match}"):
        _ext.extension().launch_paged_attention_cpu(_apply(buffers.attention(), overrides))
    assert (buffers.out == -7.0).all()


@pytest.mark.parametrize("field,index,value,match", [
    ("cu", 0, 1, "cu_seqlens_q\\[0\\] must be 0"),
    ("cu", 1, 5, "cu_seqlens_q"),
    ("cu", 2, 3, "cu_seqlens_q must end at total_q"),
    ("cu", 1, -1, "cu_seqlens_q must be non-decreasing"),
    ("lens", 1, 2, "seq_lens\\[s\\] must be >="),
    ("lens", 0, 13, "seq_lens\\[s\\] must be <="),
    ("lens", 0, -(1 << 31), "seq_lens"),
    ("tables", (1, 1), -1, "block_tables entry"),
    ("tables", (0, 1), 6, "block_tables entry"),
    ("tables", (1, 0), (1 << 31) - 1, "block_tables entry"),
])
def test_paged_attention_checks_index_values_before_reading(field, index, value, match):
    buffers = PagedBuffers()
    getattr(buffers, field)[index] = value
    with pytest.raises(ValueError, match=f"launch_paged_attention_cpu: .*out of range: {match}"):
        _ext.extension().launch_paged_attention_cpu(buffers.attention())
    assert (buffers.out == -7.0).all()


def test_paged_attention_unread_table_entries_may_hold_anything():
    buffers = PagedBuffers()
    buffers.tables[0, 2] = -(1 << 31)  # sequence 0 reads 2 blocks, sequence 1 reads 2
    buffers.tables[1, 2] = (1 << 31) - 1
    _ext.extension().launch_paged_attention_cpu(buffers.attention())
    assert torch.isfinite(buffers.out).all()


def test_paged_attention_empty_touches_nothing():
    buffers = PagedBuffers()
    buffers.cu.zero_()
    _ext.extension().launch_paged_attention_cpu(_apply(buffers.attention(), dict(
        total_q=0, query=0, out=0, key_cache=0, value_cache=0, block_tables=0, seq_lens=0)))
    _ext.extension().launch_paged_attention_cpu(_apply(buffers.attention(), dict(
        total_q=0, num_seqs=0, query=0, out=0, seq_lens=0)))


WRITE_KV_CASES = [
    (dict(key=0), "null.*key"),
    (dict(value=0), "null.*value"),
    (dict(key_cache=0), "null.*key_cache"),
    (dict(value_cache=0), "null.*value_cache"),
    (dict(slot_mapping=0), "null.*slot_mapping"),
    (dict(tokens=-1), "sizes.*tokens"),
    (dict(kv_heads=0), "sizes.*kv_heads"),
    (dict(head_dim=0), "sizes.*head_dim"),
    (dict(num_slots=-1), "sizes.*num_slots"),
    (dict(head_dim=1 << 62), "sizes.*overflows"),
    (dict(tokens=1 << 60), "sizes.*key"),
    (dict(num_slots=1 << 60), "sizes.*key_cache"),
    (dict(dtype=5), "dtype"),
    (dict(num_slots=23), "out of range.*slot_mapping"),
    (dict(num_slots=0, key_cache=0, value_cache=0), "out of range.*slot_mapping"),
]


@pytest.mark.parametrize("overrides,match", WRITE_KV_CASES, ids=str)
def test_write_kv_refuses_bad_arguments(overrides, match):
    buffers = PagedBuffers()
    before = buffers.key_cache.clone(), buffers.value_cache.clone()
    with pytest.raises(ValueError, match=f"launch_write_kv_cpu: .*{match}"):
        _ext.extension().launch_write_kv_cpu(_apply(buffers.write_kv(), overrides))
    assert torch.equal(buffers.key_cache, before[0]) and torch.equal(buffers.value_cache, before[1])


@pytest.mark.parametrize("slot", [-2, 24, 1 << 62, -(1 << 63)])
def test_write_kv_checks_every_slot_before_writing(slot):
    buffers = PagedBuffers()
    buffers.slots[-1] = slot  # the last token: the others would be written first
    before = buffers.key_cache.clone()
    with pytest.raises(ValueError, match="launch_write_kv_cpu: .*slot_mapping"):
        _ext.extension().launch_write_kv_cpu(buffers.write_kv())
    assert torch.equal(buffers.key_cache, before)


def test_write_kv_empty_touches_nothing():
    buffers = PagedBuffers()
    _ext.extension().launch_write_kv_cpu(_apply(buffers.write_kv(), dict(tokens=0, key=0, value=0, slot_mapping=0,
                                                                          key_cache=0, value_cache=0)))


def test_paged_cuda_launchers_validate_on_the_host_or_say_cuda_is_missing():
    extension, buffers = _ext.extension(), PagedBuffers()
    bad_attention = _apply(buffers.attention(), dict(query=0))
    bad_write = _apply(buffers.write_kv(), dict(key=0))
    if extension.cuda_compiled:
        with pytest.raises(ValueError, match="launch_paged_attention_cuda: .*query"):
            extension.launch_paged_attention_cuda(bad_attention, 0)
        with pytest.raises(ValueError, match="launch_paged_attention_cuda: .*head_dim must be <= 256"):
            extension.launch_paged_attention_cuda(_apply(buffers.attention(), dict(head_dim=512)), 0)
        with pytest.raises(ValueError, match="launch_write_kv_cuda: .*key"):
            extension.launch_write_kv_cuda(bad_write, 0)
    else:
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.launch_paged_attention_cuda(bad_attention, 0)
        with pytest.raises(RuntimeError, match="without CUDA"):
            extension.launch_write_kv_cuda(bad_write, 0)
