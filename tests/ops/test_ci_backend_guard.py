"""tests/conftest.py's CI guard: under CI=true a build that lacks a promised backend fails the run
instead of skipping that backend's tests."""

from __future__ import annotations

import pytest

from turbogen.ops import BackendStatus

from conftest import promised_backends_missing

EVERYTHING = {name: BackendStatus(name, True) for name in ("ref", "cpu", "triton", "cuda")}
NO_EXTENSION = EVERYTHING | {"cpu": BackendStatus("cpu", False, "turbogen._C could not be imported (no module)")}
NO_TRITON = EVERYTHING | {"triton": BackendStatus("triton", False, "the triton package is not installed")}
NOTHING_COMPILED = NO_EXTENSION | {"triton": NO_TRITON["triton"]}


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_missing_extension_fails_a_ci_run_with_the_reason(ci):
    missing = promised_backends_missing({"CI": ci}, NO_EXTENSION, cuda_compiled=False)
    assert len(missing) == 1 and "cpu backend" in missing[0] and "turbogen._C could not be imported" in missing[0]


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_outside_ci_missing_backends_are_skipped_not_fatal(ci):
    environ = {} if ci is None else {"CI": ci}
    environ |= {"TRITON_INTERPRET": "1", "TURBOGEN_EXPECT_BACKENDS": "cpu,triton", "TURBOGEN_EXPECT_CUDA_KERNELS": "1"}
    assert promised_backends_missing(environ, NOTHING_COMPILED, cuda_compiled=False) == []


def test_triton_is_promised_when_it_is_meant_to_run():
    assert promised_backends_missing({"CI": "true"}, NO_TRITON, cuda_compiled=False) == []
    assert promised_backends_missing({"CI": "true", "TRITON_INTERPRET": "0"}, NO_TRITON, cuda_compiled=False) == []
    for environ in ({"TRITON_INTERPRET": "1"}, {"TURBOGEN_EXPECT_BACKENDS": "ref,triton"}):
        missing = promised_backends_missing({"CI": "true"} | environ, NO_TRITON, cuda_compiled=False)
        assert len(missing) == 1 and "triton package is not installed" in missing[0], environ


def test_expected_backends_must_be_backends():
    missing = promised_backends_missing({"CI": "true", "TURBOGEN_EXPECT_BACKENDS": "cpu, gpu"}, EVERYTHING,
                                        cuda_compiled=True)
    assert len(missing) == 1 and "'gpu'" in missing[0]


def test_cuda_kernels_are_promised_only_by_an_explicit_variable():
    # The transformers-5 environment is built with TURBOGEN_CUDA=OFF: without the variable, no CUDA is fine.
    assert promised_backends_missing({"CI": "true", "TURBOGEN_CUDA": "ON"}, EVERYTHING, cuda_compiled=False) == []
    assert promised_backends_missing({"CI": "true", "TURBOGEN_EXPECT_CUDA_KERNELS": "0"}, EVERYTHING,
                                     cuda_compiled=False) == []
    expecting = {"CI": "true", "TURBOGEN_EXPECT_CUDA_KERNELS": "1"}
    missing = promised_backends_missing(expecting, EVERYTHING, cuda_compiled=False)
    assert len(missing) == 1 and "without its CUDA kernels" in missing[0]
    assert promised_backends_missing(expecting, EVERYTHING, cuda_compiled=True) == []


def test_every_missing_promise_is_reported():
    environ = {"CI": "1", "TRITON_INTERPRET": "1", "TURBOGEN_EXPECT_BACKENDS": "ref,cpu,triton",
               "TURBOGEN_EXPECT_CUDA_KERNELS": "true"}
    assert len(promised_backends_missing(environ, NOTHING_COMPILED, cuda_compiled=False)) == 3
    assert promised_backends_missing(environ, EVERYTHING, cuda_compiled=True) == []
