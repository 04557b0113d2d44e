# Each target sets up what it needs: a local venv with TensorFlow, then the
# package built and installed into it.
PYTHON ?= python3
VENV ?= .venv
TF_PACKAGE ?= tensorflow-cpu==2.21.*
# Where nvcc exists the CUDA kernels must build: a silently skipped CUDA build fails.
NVCC ?= $(wildcard /usr/local/cuda/bin/nvcc)
TFL_CUDA ?= $(if $(NVCC),on,auto)
export TFL_CUDA
ifneq ($(NVCC),)
export CUDACXX := $(NVCC)
endif
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.deps-installed

.PHONY: demo test install bench clean

$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TF_PACKAGE)" -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)
	$(PIP) install --quiet --no-build-isolation --no-deps .

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/run.py

clean:
	rm -rf build dist *.egg-info $(VENV)
