# Two entry points, each doing all set-up on a fresh machine into ./.venv:
#   make demo   - the main job (turbogen demo on the embedded default model)
#   make test   - the test suite, against transformers 4.57 (./.venv), then 5.x (./.venv-hf5), then 4.45
#                 (./.venv-hf445), then the op tests against an AddressSanitizer + UndefinedBehaviorSanitizer
#                 build of the extension; the four builds two at a time, each stage's tests spread over the
#                 cores (pytest-xdist)
# torch is installed first and pinned (a CPU build is on local disk); asking pip for plain `torch`
# would pull a multi-GB CUDA build.

VENV     ?= .venv
PYTHON   ?= python3
TORCH    ?= torch==2.13.0
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip --disable-pip-version-check -q
# The transformers 5 compatibility environment: same torch and build, transformers 5.x.
VENV_HF5 ?= .venv-hf5
PY_HF5   := $(VENV_HF5)/bin/python
PIP_HF5  := $(PY_HF5) -m pip --disable-pip-version-check -q
# The transformers 4.45 environment (the oracle of the strategies 4.57 moved to the Hub): same torch and build.
VENV_HF445 ?= .venv-hf445
PY_HF445   := $(VENV_HF445)/bin/python
PIP_HF445  := $(PY_HF445) -m pip --disable-pip-version-check -q
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.18"
SOURCES  := $(shell find csrc kernels python -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' \)) CMakeLists.txt pyproject.toml
# The editable install maps every Python module to its file when it is installed, so adding, moving or
# removing a module needs a reinstall. This list is rewritten only when the set of modules changes.
MODULE_LIST := build/python-modules.txt
$(shell mkdir -p build && find python kernels -name '*.py' | LC_ALL=C sort > $(MODULE_LIST).new \
        && { cmp -s $(MODULE_LIST).new $(MODULE_LIST) || mv $(MODULE_LIST).new $(MODULE_LIST); }; rm -f $(MODULE_LIST).new)
# The sanitizer build of _C (CPU kernels only), beside the editable install's, which it leaves alone.
SANITIZE_BUILD := build/sanitize
SANITIZED_MODULE = $(abspath $(SANITIZE_BUILD))/_C$(shell $(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# Python is not instrumented, so the sanitizer runtimes are preloaded. Leaks are not checked: the
# interpreter and torch keep allocations alive until exit by design.
SANITIZE_ENV = LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
               ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
               TURBOGEN_EXTENSION="$(SANITIZED_MODULE)"

# What every build of `make test` promises, so that a test run can fail (tests/conftest.py, under
# CI=true) instead of skipping when the extension or a backend is missing: the ref, cpu and triton
# backends everywhere, and compiled CUDA kernels in the main environment when TURBOGEN_CUDA=ON.
EXPECT := TURBOGEN_EXPECT_BACKENDS=ref,cpu,triton
MAIN_BUILD_HAS_CUDA := $(if $(filter ON on 1 TRUE true YES yes,$(TURBOGEN_CUDA)),1,0)

.PHONY: demo test test-builds test-hf5 test-hf445 test-sanitize bench info install clean

demo: $(VENV)/.installed
	$(VENV)/bin/turbogen demo

# Each stage spreads its tests over the cores with pytest-xdist (torch runs one thread per process:
# tests/conftest.py). --dist loadgroup hands out single tests, except that tests sharing an xdist_group run in
# one worker, one after another (the Ray tests, which start a local cluster). TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
PYTEST    = -m pytest -q --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)
# The builds `make test` needs, BUILD_JOBS at a time: pip unpacking wheels (one core) beside a compiler.
BUILD_JOBS ?= 2
TEST_BUILDS = $(VENV)/.installed $(VENV_HF5)/.installed $(VENV_HF445)/.installed $(SANITIZE_BUILD)/.built
# What runs ninja (pip's build backend, cmake --build) runs without make's jobserver flags: make does not hand
# the jobserver to such a command, and ninja then reports "Could not initialize jobserver".
NO_JOBSERVER := env -u MAKEFLAGS -u MFLAGS

# The suite runs against transformers 4.57 (the behavioural spec), then against 5.x, then against 4.45;
# tests/conftest.py skips, with the reason, the comparisons that only hold for 4.57 (skip_on_transformers_5,
# skip_on_transformers_4_45). The 5.x and 4.45 runs leave out the op tests (marked ops by tests/conftest.py: the
# ops never call transformers), except those that compare with transformers (marked transformers).
test: test-builds
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=$(MAIN_BUILD_HAS_CUDA) $(PY) $(PYTEST) tests
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY_HF5) $(PYTEST) -m "not ops or transformers" tests
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY_HF445) $(PYTEST) -m "not ops or transformers" tests
	$(MAKE) --no-print-directory test-sanitize

