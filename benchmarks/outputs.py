"""The files a run leaves under ``--out``: benchmark.txt, benchmark.md,
benchmark.json (every raw figure) and benchmark.png (the chart, drawn
with matplotlib when it is installed)."""

import dataclasses
import json
import os
import sys

from benchmarks import report
from benchmarks.cases import NUM_CLASSES, SEED
from benchmarks.reference import FLOP_CONVENTION

NO_CHART = (
    "benchmark.png: not drawn, matplotlib is not installed (it is in the "
    "`bench` extra)"
)


def chart_data(bench):
    """(case names, column names, {(col, case): (median, q1, q3)})."""
    values = {}
    for column in bench.columns:
        for case in bench.cases:
            r = bench.cell(column, case)
            if r is not None and r.get("status") == "ok":
                _, s = report.primary_figure(r)
                values[column.name, case.name] = (
                    s["median_ms"],
                    s["q1_ms"],
                    s["q3_ms"],
                )
    return (
        [c.name for c in bench.cases],
        [c.name for c in bench.columns],
        values,
    )


def draw_chart(path, cases, columns, values):
    """Grouped bars of median latency per case and column, with the IQR
    as error bars; log scale when the values span more than 20x.

    Args:
        path: str. PNG file to write.
        cases: list of str. Groups (x axis), in order.
        columns: list of str. Bars of each group, in order.
        values: dict. ``(column, case) -> (median, q1, q3)`` in ms; a
            missing pair leaves a gap.

    Returns:
        bool. False (and no file) when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(
        figsize=(max(8, 1.3 * len(cases) * len(columns) / 2), 5)
    )
    # More bars than the default 10 colours: tab20's.
    colors = plt.cm.tab20.colors if len(columns) > 10 else [None] * 10
    for j, column in enumerate(columns):
        xs, heights, low, high = [], [], [], []
        for i, case in enumerate(cases):
            if (column, case) in values:
                median, q1, q3 = values[column, case]
                xs.append(i + (j - (len(columns) - 1) / 2) * width)
                heights.append(median)
                low.append(median - q1)
                high.append(q3 - median)
        bars = ax.bar(
            xs,
            heights,
            width,
            yerr=[low, high],
            label=column,
            capsize=2,
            color=colors[j % len(colors)],
        )
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=2)
    positive = [v[0] for v in values.values() if v[0] > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), cases, rotation=20, ha="right")
    ax.set_ylabel("median ms per call (lower is better)")
    ax.set_title("SegFormer: latency per case (bars: IQR)")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    temporary = path + ".tmp.png"
    fig.savefig(temporary, dpi=120)
    plt.close(fig)
    os.replace(temporary, path)
    return True


def _write_text(path, text):
    """Write a file atomically: a temporary name, then os.replace."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _options(bench):
    args = bench.args
    return {
        "cases": [c.name for c in bench.cases],
        "impls": [c.spec for c in bench.columns],
        "columns": [c.name for c in bench.columns],
        "warmup": bench.warmup,
        "repeats": bench.repeats,
        "min_repeats": min(3, bench.repeats),
        "budget_s": bench.budget_s,
        "threads": args.threads,
        "quick": bench.quick,
        "seed": SEED,
        "num_classes": NUM_CLASSES,
        "timeout_s": args.timeout,
        "device": bench.device,
        "bf16_anyway": bool(getattr(args, "bf16_anyway", False)),
        "quant_model": getattr(args, "quant_model", None),
        "quant_data": getattr(args, "quant_data", None),
        "keep_artifacts": bool(getattr(args, "keep_artifacts", False)),
    }


def write(bench, final=True):
    """Write the tables and the JSON (and, when final, the chart)."""
    out = bench.args.out
    text = report.render_text(bench)
    paths = {
        name: os.path.join(out, f"benchmark.{name}")
        for name in ("txt", "md", "json", "png")
    }
    _write_text(paths["txt"], text)
    _write_text(paths["md"], report.render_markdown(bench))
    chart = None
    if final:
        drawn = draw_chart(paths["png"], *chart_data(bench))
        chart = "matplotlib" if drawn else NO_CHART
        if not drawn and os.path.exists(paths["png"]):
            os.remove(paths["png"])  # an earlier run's chart
    result = {
        "complete": final,
        "command": getattr(bench.args, "command_line", None)
        or [sys.executable, *sys.argv],
        "date": bench.started.isoformat(timespec="seconds"),
        "seconds": round((bench.finished - bench.started).total_seconds(), 1),
        "machine": bench.machine,
        "options": _options(bench),
        "configs": bench.configs,
        "cases": [
            {**dataclasses.asdict(c), "gflop": bench.work_gflop(c)}
            for c in bench.cases
        ],
        "flop_convention": FLOP_CONVENTION,
        "flops": bench.flops,
        "peak": bench.peak,
        "peak_reference": dict(zip(("name", "gflops"), bench.peak_reference())),
        "backend_choices": bench.choices,
        "quality": {
            "model": bench.quant[0] if bench.quant else None,
            "data": bench.quant[1] if bench.quant else None,
            "results": bench.quality,
        },
        "results": bench.results,
        "chart": chart,
        "table": text,
    }
    _write_text(paths["json"], json.dumps(result, indent=1))
    if not final:
        return result
    print()
    print(text, flush=True)
    if chart == NO_CHART:
        print(NO_CHART)
    written = [p for p in paths.values() if os.path.exists(p)]
    print(f"wrote {', '.join(written)}")
    return result
