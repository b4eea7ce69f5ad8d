"""The benchmark harness (benchmarks/ of the checkout): a --quick run of
this project on the current backend and transformers, the overhead case,
the bf16 columns and the CPU's bf16 units, the files it writes, and its
parsing and chart helpers. No timing is asserted."""

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # benchmarks/ is not installed with the package
    sys.path.insert(0, ROOT)

from benchmarks import (  # noqa: E402
    cases,
    cli,
    machine,
    outputs,
    probes,
    turns,
)
from benchmarks.report import primary_figure  # noqa: E402
from benchmarks.runner import Benchmark  # noqa: E402

OURS = f"ours-{BACKEND}"
OVERHEAD = cases.OVERHEAD_CASE
# machine.bf16_units() of a CPU with and without bf16 matrix units.
WITH_UNITS = machine.bf16_units("flags\t: fpu avx2 avx512_bf16 amx_bf16\n")
WITHOUT_UNITS = machine.bf16_units("flags\t: fpu avx2 fma\n")


def _jax_cache(env):
    # Workers inherit these. JAX compiles even the weight initializers
    # (a tiny model takes ~40 s to build); with the persistent cache (as
    # `make test` sets it) a later worker reuses an earlier one's.
    cache = os.path.join(ROOT, ".cache", "jax")
    for key, value in {
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }.items():
        if key not in os.environ:
            env.setenv(key, value)


