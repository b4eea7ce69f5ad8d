"""The suite machinery of tests/conftest.py. The ``backend_independent``
marking: listed tests get the marker (``-m "not backend_independent"``
leaves them out), a name that no longer exists stops the run, and the
audit fails a listed test that calls the Keras backend (each case runs
pytest on a small sample file). The frozen objects that keep the
per-test garbage collection cheap."""

import gc
import os
import subprocess
import sys
import weakref

CONFTEST = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "conftest.py"
)

SAMPLE = """
import keras
import numpy as np
import pytest


def test_numpy():
    assert np.add(1, 2) == 3


def test_keras_op():
    assert float(keras.ops.convert_to_numpy(keras.ops.add(1.0, 2.0))) == 3.0


@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n > 0
"""

# Loads the project's conftest under another module name and lists `names`.
SAMPLE_CONFTEST = """
import importlib.util

spec = importlib.util.spec_from_file_location("project_conftest", {path!r})
project = importlib.util.module_from_spec(spec)
spec.loader.exec_module(project)
project.BACKEND_INDEPENDENT.clear()
project.BACKEND_INDEPENDENT["test_sample.py"] = {names!r}
project.RUN_ONCE.clear()
project.RUN_ONCE.update({once!r})
pytest_collection_modifyitems = project.pytest_collection_modifyitems
pytest_addoption = project.pytest_addoption
pytest_runtest_setup = project.pytest_runtest_setup
pytest_runtest_call = project.pytest_runtest_call
"""


def _pytest(tmp_path, names, *args, once=(), env=None):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    once = {"test_sample.py": set(once)} if once else {}
    (tmp_path / "conftest.py").write_text(
        SAMPLE_CONFTEST.format(path=CONFTEST, names=set(names), once=once)
    )
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    backend_independent: sample\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        # The numpy backend imports fastest; the audit covers every backend.
        env={**os.environ, "KERAS_BACKEND": "numpy", **(env or {})},
    )


def test_listed_tests_are_marked_and_deselected(tmp_path):
    names = {"test_numpy", "test_param"}
    out = _pytest(tmp_path, names, "-q", "-m", "not backend_independent")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 3 deselected" in out.stdout
    out = _pytest(tmp_path, names, "-q", "-m", "backend_independent")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed, 1 deselected" in out.stdout


