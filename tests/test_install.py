"""What a user installs: the wheel with one extra in a fresh virtual
environment, the command line with no backend installed, the extras named
by one-line errors, and the export options' names with their aliases.

None of these reach the Keras backend: they run once (``backend_independent``,
run on TensorFlow by ``make test``). The command-line runs go through
``python -m keras_segformer`` in a subprocess, outside the checkout, with
a ``sitecustomize`` that makes the named modules fail to import as if they
were not installed.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from keras_segformer.cli import build_parser, dependencies

pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "evaluate", "predict", "convert", "export", "demo")
_BLOCKER = """
import sys
BLOCKED = {blocked!r}


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def _cli(tmp_path, *args, blocked=(), env=None):
    """``python -m keras_segformer ARGS`` in ``tmp_path`` (not the checkout),
    with ``blocked`` modules missing; returns the finished process."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCKER.format(blocked=blocked))
    run_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KERAS_BACKEND", "PYTHONPATH")
    }
    run_env.update(
        PYTHONPATH=os.pathsep.join((str(site), ROOT)),
        KERAS_HOME=str(tmp_path / "keras_home"),  # no keras.json there
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, "-m", "keras_segformer", *args],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_with_no_backend_installed(tmp_path):
    """`--help`, and each command's, start without Keras' backends."""
    blocked = ("tensorflow", "torch", "jax", "jaxlib")
    done = _cli(tmp_path, "--help", blocked=blocked)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout
    for command in COMMANDS:
        done = _cli(tmp_path, command, "--help", blocked=blocked)
        assert done.returncode == 0, (command, done.stderr)
        assert f"usage: keras-segformer {command}" in done.stdout


def _one_line(done):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_missing_backend_and_tensorflow_are_one_line(tmp_path):
    out = tmp_path / "demo_out"
    blocked = ("tensorflow", "torch", "jax", "jaxlib")
    done = _cli(tmp_path, "demo", "--out", str(out), blocked=blocked)
    line = _one_line(done)
    assert "no Keras backend is installed" in line
    assert "keras-segformer[tensorflow]" in line
    assert not out.exists()
    # No KERAS_BACKEND and no TensorFlow: PyTorch, said in one line; then
    # tf.data's TensorFlow is missing, naming the extra that brings it.
    done = _cli(tmp_path, "demo", "--out", str(out), blocked=("tensorflow",))
    said, error = done.stderr.strip().splitlines()
    assert "using torch" in said
    assert done.returncode == 2
    assert "input pipeline (tf.data) needs tensorflow" in error
    assert "pip install 'keras-segformer[torch]'" in error
    assert not out.exists()
    # A backend named but missing.
    done = _cli(
        tmp_path,
        "demo",
        "--out",
        str(out),
        blocked=("jax", "jaxlib"),
        env={"KERAS_BACKEND": "jax"},
    )
    line = _one_line(done)
    assert "KERAS_BACKEND is 'jax', but jax is not installed" in line
    assert "pip install 'keras-segformer[jax]'" in line
    assert not out.exists()


def test_missing_onnx_exporter_is_one_line(tmp_path):
    out = tmp_path / "exports" / "m.onnx"
    done = _cli(
        tmp_path,
        "export",
        "--model",
        "m.keras",
        "--format",
        "onnx",
        "--out",
        str(out),
        blocked=("tf2onnx",),
        env={"KERAS_BACKEND": "tensorflow"},
    )
    line = _one_line(done)
    assert "ONNX export needs tf2onnx" in line
    assert "pip install 'keras-segformer[export]'" in line
    assert not out.parent.exists()


def test_import_errors_name_their_extra():
    explain = dependencies.explain
    assert "keras-segformer[export]" in explain(
        ModuleNotFoundError("No module named 'onnx'", name="onnx.helper")
    )
    try:  # an import error raised from another (as write_onnx does)
        try:
            raise ModuleNotFoundError("no", name="huggingface_hub")
        except ImportError as e:
            raise ImportError("Downloading needs huggingface_hub") from e
    except ImportError as e:
        message = explain(e)
    assert "huggingface-hub" in message
    assert "keras-segformer[convert]" in message
    assert "keras-segformer[keras-hub]" in explain(
        ModuleNotFoundError("no", name="keras_hub")
    )
    # Anything else is a bug: no message, the traceback stays.
    assert explain(ModuleNotFoundError("no", name="keras_segformer.x")) is None


def test_export_flags_and_their_aliases():
    parser = build_parser()
    base = ["export", "--model", "m.keras", "--out", "m"]
    canonical = parser.parse_args(
        [
            *base,
            "--format",
            "litert",
            "--include-preprocessing",
            "--include-postprocessing",
            "--quantization",
            "int8",
            "--representative-images",
            "val/",
        ]
    )
    alias = parser.parse_args(
        [
            *base,
            "--format",
            "tflite",
            "--raw-input",
            "--argmax",
            "--quantize",
            "int8",
            "--calibration",
            "val/",
        ]
    )
    names = (
        "include_preprocessing",
        "include_postprocessing",
        "quantization",
        "representative_images",
    )
    for name in names:
        assert getattr(canonical, name) == getattr(alias, name), name
    assert canonical.include_preprocessing and canonical.quantization == "int8"
    from keras_segformer.export.formats import canonical_format

    assert canonical_format(alias.format) == canonical.format == "litert"
    assert canonical_format("saved_model") == "tf_saved_model"
    with pytest.raises(ValueError, match="aliases: 'saved_model', 'tflite'"):
        canonical_format("tflight")
    text = parser._subparsers._group_actions[0].choices["export"].format_help()
    for flag in ("--raw-input", "--argmax", "--quantize", "--calibration"):
        assert flag in text  # shown as an alias


def test_cli_choices_are_the_package_s():
    """`convert`'s choices are written out in the CLI (so that its --help
    needs no Keras): they must stay the converters' own."""
    from keras_segformer.cli import convert as convert_cli
    from keras_segformer.convert.formats import FORMATS
    from keras_segformer.convert.loader import TASKS

    assert convert_cli.FORMATS == FORMATS
    assert convert_cli.TASKS == TASKS