def _run(out, argv, cpu_bf16=None):
    """A run from Python: its JSON report (with these CPU bf16 units)."""
    parser = cli.add_arguments(argparse.ArgumentParser())
    # One thread per worker: on a busy 2-core machine, PyTorch's spinning
    # OpenMP threads make a tiny forward take seconds.
    args = parser.parse_args([*argv, "--threads", "1", "--out", str(out)])
    with pytest.MonkeyPatch.context() as env:
        _jax_cache(env)
        Benchmark(args, cpu_bf16=cpu_bf16).run()
    with open(out / "benchmark.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run for the tests below (about 1-2 minutes)."""
    out = tmp_path_factory.mktemp("benchmark")
    with pytest.MonkeyPatch.context() as env:
        _jax_cache(env)
        code = cli.main(
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
    out, report = quick_run
    for name in ("benchmark.txt", "benchmark.md", "benchmark.json"):
        assert (out / name).stat().st_size > 0, name
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # No chart, and one line that says so.
        assert report["chart"] == outputs.NO_CHART
        assert not (out / "benchmark.png").exists()
    else:
        from PIL import Image

        assert report["chart"] == "matplotlib"
        with Image.open(out / "benchmark.png") as image:
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
    machine_info = report["machine"]
    assert machine_info["cpu_count"] >= 1 and machine_info["cpu_model"]
    assert machine_info["versions"]["keras"]
    assert machine_info["bf16_units"]["has"] in (True, False, None)
    assert report["options"]["columns"] == [OURS, "transformers"]
    assert "--quick" in report["command"]
    assert [c["name"] for c in report["cases"]] == list(cases.QUICK_CASES)
    assert all(c["gflop"] > 0 for c in report["cases"])
    assert report["peak"]["status"] == "ok"
    assert report["peak_reference"]["gflops"] > 0
    assert report["flops"]["status"] == "ok"

    results = {(r["impl"], r["case"]): r for r in report["results"]}
    assert set(results) == {
        (impl, case)
        for impl in (OURS, "transformers")
        for case in cases.QUICK_CASES
    }
    for (impl, case), r in results.items():
        assert r["status"] == "ok", (impl, case, r.get("error"))
        assert r["imported_keras"] == (impl != "transformers")
        name, stats = primary_figure(r)
        expected = {
            (True, False): "train_on_batch",
            (True, True): "step",
            (False, False): "predict",
            (False, True): "forward",
        }[case.startswith("train-"), impl == "transformers"]
        if case == OVERHEAD and impl == OURS:
            expected = "predict_on_batch"
        assert name == expected
        assert stats["median_ms"] > 0
        assert stats["repeats"] == 2 and stats["warmup"] == 1
        assert len(stats["times_ms"]) == 2
        assert stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
        assert r["rss_peak_mb"] >= r["rss_baseline_mb"] > 0
        assert r["gflops_per_s"] > 0 and r["share_of_peak"] > 0
        assert r["time_vs_transformers"] > 0
        assert r["time_vs"] == "transformers"
        if impl == "transformers":
            assert math.isclose(r["time_vs_transformers"], 1.0)
        elif not case.startswith("train-"):
            assert r["figures"]["predict_on_batch"]["median_ms"] > 0
            # Logits at 1/4 resolution: 64x64 -> 16x16, 150 classes.
            assert r["output_shape"] == [1, 16, 16, 150]


def test_overhead_case(quick_run):
    """tiny-64x64-b1 is a default case with issue 17's model; ours report
    predict_on_batch (headline), the eager model(x) and predict."""
    out, report = quick_run
    assert cases.default_case_names()[0] == OVERHEAD
    assert report["configs"]["tiny"] == {
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [16, 32, 40, 64],
        "num_heads": [1, 2, 5, 8],
        "sr_ratios": [8, 4, 2, 1],
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "mlp_ratios": [4, 4, 4, 4],
        "decoder_hidden_size": 32,
    }
    # The quick smoke model is still the test suite's.
    assert report["configs"]["smoke"]["hidden_sizes"] == [8, 16, 24, 32]
    ours, theirs = (
        next(
            r
            for r in report["results"]
            if r["impl"] == impl and r["case"] == OVERHEAD
        )
        for impl in (OURS, "transformers")
    )
    # The two columns ran at once, taking turns (benchmarks/turns.py).
    assert ours["interleaved"] and theirs["interleaved"]
    smoke_cells = [r for r in report["results"] if r["case"] != OVERHEAD]
    assert smoke_cells and not any(r.get("interleaved") for r in smoke_cells)
    assert list(ours["figures"]) == ["predict_on_batch", "call", "predict"]
    assert ours["headline"] == "predict_on_batch"
    assert ours["call_vs_transformers"] > 0
    assert list(theirs["figures"]) == ["forward"]
    smoke = next(
        r
        for r in report["results"]
        if r["impl"] == OURS and r["case"] == "smoke-64x64-b1"
    )
    assert "call" not in smoke["figures"]

    lines = (out / "benchmark.txt").read_text().splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith(OVERHEAD))
    call = next(s for s in lines[start:] if s.strip().startswith("model(x)"))
    ours_cell, theirs_cell = call.split("(vs tr.)")[1].rsplit(None, 1)
    assert float(ours_cell.split()[0]) > 0 and ours_cell.strip().endswith(")")
    assert theirs_cell == "-"
    markdown = (out / "benchmark.md").read_text()
    assert "model(x) " in markdown
    assert "interleaved timing" in (out / "benchmark.txt").read_text()


def test_quick_run_table(quick_run):
    out, report = quick_run
    text = (out / "benchmark.txt").read_text()
    assert text == report["table"]
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("case / metric"))
    assert header.split()[-2:] == [OURS, "transformers"]
    for case in cases.QUICK_CASES:
        assert sum(line.startswith(case + " ") for line in lines) == 1

    def row(case, metric):
        start = next(
            i for i, line in enumerate(lines) if line.startswith(case + " ")
        )
        return next(
            line for line in lines[start:] if line.strip().startswith(metric)
        )

    for case in cases.QUICK_CASES:
        medians = row(case, "median ms").split()[3::2]
        assert len(medians) == 2 and all(float(m) > 0 for m in medians)
        ratios = row(case, "time vs transformers").split()[-2:]
        assert all(r.startswith("x") and float(r[1:]) > 0 for r in ratios)
        assert ratios[1] == "x1.00"
        # The metric name has one "%" / "(+" too.
        assert row(case, "GFLOP/s").count("%") == 3
        assert row(case, "peak RSS").count("(+") == 3
    assert "error" not in text.split("\n\n")[1]
    assert "bfloat16 vs float32" not in text  # no bf16 column

    markdown = (out / "benchmark.md").read_text().splitlines()
    assert markdown[0].startswith("| case | GFLOP |")
    assert f"`{OURS}`" in markdown[0]
    assert len(markdown[0].split("|")) == len(markdown[1].split("|"))
    body = [line for line in markdown[2:] if line.startswith("| `")]
    assert [line.split("`")[1] for line in body] == list(cases.QUICK_CASES)
    assert all(line.count(" ms**") == 2 for line in body)


