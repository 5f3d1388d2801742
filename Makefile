# Two entry points, each doing all set-up on a fresh machine into ./.venv:
#   make demo   - the main job (turbogen demo on the embedded default model)
#   make test   - the test suite
# torch is installed first and pinned (a CPU build is on local disk); asking pip for plain `torch`
# would pull a multi-GB CUDA build.

VENV     ?= .venv
PYTHON   ?= python3
TORCH    ?= torch==2.13.0
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip --disable-pip-version-check -q
BUILD_DEPS := scikit-build-core>=0.10 pybind11>=2.12 ninja cmake>=3.18
SOURCES  := $(shell find csrc kernels python -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' \)) CMakeLists.txt pyproject.toml

.PHONY: demo test bench info install clean

demo: $(VENV)/.installed
	$(VENV)/bin/turbogen demo

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

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

clean:
	rm -rf build $(VENV)
