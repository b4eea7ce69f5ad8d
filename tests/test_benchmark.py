"""The benchmark harness (keras_segformer.benchmark): a --quick run of this
project on the current backend and transformers, the table and files it
writes, and its parsing and chart helpers. No timing is asserted."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import BACKEND
from PIL import Image

from keras_segformer import benchmark

OURS = f"ours-{BACKEND}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run for every test below (about 30-60 s)."""
    out = tmp_path_factory.mktemp("benchmark")
    with pytest.MonkeyPatch.context() as env:
        # Workers inherit these. JAX compiles even the weight initializers
        # (a tiny model takes ~40 s to build); with the persistent cache
        # (as `make test` sets it) the second worker reuses the first's.
        cache = os.path.join(os.path.dirname(__file__), "..", ".cache", "jax")
        for key, value in {
            "JAX_COMPILATION_CACHE_DIR": os.path.abspath(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        }.items():
            if key not in os.environ:
                env.setenv(key, value)
        # One thread per worker: on a busy 2-core machine, PyTorch's
        # spinning OpenMP threads make a tiny forward take seconds.
        code = benchmark.main(
            [
                "--quick",
                "--impls",
                f"{OURS},transformers",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    with open(out / "benchmark.json") as f:
        report = json.load(f)
    return out, report


def test_quick_run_writes_every_file(quick_run):
    out, _ = quick_run
    for name in ("benchmark.txt", "benchmark.md", "benchmark.json"):
        assert (out / name).stat().st_size > 0, name
    with Image.open(out / "benchmark.png") as image:
        image.load()
        assert image.size[0] > 100 and image.size[1] > 100
    assert sorted(os.listdir(out / "logs"))


def test_quick_run_json(quick_run):
    _, report = quick_run
    for key in (
        "command",
        "date",
        "machine",
        "options",
        "cases",
        "flops",
        "peak",
        "results",
        "table",
        "flop_convention",
    ):
        assert key in report, key
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"]
    assert machine["versions"]["keras"]
    assert report["options"]["columns"] == [OURS, "transformers"]
    assert "--quick" in report["command"]
    assert [c["name"] for c in report["cases"]] == list(benchmark.QUICK_CASES)
    assert all(c["gflop"] > 0 for c in report["cases"])
    assert report["peak"]["status"] == "ok"
    assert report["peak_reference"]["gflops"] > 0
    assert report["flops"]["status"] == "ok"

    results = {(r["impl"], r["case"]): r for r in report["results"]}
    assert set(results) == {
        (impl, case)
        for impl in (OURS, "transformers")
        for case in benchmark.QUICK_CASES
    }
    for (impl, case), r in results.items():
        assert r["status"] == "ok", (impl, case, r.get("error"))
        name, stats = benchmark.primary_figure(r)
        expected = {
            (True, False): "train_on_batch",
            (True, True): "step",
            (False, False): "predict",
            (False, True): "forward",
        }[case.startswith("train-"), impl == "transformers"]
        assert name == expected
        assert stats["median_ms"] > 0
        assert stats["repeats"] == 2 and stats["warmup"] == 1
        assert len(stats["times_ms"]) == 2
        assert stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
        assert r["rss_peak_mb"] >= r["rss_baseline_mb"] > 0
        assert r["gflops_per_s"] > 0 and r["share_of_peak"] > 0
        assert r["time_vs_transformers"] > 0
        if impl == "transformers":
            assert math.isclose(r["time_vs_transformers"], 1.0)
        elif not case.startswith("train-"):
            assert r["figures"]["predict_on_batch"]["median_ms"] > 0
            # Logits at 1/4 resolution: 64x64 -> 16x16, 150 classes.
            assert r["output_shape"] == [1, 16, 16, 150]


def test_quick_run_table(quick_run):
    out, report = quick_run
    text = (out / "benchmark.txt").read_text()
    assert text == report["table"]
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("case / metric"))
    assert header.split()[-2:] == [OURS, "transformers"]
    for case in benchmark.QUICK_CASES:
        assert sum(line.startswith(case + " ") for line in lines) == 1

    def row(case, metric):
        start = next(
            i for i, line in enumerate(lines) if line.startswith(case + " ")
        )
        return next(
            line for line in lines[start:] if line.strip().startswith(metric)
        )

    for case in benchmark.QUICK_CASES:
        medians = row(case, "median ms").split()[3::2]
        assert len(medians) == 2 and all(float(m) > 0 for m in medians)
        ratios = row(case, "time vs transformers").split()[-2:]
        assert all(r.startswith("x") and float(r[1:]) > 0 for r in ratios)
        assert ratios[1] == "x1.00"
        # The metric name has one "%" / "(+" too.
        assert row(case, "GFLOP/s").count("%") == 3
        assert row(case, "peak RSS").count("(+") == 3
    assert "error" not in text.split("\n\n")[1]

    markdown = (out / "benchmark.md").read_text().splitlines()
    assert markdown[0].startswith("| case | GFLOP |")
    assert f"`{OURS}`" in markdown[0]
    assert len(markdown[0].split("|")) == len(markdown[1].split("|"))
    body = [line for line in markdown[2:] if line.startswith("| `")]
    assert [line.split("`")[1] for line in body] == list(benchmark.QUICK_CASES)
    assert all(line.count(" ms**") == 2 for line in body)


def test_failures_are_reported_not_raised():
    error = ModuleNotFoundError("No module named 'keras_hub'")
    error.name = "keras_hub"
    try:
        raise error
    except ModuleNotFoundError as e:
        assert benchmark._failure(e)["status"] == "not installed"
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        failure = benchmark._failure(e)
    assert failure["status"] == "error"
    assert "RuntimeError: boom" in failure["error"]
    message = "\x1b[1mImage height 16 is too small\x1b[0m\n\nArguments"
    assert benchmark.short_error(message) == (
        "Image height 16 is too small Arguments"
    )


def test_parse_case_and_columns():
    case = benchmark.parse_case("train-b2-512x1024-b4")
    assert (case.variant, case.height, case.width, case.batch) == (
        "b2",
        512,
        1024,
        4,
    )
    assert case.train and case.shape_key == "b2-512x1024"
    assert not benchmark.parse_case("b0-512x512-b1").train
    with pytest.raises(ValueError, match="not a case name"):
        benchmark.parse_case("b9-512-b1")
    names = benchmark.default_case_names(["b0", "b2"])
    assert names[:5] == list(benchmark.DEFAULT_CASES)
    assert names[5:] == ["train-b0-512x512-b2", "train-b2-512x512-b2"]

    auto = benchmark.parse_column("keras-hub")
    assert auto.backend is None and auto.name == "keras-hub-auto"
    assert benchmark.parse_column("keras-hub", hub_backend="jax").name == (
        "keras-hub-jax"
    )
    bf16 = benchmark.parse_column("ours-torch-bf16")
    assert bf16.bf16 and bf16.backend == "torch"
    with pytest.raises(ValueError, match="unknown"):
        benchmark.parse_column("ours-numpy")


def test_smooth_images_are_smooth():
    images = benchmark.smooth_images(2, 96, 128, seed=3)
    assert images.shape == (2, 96, 128, 3) and images.dtype == "float32"
    step = abs(images[:, 1:] - images[:, :-1]).mean()
    assert step < 0.2 * images.std()


def test_pil_chart(tmp_path):
    path = tmp_path / "chart.png"
    values = {
        ("ours-jax", "b0-512x512-b1"): (100.0, 90.0, 110.0),
        ("transformers", "b0-512x512-b1"): (80.0, 79.0, 81.0),
        ("ours-jax", "b0-1024x2048-b1"): (9000.0, 8000.0, 9500.0),
    }
    how = benchmark.draw_chart(
        str(path),
        ["b0-512x512-b1", "b0-1024x2048-b1"],
        ["ours-jax", "transformers"],
        values,
        use_matplotlib=False,
    )
    assert how == "PIL"
    with Image.open(path) as image:
        pixels = image.convert("RGB").getcolors(1 << 16)
    assert len(pixels) > 3  # background, axes, two bar colours at least


def test_cli_registers_benchmark():
    from keras_segformer.cli import build_parser

    args = build_parser().parse_args(
        ["benchmark", "--quick", "--impls", "transformers", "--out", "x"]
    )
    assert args.command == "benchmark" and args.quick
    assert args.impls == "transformers" and args.out == "x"


def test_peak_rss_is_the_worker_not_its_parent(tmp_path):
    """ru_maxrss survives exec on Linux: a worker started by a big parent
    would report the parent's size. The harness reads VmHWM instead."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("VmHWM is Linux-only")
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page
    code = (
        "import runpy, sys; h = runpy.run_path(sys.argv[1]); "
        "print(h['_peak_rss_mb']())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, benchmark.__file__],
        capture_output=True,
        text=True,
        check=True,
    )
    del ballast
    assert float(out.stdout) < 200, out.stdout


def test_gpu_device_measures_a_gpu_or_refuses(tmp_path):
    """--device gpu never times the CPU in a GPU column: without a GPU the
    cell is an error that says so."""
    import torch

    code = benchmark.main(
        [
            "--quick",
            "--device",
            "gpu",
            "--impls",
            "transformers",
            "--cases",
            "tiny-64x64-b1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    with open(tmp_path / "benchmark.json") as f:
        report = json.load(f)
    assert report["complete"] and report["options"]["device"] == "gpu"
    (result,) = report["results"]
    if torch.cuda.is_available():
        assert result["status"] == "ok" and result["accelerator"]
        assert result["device_peak_mb"] > 0
    else:
        assert result["status"] == "error"
        assert "sees no GPU" in result["error"]
        assert "sees no GPU" in (tmp_path / "benchmark.txt").read_text()


def test_parity_check_tool():
    """tools/parity_check.py: transformers (CPU, float32) vs this project on
    the current backend, same random weights and image; exit 0 when the
    largest logit difference is within --tol, and it prints that figure."""
    tool = os.path.join(os.path.dirname(__file__), "..", "tools")
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(tool, "parity_check.py"),
            "--variant",
            "tiny",
            "--size",
            "45x61",
            "--batch",
            "1",
            "--classes",
            "5",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
    )
    line = [s for s in out.stdout.splitlines() if s.startswith("parity")]
    assert out.returncode == 0 and line, out.stdout + out.stderr[-2000:]
    assert f"parity {BACKEND} on " in line[0]
    assert "logits (1, 12, 16, 5)" in line[0]
    diff = float(line[0].split("max |diff| ")[1].split()[0])
    assert diff <= 1e-4