def test_transformers_bf16_column(tmp_path):
    """transformers-bf16: autocast inference (compared with float32 of the
    same weights) and training; bf16 columns are timed against it."""
    report = _run(
        tmp_path,
        [
            "--quick",
            "--impls",
            "transformers,transformers-bf16",
            "--cases",
            f"{OVERHEAD},train-smoke-64x64-b1",
        ],
        cpu_bf16=WITH_UNITS,
    )
    results = {(r["impl"], r["case"]): r for r in report["results"]}
    for case, figure in (
        (OVERHEAD, "forward"),
        ("train-smoke-64x64-b1", "step"),
    ):
        r = results["transformers-bf16", case]
        assert r["status"] == "ok", r.get("error")
        assert r["dtype"] == "autocast bfloat16" and not r["imported_keras"]
        assert primary_figure(r)[0] == figure
        assert r["time_vs"] == "transformers-bf16"
        assert math.isclose(r["time_vs_transformers"], 1.0)
        assert results["transformers", case]["time_vs"] == "transformers"
    r = results["transformers-bf16", OVERHEAD]
    # bfloat16 moved the logits, and most argmaxes stayed.
    assert r["max_abs_logit_diff"] > 0 and r["argmax_agreement"] > 0.5
    assert r["output_shape"] == [1, 150, 16, 16]

    text = report["table"]
    assert "bfloat16 vs float32 (same weights, same smooth input; bf16 " in (
        text
    )
    bf16 = [s for s in text.splitlines() if s.startswith(OVERHEAD + " ")]
    assert any(" transformers-bf16 " in s for s in bf16)
    assert "Machine: bf16 units: avx512_bf16 amx_bf16." in text


def test_transformers_bf16_step_runs_under_autocast():
    """The training step's forward and loss run in bfloat16: from the same
    weights, one step moves them differently than the float32 step."""
    import torch
    from transformers import SegformerForSemanticSegmentation

    from benchmarks import workers

    case = cases.parse_case("train-smoke-32x32-b1")
    images = cases.smooth_images(1, 32, 32)
    labels = cases.random_labels(1, 32, 32, 5)
    config = cases.hf_segformer_config(cases.model_config("smoke"), 5)
    torch.manual_seed(0)
    start = SegformerForSemanticSegmentation(config).state_dict()
    after = {}
    for bf16 in (False, True):
        model = SegformerForSemanticSegmentation(config)
        model.load_state_dict(start)
        spec = {"bf16": bf16}
        name, step, _ = workers._transformers_calls(
            spec, case, model, images, labels, accelerator=None
        )
        assert name == "step"
        step()
        after[bf16] = model.state_dict()
    key = "decode_head.classifier.weight"
    assert not torch.equal(after[False][key], start[key])
    assert not torch.allclose(after[False][key], after[True][key], atol=1e-7)


def test_ours_bf16_trains(tmp_path):
    """ours' bf16 columns run training cases (mixed_bfloat16 policy,
    train_on_batch), not only inference."""
    report = _run(
        tmp_path,
        [
            "--quick",
            "--impls",
            f"{OURS}-bf16",
            "--cases",
            "train-smoke-64x64-b1",
        ],
        cpu_bf16=WITH_UNITS,
    )
    (r,) = report["results"]
    assert r["status"] == "ok", r.get("error")
    assert r["dtype"] == "mixed_bfloat16" and r["imported_keras"]
    assert primary_figure(r)[0] == "train_on_batch"
    assert r["figures"]["train_on_batch"]["median_ms"] > 0
    assert "bfloat16 vs float32" in report["table"]


def test_bf16_units():
    """The CPU's bf16 matrix units, from /proc/cpuinfo's flags."""
    assert WITH_UNITS == {
        "has": True,
        "flags": ["avx512_bf16", "amx_bf16"],
        "text": "bf16 units: avx512_bf16 amx_bf16",
    }
    assert WITHOUT_UNITS["has"] is False
    assert WITHOUT_UNITS["text"] == "no bf16 units on this CPU"
    arm = machine.bf16_units("Features\t: fp asimd sve bf16 i8mm\n")
    assert arm["has"] and arm["flags"] == ["bf16"]
    assert machine.bf16_units("")["has"] is None
    info = machine.machine_info()
    assert info["bf16_units"]["has"] in (True, False, None)


