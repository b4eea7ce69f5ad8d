"""The parent process: runs every (column, case) in a fresh worker
process (``processes.py``), chooses the automatic backends, derives the
figures and writes the outputs. It imports no framework."""

import dataclasses
import datetime
import os

from benchmarks import deploy_runs, outputs, report
from benchmarks.cases import (
    BACKENDS,
    DEFAULT_IMPLS,
    DEVICES,
    NUM_CLASSES,
    SEED,
    default_case_names,
    expand_impls,
    model_config,
    parse_case,
    parse_column,
    split,
)
from benchmarks.machine import (
    NO_BF16_UNITS,
    bf16_units,
    load_average,
    machine_info,
)
from benchmarks.processes import WorkerRunner
from benchmarks.reference import FLOP_CONVENTION, PEAK_KEYS
from benchmarks.report import describe, primary_figure


def _check_options(args):
    """Refuse option values the parser cannot (called from Python)."""
    for option in ("hub_backend", "bf16_backend"):
        value = getattr(args, option, None)
        if value is not None and value not in BACKENDS:
            raise ValueError(
                f"--{option.replace('_', '-')}: {value!r} is not one of "
                f"{list(BACKENDS)}."
            )
    for option, least in (("warmup", 0), ("repeats", 1)):
        value = getattr(args, option)
        if value is not None and value < least:
            raise ValueError(f"--{option} must be >= {least}: {value}.")
    device = getattr(args, "device", None) or "cpu"
    if device not in DEVICES:
        raise ValueError(f"--device: {device!r} is not one of {list(DEVICES)}.")
    return device


def _unique(items, option, what):
    if not items:
        raise ValueError(f"--{option}: no {what} given.")
    if len(set(items)) != len(items):
        raise ValueError(f"--{option}: an entry is listed twice: {items}.")