test-builds:
	@start=$$(date +%s); $(MAKE) --no-print-directory -j$(BUILD_JOBS) --output-sync=target $(TEST_BUILDS) \
	    && echo "test-builds: done in $$(( $$(date +%s) - start )) s"

# The op tests (every op, every cpu entry point, bad arguments included) with the C++ kernels built with
# -fsanitize=address,undefined: any out-of-bounds access or undefined behaviour aborts the run. Left out: the
# Triton tests (pure Python under the interpreter, nothing for the sanitizers to see) and the tests of the
# reference backend (marked ref_backend by tests/conftest.py: torch only, no turbogen C++).
# --capture=sys leaves file descriptor 2 alone, so a report printed just before the abort is not lost (an
# xdist worker's stderr is the run's).
test-sanitize: $(SANITIZE_BUILD)/.built
	test -f "$(SANITIZED_MODULE)"
	$(SANITIZE_ENV) $(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY) $(PYTEST) -p no:cacheprovider --capture=sys \
	    -m "not ref_backend" -k "not triton" tests/ops

test-hf5: $(VENV_HF5)/.installed
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY_HF5) $(PYTEST) -m "not ops or transformers" tests

test-hf445: $(VENV_HF445)/.installed
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY_HF445) $(PYTEST) -m "not ops or transformers" tests

bench: $(VENV)/.installed
	$(PIP) install matplotlib
	$(VENV)/bin/turbogen bench

info: $(VENV)/.installed
	$(VENV)/bin/turbogen info

install: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)" numpy

# The build tools in the venv: the editable install's and the sanitizer build's.
$(VENV)/.build-tools: $(PY)
	$(PIP) install $(BUILD_DEPS)
	touch $@

# Editable install with the build tools in the venv (no build isolation), so `make` rebuilds the
# extension in place whenever a C++/CUDA source changes. TURBOGEN_CUDA / TURBOGEN_CUDA_ARCHS pass through.
$(VENV)/.installed: $(VENV)/.build-tools $(SOURCES) $(MODULE_LIST)
	$(NO_JOBSERVER) $(PIP) install --no-build-isolation -e ".[test]"
	touch $@

$(PY_HF5):
	$(PYTHON) -m venv $(VENV_HF5)
	$(PIP_HF5) install "$(TORCH)" numpy

# The same editable install with transformers 5, built in its own directory. CUDA is off here: the main
# install already compiles (and, in CI, checks) the CUDA sources.
$(VENV_HF5)/.installed: $(PY_HF5) $(SOURCES) $(MODULE_LIST)
	$(PIP_HF5) install $(BUILD_DEPS)
	$(NO_JOBSERVER) TURBOGEN_CUDA=OFF $(PIP_HF5) install --no-build-isolation -C build-dir=build/hf5 -e ".[test-hf5]"
	touch $@

$(PY_HF445):
	$(PYTHON) -m venv $(VENV_HF445)
	$(PIP_HF445) install "$(TORCH)" numpy

# The same editable install with transformers 4.45.2 (and the tokenizers it pins), built in its own directory,
# without CUDA as in the transformers 5 environment.
$(VENV_HF445)/.installed: $(PY_HF445) $(SOURCES) $(MODULE_LIST)
	$(PIP_HF445) install $(BUILD_DEPS)
	$(NO_JOBSERVER) TURBOGEN_CUDA=OFF $(PIP_HF445) install --no-build-isolation -C build-dir=build/hf445 -e ".[test-hf445]"
	touch $@

# Configured by hand (not through pip) with the venv's build tools, into its own directory: it needs neither the
# editable install nor torch, so it builds beside them.
$(SANITIZE_BUILD)/.built: $(VENV)/.build-tools $(SOURCES)
	$(VENV)/bin/cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM="$(abspath $(VENV)/bin/ninja)" \
	    -DCMAKE_BUILD_TYPE=Release -DTURBOGEN_SANITIZE=ON -DTURBOGEN_CUDA=OFF \
	    -DPython_EXECUTABLE="$(abspath $(PY))" -Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)"
	$(NO_JOBSERVER) $(VENV)/bin/cmake --build $(SANITIZE_BUILD)
	touch $@

clean:
	rm -rf build $(VENV) $(VENV_HF5) $(VENV_HF445)