def test_bf16_cells_without_units(tmp_path):
    """On a CPU without bf16 units the bf16 cells say so instead of a
    figure, the notes say why, and no bf16 worker runs."""
    report = _run(
        tmp_path,
        [
            "--quick",
            "--impls",
            "ours-bf16,transformers-bf16",
            "--cases",
            "smoke-64x64-b1,train-smoke-64x64-b1",
        ],
        cpu_bf16=WITHOUT_UNITS,
    )
    assert report["machine"]["bf16_units"] == WITHOUT_UNITS
    assert len(report["results"]) == 4
    assert {r["impl"] for r in report["results"]} == {
        "ours-bf16",
        "transformers-bf16",
    }
    for r in report["results"]:
        assert r["status"] == "no bf16 units on this CPU"
        assert "figures" not in r
    assert sorted(os.listdir(tmp_path / "logs")) == [
        "reference.json",
        "reference.log",
    ]
    text = report["table"]
    grid = text.split("\n\n")[1].splitlines()
    medians = [s for s in grid if s.strip().startswith("median ms")]
    assert len(medians) == 2
    assert all(s.count("no bf16 units on this CPU") == 2 for s in medians)
    assert "Not run: no bf16 units on this CPU" in text
    assert (
        "no bf16 units on this CPU" in (tmp_path / "benchmark.md").read_text()
    )


def test_bf16_anyway_runs_the_bf16_columns():
    parser = cli.add_arguments(argparse.ArgumentParser())
    argv = ["--impls", "transformers,transformers-bf16", "--cases", OVERHEAD]
    plain = Benchmark(parser.parse_args(argv), cpu_bf16=WITHOUT_UNITS)
    assert plain.skip_bf16 and plain._count_workers() == 2
    anyway = parser.parse_args([*argv, "--bf16-anyway"])
    anyway = Benchmark(anyway, cpu_bf16=WITHOUT_UNITS)
    assert not anyway.skip_bf16 and anyway._count_workers() == 3
    units = Benchmark(parser.parse_args(argv), cpu_bf16=WITH_UNITS)
    assert not units.skip_bf16
    gpu = Benchmark(
        parser.parse_args([*argv, "--device", "gpu"]), cpu_bf16=WITHOUT_UNITS
    )
    assert not gpu.skip_bf16  # a GPU's bfloat16 is not the CPU's


def test_failures_are_reported_not_raised():
    error = ModuleNotFoundError("No module named 'keras_hub'")
    error.name = "keras_hub"
    try:
        raise error
    except ModuleNotFoundError as e:
        assert probes.failure(e)["status"] == "not installed"
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        failure = probes.failure(e)
    assert failure["status"] == "error"
    assert "RuntimeError: boom" in failure["error"]
    message = "\x1b[1mImage height 16 is too small\x1b[0m\n\nArguments"
    assert probes.short_error(message) == (
        "Image height 16 is too small Arguments"
    )


def _take_turns(path, index, log, rounds):
    baton = turns.Turns(path, index)
    baton.wait()
    for _ in range(rounds):
        log.append(("start", index))
        time.sleep(0.01)
        log.append(("end", index))
        baton.pass_on()
        baton.wait()
    baton.leave()


def test_turns_alternate_and_a_missing_worker_is_skipped(tmp_path):
    path = str(tmp_path / "turns.json")
    turns.create(path, 3)
    log = []
    threads = [
        threading.Thread(target=_take_turns, args=(path, i, log, 3))
        for i in (0, 2)
    ]
    for thread in threads:
        thread.start()
    # Worker 1 never comes (it crashed): the runner takes it out.
    time.sleep(0.2)
    assert log == [("start", 0), ("end", 0)]  # 0 passed to 1, waiting
    turns.leave(path, 1)
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    # One block at a time, in rotation 0, 2, 0, 2, ...
    assert log == [(e, i) for i in (0, 2, 0, 2, 0, 2) for e in ("start", "end")]
    with open(path) as f:
        assert json.load(f) == {"turn": None, "active": []}


