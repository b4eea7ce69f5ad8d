"""The parent's side of the deployed columns (``benchmarks/deploy.py``):
an export worker, then a runtime worker per cell, and the quality jobs of
``--quant-model``. Imports no framework."""

import json
import os

from benchmarks.cases import SEED
from benchmarks.deploy_report import describe_quality
from benchmarks.report import describe


def check_quant(args):
    """``(model, data)`` of ``--quant-model`` / ``--quant-data``, or None."""
    model = getattr(args, "quant_model", None)
    data = getattr(args, "quant_data", None)
    if not model and not data:
        return None
    if not (model and data):
        raise ValueError(
            "--quant-model and --quant-data go together: a trained .keras "
            "model and its data folder (images/, masks/)."
        )
    if not os.path.isfile(model):
        raise ValueError(f"--quant-model: no file {model!r}.")
    if not os.path.isdir(data):
        raise ValueError(f"--quant-data: no folder {data!r}.")
    return os.path.abspath(model), os.path.abspath(data)


def run_deployed(bench, column, case):
    """Export the artifact in one worker, time it in another
    (``benchmarks/deploy.py``); the artifact is removed afterwards
    unless ``--keep-artifacts``."""
    if bench.device == "gpu":
        bench.runner.done += 2
        result = {
            "status": "unavailable",
            "error": "the deployed columns run on the CPU (ONNX Runtime's "
            "CPU provider, LiteRT with XNNPACK); --device gpu times GPUs",
        }
        bench.keep(result, column, column.backend, case)
        return
    folder = os.path.join(bench.args.out, "artifacts")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f"{column.name}__{case.name}")
    spec = {
        **bench.model_spec(column, column.backend, case),
        "artifact": list(column.artifact),
        "artifact_path": os.path.abspath(
            stem + (".onnx" if column.artifact[1] == "onnx" else ".tflite")
        ),
        "reference_path": os.path.abspath(stem + ".reference.npy"),
    }
    label = f"{column.name}__{case.name}"
    keep_files = getattr(bench.args, "keep_artifacts", False)
    export = _kept_export(spec, stem) if keep_files else None
    if export is None:
        export = bench.runner.run(
            {**spec, "job": "export"}, label + "__export", column.backend
        )
    else:
        bench.runner.done += 1
    if export["status"] == "ok":
        result = bench.runner.run(
            {**spec, "job": "runtime"}, label, "tensorflow"
        )
        fields = ("build_s", "export_s", "artifact_mb", "exporter")
        result["export"] = {
            k: export[k]
            for k in (*fields, "calibration", "reused")
            if k in export
        }
        if keep_files and not export.get("reused"):
            with open(stem + ".export.json", "w") as f:
                json.dump(result["export"], f)
    else:
        bench.runner.done += 1  # no runtime worker
        result = export
    if not keep_files:
        for path in (spec["artifact_path"], spec["reference_path"]):
            if os.path.exists(path):
                os.remove(path)
    bench.keep(result, column, column.backend, case)
    bench.runner.progress(
        f"{column.name:<22} {case.name:<22} {describe(result)}"
    )
    bench.report(final=False)


def _kept_export(spec, stem):
    """The export of an earlier run with ``--keep-artifacts`` into the
    same ``--out`` (its artifact, reference logits and export figures),
    or None: a timing run need not export again."""
    record = stem + ".export.json"
    paths = (spec["artifact_path"], spec["reference_path"], record)
    if not all(os.path.exists(p) for p in paths):
        return None
    with open(record) as f:
        return {**json.load(f), "status": "ok", "reused": True}


def run_quality(bench):
    """Each of our deployed artifacts of the trained model, scored on
    its data (``benchmarks/deploy_quality.py``)."""
    folder = os.path.join(bench.args.out, "artifacts")
    os.makedirs(folder, exist_ok=True)
    for column in quality_columns(bench):
        stem = os.path.join(folder, f"{column.name}__quant-model")
        path = os.path.abspath(
            stem + (".onnx" if column.artifact[1] == "onnx" else ".tflite")
        )
        result = bench.runner.run(
            {
                "job": "quality",
                "artifact": list(column.artifact),
                "artifact_path": path,
                "quant_model": bench.quant[0],
                "quant_data": bench.quant[1],
                "seed": SEED,
            },
            f"{column.name}__quant-model",
            "tensorflow",
        )
        if not getattr(bench.args, "keep_artifacts", False):
            if os.path.exists(path):
                os.remove(path)
        bench.quality[column.spec] = result
        bench.runner.progress(
            f"{column.name:<22} {'trained model':<22} "
            + describe_quality(result)
        )


def quality_columns(bench):
    """Deployed columns of ours scored on the trained model."""
    if bench.quant is None:
        return []
    return [
        c
        for c in bench.columns
        if c.kind == "deployed" and c.artifact[0] == "ours"
    ]
