"""What a run writes: the text and Markdown tables with their notes, the
JSON of every raw figure, and the chart (matplotlib)."""

from benchmarks.deploy_report import (
    DEPLOYED_HEADER,
    QUALITY_HEADER,
    deployed_note,
    deployed_rows,
    quality_rows,
    quality_title,
)
from benchmarks.machine import NO_BF16_UNITS
from benchmarks.probes import short_error
from benchmarks.reference import FLOP_CONVENTION, PEAK_KEYS

BF16_HEADER = [
    "case",
    "column",
    "float32 ms (fastest)",
    "bfloat16 ms",
    "speed-up",
    "argmax = float32",
    "max |logit diff|",
]


def primary_figure(result):
    """Name and stats of a result's headline figure (the default call;
    ``predict_on_batch`` on the overhead case)."""
    figures = result.get("figures") or {}
    names = ("predict", "forward", "train_on_batch", "step")
    for name in (result.get("headline"), *names):
        if name in figures:
            return name, figures[name]
    return None, None


def describe(result):
    """One-line summary of a worker result for the progress output."""
    if result.get("status") != "ok":
        return f"{result.get('status')}: {short_error(result.get('error'))}"
    parts = []
    for name, stats in (result.get("figures") or {}).items():
        parts.append(
            f"{name} {stats['median_ms']:.1f} ms "
            f"[{stats['q1_ms']:.1f}-{stats['q3_ms']:.1f}] "
            f"(n={stats['repeats']})"
        )
    if "argmax_agreement" in result:
        parts.append(f"argmax = f32 {100 * result['argmax_agreement']:.2f}%")
    if "rss_peak_mb" in result:
        parts.append(f"peak RSS {result['rss_peak_mb']:.0f} MB")
    return ", ".join(parts)


def describe_peak(peak):
    parts = []
    keys = [k for keys in PEAK_KEYS.values() for k in keys if k in peak]
    for key in keys or PEAK_KEYS["cpu"]:
        entry = peak.get(key) or {}
        value = (
            f"{entry['gflops']:.0f} GFLOP/s"
            if "gflops" in entry
            else entry.get("status", peak.get("status"))
        )
        parts.append(f"{key} {value}")
    if peak.get("status") != "ok":
        parts.append(short_error(peak.get("error", "")))
    return ", ".join(parts)


def describe_flops(flops):
    if flops.get("status") != "ok":
        return f"{flops.get('status')}: {short_error(flops.get('error', ''))}"
    return ", ".join(
        f"{k} {v['forward_flop_per_image'] / 1e9:.2f} GFLOP/image"
        for k, v in flops["flops"].items()
    )


# ---------------------------------------------------------------------------
# Cells


def _number(value):
    """One decimal from 1 up, three significant digits below."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def _ms(value):
    """Milliseconds: two decimals below 10 ms (the overhead case)."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _status_text(result):
    if result is None:
        return "-"
    if result.get("status") != "ok":
        return str(result.get("status", "error"))
    return None


def metric_rows(bench, case):
    """Row labels of a case in the text table."""
    rows = [
        "median ms [IQR]",
        "time vs transformers",
        "GFLOP/s (% peak)",
        "peak RSS MB (+run)",
        "build / warm-up s",
    ]
    if case.overhead:
        rows += ["predict ms", "model(x) ms (vs tr.)"]
    elif not case.train:
        rows.append("predict_on_batch ms")
    if not case.train and any(c.kind == "deployed" for c in bench.columns):
        rows.append("argmax = float32")
    if bench.device == "gpu":
        rows.append("GPU peak MB")
    return rows


def _ratio(r, key="time_vs_transformers", mark="(bf16)"):
    """``x0.50``; ``x0.50 (bf16)`` when against transformers-bf16."""
    if key not in r:
        return "-"
    vs_bf16 = r.get("time_vs") == "transformers-bf16"
    return f"x{r[key]:.2f}" + (f" {mark}" if vs_bf16 else "")