class Benchmark:
    """Plans and runs the (column, case) workers and keeps the results.

    Args:
        args: argparse.Namespace. The options of ``cli.add_arguments``.
        cpu_bf16: dict or None. ``machine.bf16_units()`` of the CPU
            (default: read from this machine).
    """

    def __init__(self, args, cpu_bf16=None):
        self.args = args
        self.quick = args.quick
        self.device = _check_options(args)
        self.cases = [
            parse_case(n)
            for n in split(args.cases)
            or default_case_names(split(args.train_variants), self.quick)
        ]
        _unique([c.name for c in self.cases], "cases", "case")
        self.columns = [
            parse_column(s, args.hub_backend, args.bf16_backend)
            for s in expand_impls(split(args.impls)) or DEFAULT_IMPLS
        ]
        _unique([c.spec for c in self.columns], "impls", "implementation")
        self.warmup = args.warmup
        if self.warmup is None:
            self.warmup = 1 if self.quick else 3
        self.repeats = args.repeats
        if self.repeats is None:
            self.repeats = 2 if self.quick else 10
        self.budget_s = args.budget
        if self.device == "gpu":
            cpu_bf16 = {"has": None, "flags": [], "text": "bf16 on the GPU"}
        self.bf16_units = cpu_bf16 or bf16_units()
        # A CPU without bf16 units emulates bfloat16: no figure to give.
        self.skip_bf16 = self.bf16_units["has"] is False and not getattr(
            args, "bf16_anyway", False
        )
        self.configs = {c.variant: model_config(c.variant) for c in self.cases}
        self.quant = deploy_runs.check_quant(args)
        self.quality = {}  # deployed column -> its scores on quant data
        self.results = []  # one dict per worker run (or skipped cell)
        self.choices = {}  # column spec -> how its backend was chosen

    # -- planning

    def _count_workers(self):
        total = 1  # the reference job: matmul peak and FLOP count
        for i, case in enumerate(self.cases):
            for col in self.columns:
                if col.bf16 and self.skip_bf16:
                    continue
                if col.kind == "deployed":  # export, then runtime
                    total += 0 if case.train else 2
                    continue
                # keras-hub and ours-bf16 without a backend try each one
                auto = col.backend is None
                total += len(BACKENDS) if auto and i == 0 else 1
        return total + len(deploy_runs.quality_columns(self))

    def model_spec(self, column, backend, case):
        return {
            "job": "model",
            "kind": column.kind,
            "backend": backend,
            "bf16": column.bf16,
            "case": dataclasses.asdict(case),
            "config": self.configs[case.variant],
            "num_classes": NUM_CLASSES,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "budget_s": self.budget_s,
            "seed": SEED,
        }

    def keep(self, result, column, backend, case, candidate=False):
        name = dataclasses.replace(column, backend=backend).name
        result.update(
            column=column.spec,
            impl=name,
            backend=backend,
            bf16=column.bf16,
            case=case.name,
            candidate=candidate,
        )
        self.results.append(result)
        return result

    def _run_model(self, column, backend, case, candidate=False):
        name = dataclasses.replace(column, backend=backend).name
        result = self.runner.run(
            self.model_spec(column, backend, case),
            f"{name}__{case.name}",
            backend=backend,
        )
        self.keep(result, column, backend, case, candidate)
        self.runner.progress(f"{name:<22} {case.name:<22} {describe(result)}")
        # What has run so far, so that a run stopped early (a time limit,
        # Ctrl-C) still leaves its figures.
        self.report(final=False)
        return result

    def _interleaved(self, case, order):
        """The columns of ``case`` that take turns (``benchmarks/turns.py``):
        on the CPU overhead case, those whose backend is fixed (an "auto"
        column is chosen by measuring, one at a time), unless
        ``--sequential``."""
        if (
            not case.overhead
            or self.device != "cpu"
            or getattr(self.args, "sequential", False)
        ):
            return []
        columns = [
            c
            for c in order
            if c.backend is not None
            and not (c.bf16 and self.skip_bf16)
            and c.kind != "deployed"  # two processes, one after the other
        ]
        return columns if len(columns) > 1 else []

    def _run_together(self, columns, case):
        names = [
            dataclasses.replace(c, backend=c.backend).name for c in columns
        ]
        jobs = [
            (
                self.model_spec(c, c.backend, case),
                f"{name}__{case.name}",
                c.backend,
            )
            for c, name in zip(columns, names)
        ]
        self.runner.progress(
            f"{case.name}: {len(jobs)} columns taking turns "
            "(interleaved timing)"
        )
        for column, name, result in zip(
            columns, names, self.runner.run_together(jobs)
        ):
            self.keep(result, column, column.backend, case)
            self.runner.progress(
                f"{name:<22} {case.name:<22} {describe(result)}"
            )
        self.report(final=False)

    def _skip_bf16(self, column, case):
        """A bf16 cell on a CPU without bf16 units: no worker, no figure."""
        result = {
            "status": NO_BF16_UNITS,
            "error": f"{NO_BF16_UNITS} (CPU flags: none of avx512_bf16, "
            "amx_bf16, bf16); --bf16-anyway runs it",
        }
        self.keep(result, column, column.backend, case)

    def report(self, final):
        """Close the figures at this point and write the outputs."""
        self.machine["load_average_end"] = load_average()
        self.finished = datetime.datetime.now().astimezone()
        self._derive()
        return outputs.write(self, final=final)

    def _choose_fastest(self, column, case):
        """Measure the column (keras-hub, or ours in bfloat16) on every
        backend, keep the fastest."""
        candidates = {}
        for backend in BACKENDS:
            r = self._run_model(column, backend, case, candidate=True)
            if r["status"] == "ok":
                candidates[backend] = primary_figure(r)[1]["median_ms"]
        if not candidates:
            # Stays "auto": the next case measures every backend again.
            self.runner.total += len(BACKENDS) - 1
            return
        backend = min(candidates, key=candidates.get)
        self.choices[column.spec] = {
            "backend": backend,
            "how": f"fastest on {case.name}",
            "median_ms": candidates,
        }
        column.backend = backend
        for r in self.results:
            if r["column"] == column.spec and r["backend"] == backend:
                r["candidate"] = False  # the chosen one shows in the table

    # -- running

    def _run_reference(self):
        """Matmul rates and FLOP counts, in one worker, first."""
        shapes = {}
        for case in self.cases:
            shapes[case.shape_key] = {
                "key": case.shape_key,
                "config": self.configs[case.variant],
                "height": case.height,
                "width": case.width,
            }
        size = self.args.matmul_size or (
            256 if self.quick else 2048 if self.device == "cpu" else 8192
        )
        reference = self.runner.run(
            {
                "job": "reference",
                "matmul_size": size,
                "repeats": 5 if self.quick else 10,
                "budget_s": 2.0 if self.quick else 10.0,
                "shapes": list(shapes.values()),
                "num_classes": NUM_CLASSES,
                "convention": FLOP_CONVENTION,
            },
            "reference",
        )
        # A worker that died leaves one error for both.
        self.peak = reference.get("peak", reference)
        self.flops = reference.get("flops", reference)
        if self.peak.get("accelerator"):
            self.machine["accelerator"] = self.peak["accelerator"]
        self.runner.progress(
            f"{'matmul peak':<45} {report.describe_peak(self.peak)}"
        )
        self.runner.progress(
            f"{'FLOP count':<45} {report.describe_flops(self.flops)}"
        )

    def run(self):
        args = self.args
        os.makedirs(args.out, exist_ok=True)
        self.started = datetime.datetime.now().astimezone()
        self.machine = machine_info()
        self.machine["bf16_units"] = self.bf16_units
        self.machine["load_average_start"] = load_average()
        self.runner = WorkerRunner(
            args.out,
            total=self._count_workers(),
            timeout_s=args.timeout,
            threads=args.threads,
            device=self.device,
        )
        print(
            f"benchmark: {len(self.cases)} cases x {len(self.columns)} "
            f"columns, {self.runner.total} worker processes; "
            f"{self.machine.get('cpu_model')}, "
            f"{self.machine.get('usable_cores')} cores, "
            f"{self.bf16_units['text']}; output: {args.out}",
            flush=True,
        )
        self._run_reference()
        # bfloat16 columns last, after the float32 columns they are read
        # against.
        order = [c for c in self.columns if not c.bf16] + [
            c for c in self.columns if c.bf16
        ]
        for case in self.cases:
            together = self._interleaved(case, order)
            if together:
                self._run_together(together, case)
            for column in order:
                if column in together:
                    continue
                if column.kind == "deployed":
                    if not case.train:  # inference only
                        deploy_runs.run_deployed(self, column, case)
                elif column.bf16 and self.skip_bf16:
                    self._skip_bf16(column, case)
                elif column.backend is None:
                    self._choose_fastest(column, case)
                else:
                    self._run_model(column, column.backend, case)
        deploy_runs.run_quality(self)
        return self.report(final=True)

    # -- figures

    def work_gflop(self, case):
        """GFLOP of one timed call (see FLOP_CONVENTION), or None."""
        counts = (self.flops.get("flops") or {}).get(case.shape_key)
        if not counts:
            return None
        gflop = counts["forward_flop_per_image"] / 1e9 * case.batch
        return 3 * gflop if case.train else gflop

    def peak_reference(self):
        """Name and GFLOP/s of the float32 matmul rate "% peak" uses."""
        for key in PEAK_KEYS[self.device]:
            entry = self.peak.get(key) or {}
            if "bfloat16" not in key and "gflops" in entry:
                return key, entry["gflops"]
        return None, None

    def _baselines(self):
        """``{impl: {case: headline median}}`` of the transformers
        columns (the "time vs transformers" references)."""
        baselines = {"transformers": {}, "transformers-bf16": {}}
        for r in self.results:
            if r["impl"] in baselines and r["status"] == "ok":
                median = primary_figure(r)[1]["median_ms"]
                baselines[r["impl"]][r["case"]] = median
        return baselines

    def _derive(self):
        _, peak = self.peak_reference()
        baselines = self._baselines()
        cases = {c.name: c for c in self.cases}
        for r in self.results:
            if r["status"] != "ok":
                continue
            median = primary_figure(r)[1]["median_ms"]
            gflop = self.work_gflop(cases[r["case"]])
            if gflop is not None:
                r["gflop"] = gflop
                r["gflops_per_s"] = gflop / (median / 1e3)
                # Not for int8 arithmetic: the peak is a float32 rate.
                if peak and r.get("dtype") != "int8":
                    r["share_of_peak"] = r["gflops_per_s"] / peak
            versus = "transformers"
            if r.get("bf16") and r["case"] in baselines["transformers-bf16"]:
                versus = "transformers-bf16"
            baseline = baselines[versus].get(r["case"])
            if baseline:
                r["time_vs"] = versus
                r["time_vs_transformers"] = median / baseline
                call = (r.get("figures") or {}).get("call")
                if call:
                    r["call_vs_transformers"] = call["median_ms"] / baseline
            if "rss_baseline_mb" in r:
                r["rss_run_mb"] = r["rss_peak_mb"] - r["rss_baseline_mb"]

    def cell(self, column, case):
        """The table's result for a column and case (None: not run)."""
        for r in self.results:
            if (
                r["column"] == column.spec
                and r["case"] == case.name
                and not r["candidate"]
            ):
                return r
        return None
