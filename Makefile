# Two commands on a fresh clone; each sets up its own .venv first.
#   make demo   - train SegFormer-B0 on built-in generated data, report mIoU,
#                 write prediction overlays (see README)
#   make test   - ruff + the whole test suite on TensorFlow, JAX and PyTorch
#                 (the backends run side by side: TEST_JOBS=1 for one by one)
#   make benchmark - side-by-side speed/memory vs transformers and keras-hub
#                 (adds the `bench` extra; writes benchmark_out/)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS ?= jax tensorflow torch
PYTEST_ARGS ?=
# JAX compiles every new shape (even weight initializers); a persistent
# cache shared by the test processes turns minutes into seconds.
JAX_CACHE := $(CURDIR)/.cache/jax
# Tests marked backend_independent (listed in tests/conftest.py: data
# pipeline, file readers, numpy processing, parsing) give the same result on
# every backend: they run once, on TensorFlow (else the first backend
# listed), and are deselected on the others.
INDEPENDENT_ON ?= $(if $(filter tensorflow,$(BACKENDS)),tensorflow,$(firstword $(BACKENDS)))
# Backend suites run at once. Most of a run is single-threaded (XLA
# compiles, tf.function tracing, Python), so on a 2-core machine two suites
# side by side take little longer than one; each suite's output is printed
# in one piece when it ends (--output-sync).
TEST_JOBS ?= 2
PYTEST := TF_CPP_MIN_LOG_LEVEL=2 JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 $(PY) -m pytest -q

.PHONY: setup demo test lint format benchmark $(addprefix test-,$(BACKENDS))

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

# The longest suite (JAX) is listed first by default so that it starts first.
# Every suite runs to its end (--keep-going) even when another fails.
test: lint
	@$(MAKE) --no-print-directory --keep-going -j$(TEST_JOBS) \
	  --output-sync=target $(addprefix test-,$(BACKENDS))

# On the other backends a selection (PYTEST_ARGS) holding only
# backend-independent tests leaves nothing to run: pytest's exit code 5.
$(addprefix test-,$(BACKENDS)): test-%: setup
	@echo "=== pytest on $* ==="
	@start=$$(date +%s); \
	KERAS_BACKEND=$* $(PYTEST) \
	  $(if $(filter $*,$(INDEPENDENT_ON)),,-m "not backend_independent") \
	  $(PYTEST_ARGS); \
	rc=$$?; echo "=== pytest on $* took $$(( $$(date +%s) - start )) s ==="; \
	$(if $(filter $*,$(INDEPENDENT_ON)),,[ $$rc -ne 5 ] || rc=0;) \
	exit $$rc

demo: setup
	$(PY) -m keras_segformer demo --out demo_out

benchmark: setup
	$(PY) -m pip install -q -e ".[bench]"
	TF_CPP_MIN_LOG_LEVEL=2 JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) \
	  $(PY) tools/benchmark.py --out benchmark_out $(BENCH_ARGS)