def test_parse_case_and_columns():
    case = cases.parse_case("train-b2-512x1024-b4")
    assert (case.variant, case.height, case.width, case.batch) == (
        "b2",
        512,
        1024,
        4,
    )
    assert case.train and case.shape_key == "b2-512x1024"
    assert not case.overhead
    assert not cases.parse_case("b0-512x512-b1").train
    assert cases.parse_case("tiny-64x64-b1").overhead
    assert not cases.parse_case("train-tiny-64x64-b1").overhead
    assert not cases.parse_case("smoke-64x64-b1").overhead
    with pytest.raises(ValueError, match="not a case name"):
        cases.parse_case("b9-512-b1")
    with pytest.raises(ValueError, match="not a case name"):
        cases.parse_case("huge-64x64-b1")
    names = cases.default_case_names(["b0", "b2"])
    assert names[:6] == list(cases.DEFAULT_CASES)
    assert names[0] == "tiny-64x64-b1"
    assert names[6:] == ["train-b0-512x512-b2", "train-b2-512x512-b2"]
    assert "transformers-bf16" in cases.DEFAULT_IMPLS

    auto = cases.parse_column("keras-hub")
    assert auto.backend is None and auto.name == "keras-hub-auto"
    assert cases.parse_column("keras-hub", hub_backend="jax").name == (
        "keras-hub-jax"
    )
    assert cases.parse_column("ours-bf16").name == "ours-bf16"
    bf16 = cases.parse_column("ours-torch-bf16")
    assert bf16.bf16 and bf16.backend == "torch"
    hf16 = cases.parse_column("transformers-bf16")
    assert hf16.bf16 and hf16.kind == "transformers"
    assert hf16.name == "transformers-bf16"
    assert cases.parse_column("transformers").name == "transformers"
    with pytest.raises(ValueError, match="unknown 'ours-numpy'"):
        cases.parse_column("ours-numpy")
    assert cases.split(" a, ,b ") == ["a", "b"]


def test_model_configs():
    b0 = cases.model_config("b0")
    assert b0["hidden_sizes"] == [32, 64, 160, 256]
    assert b0["decoder_hidden_size"] == 256
    assert cases.model_config("smoke")["decoder_hidden_size"] == 16


def test_smooth_images_are_smooth():
    images = cases.smooth_images(2, 96, 128, seed=3)
    assert images.shape == (2, 96, 128, 3) and images.dtype == "float32"
    step = abs(images[:, 1:] - images[:, :-1]).mean()
    assert step < 0.2 * images.std()


def test_chart_without_matplotlib(tmp_path, monkeypatch):
    """No hand-drawn fallback: without matplotlib there is no png."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "chart.png"
    values = {("ours-jax", "b0-512x512-b1"): (100.0, 90.0, 110.0)}
    drawn = outputs.draw_chart(
        str(path), ["b0-512x512-b1"], ["ours-jax"], values
    )
    assert drawn is False and not path.exists()
    assert "matplotlib is not installed" in outputs.NO_CHART


def test_cli_registers_benchmark():
    from keras_segformer.cli import build_parser

    args = build_parser().parse_args(
        ["benchmark", "--quick", "--impls", "transformers", "--out", "x"]
    )
    assert args.command == "benchmark" and args.quick
    assert args.impls == "transformers" and args.out == "x"


def test_cli_benchmark_outside_a_checkout(monkeypatch, capsys):
    """Installed without the checkout, `keras-segformer benchmark` says in
    one line where the harness is (whatever options it was given)."""
    from keras_segformer import cli
    from keras_segformer.cli import benchmark as command

    assert command.checkout_root() == ROOT
    monkeypatch.setattr(command, "checkout_root", lambda: None)
    assert cli.main(["benchmark", "--quick", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err == (
        "keras-segformer benchmark: error: " + command.NOT_IN_CHECKOUT
    )
    assert "python tools/benchmark.py" in err


def test_tools_benchmark_help():
    """python tools/benchmark.py keeps the options the GPU script uses."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "-h"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--device",
        "--cases",
        "--impls",
        "--budget",
        "--repeats",
        "--warmup",
        "--timeout",
        "--out",
        "--bf16-anyway",
    ):
        assert option in out, option


