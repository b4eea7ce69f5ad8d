# Two commands on a fresh clone; each sets up its own .venv first.
#   make demo   - train SegFormer-B0 on built-in generated data, report mIoU,
#                 write prediction overlays (see README)
#   make test   - ruff + the whole test suite on TensorFlow, JAX and PyTorch
#   make benchmark - side-by-side speed/memory vs transformers and keras-hub
#                 (adds the `bench` extra; writes benchmark_out/)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
# JAX compiles every new shape (even weight initializers); a persistent
# cache shared by the test processes turns minutes into seconds.
JAX_CACHE := $(CURDIR)/.cache/jax

.PHONY: setup demo test lint format benchmark

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in the extras: 2.13.0 is the CPU wheel.
	$(PY) -m pip install -q -e ".[test]"
	touch $@

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	@set -e; for backend in $(BACKENDS); do \
	  echo "=== pytest on $$backend ==="; \
	  KERAS_BACKEND=$$backend TF_CPP_MIN_LOG_LEVEL=2 \
	  JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) \
	  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	  $(PY) -m pytest -q $(PYTEST_ARGS); \
	done

demo: setup
	$(PY) -m keras_segformer demo --out demo_out

benchmark: setup
	$(PY) -m pip install -q -e ".[bench]"
	TF_CPP_MIN_LOG_LEVEL=2 JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) \
	  $(PY) tools/benchmark.py --out benchmark_out $(BENCH_ARGS)
