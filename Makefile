# Two entry points, each doing all set-up on a fresh machine into ./.venv:
#   make demo   - the main job (turbogen demo on the embedded default model)
#   make test   - the test suite, against transformers 4.57 (./.venv) and then 5.x (./.venv-hf5)
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

.PHONY: demo test test-hf5 bench info install clean

demo: $(VENV)/.installed
	$(VENV)/bin/turbogen demo

# The suite runs against transformers 4.57 (the behavioural spec), then against 5.x; tests/conftest.py skips,
# with the reason, the few comparisons that only hold for 4.57.
test: $(VENV)/.installed $(VENV_HF5)/.installed
	$(PY) -m pytest -q tests
	$(PY_HF5) -m pytest -q tests

test-hf5: $(VENV_HF5)/.installed
	$(PY_HF5) -m pytest -q tests

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
$(VENV)/.installed: $(PY) $(SOURCES)
	$(PIP) install $(BUILD_DEPS)
	$(PIP) install --no-build-isolation -e ".[test]"
	touch $@

$(PY_HF5):
	$(PYTHON) -m venv $(VENV_HF5)
	$(PIP_HF5) install "$(TORCH)" numpy

# The same editable install with transformers 5, built in its own directory. CUDA is off here: the main
# install already compiles (and, in CI, checks) the CUDA sources.
$(VENV_HF5)/.installed: $(PY_HF5) $(SOURCES)
	$(PIP_HF5) install $(BUILD_DEPS)
	TURBOGEN_CUDA=OFF $(PIP_HF5) install --no-build-isolation -C build-dir=build/hf5 -e ".[test-hf5]"
	touch $@

clean:
	rm -rf build $(VENV) $(VENV_HF5)