def _cell_lines(bench, column, case):
    """Text of one table cell, one string per metric row."""
    rows = metric_rows(bench, case)
    r = bench.cell(column, case)
    status = _status_text(r)
    if status is not None:
        return [status] + [""] * (len(rows) - 1)
    _, s = primary_figure(r)
    rate = "-"
    if "gflops_per_s" in r:
        share = r.get("share_of_peak")
        rate = _number(r["gflops_per_s"])
        rate += f" ({100 * share:.1f}%)" if share is not None else ""
    figures = r.get("figures") or {}

    def figure(name):
        return _ms(figures[name]["median_ms"]) if name in figures else "-"

    call = figure("call")
    if call != "-" and "call_vs_transformers" in r:
        call += f" ({_ratio(r, 'call_vs_transformers', mark='bf16')})"
    device_mb = r.get("device_peak_mb")
    agree = r.get("argmax_agreement")
    values = {
        "median ms [IQR]": f"{_ms(s['median_ms'])} "
        f"[{_ms(s['q1_ms'])}-{_ms(s['q3_ms'])}]",
        "time vs transformers": _ratio(r),
        "GFLOP/s (% peak)": rate,
        "peak RSS MB (+run)": f"{r['rss_peak_mb']:.0f} "
        f"(+{r['rss_run_mb']:.0f})",
        "build / warm-up s": f"{r['build_s']:.1f} / {s['warmup_s']:.1f}",
        "predict ms": figure("predict"),
        "predict_on_batch ms": figure("predict_on_batch"),
        "model(x) ms (vs tr.)": call,
        "GPU peak MB": "-" if device_mb is None else f"{device_mb:.0f}",
        "argmax = float32": "-" if agree is None else f"{100 * agree:.2f}%",
    }
    return [values[row] for row in rows]


def _format_grid(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:])
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


# ---------------------------------------------------------------------------
# Notes


def _timing_notes(bench):
    least = min(3, bench.repeats)
    repeats = (
        str(least) if least == bench.repeats else f"{least}-{bench.repeats}"
    )
    return [
        f"median of {repeats} timed calls (fewer once {bench.budget_s:g} s "
        f"have gone by) after {bench.warmup} untimed warm-up call(s); [IQR] "
        "= interquartile range. Inference: Keras model.predict(x, "
        "verbose=0), transformers model(pixel_values=x) under "
        "torch.inference_mode(). Training: one optimizer step "
        "(train_on_batch; transformers backward + AdamW.step).",
        "tiny cases (the per-call overhead model: depths 1-1-1-1, hidden "
        "16/32/40/64, decoder 32): the headline of a Keras column is "
        "predict_on_batch(x); model(x) = the eager call model(x, "
        "training=False) on a backend tensor (torch.no_grad on PyTorch), "
        "logits to host; transformers: its eager forward, as elsewhere. "
        + (
            "Their columns ran at once, taking turns of ~0.2 s on the "
            "machine (interleaved timing, benchmarks/turns.py)."
            if any(r.get("interleaved") for r in bench.results)
            else "Their columns ran one after the other."
        ),
        "time vs transformers = column median / transformers median "
        "(x0.50 = half the time, twice as fast); a bf16 column is compared "
        "with transformers-bf16 where that ran (marked (bf16)).",
        f"GFLOP: {FLOP_CONVENTION}.",
    ]


def _bf16_note(bench):
    """What the machine can do in bfloat16, next to the bf16 columns."""
    units = bench.bf16_units
    if not any(c.bf16 for c in bench.columns):
        return []
    text = (
        "bf16: ours-*-bf16 = dtype 'mixed_bfloat16' (inference with a "
        "float32 model's weights; training: compile_for_training + "
        "train_on_batch); transformers-bf16 = torch.autocast(device, "
        "bfloat16) around the forward pass (and the loss), backward and "
        "AdamW step outside it. "
    )
    if bench.skip_bf16:
        text += (
            f"Not run: {NO_BF16_UNITS} (no avx512_bf16, amx_bf16 or bf16 "
            "flag); bfloat16 would be emulated and its time would mean "
            "nothing (--bf16-anyway runs them)."
        )
    elif units["has"] is False:
        text += (
            f"Run with --bf16-anyway although there are {NO_BF16_UNITS}: "
            "the times are of emulated bfloat16."
        )
    else:
        text += f"Machine: {units['text']}."
    return [text]


