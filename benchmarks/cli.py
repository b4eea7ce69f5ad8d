"""The benchmark's options and entry point (``python tools/benchmark.py``,
``python -m benchmarks``, ``keras-segformer benchmark`` in a checkout)."""

import argparse
import math
import sys

from benchmarks.cases import (
    BACKENDS,
    CASE_FORM,
    DEFAULT_IMPLS,
    DEVICES,
    QUICK_CASES,
    default_case_names,
)


def _number(convert, accept, expected):
    """argparse type: ``convert(text)``, finite, that ``accept`` takes;
    else argparse's one line "argument --flag: expected ..., got ...".
    (keras_segformer/cli/common.py has the same helpers, but importing it
    loads Keras into this parent process, which stays without it.)"""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(
                f"expected {expected}, got {text!r}"
            )
        return value

    parse.__name__ = convert.__name__
    return parse


_count = _number(int, lambda v: v >= 0, "an int >= 0")
_positive_int = _number(int, lambda v: v >= 1, "an int >= 1")
_seconds = _number(float, lambda v: v > 0, "a finite number of seconds > 0")


def _impls_help():
    return (
        ", ".join(f"ours-{b}" for b in BACKENDS)
        + ", transformers, transformers-bf16 (torch.autocast bfloat16), "
        "keras-hub (fastest backend) or keras-hub-<backend>, ours-bf16 "
        "(its fastest backend) or ours-<backend>-bf16, deployed artifacts "
        "ours-onnx, ours-onnx-int8, ours-litert, ours-litert-float16, "
        "ours-litert-int8, transformers-onnx (or all six: deployed)"
    )


def _add_selection(parser):
    parser.add_argument("--out", default="benchmark_out", help="output folder")
    parser.add_argument(
        "--cases",
        help=f"comma-separated {CASE_FORM} (default: "
        f"{', '.join(default_case_names())})",
    )
    parser.add_argument(
        "--train-variants",
        default="b0",
        help="variants of the default training cases (512x512, batch 2), "
        "e.g. b0,b2",
    )
    parser.add_argument(
        "--impls",
        help=f"comma-separated columns among {_impls_help()} "
        f"(default: {','.join(DEFAULT_IMPLS)})",
    )
    parser.add_argument(
        "--hub-backend",
        choices=BACKENDS,
        help="keras-hub backend (default: fastest on the first case)",
    )
    parser.add_argument(
        "--bf16-backend",
        choices=BACKENDS,
        help="backend of ours-bf16 (default: its fastest on the first case)",
    )
    parser.add_argument(
        "--bf16-anyway",
        action="store_true",
        help="run the bf16 columns on a CPU without bf16 units too (their "
        "cells otherwise say so; emulated bfloat16 times mean little)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where every column runs: cpu (default; GPUs hidden) or gpu "
        "(the first GPU; a library that sees none fails its cells)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny models at 64x64, batch 1, 1 warm-up, 2 "
        "repeats (cases " + ", ".join(QUICK_CASES) + ")",
    )


def _add_timing(parser):
    parser.add_argument(
        "--warmup", type=_count, help="untimed calls first (default 3; quick 1)"
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        help="most timed calls (default 10; quick 2); at least 3 (or this, "
        "if less) are made",
    )
    parser.add_argument(
        "--budget",
        type=_seconds,
        default=20.0,
        help="seconds of timed calls after which a figure stops (after 3)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="time the overhead case's columns one after the other; by "
        "default they run at once and take turns (benchmarks/turns.py), "
        "so that a drifting CPU speed hits every column alike",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="threads per worker (OMP/MKL/TF intra-op env, torch); default: "
        "each library's own default (all cores); JAX is not limited",
    )
    parser.add_argument(
        "--matmul-size",
        type=_positive_int,
        help="side of the matmul peak measurement (default 2048, GPU "
        "8192; quick 256)",
    )
    parser.add_argument(
        "--quant-model",
        help="a trained .keras model: each of our deployed columns also "
        "exports it and reports the artifact's mIoU beside the float32 "
        "model's on --quant-data (e.g. make demo's model; default: none, "
        "no mIoU table)",
    )
    parser.add_argument(
        "--quant-data",
        help="the data of --quant-model: images/ and masks/ paired by name "
        "(with train/ and val/: scored on val/, int8 calibrated on 8 "
        "train/ images; default: none)",
    )
    parser.add_argument(
        "--keep-artifacts",
        action="store_true",
        help="keep the deployed columns' artifacts (ONNX, TFLite) under "
        "OUT/artifacts (default: removed once timed); a later run into the "
        "same --out with this option reuses them instead of exporting "
        "again (their export figures are the first run's)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=1800.0,
        help="seconds before a worker is stopped and marked 'timeout'",
    )


def add_arguments(parser):
    """Register the benchmark options on an ``argparse`` parser."""
    _add_selection(parser)
    _add_timing(parser)
    return parser


def run(args):
    """Run the benchmark described by parsed ``args``; return 0."""
    from benchmarks.runner import Benchmark

    Benchmark(args).run()
    return 0


def main(argv=None):
    """Entry point of ``python tools/benchmark.py`` and
    ``python -m benchmarks``."""
    parser = argparse.ArgumentParser(
        prog="benchmark",
        description="SegFormer speed and memory: this project vs "
        "transformers and keras-hub.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if argv is not None:  # called from Python: record what it was given
        args.command_line = [sys.executable, "-m", "benchmarks", *argv]
    try:
        return run(args)
    except ValueError as e:
        parser.error(str(e))
