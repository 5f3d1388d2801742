"""Shared test setup.

Without a GPU, Triton kernels run in Triton's interpreter, which must be switched on before the
first ``@triton.jit`` module is imported; this file is imported before any test module.

The suite runs against transformers 4.57 (turbogen's behavioural spec), 5.x and 4.45. Where transformers 5
changed on purpose what a test compares against, the comparison is skipped under 5.x by
:func:`skip_on_transformers_5`, whose reason says what changed. Under 4.45 (the oracle of the strategies 4.57 moved
to the Hub, and a supported version), tests of what 4.45 lacks or does differently are skipped by
:func:`skip_on_transformers_4_45` (or, for some parameter combinations, :func:`skip_here_on_transformers_4_45`;
for a module importing what 4.45 lacks, :func:`skip_module_on_transformers_4_45`), with the reason.

Tests of a backend this process lacks are skipped with the reason. Under CI (``CI=true``) a backend
the build promised must be there, or the run fails before any test: a broken build must not pass
as "all passed, some skipped" (:func:`promised_backends_missing`). With pytest-xdist (``make test``
runs each stage with ``-n auto``) the check runs in the controller and again in every worker.

Every test under ``tests/ops`` is marked ``ops`` here (:func:`pytest_collection_modifyitems`): the
ops and their references never call transformers, so the transformers 5 run of ``make test``
selects ``-m "not ops or transformers"`` (the 4.45 run too), keeping the op tests marked ``transformers`` (those that
compare with it). A test parametrized with ``backend="ref"`` is marked ``ref_backend`` (torch only, no
turbogen C++: the sanitizer stage leaves these out). Tests that must not run beside one another in two xdist workers share an
``xdist_group`` (the Ray tests, which start a local cluster); ``make test`` runs ``--dist loadgroup``.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re
from collections.abc import Mapping

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run tiny models on a 2-core CI machine: intra-op threads only add contention there
# (about 5x slower model tests). The C++ kernels use their own pool and are unaffected.
torch.set_num_threads(1)

from turbogen import _ext  # noqa: E402  (after TRITON_INTERPRET is set)
from turbogen.ops import BackendStatus, available_backends  # noqa: E402


def _installed_transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


TRANSFORMERS_VERSION = _installed_transformers_version()
#: Whether the installed transformers is a 5.x release (whose behaviour differs from 4.57 in places).
TRANSFORMERS_5 = TRANSFORMERS_VERSION is not None and int(re.match(r"\d+", TRANSFORMERS_VERSION).group()) >= 5


def skip_on_transformers_5(reason: str):
    """Skip mark for a comparison that only holds with transformers 4.57; ``reason`` says what 5.x changed."""
    return pytest.mark.skipif(TRANSFORMERS_5, reason=f"transformers {TRANSFORMERS_VERSION} differs from 4.57: {reason}")


#: Whether the installed transformers is a 4.45 release (the third environment of ``make test``: the oracle of the
#: strategies 4.57 moved to the Hub, and a supported version whose APIs and behaviour predate 4.57's in places).
TRANSFORMERS_4_45 = TRANSFORMERS_VERSION is not None and TRANSFORMERS_VERSION.startswith("4.45.")


def skip_on_transformers_4_45(reason: str):
    """Skip mark for a test that only holds with transformers >= 4.57 (it compares with, or builds, what 4.57 has);
    ``reason`` says what 4.45 lacks or does differently."""
    return pytest.mark.skipif(TRANSFORMERS_4_45,
                              reason=f"transformers {TRANSFORMERS_VERSION} differs from 4.57: {reason}")


# Why a test is skipped under transformers 4.45, for the reasons several test files share.
NO_PROMPT_IGNORE_LENGTH_IN_4_45 = "its RepetitionPenaltyLogitsProcessor has no `prompt_ignore_length` (added in 4.56)"
#: turbogen refuses its static caches (UnsupportedByTurbogen) under 4.45.
STATIC_CACHES_IN_4_45 = ("its models size the causal mask for their own StaticCache only, so turbogen refuses static "
                         "caches with it")
#: The tests build or inspect 4.57's cache objects.
CACHE_API_IN_4_45 = ("its caches have another interface (DynamicCache: key_cache/value_cache lists, no `layers`, no "
                     "`config`; StaticCache: other arguments; fewer cache_implementation names)")
#: turbogen refuses encoder-decoder models (UnsupportedByTurbogen) under 4.45.
ENCODER_DECODER_IN_4_45 = ("its encoder-decoder models keep legacy tuple caches, so turbogen refuses encoder-decoder "
                           "generation with it")
#: Paged attention plugs into transformers' attention interface.
PAGED_ATTENTION_IN_4_45 = "it has no AttentionInterface (4.48+), which turbogen's paged attention plugs into"
#: GPT-2 under 4.45 returns new legacy tuples at each call, so turbogen runs it through its own input preparation.
GPT2_LEGACY_CACHE_IN_4_45 = ("its GPT-2 keeps legacy tuple caches, so turbogen runs it through the model's own input "
                             "preparation, which refuses inputs_embeds, speculation and per-row lengths")
#: Beam search: 4.57 rewrote it; turbogen follows 4.57.
BEAM_SEARCH_IN_4_45 = ("its BeamSearchScorer finalises and records beams differently (4.57 rewrote beam search; "
                       "turbogen follows 4.57)")


def skip_module_on_transformers_4_45(reason: str) -> None:
    """Under transformers 4.45, skip the calling test module (all its tests, reported with ``reason``): for a
    module that imports what 4.45 does not have. Call it before that import."""
    if TRANSFORMERS_4_45:
        pytest.skip(f"transformers {TRANSFORMERS_VERSION} differs from 4.57: {reason}", allow_module_level=True)


def skip_here_on_transformers_4_45(reason: str, when: bool = True) -> None:
    """Inside a test (or a helper it calls): skip it under transformers 4.45 when ``when`` holds, for the parameter
    combinations on which 4.45 differs (``reason``)."""
    if TRANSFORMERS_4_45 and when:
        pytest.skip(f"transformers {TRANSFORMERS_VERSION} differs from 4.57: {reason}")


def backend_params(names=("ref", "cpu", "triton", "cuda")):
    """``pytest.param`` per backend, skipped with the reason when it is unavailable here."""
    statuses = available_backends()
    return [
        pytest.param(name, id=name, marks=pytest.mark.skipif(not statuses[name].available,
                                                             reason=f"{name}: {statuses[name].reason}"))
        for name in names
    ]


def device_for(backend: str) -> torch.device:
    """Where a backend's inputs live: CUDA for cuda (and triton when a GPU exists), else CPU."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def promised_backends_missing(environ: Mapping[str, str], statuses: Mapping[str, BackendStatus],
                              cuda_compiled: bool) -> list[str]:
    """Why a CI run must fail before its first test: one line per thing the build promised and lacks.

    Empty unless ``CI`` is true (``true``, ``1``, ``yes`` or ``on``, in any case, as for every flag
    here). Then these backends must be available: cpu (the extension turbogen._C) always; triton
    when ``TRITON_INTERPRET`` is set (the kernels are meant to run, in the interpreter); and every
    backend named in ``TURBOGEN_EXPECT_BACKENDS`` (comma-separated; ``make test`` sets it). And
    when ``TURBOGEN_EXPECT_CUDA_KERNELS`` is set (``make test`` sets it for the environment built
    with ``TURBOGEN_CUDA=ON``), the extension must have been built with its CUDA kernels; a CUDA
    device is never required unless ``cuda`` is among the expected backends.
    """
    if not _is_set(environ, "CI"):
        return []
    promised = ["cpu"] + (["triton"] if _is_set(environ, "TRITON_INTERPRET") else [])
    promised += [name.strip() for name in environ.get("TURBOGEN_EXPECT_BACKENDS", "").split(",") if name.strip()]
    missing = []
    for name in dict.fromkeys(promised):
        if name not in statuses:
            missing.append(f"TURBOGEN_EXPECT_BACKENDS names {name!r}, which is not a backend ({', '.join(statuses)})")
        elif not statuses[name].available:
            missing.append(f"the {name} backend is missing: {statuses[name].reason}")
    if _is_set(environ, "TURBOGEN_EXPECT_CUDA_KERNELS") and not cuda_compiled:
        missing.append("TURBOGEN_EXPECT_CUDA_KERNELS is set but turbogen._C was built without its CUDA kernels")
    return missing


def pytest_sessionstart(session):
    """Fails a CI run whose build lacks a promised backend (exit status 1, the reason printed)."""
    missing = promised_backends_missing(os.environ, available_backends(), _ext.cuda_compiled())
    if missing:
        pytest.exit("CI=true and the build is incomplete: " + "; ".join(missing),
                    returncode=pytest.ExitCode.TESTS_FAILED)


_OPS_TESTS = pathlib.Path(__file__).resolve().parent / "ops"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks every test under tests/ops ``ops`` and every test of ``backend="ref"`` ``ref_backend``, before
    ``-m`` selects (see the module docstring)."""
    for item in items:
        if _OPS_TESTS in pathlib.Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.ops)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "ref":
            item.add_marker(pytest.mark.ref_backend)