def _peak_note(bench):
    peak_name, peak = bench.peak_reference()
    parts = []
    for key in PEAK_KEYS[bench.device]:
        entry = bench.peak.get(key) or {}
        if "gflops" in entry:
            parts.append(
                f"{key} {entry['gflops']:.1f} GFLOP/s "
                f"({entry['size']}x{entry['size']} matmul)"
            )
        else:
            parts.append(f"{key} {entry.get('status', 'error')}")
    reference = (
        f"% peak = GFLOP/s / {peak_name} {peak:.1f} GFLOP/s"
        if peak
        else "% peak: no matmul peak measured"
    )
    return f"{reference}. Matmul: {'; '.join(parts)}."


def _context_notes(bench):
    notes = [
        _peak_note(bench),
        "peak RSS = the worker's high-water resident size (VmHWM); +run = "
        "peak minus the RSS after imports and model build, before the "
        "first call. build / warm-up = seconds to build the model "
        "(random init) / for the untimed first calls (tracing, "
        "compilation).",
    ]
    if bench.device == "gpu":
        notes.append(
            "GPU: every column on the first GPU, host numpy in and host "
            "logits out per call (transformers' call includes .to('cuda') "
            "and .cpu()), each library at its default float32 precision "
            "(torch: TF32 convolutions, full float32 matmuls; JAX/XLA: its "
            "default, TF32 on this GPU). GPU peak MB = the allocator's peak "
            "(torch.cuda.max_memory_allocated, JAX peak_bytes_in_use)."
        )
    for spec, choice in bench.choices.items():
        detail = ", ".join(
            f"{b} {ms:.1f} ms" for b, ms in choice.get("median_ms", {}).items()
        )
        detail = f" ({detail})" if detail else ""
        notes.append(
            f"{spec}: backend {choice['backend']}, {choice['how']}{detail}."
        )
    m = bench.machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    gpu = f"GPU {m['accelerator']}, " if m.get("accelerator") else ""
    notes.append(
        f"machine: {gpu}{m.get('cpu_model')}, {m.get('usable_cores')} cores "
        f"(flags {' '.join(m.get('cpu_flags', [])) or '?'}; "
        f"{bench.bf16_units['text']}), {m.get('memory_gb')} GB; load "
        f"average {m.get('load_average_start')} -> "
        f"{m.get('load_average_end')}; {versions}; "
        f"{bench.started:%Y-%m-%d %H:%M}."
    )
    return notes


def _status_notes(bench):
    notes = []
    for name, entry in (("matmul peak", bench.peak), ("FLOPs", bench.flops)):
        if entry.get("status") != "ok":
            notes.append(
                f"{name}: {entry.get('status')}: "
                f"{short_error(entry.get('error', ''))}"
            )
    for r in bench.results:
        if r["status"] not in ("ok", NO_BF16_UNITS):
            log = f" (log: {r['log']})" if "log" in r else ""
            notes.append(
                f"{r['impl']} / {r['case']}: {r['status']}: "
                f"{short_error(r.get('error', ''))}{log}"
            )
    return notes


def notes(bench, markdown=False):
    """Legend and context lines shared by the text and Markdown tables."""
    lines = (
        _timing_notes(bench)
        + _bf16_note(bench)
        + deployed_note(bench)
        + _context_notes(bench)
        + _status_notes(bench)
    )
    bullet = "-" if markdown else "*"
    return [f"{bullet} {n}" for n in lines]


# ---------------------------------------------------------------------------
# Tables


def _float32_of(bench, r, case):
    """The float32 result a bf16 result is compared with, or None:
    transformers' own for transformers-bf16; for ours, the fastest float32
    ours column on the case (bfloat16 pays off where it beats the best
    float32 backend, not only its own)."""
    if r["impl"] == "transformers-bf16":
        impls = {"transformers"}
    else:
        impls = {c.name for c in bench.columns if c.kind == "ours"}
    found = [
        x
        for x in bench.results
        if x["impl"] in impls
        and not x.get("bf16")
        and x["case"] == case.name
        and x["status"] == "ok"
    ]
    if not found:
        return None
    return min(found, key=lambda x: primary_figure(x)[1]["median_ms"])


