"""The deployed columns in the outputs: their own table (runtime, export,
artifact size, speed against Keras and transformers, argmax agreement
with the float32 model) and the note that says how they were made."""

from benchmarks.deploy import CALIBRATION_IMAGES, ONNX_OPSET

DEPLOYED_HEADER = [
    "case",
    "column",
    "ms",
    "vs Keras f32",
    "vs transformers",
    "argmax = float32",
    "max |logit diff|",
    "MB",
    "export s",
    "runtime",
]


def _headline_ms(result):
    from benchmarks.report import primary_figure

    return primary_figure(result)[1]["median_ms"]


def fastest_keras(bench, case):
    """The fastest float32 Keras column of ours on a case, or None."""
    found = [
        r
        for r in bench.results
        if r["case"] == case.name
        and r["status"] == "ok"
        and not r.get("bf16")
        and not r.get("candidate")
        and r["impl"] in {f"ours-{b}" for b in ("tensorflow", "jax", "torch")}
    ]
    return min(found, key=_headline_ms) if found else None


def deployed_rows(bench):
    """Per case and deployed column: one row of ``DEPLOYED_HEADER``."""
    from benchmarks.report import _ms

    rows = []
    for column in (c for c in bench.columns if c.kind == "deployed"):
        for case in bench.cases:
            r = bench.cell(column, case)
            if r is None:
                continue
            if r["status"] != "ok":
                rows.append([case.name, column.name, r["status"]] + [""] * 7)
                continue
            ms = _headline_ms(r)
            keras = fastest_keras(bench, case)
            versus = (
                f"x{ms / _headline_ms(keras):.2f} ({keras['impl'][5:]})"
                if keras and column.artifact[0] == "ours"
                else "-"
            )
            export = r.get("export") or {}
            agree = r.get("argmax_agreement")
            rows.append(
                [
                    case.name,
                    column.name,
                    _ms(ms),
                    versus,
                    f"x{r['time_vs_transformers']:.2f}"
                    if "time_vs_transformers" in r
                    else "-",
                    "-" if agree is None else f"{100 * agree:.2f}%",
                    f"{r['max_abs_logit_diff']:.3g}",
                    f"{export.get('artifact_mb', 0):.1f}",
                    f"{export.get('export_s', 0):.1f}",
                    r.get("runtime", "-"),
                ]
            )
    return rows


def deployed_note(bench):
    """How the deployed columns were made and run (empty without them)."""
    if not any(c.kind == "deployed" for c in bench.columns):
        return []
    return [
        "deployed: ours-onnx* / ours-litert* = keras_segformer.export"
        ".export_model of the ours-tensorflow model (same seed, same "
        "weights); ONNX with dynamic height and width, LiteRT at the "
        "case's fixed size (input_size), float16 = float16 weights, int8 "
        f"= weights and activations, calibrated on {CALIBRATION_IMAGES} "
        "smooth random images of the case's size (the timed inputs' "
        "kind, other seeds, as uint8 pixels normalized by the exporter). "
        "transformers-onnx = torch.onnx.export (TorchScript exporter, "
        f"opset {ONNX_OPSET}, dynamic batch/height/width) of the "
        "transformers column's model. Each is exported in one worker "
        "(export s, not timed) and timed in a fresh one in its runtime "
        "(onnxruntime InferenceSession, default options; LiteRT "
        "Interpreter with every usable core and its default XNNPACK "
        "delegate), host numpy in and out, on the same images. argmax = "
        "float32: share of pixels whose argmax equals the float32 "
        "model's (ours: the Keras model; transformers-onnx: its PyTorch "
        "model) on those images; random weights make near-ties, so a "
        "trained model scores higher. vs Keras f32 = deployed median / "
        "the fastest float32 ours-<backend> median. Our artifacts keep "
        "the model's decode head at each stage's resolution (about half "
        "of B0's reference FLOPs), so their rate may exceed the float32 "
        "matmul peak; int8 columns get no % peak (a float32 rate). peak "
        "RSS of a LiteRT "
        "column run through tf.lite includes TensorFlow's import "
        "(ai-edge-litert, when installed, runs without it).",
    ]


QUALITY_HEADER = [
    "column",
    "mIoU",
    "float32 mIoU (Keras)",
    "argmax = float32",
    "images",
    "calibration",
]


def describe_quality(result):
    """One line of a quality job's result for the progress output."""
    from benchmarks.probes import short_error

    if result.get("status") != "ok":
        return f"{result.get('status')}: {short_error(result.get('error'))}"
    return (
        f"mIoU {100 * result['miou']:.1f} (float32 Keras "
        f"{100 * result['miou_float32']:.1f}), argmax = float32 "
        f"{100 * result['argmax_agreement']:.2f}%"
    )


def quality_rows(bench):
    """Per deployed column: its artifact of the trained model, scored."""
    rows = []
    for spec, r in bench.quality.items():
        if r.get("status") != "ok":
            rows.append([spec, r.get("status", "error")] + [""] * 4)
            continue
        rows.append(
            [
                spec,
                f"{100 * r['miou']:.1f}",
                f"{100 * r['miou_float32']:.1f}",
                f"{100 * r['argmax_agreement']:.2f}%",
                f"{r['images']} at {r['input_size'][0]}x{r['input_size'][1]}",
                r.get("calibration") or "-",
            ]
        )
    return rows


def quality_title(bench):
    """The quality table's title: which model, which data."""
    model, data = bench.quant
    return (
        f"deployed artifacts of the trained model {model}, scored on "
        f"{data} (mIoU in %; argmax = float32 at the logits' resolution)"
    )
