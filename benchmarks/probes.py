"""What the workers measure with: timed calls, memory, threads, devices,
and how a failure becomes a cell. Frameworks are imported inside the
functions, only when the worker already uses them."""

import contextlib
import os
import re
import resource
import statistics
import sys
import time
import traceback

from benchmarks.turns import BLOCK_S, Turns

# Libraries whose absence makes a column "not installed" (not "error").
PEER_PACKAGES = {
    "tensorflow",
    "jax",
    "torch",
    "transformers",
    "keras_hub",
    "onnxruntime",
    "onnx",
    "tf2onnx",
    "onnxscript",
}


def summarize(times_s, warmup):
    """Median, quartiles, min/max (ms) of timed calls."""
    ms = [t * 1e3 for t in times_s]
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": min(ms),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "repeats": len(ms),
        "warmup": warmup,
        "times_ms": [round(t, 3) for t in ms],
    }


def time_calls(fn, *, warmup, repeats, min_repeats, budget_s, turns=None):
    """Time ``fn()``: ``warmup`` untimed calls, then between
    ``min_repeats`` and ``repeats`` timed calls, stopping once the timed
    calls have taken ``budget_s`` seconds. With ``turns``
    (``benchmarks.turns.Turns``, held on entry and on return), the baton
    is passed on after each block of ~``turns.BLOCK_S`` seconds."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_s = time.perf_counter() - t0
    times = []
    block_start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and sum(times) > budget_s:
            break
        if turns is not None and t0 - block_start > BLOCK_S:
            turns.pass_on()
            turns.wait()
            block_start = time.perf_counter()
    return {**summarize(times, warmup), "warmup_s": warmup_s}


def timing(spec):
    """``time_calls`` keyword arguments of a job spec."""
    return {
        "repeats": spec["repeats"],
        "min_repeats": min(3, spec["repeats"]),
        "budget_s": spec["budget_s"],
        "turns": Turns.from_spec(spec),
    }


def rss_mb():
    """Current resident set size of this process, in MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb():
    """Peak resident set size of this process, in MB: Linux's ``VmHWM``.

    Not ``ru_maxrss``: on Linux that keeps the high-water mark of the
    process image replaced by ``exec``, so a worker would report at least
    the RSS of the parent that started it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def seed_everything(seed, backend):
    """Seed Python, NumPy and the backend, as ``keras.utils.set_random_seed``
    does, without its ``import tensorflow`` on the other backends (that
    import alone adds ~450 MB to a JAX or torch worker's RSS). Keras'
    global seed generator draws its seed from Python's ``random``."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if backend == "tensorflow":
        import keras

        keras.utils.set_random_seed(seed)
    elif backend == "torch":
        import torch

        torch.manual_seed(seed)


def accelerator(backend):
    """Name of the GPU the backend computes on, or None (CPU)."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    elif backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            return gpus[0].device_kind
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return details.get("device_name", gpus[0].name)
    return None


def device_peak_mb(backend):
    """Peak GPU memory the backend's allocator handed out, in MB."""
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def check_device(spec, backend):
    """The worker's accelerator; raises on ``--device gpu`` without one."""
    name = accelerator(backend)
    if spec.get("device") == "gpu" and name is None:
        raise RuntimeError(
            f"--device gpu: {backend} sees no GPU in this worker; refusing "
            "to measure the CPU instead."
        )
    return name


def no_grad(backend):
    """``torch.no_grad()`` on PyTorch (as Keras' predict), else nothing."""
    if backend == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def set_threads(threads):
    """Apply ``--threads`` to the libraries already imported."""
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def thread_settings():
    """Thread counts the imported libraries report, plus the env vars."""
    info = {
        k: os.environ[k]
        for k in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS",
        )
        if k in os.environ
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if "tensorflow" in sys.modules:
        threading = sys.modules["tensorflow"].config.threading
        # 0 means TensorFlow's default: one thread per core.
        info["tf_intra_op"] = threading.get_intra_op_parallelism_threads()
        info["tf_inter_op"] = threading.get_inter_op_parallelism_threads()
    return info


def failure(error):
    """Result of a job that raised: "not installed" for a missing peer."""
    if (
        isinstance(error, ModuleNotFoundError)
        and (error.name or "").split(".")[0] in PEER_PACKAGES
    ):
        return {
            "status": "not installed",
            "error": f"{error.name} is not installed",
        }
    return {
        "status": "error",
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
    }


def short_error(text, limit=300):
    """An error message on one line: no ANSI colours, no line breaks."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
