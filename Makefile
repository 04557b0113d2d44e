# Each target sets up what it needs: a local venv with TensorFlow, then the
# package built and installed into it.
PYTHON ?= python3
VENV ?= .venv
TF_PACKAGE ?= tensorflow-cpu==2.21.*
# Where nvcc exists and compiles a probe kernel as the build does, the CUDA
# kernels must build (a silently skipped CUDA build would fail CI); an nvcc
# that cannot is skipped, saying why. TFL_CUDA=on|off decides instead.
NVCC ?= $(wildcard /usr/local/cuda/bin/nvcc)
ifeq ($(origin TFL_CUDA),undefined)
TFL_CUDA := $(if $(NVCC),$(shell tools/cuda_probe.sh "$(NVCC)"),auto)
endif
export TFL_CUDA
ifneq ($(NVCC),)
export CUDACXX := $(NVCC)
endif
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.deps-installed

# `make wheel`: one wheel with a TensorFlow frontend per minor in TF_VERSIONS
# and the TF-free core, from one CMake build. Each minor builds in its own venv
# (build/venv-tfX.Y) with tensorflow-cpu from PyPI (the same headers and
# framework library as tensorflow); the minor of TF_PACKAGE uses $(VENV), and
# the build directory is the one `make install` uses, so that after `make test`
# only the other minors' thin frontends compile.
TF_VERSIONS ?= 2.16 2.17 2.18 2.19 2.20 2.21
VENV_TF_MINOR := $(shell echo '$(TF_PACKAGE)' | sed -E 's/.*==([0-9]+[.][0-9]+).*/\1/')
tf_python = $(if $(filter $(1),$(VENV_TF_MINOR)),$(CURDIR)/$(VENV)/bin/python,$(CURDIR)/build/venv-tf$(1)/bin/python)
tf_venv_stamp = $(if $(filter $(1),$(VENV_TF_MINOR)),$(STAMP),build/venv-tf$(1)/.tf-installed)
empty :=
space := $(empty) $(empty)
BUILD_DIR := $(CURDIR)/build/cmake

.PHONY: demo test install bench clean wheel

$(STAMP): requirements-dev.txt
	@tools/check_prereqs.sh $(PYTHON)
	@echo "==> $(VENV): a virtual environment with $(TF_PACKAGE) and the test tools (about 700 MB of downloads)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --progress-bar on "$(TF_PACKAGE)" -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)
	@echo "==> building the libraries (CUDA: $(TFL_CUDA)) and installing the package into $(VENV); a first build takes minutes"
	TFL_TF_PYTHONS=$(CURDIR)/$(PY) TFL_BUILD_DIR=$(BUILD_DIR) $(PIP) install --quiet --no-build-isolation --no-deps .

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/run.py

build/venv-tf%/.tf-installed:
	$(PYTHON) -m venv build/venv-tf$*
	build/venv-tf$*/bin/pip install --quiet --upgrade pip
	build/venv-tf$*/bin/pip install --quiet "tensorflow-cpu==$*.*" setuptools wheel
	touch $@

wheel: $(STAMP) $(foreach v,$(TF_VERSIONS),$(call tf_venv_stamp,$(v)))
	$(PIP) install --quiet "setuptools>=70.1"
	rm -f dist/tf_fused_losses-*.whl
	TFL_TF_PYTHONS="$(subst $(space),:,$(foreach v,$(TF_VERSIONS),$(call tf_python,$(v))))" TFL_BUILD_DIR=$(BUILD_DIR) \
		$(PIP) wheel --quiet --no-build-isolation --no-deps -w dist .
	@ls -l dist/tf_fused_losses-*.whl

clean:
	rm -rf build dist *.egg-info $(VENV)
