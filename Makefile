# Two commands on a fresh clone; each sets up its own .venv first.
#   make demo   - train SegFormer-B0 on built-in generated data, report mIoU,
#                 write prediction overlays (see README)
#   make test   - ruff + the whole test suite on TensorFlow, JAX and PyTorch
#                 (in parts, two at a time: TEST_JOBS=1 for one by one)
#   make docs   - build the documentation site (docs/ -> site/) with
#                 mkdocs build --strict: every warning, broken link or
#                 unresolved reference fails (adds the `docs` extra)
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
# `make test` runs the suites as parts queued longest first on TEST_JOBS
# cores: GNU make starts the next part whenever a core is free, so no core
# waits at the end while the other finishes a whole suite. The suites of
# SPLIT_BACKENDS run as two parts each: part 1 the files of TEST_SPLIT,
# part 2 every other file (a new test file lands there). Most of a run is
# single-threaded (XLA compiles, tf.function tracing, Python), so two parts
# side by side on 2 cores take little longer than one. Each part's output
# is printed in one piece when it ends (--output-sync), with its time and
# its 15 slowest tests (where the next cut of CI time is); every
# part runs to its end (--keep-going) and a failing one fails `make test`.
# TEST_JOBS=1 runs them one by one; with PYTEST_ARGS (a selection) each
# backend runs as one part.
TEST_JOBS ?= 2
SPLIT_BACKENDS ?= jax tensorflow torch
# Files with about half of each suite's time (the heaviest: export
# fixtures, transformers parity, fit on every entry point, training runs,
# the tf.data pipeline on TensorFlow); a file missing here stops part 1.
TEST_SPLIT ?= tests/test_export.py tests/test_keras_way.py \
	tests/test_parity_hf.py tests/test_train_resume.py \
	tests/test_train_cli.py tests/test_distributed.py \
	tests/test_bad_input.py tests/test_data.py
# Longest first: the two halves of JAX and TensorFlow (~33 minutes each
# side by side at 3d8a197), then PyTorch's (~9 minutes alone), so that
# the short parts fill the end. A backend not named here runs last.
TEST_ORDER ?= jax-1 tensorflow-1 jax-2 tensorflow-2 torch-1 torch-2 \
	min-jax min-torch
# The lowest Keras pyproject.toml declares and its smoke suite (the tests
# tests/conftest.py lists in MIN_KERAS_SMOKE: fit, predict, save/load,
# transformers parity, the fast paths' fallbacks), one part per backend of
# MIN_KERAS_BACKENDS (`min-<backend>`). That Keras alone (pure Python; its
# dependencies are the venv's) goes into .cache/keras-min-<version>, first
# on PYTHONPATH; the suite stops if it imported another one.
MIN_KERAS := $(shell sed -n 's/^ *"keras>=\([0-9.]*\)",$$/\1/p' pyproject.toml)
MIN_KERAS_DIR := $(CURDIR)/.cache/keras-min-$(MIN_KERAS)
MIN_KERAS_BACKENDS ?= jax torch
# XLA's CPU code generation without LLVM optimization: the same HLO, the
# same library kernels (matmul, convolution) and float semantics, for tiny
# test models; JAX compiles a training step ~40% faster (most of the JAX
# suite's time). `make test TEST_XLA_FLAGS=` runs at XLA's default level.
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0
PYTEST := TF_CPP_MIN_LOG_LEVEL=2 JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest -q --durations=15

_split = $(if $(PYTEST_ARGS),,$(filter $(SPLIT_BACKENDS),$(BACKENDS)))
_parts = $(foreach b,$(BACKENDS),$(if $(filter $b,$(_split)),$b-1 $b-2,$b)) \
	$(if $(PYTEST_ARGS),,$(addprefix min-,$(filter $(MIN_KERAS_BACKENDS),$(BACKENDS))))
# In TEST_ORDER's order (a whole suite where its part 1 is), then the rest.
_ranked = $(foreach p,$(TEST_ORDER),$(or $(filter $p,$(_parts)),$(and \
	$(filter %-1,$p),$(filter $(p:%-1=%),$(_parts)))))
TEST_PARTS := $(addprefix test-,$(_ranked) $(filter-out $(_ranked),$(_parts)))
PART_TARGETS := $(foreach b,$(BACKENDS),test-$b-1 test-$b-2)
MIN_TARGETS := $(addprefix test-min-,$(BACKENDS))

.PHONY: setup demo test lint format benchmark docs $(addprefix test-,$(BACKENDS)) \
	$(PART_TARGETS) $(MIN_TARGETS)

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
	@echo "=== test parts, longest first, $(TEST_JOBS) at a time:" \
	  "$(TEST_PARTS:test-%=%) ==="
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory --keep-going -j$(TEST_JOBS) \
	  --output-sync=target $(TEST_PARTS); \
	rc=$$?; echo "=== all test parts took $$(( $$(date +%s) - start )) s ==="; \
	exit $$rc

# $(1): backend, $(2): label, $(3): files (pytest arguments), $(4):
# environment. On the backends other than INDEPENDENT_ON a selection
# holding only backend-independent tests leaves nothing to run: pytest's
# exit code 5.
define run_pytest
	@echo "=== pytest on $(2) ==="
	@start=$$(date +%s); \
	$(4) KERAS_BACKEND=$(1) $(PYTEST) \
	  $(if $(filter $(1),$(INDEPENDENT_ON)),,-m "not backend_independent") \
	  $(3) $(PYTEST_ARGS); \
	rc=$$?; echo "=== pytest on $(2) took $$(( $$(date +%s) - start )) s ==="; \
	$(if $(filter $(1),$(INDEPENDENT_ON)),,[ $$rc -ne 5 ] || rc=0;) \
	exit $$rc
endef

$(addprefix test-,$(BACKENDS)): test-%: setup
	$(call run_pytest,$*,$*,)

$(PART_TARGETS): test-%: setup
	$(call run_pytest,$(subst -$(lastword $(subst -, ,$*)),,$*),$* \
	  (part $(lastword $(subst -, ,$*)) of 2),$(if \
	  $(filter %-1,$*),$(TEST_SPLIT),$(TEST_SPLIT:%=--ignore=%)))

$(MIN_TARGETS): test-min-%: setup $(MIN_KERAS_DIR)/keras/__init__.py
	$(call run_pytest,$*,$* with keras $(MIN_KERAS),-m min_keras,PYTHONPATH=$(MIN_KERAS_DIR) \
	  KERAS_SEGFORMER_EXPECT_KERAS=$(MIN_KERAS))

$(MIN_KERAS_DIR)/keras/__init__.py: | setup
	$(PY) -m pip install -q --no-deps --upgrade --target $(MIN_KERAS_DIR) \
	  keras==$(MIN_KERAS)

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/mkdocs build \
	  --strict --quiet \
	  --site-dir site

# The `docs` extra's requirements (read from pyproject.toml; the package
# itself is already installed by setup).
$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install -q $$($(PY) -c "import tomllib; print(' '.join( \
	  tomllib.load(open('pyproject.toml', 'rb'))['project'] \
	  ['optional-dependencies']['docs']))")
	touch $@

demo: setup
	$(PY) -m keras_segformer demo --out demo_out

benchmark: setup
	$(PY) -m pip install -q -e ".[bench]"
	TF_CPP_MIN_LOG_LEVEL=2 JAX_COMPILATION_CACHE_DIR=$(JAX_CACHE) \
	  $(PY) tools/benchmark.py --out benchmark_out $(BENCH_ARGS)
