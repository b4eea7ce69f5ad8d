"""GPU check: parity with TF32 off, then speed against transformers.

Run by ``tools/gpu_check.sh`` (which installs what is missing) on a machine
with an NVIDIA GPU, or directly::

    python tools/gpu_check.py --out gpu_check_out

What it does, in one run of a few minutes:

1. Makes random transformers SegFormer checkpoints (B0, B2; weights
   perturbed so none keeps its initial value; 150 classes) with
   ``save_pretrained``; every column loads the same weights.
2. Parity, TF32 off: this project on JAX and on PyTorch (on the GPU, matmul
   and convolution precision "highest" / ``allow_tf32=False``) against
   transformers in float32 on the CPU, B0 at 2x300x417 (not a multiple of
   32): max abs logit difference, tolerance 1e-4.
3. Speed: inference (``predict_on_batch`` on host arrays for ours;
   ``model(pixel_values.to(cuda)).logits.cpu()`` under ``inference_mode``
   for transformers) for B0/B2 at 512x512, batch 1 and 8, and one training
   step at batch 8 (ours: ``train_on_batch`` with the compile defaults;
   transformers: ``zero_grad``, ``loss.backward()``, ``AdamW.step()``), in
   float32 (each library's default GPU precision) and bfloat16 (ours:
   ``dtype="mixed_bfloat16"``; transformers: ``torch.autocast``), plus
   PyTorch with ``jit_compile=True`` (``torch.compile``) for inference.

Every column and mode runs in its own process. All processes load and
compile at once (the slow part: XLA and torch.compile), then time one at
a time while the others wait, so no figure shares the GPU. A process that
is not ready by ``--deadline`` is not timed. Output: ``gpu_check.json``
(every figure, the machine, versions) and ``gpu_check.md`` (the table),
written as each process finishes.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks.cases import random_labels, smooth_images  # noqa: E402

NUM_CLASSES = 150
PARITY_SIZE = (2, 300, 417)
TOLERANCE = 1e-4
INFER_CASES = (
    "b0-512x512-b1",
    "b0-512x512-b8",
    "b2-512x512-b1",
    "b2-512x512-b8",
)
TRAIN_CASES = ("train-b0-512x512-b8", "train-b2-512x512-b8")
# column -> (library, Keras backend, dtype, extra)
COLUMNS = {
    "ours-jax": ("ours", "jax", "float32", {}),
    "ours-torch": ("ours", "torch", "float32", {}),
    "ours-torch-compile": ("ours", "torch", "float32", {"jit": True}),
    "transformers": ("transformers", "torch", "float32", {}),
    "ours-jax-bf16": ("ours", "jax", "mixed_bfloat16", {}),
    "ours-torch-bf16": ("ours", "torch", "mixed_bfloat16", {}),
    "transformers-bf16": ("transformers", "torch", "bfloat16", {}),
}


def parse_case(name):
    train = name.startswith("train-")
    variant, size, batch = name.removeprefix("train-").split("-")
    height, width = (int(v) for v in size.split("x"))
    return {
        "name": name,
        "variant": variant,
        "height": height,
        "width": width,
        "batch": int(batch[1:]),
        "train": train,
    }


# ---------------------------------------------------------------------------
# Checkpoints and parity


def make_checkpoints(folder, variants, seed=0):
    """Random transformers checkpoints with perturbed weights, per variant
    (the ones tools/parity_check.py makes)."""
    from parity_check import _random_checkpoint

    for variant in variants:
        path = os.path.join(folder, f"ckpt_{variant}")
        if not os.path.exists(os.path.join(path, "config.json")):
            _random_checkpoint(variant, NUM_CLASSES, path, seed)


def reference_logits(path, images):
    """transformers in float32 on the CPU: the parity reference, NHWC."""
    import numpy as np
    import torch
    from transformers import SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation.from_pretrained(path).eval()
    pixels = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )
    with torch.inference_mode():
        logits = model(pixel_values=pixels.float()).logits.numpy()
    return logits.transpose(0, 2, 3, 1)


def parity(backend, folder):
    """Max abs logit diff of this project (GPU, TF32 off) vs the CPU."""
    import numpy as np

    import keras_segformer

    path = os.path.join(folder, "ckpt_b0")
    images = smooth_images(*PARITY_SIZE, seed=1)
    expected = reference_logits(path, images)
    model = keras_segformer.from_pretrained(path)
    if backend == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            got = np.asarray(model.predict_on_batch(images))
    else:
        import torch

        flags = (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        )
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            got = np.asarray(model.predict_on_batch(images))
        finally:
            (
                torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32,
            ) = flags
    diff = float(np.abs(got.astype(np.float64) - expected).max())
    same = float((got.argmax(-1) == expected.argmax(-1)).mean())
    return {
        "shape": list(got.shape),
        "max_abs_diff": diff,
        "argmax_equal": same,
        "tolerance": TOLERANCE,
        "ok": diff <= TOLERANCE,
    }


# ---------------------------------------------------------------------------
# One column in one process


def _checkpoint(folder, case):
    return os.path.join(folder, f"ckpt_{case['variant']}")


def _prepare_ours(case, folder, dtype, extra):
    import keras_segformer

    kwargs = {} if dtype == "float32" else {"dtype": dtype}
    model = keras_segformer.from_pretrained(_checkpoint(folder, case), **kwargs)
    if extra.get("jit"):
        model.jit_compile = True  # PyTorch: torch.compile of the step
    images = smooth_images(case["batch"], case["height"], case["width"])
    if case["train"]:
        labels = random_labels(
            case["batch"], case["height"], case["width"], NUM_CLASSES
        )
        return lambda: model.train_on_batch(images, labels)
    return lambda: model.predict_on_batch(images)


def _prepare_transformers(case, folder, dtype, extra):
    import numpy as np
    import torch
    from transformers import SegformerForSemanticSegmentation

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = _checkpoint(folder, case)
    model = SegformerForSemanticSegmentation.from_pretrained(path).to(device)
    images = smooth_images(case["batch"], case["height"], case["width"])
    pixels = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )

    def autocast():
        return torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"
        )

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if case["train"]:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
        labels = random_labels(
            case["batch"], case["height"], case["width"], NUM_CLASSES
        )
        targets = torch.from_numpy(labels.astype(np.int64))

        def step():
            optimizer.zero_grad()
            with autocast():
                loss = model(
                    pixel_values=pixels.to(device), labels=targets.to(device)
                ).loss
            loss.backward()
            optimizer.step()
            synchronize()

        return step
    model.eval()

    def forward():
        with torch.inference_mode(), autocast():
            return model(pixel_values=pixels.to(device)).logits.float().cpu()

    return forward


def _bf16_agreement(spec, case, fn):
    """Share of pixels whose argmax equals the float32 model's (same
    weights, same input)."""
    import numpy as np

    lib = COLUMNS[spec["column"]][0]
    prepare = _prepare_ours if lib == "ours" else _prepare_transformers
    reference = np.asarray(prepare(case, spec["folder"], "float32", {})())
    got = np.asarray(fn(), dtype=np.float32)
    if lib == "transformers":  # NCHW
        reference, got = (
            reference.transpose(0, 2, 3, 1),
            got.transpose(0, 2, 3, 1),
        )
    return float((got.argmax(-1) == reference.argmax(-1)).mean())


def time_calls(fn, warmup=2, repeats=20, budget_s=2.0):
    """Median/IQR ms of ``fn`` after ``warmup`` calls; >= 3 timed calls,
    then until ``repeats`` or ``budget_s``."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    q = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
    return {
        "median_ms": statistics.median(times),
        "q1_ms": q[0],
        "q3_ms": q[2],
        "times_ms": [round(t, 3) for t in times],
    }