# --------------------------------------------- the wheel in a fresh venv


def _build_wheel(tmp_path):
    """The wheel, built from a copy of what it packages (the checkout
    keeps no build/ or egg-info)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(
        os.path.join(ROOT, "keras_segformer"),
        source / "keras_segformer",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
        + ["--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.iterdir()
    return wheel


def _flag(help_text, *names):
    """The first of ``names`` that ``help_text`` offers."""
    return next(n for n in names if f"{n} " in help_text)


def test_wheel_with_torch_extra_in_a_fresh_venv(tmp_path):
    """`pip install "keras-segformer[torch]"` into a new virtual
    environment: pip installs the extra's requirements from the wheel's
    metadata (torch, and TensorFlow for tf.data), then, outside the
    checkout, `keras-segformer --help` without KERAS_BACKEND and a tiny
    `demo` on PyTorch run from the installed package.

    Needs the package index (PyPI: TensorFlow's wheel) unless pip's cache
    holds it; torch 2.13.0 is the pinned CPU wheel."""
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
    )
    python = str(venv / "bin" / "python")
    # This pip installs into the new environment (--python): no pip of
    # its own; --no-compile: no .pyc for TensorFlow's thousands of files.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
        + ["--no-compile", f"{wheel}[torch]"],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "list"]
        + ["--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    versions = {
        p["name"].lower(): p["version"] for p in json.loads(listed.stdout)
    }
    assert versions["keras-segformer"] == "0.1.0"
    assert versions["torch"].startswith("2.13.0")
    assert "tensorflow" in versions
    for other in ("jax", "transformers", "tf2onnx", "keras-hub"):
        assert other not in versions, other  # only what [torch] brings
    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KERAS_BACKEND", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        KERAS_HOME=str(tmp_path / "keras_home"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PATH=os.pathsep.join((str(venv / "bin"), env.get("PATH", ""))),
    )
    script = str(venv / "bin" / "keras-segformer")

    def run(*args, **more):
        return subprocess.run(
            [script, *args],
            cwd=work,
            env={**env, **more},
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = run("--help")
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout
    done = run("demo", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    sizes = [
        _flag(text, "--num-train-images", "--train-images"),
        "2",
        _flag(text, "--num-val-images", "--val-images"),
        "1",
    ]
    done = run(
        "demo",
        "--out",
        "demo",
        "--size",
        "32",
        *sizes,
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--overlays",
        "1",
        KERAS_BACKEND="torch",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(work / "demo" / "summary.json") as f:
        summary = json.load(f)
    assert summary["backend"] == "torch"
    assert os.path.isfile(work / "demo" / "train" / "model.keras")
    # The demo ran the installed package, not the checkout's.
    find = "import importlib.util as u; print(u.find_spec('keras_segformer'))"
    where = subprocess.run(
        [python, "-c", find],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in where.stdout and ROOT not in where.stdout