def test_run_once_tests_run_on_one_backend_only(tmp_path):
    # The sample runs on the numpy backend, not ONCE_ON (torch).
    out = _pytest(tmp_path, (), "-q", once={"test_keras_op", "test_param"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 3 deselected" in out.stdout
    everywhere = {"KERAS_SEGFORMER_TEST_ALL": "1"}
    out = _pytest(tmp_path, (), "-q", once={"test_param"}, env=everywhere)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout and "deselected" not in out.stdout
    out = _pytest(tmp_path, (), "-q", once={"test_numpy", "test_gone"})
    assert out.returncode == 4 and "RUN_ONCE lists test_gone" in out.stderr


def test_a_listed_name_that_is_gone_stops_the_run(tmp_path):
    out = _pytest(tmp_path, {"test_numpy", "test_renamed"}, "-q")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "test_renamed for test_sample.py" in out.stderr


def test_audit_fails_a_listed_test_that_calls_the_backend(tmp_path):
    out = _pytest(
        tmp_path,
        {"test_numpy", "test_keras_op"},
        "-q",
        "-m",
        "backend_independent",
        "--audit-backend-independent",
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 failed, 1 passed" in out.stdout
    assert (
        "test_sample.py::test_keras_op is marked backend_independent "
        "but called the Keras backend" in out.stdout
    )


def test_objects_from_before_the_tests_are_frozen():
    # Imported libraries alone are hundreds of thousands of objects.
    assert gc.get_freeze_count() > 100_000
    # What a test creates is still collected.
    node = _Node()
    node.loop = node
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None


class _Node:
    pass


# ------------------------------------------------ the Makefile's schedule

ROOT = os.path.dirname(os.path.dirname(CONFTEST))

# Stands in for the venv's python (and ruff): logs the backend and the
# pytest arguments; FAIL_ON names a backend whose part 1 fails.
FAKE_PYTHON = """#!/bin/sh
echo "$KERAS_BACKEND $*" >> "$FAKE_LOG"
case "$KERAS_BACKEND $*" in
  "$FAIL_ON "*tests/*) exit 1 ;;
esac
exit 0
"""


def _make(tmp_path, *args, fail_on="none"):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "ruff"):
        (venv / "bin" / name).write_text(FAKE_PYTHON)
        os.chmod(venv / "bin" / name, 0o755)
    (venv / ".installed").touch()
    os.utime(
        venv / ".installed",
        (os.path.getmtime(os.path.join(ROOT, "pyproject.toml")) + 1,) * 2,
    )
    log = tmp_path / "log"
    log.touch()
    env = dict(_clean_env(), FAKE_LOG=str(log), FAIL_ON=fail_on)
    done = subprocess.run(
        ["make", "-C", ROOT, "--no-print-directory", f"VENV={venv}", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    runs = [
        line.split(" ", 2)
        for line in log.read_text().splitlines()
        if " -m pytest " in line
    ]
    return done, [(r[0], r[2]) for r in runs]


def _clean_env():
    """The environment without what a calling make passes on (this suite
    runs under `make test BACKENDS=torch`, which exports BACKENDS)."""
    names = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    names |= {"BACKENDS", "PYTEST_ARGS", "TEST_JOBS", "TEST_SPLIT"}
    names |= {"TEST_ORDER", "SPLIT_BACKENDS", "INDEPENDENT_ON", "VENV"}
    return {k: v for k, v in os.environ.items() if k not in names}


def _split_files():
    done = subprocess.run(
        ["make", "-C", ROOT, "-s", "--eval=show:;@echo $(TEST_SPLIT)", "show"],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    return done.stdout.split()


def test_make_test_runs_every_part_longest_first(tmp_path):
    split = _split_files()
    assert split and all(os.path.isfile(os.path.join(ROOT, f)) for f in split)
    done, runs = _make(tmp_path, "test", "TEST_JOBS=1")
    assert done.returncode == 0, done.stdout + done.stderr
    backends = [backend for backend, _ in runs]
    assert backends == ["jax", "tensorflow"] * 2 + ["torch"] * 2 + [
        "jax",
        "torch",
    ]
    # Then the minimum-Keras smoke suite, on JAX and PyTorch.
    assert all(args.endswith("-m min_keras") for _, args in runs[6:])
    assert "=== pytest on torch with keras " in done.stdout
    ignores = " ".join(f"--ignore={f}" for f in split)
    for (backend, args), part in zip(runs, [1, 1, 2, 2, 1, 2]):
        # Part 1 names its files, part 2 leaves them out: each file runs
        # once per backend; backend-independent tests on TensorFlow only.
        independent = "-m not backend_independent"
        assert (independent in args) == (backend != "tensorflow"), args
        assert (" ".join(split) in args) == (part == 1), args
        assert (ignores in args) == (part == 2), args
        assert f"=== pytest on {backend}" in done.stdout
    assert "took" in done.stdout


def test_a_failing_part_fails_make_test_after_all_ran(tmp_path):
    done, runs = _make(tmp_path, "test", fail_on="tensorflow")
    assert done.returncode != 0
    assert len(runs) == 8  # --keep-going: the other parts still ran
    assert "=== all test parts took" in done.stdout


def test_a_selection_runs_each_backend_whole(tmp_path):
    done, runs = _make(
        tmp_path, "test", "TEST_JOBS=1", "PYTEST_ARGS=tests/test_models.py"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [backend for backend, _ in runs] == ["jax", "tensorflow", "torch"]
    assert all(args.endswith("tests/test_models.py") for _, args in runs)
    assert not any("--ignore" in args for _, args in runs)