def _wait_for(path, poll=0.2):
    while not os.path.exists(path):
        time.sleep(poll)


def _device_info(backend):
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return device.platform, device.device_kind
    import torch

    if torch.cuda.is_available():
        return "gpu", torch.cuda.get_device_name(0)
    return "cpu", platform.processor()


def run_job(spec):
    """Load and compile every case, say ready, wait for 'go', time them."""
    lib, backend, dtype, extra = COLUMNS[spec["column"]]
    out = {"column": spec["column"], "mode": spec["mode"], "cases": {}}
    started = time.perf_counter()
    if lib == "ours":
        import keras

        out["keras"] = keras.__version__
    kind, out["device"] = _device_info(backend)
    if kind != "gpu" and not spec.get("allow_cpu"):
        raise RuntimeError(f"{spec['column']}: {backend} sees no GPU")
    if spec.get("parity"):
        out["parity"] = parity(backend, spec["folder"])
    prepare = _prepare_ours if lib == "ours" else _prepare_transformers
    ready = {}
    for name in spec["cases"]:
        case = parse_case(name)
        t0 = time.perf_counter()
        try:
            fn = prepare(case, spec["folder"], dtype, extra)
            fn()  # traces and compiles
            ready[name] = fn
            out["cases"][name] = {"first_call_s": time.perf_counter() - t0}
            if dtype != "float32" and name == spec.get("agreement_case"):
                out["cases"][name]["argmax_vs_float32"] = _bf16_agreement(
                    spec, case, fn
                )
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            out["cases"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    out["prepare_s"] = time.perf_counter() - started
    base = os.path.join(spec["sync"], spec["job"])
    open(base + ".ready", "w").close()
    _wait_for(base + ".go")
    for name, fn in ready.items():
        try:
            out["cases"][name].update(time_calls(fn))
        except Exception as e:  # noqa: BLE001
            out["cases"][name]["error"] = f"{type(e).__name__}: {e}"[:500]
    _write_json(base + ".json", out)
    return 0


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The run: start every job, let them compile, time them one at a time


def plan(columns, cases, folder, sync, allow_cpu=False):
    """The jobs: each column's inference cases and training cases."""
    infer = [c for c in cases if not c.startswith("train-")]
    train = [c for c in cases if c.startswith("train-")]
    jobs = []
    for mode, names in (("infer", infer), ("train", train)):
        for column in columns:
            if not names or (mode == "train" and "compile" in column):
                continue
            jobs.append(
                {
                    "job": f"{column}.{mode}",
                    "column": column,
                    "mode": mode,
                    "cases": names,
                    "folder": folder,
                    "sync": sync,
                    "allow_cpu": allow_cpu,
                    "parity": mode == "infer"
                    and column in ("ours-jax", "ours-torch"),
                    "agreement_case": names[0],
                }
            )
    return jobs


def _start(job, log_dir):
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=COLUMNS[job["column"]][1],
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    log = open(os.path.join(log_dir, job["job"] + ".log"), "w")
    return subprocess.Popen(
        [sys.executable, __file__, "--job", json.dumps(job)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _tail(path, lines=6):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()[-800:]
    except OSError:
        return ""


def _wait_ready(jobs, procs, sync, until):
    """Wait until each job is ready or has died, or ``until`` passes."""
    pending = {j["job"] for j in jobs}
    while pending and time.time() < until:
        for name in sorted(pending):
            if os.path.exists(os.path.join(sync, name + ".ready")):
                pending.discard(name)
                print(f"  ready: {name}", flush=True)
            elif procs[name].poll() is not None:
                pending.discard(name)
                print(f"  failed: {name}", flush=True)
        time.sleep(0.5)
    return pending


def run_all(jobs, out_dir, deadline_s, timing_reserve_s):
    sync = jobs[0]["sync"]
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    start = time.time()
    procs = {j["job"]: _start(j, log_dir) for j in jobs}
    late = _wait_ready(jobs, procs, sync, start + deadline_s - timing_reserve_s)
    for name in late:  # compiling on would disturb the timings
        procs[name].kill()
    results = {}
    for job in jobs:
        name, proc = job["job"], procs[job["job"]]
        base = os.path.join(sync, name)
        if name in late or not os.path.exists(base + ".ready"):
            proc.kill()
            why = "not ready in time" if name in late else "failed"
            log = os.path.join(log_dir, name + ".log")
            results[name] = {"error": why, "log_tail": _tail(log)}
            continue
        print(f"  timing: {name}", flush=True)
        open(base + ".go", "w").close()
        try:
            proc.wait(timeout=max(10.0, start + deadline_s - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
        if os.path.exists(base + ".json"):
            with open(base + ".json") as f:
                results[name] = json.load(f)
        else:
            log = os.path.join(log_dir, name + ".log")
            results[name] = {"error": "no result", "log_tail": _tail(log)}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
    return results


# ---------------------------------------------------------------------------
# Machine and report


def _command(args):
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    import importlib.metadata

    versions = {}
    for package in ("keras", "jax", "jaxlib", "torch", "transformers", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cpu = None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [
                ln.split(":", 1)[1].strip() for ln in f if "model name" in ln
            ]
        cpu = names[0] if names else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "gpu": _command(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ]
        ),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": _command(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
    }


def _cell(result, peer):
    if "error" in result:
        return "error"
    if "median_ms" not in result:
        return "-"
    text = f"{result['median_ms']:.1f}"
    if peer and "median_ms" in peer:
        text += f" (x{result['median_ms'] / peer['median_ms']:.2f})"
    if "argmax_vs_float32" in result:
        text += f", argmax={100 * result['argmax_vs_float32']:.1f}%"
    return text


def report(results, columns, cases, info):
    """Markdown: a row per case, a column per implementation; ratios are
    time over transformers' time (bf16 columns: over transformers-bf16)."""
    by_column = {}
    for result in results.values():
        for case, figures in result.get("cases", {}).items():
            by_column.setdefault(result["column"], {})[case] = figures
    lines = [
        f"GPU: {info['gpu']}; CPU: {info['cpu']} ({info['cpu_count']} "
        f"threads); commit {info['commit']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v),
        "",
        "| case, ms (x transformers) | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for case in cases:
        cells = []
        for column in columns:
            peer = "transformers-bf16" if "bf16" in column else "transformers"
            peer_figures = by_column.get(peer, {}).get(case)
            figures = by_column.get(column, {}).get(case, {})
            cells.append(
                _cell(figures, None if column == peer else peer_figures)
            )
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, result in sorted(results.items()):
        if "parity" in result:
            p = result["parity"]
            lines.append(
                f"- parity {result['column']} (TF32 off), B0 "
                f"{'x'.join(map(str, PARITY_SIZE))}: max |diff| "
                f"{p['max_abs_diff']:.3g} vs transformers float32 CPU, "
                f"argmax equal {100 * p['argmax_equal']:.2f}%: "
                f"{'ok' if p['ok'] else 'FAIL'}"
            )
        if "error" in result:
            tail = result.get("log_tail", "")[-300:]
            lines.append(f"- {name}: {result['error']} {tail!r}")
    return "\n".join(lines) + "\n"


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--cases", default=",".join(INFER_CASES + TRAIN_CASES))
    parser.add_argument("--columns", default=",".join(COLUMNS))
    parser.add_argument(
        "--deadline",
        type=float,
        default=420.0,
        help="seconds for the whole run",
    )
    parser.add_argument(
        "--timing-reserve",
        type=float,
        default=150.0,
        help="seconds kept for timing after the compiles",
    )
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="dry run where no GPU is (the script's own test)",
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    return parser


def _fresh_out(out):
    """Make ``out``'s folders; empty the sync and log folders of an earlier
    run. Returns the checkpoint and sync folders."""
    folder, sync = os.path.join(out, "checkpoints"), os.path.join(out, "sync")
    os.makedirs(folder, exist_ok=True)
    for stale in (sync, os.path.join(out, "logs")):
        os.makedirs(stale, exist_ok=True)
        for name in os.listdir(stale):
            os.remove(os.path.join(stale, name))
    return folder, sync


def _prepare_checkpoints(folder, cases):
    """Write the cases' random checkpoints in a CPU-only PyTorch process
    (``--prepare``), so no GPU memory is taken before the jobs start."""
    variants = sorted({parse_case(c)["variant"] for c in cases})
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--prepare",
            f"{folder}:{','.join(variants)}",
        ],
        check=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [ROOT, os.environ.get("PYTHONPATH", "")]
            ),
            "CUDA_VISIBLE_DEVICES": "",
            "KERAS_BACKEND": "torch",
        },
    )


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.job:
        return run_job(json.loads(args.job))
    if args.prepare:
        folder, variants = args.prepare.split(":")
        make_checkpoints(folder, variants.split(","))
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        parser.error(f"--columns: unknown {unknown}; expected {list(COLUMNS)}")
    for case in cases:
        parse_case(case)
    out = os.path.abspath(args.out)
    folder, sync = _fresh_out(out)
    start = time.time()
    info = machine_info()
    print(
        f"gpu_check: {info['gpu']}; {len(columns)} columns, {len(cases)} cases",
        flush=True,
    )
    _prepare_checkpoints(folder, cases)
    jobs = plan(columns, cases, folder, sync, args.allow_cpu)
    results = run_all(
        jobs, out, args.deadline - (time.time() - start), args.timing_reserve
    )
    info["seconds"] = time.time() - start
    _write_json(
        os.path.join(out, "gpu_check.json"),
        {
            "machine": info,
            "cases": cases,
            "columns": columns,
            "results": results,
        },
    )
    table = report(results, columns, cases, info)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(table)
    print(table, flush=True)
    parities = [r["parity"]["ok"] for r in results.values() if "parity" in r]
    return 0 if parities and all(parities) else 1


if __name__ == "__main__":
    sys.exit(main())