def test_peak_rss_is_the_worker_not_its_parent(tmp_path):
    """ru_maxrss survives exec on Linux: a worker started by a big parent
    would report the parent's size. The harness reads VmHWM instead."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("VmHWM is Linux-only")
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from benchmarks.probes import peak_rss_mb; print(peak_rss_mb())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ROOT],
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

    code = cli.main(
        [
            "--quick",
            "--device",
            "gpu",
            "--impls",
            "transformers",
            "--cases",
            "smoke-64x64-b1",
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
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "parity_check.py"),
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


def test_bf16_agreement_tool(tmp_path):
    """tools/bf16_agreement.py: a saved model rebuilt in mixed_bfloat16 on
    the same weights, run on a folder of images on the current backend; it
    prints the agreement and exits 1 below --min."""
    import numpy as np
    from conftest import tiny_segformer
    from PIL import Image

    path = tmp_path / "model.keras"
    tiny_segformer(num_classes=4).save(path)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    tool = os.path.join(ROOT, "tools", "bf16_agreement.py")

    def run(*args):
        return subprocess.run(
            [sys.executable, tool, "--model", str(path), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": BACKEND},
        )

    # Never 101%: exit code 1, after the figure.
    out = run("--images", str(folder), "--min", "1.01")
    line = [s for s in out.stdout.splitlines() if "agreement" in s]
    assert out.returncode == 1 and line, out.stdout + out.stderr[-2000:]
    assert f"bf16 agreement {BACKEND}: " in line[0]
    assert "of 240 positions (2 images 48x40)" in line[0]  # 2 x 12 x 10
    share = float(line[0].split(": ")[1].split("%")[0]) / 100
    diff = float(line[0].split("max |logit diff| ")[1].split()[0])
    assert 0.5 <= share <= 1 and diff > 0  # bfloat16 moved the logits
    missing = run("--images", str(tmp_path / "none"))
    assert missing.returncode != 0
    assert "--images: no folder" in missing.stderr


# ---------------------------------------------------------------------------
# Deployed artifacts (benchmarks/deploy.py): ONNX Runtime, LiteRT


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory):
    """A --quick run of every deployed column beside transformers, on the
    smoke case and a training case (where they have no cell)."""
    out = tmp_path_factory.mktemp("deployed")
    report = _run(
        out,
        [
            "--quick",
            "--impls",
            "transformers,deployed",
            "--cases",
            "smoke-64x64-b2,train-smoke-64x64-b1",
        ],
    )
    return out, report


def test_deployed_columns(deployed_run):
    out, report = deployed_run
    assert report["options"]["columns"] == [
        "transformers",
        *cases.DEPLOYED,
    ]
    results = {r["impl"]: r for r in report["results"]}
    assert {r["case"] for r in report["results"]} == {
        "smoke-64x64-b2",
        "train-smoke-64x64-b1",
    }
    # Inference only: no deployed cell on the training case.
    assert set(results) == {"transformers", *cases.DEPLOYED}
    for name, (source, format, quantization) in cases.DEPLOYED.items():
        r = results[name]
        assert r["case"] == "smoke-64x64-b2"
        if r["status"] == "unavailable":
            # An exporter without this option says why, in one line.
            assert quantization and r["error"], r
            continue
        assert r["status"] == "ok", (name, r.get("error"))
        assert r["format"] == format
        assert r["dtype"] == (quantization or "float32")
        name_, stats = primary_figure(r)
        assert name_ == "run" and stats["median_ms"] > 0
        assert r["time_vs_transformers"] > 0
        assert r["export"]["export_s"] > 0 and r["export"]["artifact_mb"] > 0
        expected = [2, 150, 16, 16] if source == "transformers" else None
        assert r["output_shape"] == (expected or [2, 16, 16, 150])
        assert 0 <= r["argmax_agreement"] <= 1
        if quantization is None:
            # The float32 artifact computes the float32 model's logits.
            assert r["max_abs_logit_diff"] < 1e-3 * max(
                1.0, 10 * r["reference_logit_std"]
            )
            assert r["argmax_agreement"] > 0.99
        if quantization == "int8":
            assert "8 smooth 64x64" in r["export"]["calibration"]
    # The artifacts are removed once timed.
    assert not os.listdir(out / "artifacts")

    text = report["table"]
    assert "deployed artifacts (same weights, same inputs)" in text
    deployed = text.split("deployed artifacts (same weights")[1]
    for name in cases.DEPLOYED:
        assert f" {name} " in deployed
        assert name in text.splitlines()[2]  # a column of the main table
    assert "argmax = float32" in text
    markdown = (out / "benchmark.md").read_text()
    assert "Deployed artifacts" in markdown
    assert "`ours-litert-int8`" in markdown.splitlines()[0]
    assert report["machine"]["versions"]["onnxruntime"]


def test_deployed_columns_parse_and_refuse():
    column = cases.parse_column("ours-onnx-int8")
    assert column.kind == "deployed" and column.name == "ours-onnx-int8"
    assert column.artifact == ("ours", "onnx", "int8")
    assert column.backend == "tensorflow"
    assert cases.parse_column("transformers-onnx").backend == "torch"
    assert cases.expand_impls(["transformers", "deployed"]) == [
        "transformers",
        *cases.DEPLOYED,
    ]
    assert set(cases.DEPLOYED) <= set(cases.DEFAULT_IMPLS)
    parser = cli.add_arguments(argparse.ArgumentParser())
    for argv, message in (
        (["--quant-model", "m.keras"], "go together"),
        (["--quant-model", "/nope.keras", "--quant-data", "/"], "no file"),
    ):
        with pytest.raises(ValueError, match=message):
            Benchmark(parser.parse_args(argv), cpu_bf16=WITH_UNITS)


def test_deployed_quality_on_a_trained_model(tmp_path):
    """--quant-model / --quant-data: an artifact of a model scored like
    the Keras model, on the same images."""
    import numpy as np
    from PIL import Image

    from benchmarks import deploy_quality

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (tmp_path / "data" / kind / split).mkdir(parents=True)
        for i in range(3):
            image = rng.integers(0, 255, (64, 64, 3), np.uint8)
            mask = np.zeros((64, 64), np.uint8)
            mask[:, 32:] = 1
            Image.fromarray(image).save(
                tmp_path / "data" / "images" / split / f"{i}.png"
            )
            Image.fromarray(mask).save(
                tmp_path / "data" / "masks" / split / f"{i}.png"
            )
    images, masks, calibration = deploy_quality.data_split(
        str(tmp_path / "data")
    )
    assert images.endswith(os.path.join("images", "val"))
    assert len(calibration) == 3 and "train" in calibration[0]

    import keras_segformer

    config = cases.model_config("smoke")
    model = keras_segformer.build_segformer(
        2,
        decoder_hidden_size=config.pop("decoder_hidden_size"),
        **config,
    )
    model.save(tmp_path / "model.keras")
    result = deploy_quality.quality_job(
        {
            "artifact": ["ours", "litert", "int8"],
            "artifact_path": str(tmp_path / "model.tflite"),
            "quant_model": str(tmp_path / "model.keras"),
            "quant_data": str(tmp_path / "data"),
        }
    )
    assert result["images"] == 3 and result["input_size"] == [64, 64]
    assert 0 <= result["miou"] <= 1 and 0 <= result["miou_float32"] <= 1
    assert 0 < result["argmax_agreement"] <= 1
    assert "3 images of" in result["calibration"]


def test_kept_artifacts_are_reused(tmp_path):
    """--keep-artifacts: a later run into the same --out times the kept
    artifact instead of exporting again (all three files, or none)."""
    from benchmarks import deploy_runs

    stem = str(tmp_path / "ours-onnx__b0-512x512-b1")
    spec = {
        "artifact_path": stem + ".onnx",
        "reference_path": stem + ".reference.npy",
    }
    for path in spec.values():
        with open(path, "wb") as f:
            f.write(b"x")
    assert deploy_runs._kept_export(spec, stem) is None  # no record
    with open(stem + ".export.json", "w") as f:
        json.dump({"export_s": 12.5, "artifact_mb": 13.4}, f)
    kept = deploy_runs._kept_export(spec, stem)
    assert kept == {
        "export_s": 12.5,
        "artifact_mb": 13.4,
        "status": "ok",
        "reused": True,
    }
    os.remove(spec["reference_path"])
    assert deploy_runs._kept_export(spec, stem) is None


@pytest.mark.parametrize(
    "flag, bad",
    [
        ("--budget", ["0", "-1", "nan", "inf"]),
        ("--timeout", ["0", "-1", "nan", "inf"]),
        ("--threads", ["0", "-1", "nan"]),
        ("--matmul-size", ["0", "-1", "nan"]),
        ("--warmup", ["-1", "nan", "inf"]),
        ("--repeats", ["0", "-1", "nan"]),
    ],
)
def test_timing_options_refuse_bad_values(flag, bad, capsys):
    """A bad timing value is refused when the options are read (exit 2,
    one line naming the flag); --budget 0 and --threads -1 ran to the end
    and exited 0."""
    parser = cli.add_arguments(argparse.ArgumentParser())
    for text in bad:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([flag, text])
        assert stop.value.code == 2, (flag, text)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {flag}: expected" in err and repr(text) in err
    args = parser.parse_args(
        ["--budget", "0.5", "--timeout", "60", "--threads", "1"]
        + ["--matmul-size", "64", "--warmup", "0", "--repeats", "1"]
    )
    assert (args.budget, args.timeout, args.threads) == (0.5, 60.0, 1)
    assert (args.matmul_size, args.warmup, args.repeats) == (64, 0, 1)