def bf16_rows(bench):
    """Per case and bf16 column: bf16 vs float32 (transformers' own; ours:
    the fastest float32 backend)."""
    rows = []
    for column in (c for c in bench.columns if c.bf16):
        for case in bench.cases:
            r = bench.cell(column, case)
            if r is None:
                continue
            if r["status"] != "ok":
                rows.append([case.name, r["impl"], r["status"]] + [""] * 4)
                continue
            bf16_ms = primary_figure(r)[1]["median_ms"]
            f32 = _float32_of(bench, r, case)
            f32_ms = primary_figure(f32)[1]["median_ms"] if f32 else None
            agree = r.get("argmax_agreement")
            diff = r.get("max_abs_logit_diff")
            rows.append(
                [
                    case.name,
                    r["impl"],
                    _ms(f32_ms) if f32_ms else "-",
                    _ms(bf16_ms),
                    f"x{f32_ms / bf16_ms:.2f}" if f32_ms else "-",
                    "-" if agree is None else f"{100 * agree:.2f}%",
                    "-" if diff is None else f"{diff:.3g}",
                ]
            )
    return rows


def render_text(bench):
    """The plain-text table (rows = cases x metrics, columns = impls)."""
    rows = [["case / metric"] + [c.name for c in bench.columns]]
    for case in bench.cases:
        gflop = bench.work_gflop(case)
        label = case.name + (f" ({_number(gflop)} GFLOP)" if gflop else "")
        rows.append([label] + [""] * len(bench.columns))
        cells = [_cell_lines(bench, col, case) for col in bench.columns]
        for i, metric in enumerate(metric_rows(bench, case)):
            rows.append([f"  {metric}"] + [cell[i] for cell in cells])
    lines = ["SegFormer benchmark (ms per call, lower is better)", ""]
    lines += _format_grid(rows)
    bf16 = bf16_rows(bench)
    if bf16:
        lines += [
            "",
            "bfloat16 vs float32 (same weights, same smooth input; "
            f"{bench.bf16_units['text']})",
        ]
        lines += _format_grid([BF16_HEADER] + bf16)
    deployed = deployed_rows(bench)
    if deployed:
        lines += ["", "deployed artifacts (same weights, same inputs)"]
        lines += _format_grid([DEPLOYED_HEADER] + deployed)
    if bench.quality:
        lines += ["", quality_title(bench)]
        lines += _format_grid([QUALITY_HEADER] + quality_rows(bench))
    lines += [""] + notes(bench)
    return "\n".join(lines) + "\n"


def _markdown_cell(r):
    status = _status_text(r)
    if status is not None:
        return status
    median = primary_figure(r)[1]["median_ms"]
    extra = []
    if "time_vs_transformers" in r:
        extra.append(_ratio(r))
    call = (r.get("figures") or {}).get("call")
    if call:
        extra.append(f"model(x) {_ms(call['median_ms'])} ms")
    if "share_of_peak" in r:
        extra.append(f"{100 * r['share_of_peak']:.1f}% peak")
    if "runtime" in r and "argmax_agreement" in r:  # a deployed column
        extra.append(f"argmax = f32 {100 * r['argmax_agreement']:.2f}%")
    if r.get("device_peak_mb") is not None:
        extra.append(f"GPU {r['device_peak_mb']:.0f} MB")
    else:
        extra.append(f"{r['rss_peak_mb']:.0f} MB")
    return f"**{_ms(median)} ms**<br>{' · '.join(extra)}"


def render_markdown(bench):
    """A compact Markdown table for a README."""
    header = ["case", "GFLOP"] + [f"`{c.name}`" for c in bench.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for case in bench.cases:
        gflop = bench.work_gflop(case)
        cells = [f"`{case.name}`", _number(gflop) if gflop else "-"]
        cells += [_markdown_cell(bench.cell(c, case)) for c in bench.columns]
        lines.append("| " + " | ".join(cells) + " |")
    bf16 = bf16_rows(bench)
    if bf16:
        lines += [
            "",
            f"bfloat16 vs float32 ({bench.bf16_units['text']}):",
            "",
            "| " + " | ".join(BF16_HEADER) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in bf16]
    deployed = deployed_rows(bench)
    if deployed:
        lines += [
            "",
            "Deployed artifacts (same weights, same inputs):",
            "",
            "| " + " | ".join(DEPLOYED_HEADER) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * 7 + ["---"]) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in deployed]
    if bench.quality:
        lines += [
            "",
            quality_title(bench)[0].upper() + quality_title(bench)[1:] + ":",
            "",
            "| " + " | ".join(QUALITY_HEADER) + " |",
            "|" + "|".join(["---"] + ["---:"] * 4 + ["---"]) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in quality_rows(bench)]
    lines += [""] + notes(bench, markdown=True)
    return "\n".join(lines) + "\n"
