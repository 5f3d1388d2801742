# Two entry points, each doing all set-up on a fresh machine into ./.venv:
#   make demo   - the main job (turbogen demo on the embedded default model)
#   make test   - the test suite, against transformers 4.57 (./.venv) and then 5.x (./.venv-hf5), then the
#                 op tests against an AddressSanitizer + UndefinedBehaviorSanitizer build of the extension
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

.PHONY: demo test test-hf5 test-sanitize bench info install clean

demo: $(VENV)/.installed
	$(VENV)/bin/turbogen demo

# The suite runs against transformers 4.57 (the behavioural spec), then against 5.x; tests/conftest.py skips,
# with the reason, the few comparisons that only hold for 4.57.
test: $(VENV)/.installed $(VENV_HF5)/.installed
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=$(MAIN_BUILD_HAS_CUDA) $(PY) -m pytest -q tests
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY_HF5) -m pytest -q tests
	$(MAKE) test-sanitize

# The op tests (every op, every cpu entry point, bad arguments included) with the C++ kernels built with
# -fsanitize=address,undefined: any out-of-bounds access or undefined behaviour aborts the run. The
# Triton tests are left out (pure Python under the interpreter, nothing for the sanitizers to see).
# --capture=sys leaves file descriptor 2 alone, so a report printed just before the abort is not lost.
test-sanitize: $(SANITIZE_BUILD)/.built
	test -f "$(SANITIZED_MODULE)"
	$(SANITIZE_ENV) $(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY) -m pytest -q -p no:cacheprovider --capture=sys tests/ops -k "not triton"

test-hf5: $(VENV_HF5)/.installed
	$(EXPECT) TURBOGEN_EXPECT_CUDA_KERNELS=0 $(PY_HF5) -m pytest -q tests

bench: $(VENV)/.installed
	$(PIP) install matplotlib
	$(VENV)/bin/turbogen bench

info: $(VENV)/.installed
	$(VENV)/bin/turbogen info

install: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)" numpy

# Editable install with the build tools in the venv (no build isolation), so `make` rebuilds the
# extension in place whenever a C++/CUDA source changes. TURBOGEN_CUDA / TURBOGEN_CUDA_ARCHS pass through.
$(VENV)/.installed: $(PY) $(SOURCES) $(MODULE_LIST)
	$(PIP) install $(BUILD_DEPS)
	$(PIP) install --no-build-isolation -e ".[test]"
	touch $@

$(PY_HF5):
	$(PYTHON) -m venv $(VENV_HF5)
	$(PIP_HF5) install "$(TORCH)" numpy

# The same editable install with transformers 5, built in its own directory. CUDA is off here: the main
# install already compiles (and, in CI, checks) the CUDA sources.
$(VENV_HF5)/.installed: $(PY_HF5) $(SOURCES) $(MODULE_LIST)
	$(PIP_HF5) install $(BUILD_DEPS)
	TURBOGEN_CUDA=OFF $(PIP_HF5) install --no-build-isolation -C build-dir=build/hf5 -e ".[test-hf5]"
	touch $@

# Configured by hand (not through pip) with the venv's build tools, into its own directory.
$(SANITIZE_BUILD)/.built: $(VENV)/.installed $(SOURCES)
	$(VENV)/bin/cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM="$(abspath $(VENV)/bin/ninja)" \
	    -DCMAKE_BUILD_TYPE=Release -DTURBOGEN_SANITIZE=ON -DTURBOGEN_CUDA=OFF \
	    -DPython_EXECUTABLE="$(abspath $(PY))" -Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)"
	$(VENV)/bin/cmake --build $(SANITIZE_BUILD)
	touch $@

clean:
	rm -rf build $(VENV) $(VENV_HF5)
