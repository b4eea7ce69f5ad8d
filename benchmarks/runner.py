"""Side-by-side speed and memory benchmark: this project, transformers and
keras-hub, in one run, on one machine, with the same inputs.

Run it as ``keras-segformer benchmark`` or ``python tools/benchmark.py``
(``--help`` lists the options; ``--quick`` is a smoke run of a tiny
model at 64x64 that checks the harness, not the speed).

What is compared (the columns)
    ``ours-tensorflow``, ``ours-jax``, ``ours-torch``: this project's
    ``build_segformer`` (random init, 150 classes) on each Keras backend.
    ``transformers``: ``SegformerForSemanticSegmentation`` (PyTorch eager,
    random init), input NCHW. ``keras-hub-<backend>``: keras-hub's
    ``SegFormerImageSegmenter`` (``MiTBackbone`` + ``SegFormerBackbone``).
    keras-hub needs a fixed ``image_shape``, so it is rebuilt per case; its
    backend is the fastest of the three on the first case (each one
    measured there; ``--hub-backend`` forces one). keras-hub resizes its
    logits to the full image size inside the model, which the others
    leave to the user; its ``MiTBackbone`` has no ``mlp_ratios`` argument
    (4, as B0-B5). ``ours-<backend>-bf16``: this project with
    ``dtype="mixed_bfloat16"`` on the backend that was fastest in float32
    on the first case (``--bf16-backend`` forces one), with the weights of
    a float32 model (``get_weights`` / ``set_weights``); inference cases
    only. Its agreement with float32 is the share of output pixels whose
    argmax equals the float32 model's.

What is measured (the rows)
    Cases are named ``[train-]<variant>-<H>x<W>-b<batch>``. Inference:
    the call a user makes by default, ``model.predict(x, verbose=0)`` for
    Keras models (``predict_on_batch(x)`` is recorded as a second figure)
    and ``model(pixel_values=x)`` under ``torch.inference_mode()`` for
    transformers. Training: one optimizer step on integer labels
    ``(B, H, W)`` in ``[0, 150)``: ours is
    ``compile_for_training(model, total_steps=1000)`` (SegFormer loss,
    grouped AdamW, the default MeanIoU metric) then ``train_on_batch``;
    keras-hub is compiled with ``AdamW(6e-5)`` and sparse cross-entropy on
    logits; transformers runs ``zero_grad``, ``model(pixel_values,
    labels).loss.backward()``, ``torch.optim.AdamW(lr=6e-5).step()``.

How
    Every (column, case) runs in a fresh worker process (this file, run
    by path through ``runpy`` so that the transformers worker never imports
    Keras) with ``KERAS_BACKEND`` set for it, so backends do not collide
    and memory figures belong to one case. With ``--device cpu`` (the
    default) workers use the CPU only (``CUDA_VISIBLE_DEVICES=""``); with
    ``--device gpu`` every column runs on the first GPU (a worker whose
    library sees no GPU fails instead of measuring the CPU), inputs start
    and outputs end on the host for every column (transformers' timed call
    includes ``.to("cuda")`` and ``.cpu()``, as Keras' ``predict`` does),
    each library at its own default precision, and the GPU's peak memory
    is recorded next to the RSS. Inputs are the same smooth random
    image (bilinearly upsampled coarse noise, seeded) for every column.
    ``--warmup`` calls (3) are not timed; then the call is timed
    (``time.perf_counter``) at least 3 times and up to ``--repeats`` (10)
    times, stopping early once ``--budget`` seconds (20) have gone by.
    Reported: the median and the interquartile range in milliseconds; all
    times are in the JSON. ``predict_on_batch`` follows ``predict`` in the
    same process, after one more untimed call.

    Memory: ``peak RSS`` is the worker's high-water resident size
    (``VmHWM``); ``+run`` is that minus the resident size after imports
    and model build, before the first call (the memory the calls
    themselves add). Start-up: seconds
    to import, to build the model and for the warm-up calls (tracing and
    compilation) are recorded too.

    FLOPs: the transformers model of the same config, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device
    with eager attention (a multiply-add is 2 FLOP). Eager attention
    matters: the counter has no formula for PyTorch's CPU flash-attention
    kernel and counts the SDPA path without its attention matmuls (B0 at
    512x512: 14.7 instead of 16.8 GFLOP). A case's work is the
    forward FLOPs per image times the batch, times 3 for a training step
    (backward ~ 2x forward). ``GFLOP/s`` is that work over the median
    time; ``% peak`` divides it by the machine's float32 matmul rate,
    measured here with ``tf.matmul`` of two 2048x2048 matrices in a
    ``tf.function`` (median of repeats; bfloat16 ``tf.matmul`` and float32
    ``torch.mm`` are recorded too). ``time vs transformers`` is the
    column's median over the transformers median, the convention of the
    project's targets: x0.50 takes half transformers' time (twice as
    fast), x2.00 twice its time.

    The matmul rates and FLOP counts come from one more worker, first.

Read the figures with the load in mind: the JSON and the notes record the
load average before and after. On a machine shared with other work,
PyTorch's OpenMP threads spin while waiting for a busy core and can make
the transformers column several times slower; ``--threads 1`` (or a quiet
machine) gives figures that compare.

Outputs (under ``--out``): ``benchmark.txt`` (the table printed at the
end), ``benchmark.md`` (the same for a README), ``benchmark.json`` (every
raw figure, the machine, library versions, the command line),
``benchmark.png`` (median latency per case and column) and ``logs/`` (one
log per worker). A worker that fails or times out shows ``error`` /
``timeout`` / ``not installed`` in its cell and its message in the JSON
and the notes; the run goes on.

This file imports only the standard library at the top: workers import
the libraries their column needs.
"""

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import traceback

NUM_CLASSES = 150
BACKENDS = ("tensorflow", "jax", "torch")
DEVICES = ("cpu", "gpu")
# Matmul peak keys, the first measured one is the "% peak" reference.
PEAK_KEYS = {
    "cpu": ("tensorflow_float32", "tensorflow_bfloat16", "torch_float32"),
    "gpu": (
        "torch_cuda_float32",
        "torch_cuda_bfloat16",
        "jax_gpu_float32",
        "jax_gpu_bfloat16",
    ),
}
LEARNING_RATE = 6e-5
DROP_PATH_RATE = 0.1
SEED = 0

DEFAULT_CASES = (
    "b0-512x512-b1",
    "b0-512x512-b8",
    "b2-512x512-b1",
    "b2-512x512-b8",
    "b0-1024x2048-b1",
)
TRAIN_SIZE, TRAIN_BATCH = 512, 2
QUICK_CASES = ("tiny-64x64-b1", "train-tiny-64x64-b1")
DEFAULT_IMPLS = (
    "ours-tensorflow",
    "ours-jax",
    "ours-torch",
    "transformers",
    "keras-hub",
    "ours-bf16",
)

# ``--quick``: the tiny config of the test suite (tests/conftest.py).
TINY = {
    "depths": (1, 1, 1, 1),
    "hidden_sizes": (8, 16, 24, 32),
    "num_heads": (1, 2, 3, 4),
    "sr_ratios": (8, 4, 2, 1),
    "patch_sizes": (7, 3, 3, 3),
    "strides": (4, 2, 2, 2),
    "mlp_ratios": (4, 4, 4, 4),
    "decoder_hidden_size": 16,
}

# Libraries whose absence makes a column "not installed" (not "error").
PEER_PACKAGES = {"tensorflow", "jax", "torch", "transformers", "keras_hub"}

CASE_PATTERN = re.compile(
    r"^(?P<train>train-)?(?P<variant>b[0-5]|tiny)-(?P<height>\d+)x"
    r"(?P<width>\d+)-b(?P<batch>\d+)$"
)


# ---------------------------------------------------------------------------
# Cases and columns


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row: a model variant, an input size and a mode."""

    name: str
    variant: str
    height: int
    width: int
    batch: int
    train: bool

    @property
    def shape_key(self):
        """Key of the FLOP count (per image, forward): variant and size."""
        return f"{self.variant}-{self.height}x{self.width}"


def parse_case(name):
    """``[train-]<b0..b5|tiny>-<H>x<W>-b<batch>`` -> ``Case``."""
    match = CASE_PATTERN.match(name.strip())
    if not match:
        raise ValueError(
            f"--cases: {name!r} is not a case name; expected "
            "'[train-]<b0..b5|tiny>-<H>x<W>-b<batch>', e.g. 'b0-512x512-b1' "
            "or 'train-b0-512x512-b2'."
        )
    height, width, batch = (int(match[k]) for k in ("height", "width", "batch"))
    if min(height, width, batch) <= 0:
        raise ValueError(f"--cases: sizes must be positive in {name!r}.")
    return Case(
        name=name.strip(),
        variant=match["variant"],
        height=height,
        width=width,
        batch=batch,
        train=bool(match["train"]),
    )


def default_case_names(train_variants=("b0",), quick=False):
    """Case names run when ``--cases`` is not given."""
    if quick:
        return list(QUICK_CASES)
    train = [
        f"train-{v}-{TRAIN_SIZE}x{TRAIN_SIZE}-b{TRAIN_BATCH}"
        for v in train_variants
    ]
    return list(DEFAULT_CASES) + train


@dataclasses.dataclass
class Column:
    """One implementation (table column).

    ``backend`` None means "choose": keras-hub takes its fastest backend
    on the first case, bfloat16 the fastest float32 ``ours`` backend.
    """

    spec: str
    kind: str  # "ours", "transformers" or "keras-hub"
    backend: str | None
    bf16: bool = False

    @property
    def name(self):
        backend = self.backend or "auto"
        if self.kind == "transformers":
            return "transformers"
        if self.kind == "keras-hub":
            return f"keras-hub-{backend}"
        return f"ours-{backend}-bf16" if self.bf16 else f"ours-{backend}"


def parse_column(spec, hub_backend=None, bf16_backend=None):
    """An ``--impls`` entry -> ``Column``."""
    spec = spec.strip()
    if spec == "transformers":
        return Column(spec, "transformers", "torch")
    if spec == "keras-hub":
        return Column(spec, "keras-hub", hub_backend)
    if spec == "ours-bf16":
        return Column(spec, "ours", bf16_backend, bf16=True)
    for backend in BACKENDS:
        if spec == f"ours-{backend}":
            return Column(spec, "ours", backend)
        if spec == f"ours-{backend}-bf16":
            return Column(spec, "ours", backend, bf16=True)
        if spec == f"keras-hub-{backend}":
            return Column(spec, "keras-hub", backend)
    names = (
        [f"ours-{b}" for b in BACKENDS]
        + ["transformers", "keras-hub"]
        + [f"keras-hub-{b}" for b in BACKENDS]
        + ["ours-bf16"]
        + [f"ours-{b}-bf16" for b in BACKENDS]
    )
    raise ValueError(f"--impls: unknown {spec!r}; expected one of {names}.")


def model_config(variant):
    """Every architecture field of a variant (``tiny``: the quick config)."""
    if variant == "tiny":
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()
        }
    # configs.py by path: importing the package would load Keras (and its
    # default backend) into the parent process, which runs no model.
    import importlib.util

    path = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "configs.py"
    )
    spec = importlib.util.spec_from_file_location("_segformer_configs", path)
    configs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(configs)
    variant_config = configs.variant_config
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in variant_config(variant).items()
    }


# ---------------------------------------------------------------------------
# Worker side: runs in a fresh process, imports what its column needs.


def smooth_images(batch, height, width, seed=SEED, cell=32):
    """Low-frequency random images, float32 NHWC, about unit scale.

    Coarse Gaussian noise on a grid of one point per ``cell`` pixels,
    bilinearly upsampled: like a natural image, neighbouring pixels agree,
    so argmax maps of two precisions can be compared meaningfully.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    grid_h = max(2, -(-height // cell) + 1)
    grid_w = max(2, -(-width // cell) + 1)
    coarse = rng.standard_normal((batch, grid_h, grid_w, 3))

    def lerp(a, axis, size, grid):
        pos = np.linspace(0.0, grid - 1.0, size)
        lo = np.minimum(np.floor(pos).astype(int), grid - 2)
        frac = pos - lo
        shape = [1] * a.ndim
        shape[axis] = size
        frac = frac.reshape(shape)
        return np.take(a, lo, axis) * (1 - frac) + np.take(a, lo + 1, axis) * (
            frac
        )

    images = lerp(lerp(coarse, 1, height, grid_h), 2, width, grid_w)
    return images.astype(np.float32)


def random_labels(batch, height, width, num_classes, seed=SEED):
    """Integer labels ``(B, H, W)`` in ``[0, num_classes)``, int32."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, num_classes, (batch, height, width), np.int32)


def _rss_mb():
    """Current resident set size of this process, in MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mb()


def _peak_rss_mb():
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


def time_calls(fn, *, warmup, repeats, min_repeats, budget_s):
    """Time ``fn()``: ``warmup`` untimed calls, then between
    ``min_repeats`` and ``repeats`` timed calls, stopping once
    ``budget_s`` seconds of timed calls have gone by."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return {**summarize(times, warmup), "warmup_s": warmup_s}


def _seed(seed, backend):
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


def _accelerator(backend):
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


def _device_peak_mb(backend):
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


def _check_device(spec, backend):
    """The worker's accelerator; raises on ``--device gpu`` without one."""
    name = _accelerator(backend)
    if spec.get("device") == "gpu" and name is None:
        raise RuntimeError(
            f"--device gpu: {backend} sees no GPU in this worker; refusing "
            "to measure the CPU instead."
        )
    return name


def _timing(spec):
    return {
        "repeats": spec["repeats"],
        "min_repeats": min(3, spec["repeats"]),
        "budget_s": spec["budget_s"],
    }


def _set_threads(threads):
    """Apply ``--threads`` to the libraries already imported."""
    if not threads:
        return
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _thread_settings():
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
        tf = sys.modules["tensorflow"]
        # 0 means TensorFlow's default: one thread per core.
        info["tf_intra_op"] = (
            tf.config.threading.get_intra_op_parallelism_threads()
        )
        info["tf_inter_op"] = (
            tf.config.threading.get_inter_op_parallelism_threads()
        )
    return info


def hf_segformer_config(config, num_classes, **kwargs):
    """transformers SegformerConfig of an architecture dict (model_config)."""
    from transformers import SegformerConfig

    return SegformerConfig(
        num_labels=num_classes,
        num_encoder_blocks=len(config["depths"]),
        depths=config["depths"],
        hidden_sizes=config["hidden_sizes"],
        num_attention_heads=config["num_heads"],
        sr_ratios=config["sr_ratios"],
        patch_sizes=config["patch_sizes"],
        strides=config["strides"],
        mlp_ratios=config["mlp_ratios"],
        decoder_hidden_size=config["decoder_hidden_size"],
        drop_path_rate=DROP_PATH_RATE,
        **kwargs,
    )


def _build_ours(config, case, num_classes, dtype=None):
    import keras_segformer

    fields = {k: v for k, v in config.items() if k != "decoder_hidden_size"}
    if dtype is not None:
        fields["dtype"] = dtype
    return keras_segformer.build_segformer(
        num_classes,
        decoder_hidden_size=config["decoder_hidden_size"],
        drop_path_rate=DROP_PATH_RATE,
        **fields,
    )


def _build_hub(config, case, num_classes, dtype=None):
    import keras_hub

    if dtype is not None:
        raise ValueError("The keras-hub column runs in float32 only.")
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=config["depths"],
        num_layers=len(config["depths"]),
        layerwise_num_heads=config["num_heads"],
        layerwise_sr_ratios=config["sr_ratios"],
        max_drop_path_rate=DROP_PATH_RATE,
        layerwise_patch_sizes=config["patch_sizes"],
        layerwise_strides=config["strides"],
        hidden_dims=config["hidden_sizes"],
        image_shape=(case.height, case.width, 3),
    )
    backbone = keras_hub.models.SegFormerBackbone(
        image_encoder=encoder,
        projection_filters=config["decoder_hidden_size"],
    )
    return keras_hub.models.SegFormerImageSegmenter(
        backbone=backbone, num_classes=num_classes
    )


def _keras_job(spec, case, images, labels):
    start = time.perf_counter()
    import keras
    import numpy as np

    # The column's library is imported here, so that import_s has it.
    if spec["kind"] == "ours":
        import keras_segformer  # noqa: F401
    else:
        import keras_hub  # noqa: F401

    backend = keras.backend.backend()
    if backend != spec["backend"]:
        raise RuntimeError(
            f"Worker runs Keras on {backend!r}, expected {spec['backend']!r}."
        )
    _set_threads(spec["threads"])
    build = _build_ours if spec["kind"] == "ours" else _build_hub
    config, num_classes = spec["config"], spec["num_classes"]
    out = {
        "keras_version": keras.__version__,
        "import_s": time.perf_counter() - start,
    }

    out["accelerator"] = _check_device(spec, backend)
    _seed(spec["seed"], backend)
    reference = None
    if spec["bf16"]:
        # Same weights as a float32 model: build one, keep its argmax.
        model = build(config, case, num_classes)
        reference = np.asarray(model.predict(images, verbose=0))
        weights = model.get_weights()
        del model
        keras.backend.clear_session()
        gc.collect()
        start = time.perf_counter()
        model = build(config, case, num_classes, dtype="mixed_bfloat16")
        model.set_weights(weights)
        del weights
    else:
        start = time.perf_counter()
        model = build(config, case, num_classes)
    out["build_s"] = time.perf_counter() - start
    out["parameters"] = int(model.count_params())
    out["dtype"] = "mixed_bfloat16" if spec["bf16"] else "float32"

    timing = _timing(spec)
    figures = {}
    if case.train:
        if spec["kind"] == "ours":
            from keras_segformer.training import compile_for_training

            compile_for_training(model, total_steps=1000)
            targets = labels
        else:
            model.compile(
                optimizer=keras.optimizers.AdamW(LEARNING_RATE),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
            targets = labels[..., None]
        out["rss_baseline_mb"] = _rss_mb()
        figures["train_on_batch"] = time_calls(
            lambda: model.train_on_batch(images, targets),
            warmup=spec["warmup"],
            **timing,
        )
    else:
        out["rss_baseline_mb"] = _rss_mb()
        figures["predict"] = time_calls(
            lambda: model.predict(images, verbose=0),
            warmup=spec["warmup"],
            **timing,
        )
        # One untimed call: it may trace or compile a function of its own
        # (on JAX it does).
        figures["predict_on_batch"] = time_calls(
            lambda: model.predict_on_batch(images), warmup=1, **timing
        )
        logits = np.asarray(model.predict(images, verbose=0))
        out["output_shape"] = list(logits.shape)
        if reference is not None:
            same = logits.argmax(-1) == reference.argmax(-1)
            out["argmax_agreement"] = float(same.mean())
            out["max_abs_logit_diff"] = float(
                np.abs(logits.astype(np.float64) - reference).max()
            )
            out["reference_logit_std"] = float(reference.std())
    out["jit_compile"] = str(getattr(model, "jit_compile", None))
    if out["accelerator"]:
        out["device_peak_mb"] = _device_peak_mb(backend)
    out["figures"] = figures
    return out


def _transformers_job(spec, case, images, labels):
    start = time.perf_counter()
    import numpy as np
    import torch
    import transformers
    from transformers import SegformerForSemanticSegmentation

    import_s = time.perf_counter() - start
    _set_threads(spec["threads"])
    accelerator = _check_device(spec, "torch")
    device = torch.device("cuda" if accelerator else "cpu")
    torch.manual_seed(spec["seed"])
    config = hf_segformer_config(spec["config"], spec["num_classes"])
    start = time.perf_counter()
    model = SegformerForSemanticSegmentation(config).to(device)
    out = {
        "accelerator": accelerator,
        "import_s": import_s,
        "build_s": time.perf_counter() - start,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
    }
    pixel_values = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )

    def synchronize():
        if accelerator:
            torch.cuda.synchronize()

    timing = _timing(spec)
    figures = {}
    if case.train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        targets = torch.from_numpy(labels.astype(np.int64))

        def step():
            optimizer.zero_grad()
            loss = model(
                pixel_values=pixel_values.to(device),
                labels=targets.to(device),
            ).loss
            loss.backward()
            optimizer.step()
            synchronize()

        out["rss_baseline_mb"] = _rss_mb()
        figures["step"] = time_calls(step, warmup=spec["warmup"], **timing)
    else:
        model.eval()

        def forward():
            # On a GPU: host in, host out, like Keras' predict.
            with torch.inference_mode():
                logits = model(pixel_values=pixel_values.to(device)).logits
                return logits.cpu()

        out["rss_baseline_mb"] = _rss_mb()
        figures["forward"] = time_calls(
            forward, warmup=spec["warmup"], **timing
        )
        out["output_shape"] = list(forward().shape)
    if accelerator:
        out["device_peak_mb"] = _device_peak_mb("torch")
    out["figures"] = figures
    return out


def _model_job(spec):
    case = Case(**spec["case"])
    images = smooth_images(case.batch, case.height, case.width, spec["seed"])
    labels = random_labels(
        case.batch, case.height, case.width, spec["num_classes"], spec["seed"]
    )
    if spec["kind"] == "transformers":
        out = _transformers_job(spec, case, images, labels)
    else:
        out = _keras_job(spec, case, images, labels)
    out["rss_peak_mb"] = _peak_rss_mb()
    out["threads"] = _thread_settings()
    return out


def _flops_job(spec):
    """Forward FLOPs per image of the transformers model, per shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import SegformerForSemanticSegmentation

    counts = {}
    for shape in spec["shapes"]:
        # Eager attention: the counter skips the CPU flash-SDPA kernel.
        config = hf_segformer_config(
            shape["config"], spec["num_classes"], attn_implementation="eager"
        )
        with torch.device("meta"):
            model = SegformerForSemanticSegmentation(config).eval()
            x = torch.zeros(1, 3, shape["height"], shape["width"])
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(pixel_values=x)
        counts[shape["key"]] = {
            "forward_flop_per_image": int(counter.get_total_flops()),
            "by_op": {
                str(op): int(n)
                for op, n in counter.get_flop_counts()["Global"].items()
            },
        }
    return {"flops": counts, "convention": spec["convention"]}


def _matmul_rate(run, size, spec):
    flop = 2 * size**3
    stats = time_calls(run, warmup=2, **_timing(spec))
    stats["gflops"] = flop / (stats["median_ms"] / 1e3) / 1e9
    stats["size"] = size
    return stats


def _gpu_peak_job(spec):
    """Matmul GFLOP/s on the GPU: torch and JAX, float32 and bfloat16,
    each library at its default precision (torch float32: no TF32)."""
    size = spec["matmul_size"]
    out = {}
    try:
        import torch

        out["accelerator"] = torch.cuda.get_device_name(0)
        for dtype in ("float32", "bfloat16"):
            generator = torch.Generator("cuda").manual_seed(1)
            kwargs = dict(generator=generator, device="cuda")
            a = torch.randn(size, size, **kwargs).to(getattr(torch, dtype))
            b = torch.randn(size, size, **kwargs).to(getattr(torch, dtype))

            def run(a=a, b=b):
                torch.mm(a, b)
                torch.cuda.synchronize()

            out[f"torch_cuda_{dtype}"] = _matmul_rate(run, size, spec)
    except Exception as e:
        out["torch_cuda_float32"] = _failure(e)
    try:
        import jax
        import jax.numpy as jnp

        gpu = jax.devices("gpu")[0]  # raises without a GPU backend
        product = jax.jit(jnp.matmul)
        for dtype in ("float32", "bfloat16"):
            a, b = (
                jax.device_put(
                    jax.random.normal(jax.random.key(k), (size, size), dtype),
                    gpu,
                )
                for k in (1, 2)
            )
            out[f"jax_gpu_{dtype}"] = _matmul_rate(
                lambda a=a, b=b: product(a, b).block_until_ready(), size, spec
            )
    except Exception as e:
        out["jax_gpu_float32"] = _failure(e)
    return out


def _peak_job(spec):
    """Matmul GFLOP/s: TensorFlow float32 and bfloat16, torch float32."""
    if spec.get("device") == "gpu":
        return _gpu_peak_job(spec)
    size = spec["matmul_size"]
    out = {}
    _set_threads(spec["threads"])
    try:
        import tensorflow as tf

        for dtype in ("float32", "bfloat16"):
            try:
                a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
                b = tf.cast(tf.random.normal((size, size), seed=2), dtype)
                # The scalar sum makes .numpy() wait for the product.
                product = tf.function(
                    lambda a, b: tf.reduce_sum(
                        tf.cast(tf.matmul(a, b), tf.float32)
                    )
                )
                out[f"tensorflow_{dtype}"] = _matmul_rate(
                    lambda a=a, b=b, f=product: f(a, b).numpy(), size, spec
                )
            except Exception as e:
                out[f"tensorflow_{dtype}"] = _failure(e)
    except ModuleNotFoundError as e:
        out["tensorflow_float32"] = out["tensorflow_bfloat16"] = _failure(e)
    try:
        import torch

        _set_threads(spec["threads"])
        generator = torch.Generator().manual_seed(1)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        out["torch_float32"] = _matmul_rate(lambda: torch.mm(a, b), size, spec)
    except Exception as e:
        out["torch_float32"] = _failure(e)
    out["threads"] = _thread_settings()
    return out


def _failure(error):
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


def _reference_job(spec):
    """What every column is measured against: the machine's matmul rates
    and the model FLOPs (one process, so the libraries load once)."""
    out = {}
    for key, job in (("peak", _peak_job), ("flops", _flops_job)):
        try:
            out[key] = {**job(spec), "status": "ok"}
        except Exception as e:
            out[key] = _failure(e)
    return out


def worker_main(spec):
    """Run one job and write its result (JSON) to ``spec["result"]``."""
    jobs = {"model": _model_job, "reference": _reference_job}
    try:
        out = jobs[spec["job"]](spec)
        out["status"] = "ok"
    except Exception as e:
        out = _failure(e)
    with open(spec["result"], "w") as f:
        json.dump(out, f, indent=1)
    return 0


# ---------------------------------------------------------------------------
# Parent side: plan, run workers, derive figures, write the report.

_WORKER_BOOT = (
    "import runpy, sys; path = sys.argv[1]; "
    "sys.argv = [path, '--worker', sys.argv[2]]; "
    "runpy.run_path(path, run_name='__main__')"
)


class WorkerRunner:
    """Runs jobs in fresh processes, one at a time, and reports progress."""

    def __init__(self, out_dir, *, total, timeout_s, threads, device="cpu"):
        self.device = device
        self.log_dir = os.path.join(out_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.total = total
        self.done = 0
        self.timeout_s = timeout_s
        self.threads = threads

    def _env(self, backend):
        env = dict(os.environ)
        env["KERAS_BACKEND"] = backend
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # CPU benchmark, every column
            env["JAX_PLATFORMS"] = "cpu"
        else:
            if env.get("JAX_PLATFORMS") == "cpu":
                del env["JAX_PLATFORMS"]
            # Allocate on demand, so that peak memory means something.
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, env.get("PYTHONPATH")) if p
        )
        if self.threads:
            for key in (
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS",
            ):
                env[key] = str(self.threads)
        return env

    def run(self, spec, label, backend="torch"):
        """Run ``spec`` in a worker; return its result dict (never raises
        for a failing worker)."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        spec = {
            **spec,
            "device": self.device,
            "threads": self.threads,
            "result": os.path.abspath(
                os.path.join(self.log_dir, stem + ".json")
            ),
        }
        if os.path.exists(spec["result"]):
            os.remove(spec["result"])
        log_path = os.path.join(self.log_dir, stem + ".log")
        command = [
            sys.executable,
            "-c",
            _WORKER_BOOT,
            os.path.abspath(__file__),
            json.dumps(spec),
        ]
        start = time.monotonic()
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(
                    command,
                    env=self._env(backend),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=self.timeout_s,
                    check=False,
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        if code is None:
            result = {
                "status": "timeout",
                "error": f"no result within --timeout {self.timeout_s} s",
            }
        elif os.path.exists(spec["result"]):
            with open(spec["result"]) as f:
                result = json.load(f)
        else:
            result = {
                "status": "error",
                "error": f"worker exited with code {code} and no result; "
                f"log tail: {_tail(log_path)}",
            }
        result["wall_s"] = round(time.monotonic() - start, 1)
        result["log"] = os.path.relpath(log_path, os.path.dirname(self.log_dir))
        self.done += 1
        return result

    def progress(self, text):
        print(f"[{self.done:>2}/{self.total}] {text}", flush=True)


def short_error(text, limit=300):
    """An error message on one line: no ANSI colours, no line breaks."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def primary_figure(result):
    """Name and stats of a result's headline figure (the default call)."""
    figures = result.get("figures") or {}
    for name in ("predict", "forward", "train_on_batch", "step"):
        if name in figures:
            return name, figures[name]
    return None, None


def _describe(result):
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


def machine_info():
    """CPU, cores, memory, load and library versions (no heavy imports)."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
        models = re.findall(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        info["cpu_model"] = (
            models[0].strip() if models else platform.processor()
        )
        flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
        wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
        present = set(flags[1].split()) if flags else set()
        info["cpu_flags"] = [f for f in wanted if f in present]
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            total = re.search(r"MemTotal:\s*(\d+)", f.read())
        info["memory_gb"] = round(int(total[1]) / 2**20, 1)
    except (OSError, TypeError):
        pass
    versions = {}
    for package in (
        "keras-segformer",
        "keras",
        "tensorflow",
        "jax",
        "jaxlib",
        "torch",
        "transformers",
        "keras-hub",
        "numpy",
        "matplotlib",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    info["versions"] = versions
    info["thread_env"] = {
        k: os.environ.get(k)
        for k in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "TF_NUM_INTRAOP_THREADS",
        )
    }
    return info


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Benchmark:
    """Plans and runs the (column, case) workers and keeps the results."""

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.cases = [
            parse_case(n)
            for n in _split(args.cases)
            or default_case_names(_split(args.train_variants), self.quick)
        ]
        if not self.cases:
            raise ValueError("--cases: no case given.")
        names = [c.name for c in self.cases]
        if len(set(names)) != len(names):
            raise ValueError(f"--cases: a case is listed twice: {names}.")
        for option in ("hub_backend", "bf16_backend"):
            value = getattr(args, option)
            if value is not None and value not in BACKENDS:
                raise ValueError(
                    f"--{option.replace('_', '-')}: {value!r} is not one of "
                    f"{list(BACKENDS)}."
                )
        self.columns = [
            parse_column(s, args.hub_backend, args.bf16_backend)
            for s in _split(args.impls) or DEFAULT_IMPLS
        ]
        if not self.columns:
            raise ValueError("--impls: no implementation given.")
        specs = [c.spec for c in self.columns]
        if len(set(specs)) != len(specs):
            raise ValueError(f"--impls: an entry is listed twice: {specs}.")
        for option, least in (("warmup", 0), ("repeats", 1)):
            value = getattr(args, option)
            if value is not None and value < least:
                raise ValueError(f"--{option} must be >= {least}: {value}.")
        self.warmup = (
            args.warmup if args.warmup is not None else (1 if self.quick else 3)
        )
        self.repeats = (
            args.repeats
            if args.repeats is not None
            else (2 if self.quick else 10)
        )
        self.budget_s = args.budget
        self.device = getattr(args, "device", None) or "cpu"
        if self.device not in DEVICES:
            raise ValueError(
                f"--device: {self.device!r} is not one of {list(DEVICES)}."
            )
        self.configs = {c.variant: model_config(c.variant) for c in self.cases}
        self.results = []  # one dict per worker run
        self.choices = {}  # column spec -> how its backend was chosen

    # -- planning

    def _count_workers(self):
        total = 1  # the reference job: matmul peak and FLOP count
        for i, case in enumerate(self.cases):
            for col in self.columns:
                if col.bf16 and case.train:
                    continue
                auto_hub = col.kind == "keras-hub" and col.backend is None
                total += len(BACKENDS) if auto_hub and i == 0 else 1
        return total

    def _model_spec(self, column, backend, case):
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

    def _run_model(self, column, backend, case, candidate=False):
        name = dataclasses.replace(column, backend=backend).name
        result = self.runner.run(
            self._model_spec(column, backend, case),
            f"{name}__{case.name}",
            backend=backend,
        )
        result.update(
            column=column.spec,
            impl=name,
            backend=backend,
            case=case.name,
            candidate=candidate,
        )
        self.results.append(result)
        self.runner.progress(f"{name:<22} {case.name:<22} {_describe(result)}")
        # What has run so far, so that a run stopped early (a time limit,
        # Ctrl-C) still leaves its figures.
        self._report(final=False)
        return result

    def _report(self, final):
        """Close the figures at this point and write the outputs."""
        self.machine["load_average_end"] = _load()
        self.finished = datetime.datetime.now().astimezone()
        self._derive()
        return self.write(final=final)

    def _fastest_ours(self, case):
        timed = []
        for r in self.results:
            if (
                r["case"] == case.name
                and r["status"] == "ok"
                and r["impl"] in {f"ours-{b}" for b in BACKENDS}
            ):
                timed.append((primary_figure(r)[1]["median_ms"], r["backend"]))
        return min(timed) if timed else None

    def _choose_bf16(self, column, case):
        fastest = self._fastest_ours(case)
        if fastest is not None:
            backend = fastest[1]
            how = (
                f"fastest float32 'ours' column on {case.name} "
                f"({fastest[0]:.1f} ms)"
            )
        else:
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            if backend not in BACKENDS:
                backend = "tensorflow"
            how = "no float32 'ours' result to compare: KERAS_BACKEND default"
        self.choices[column.spec] = {"backend": backend, "how": how}
        column.backend = backend

    def _choose_hub(self, column, case):
        """Measure keras-hub on every backend, keep the fastest."""
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

    def run(self):
        args = self.args
        os.makedirs(args.out, exist_ok=True)
        self.started = datetime.datetime.now().astimezone()
        self.machine = machine_info()
        self.machine["load_average_start"] = _load()
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
            f"{self.machine.get('usable_cores')} cores; output: {args.out}",
            flush=True,
        )
        shapes = {}
        for case in self.cases:
            shapes[case.shape_key] = {
                "key": case.shape_key,
                "config": self.configs[case.variant],
                "height": case.height,
                "width": case.width,
            }
        reference = self.runner.run(
            {
                "job": "reference",
                "matmul_size": args.matmul_size
                or (
                    256
                    if self.quick
                    else 2048
                    if self.device == "cpu"
                    else 8192
                ),
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
        self.runner.progress(f"{'matmul peak':<45} {_describe_peak(self.peak)}")
        self.runner.progress(
            f"{'FLOP count':<45} {_describe_flops(self.flops)}"
        )

        # bfloat16 columns last: they may pick the fastest float32 backend.
        order = [c for c in self.columns if not c.bf16] + [
            c for c in self.columns if c.bf16
        ]
        for case in self.cases:
            for column in order:
                if column.bf16 and case.train:
                    continue
                if column.backend is None and column.kind == "keras-hub":
                    self._choose_hub(column, case)
                    continue
                if column.backend is None:
                    self._choose_bf16(column, case)
                self._run_model(column, column.backend, case)
        return self._report(final=True)

    # -- figures

    def _work_gflop(self, case):
        """GFLOP of one timed call (see FLOP_CONVENTION), or None."""
        counts = (self.flops.get("flops") or {}).get(case.shape_key)
        if not counts:
            return None
        gflop = counts["forward_flop_per_image"] / 1e9 * case.batch
        return 3 * gflop if case.train else gflop

    def _peak_reference(self):
        for key in PEAK_KEYS[self.device]:
            if "bfloat16" in key:
                continue
            entry = self.peak.get(key) or {}
            if "gflops" in entry:
                return key, entry["gflops"]
        return None, None

    def _derive(self):
        _, peak = self._peak_reference()
        baseline = {
            r["case"]: primary_figure(r)[1]["median_ms"]
            for r in self.results
            if r["impl"] == "transformers" and r["status"] == "ok"
        }
        cases = {c.name: c for c in self.cases}
        for r in self.results:
            if r["status"] != "ok":
                continue
            _, stats = primary_figure(r)
            median = stats["median_ms"]
            gflop = self._work_gflop(cases[r["case"]])
            if gflop is not None:
                r["gflop"] = gflop
                r["gflops_per_s"] = gflop / (median / 1e3)
                if peak:
                    r["share_of_peak"] = r["gflops_per_s"] / peak
            if r["case"] in baseline:
                r["time_vs_transformers"] = median / baseline[r["case"]]
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

    # -- output

    def write(self, final=True):
        args = self.args
        text = render_text(self)
        markdown = render_markdown(self)
        paths = {
            "txt": os.path.join(args.out, "benchmark.txt"),
            "md": os.path.join(args.out, "benchmark.md"),
            "json": os.path.join(args.out, "benchmark.json"),
            "png": os.path.join(args.out, "benchmark.png"),
        }
        with open(paths["txt"], "w") as f:
            f.write(text)
        with open(paths["md"], "w") as f:
            f.write(markdown)
        chart = draw_chart(paths["png"], *_chart_data(self)) if final else None
        report = {
            "complete": final,
            "command": getattr(args, "command_line", None)
            or [sys.executable, *sys.argv],
            "date": self.started.isoformat(timespec="seconds"),
            "seconds": round((self.finished - self.started).total_seconds(), 1),
            "machine": self.machine,
            "options": {
                "cases": [c.name for c in self.cases],
                "impls": [c.spec for c in self.columns],
                "columns": [c.name for c in self.columns],
                "warmup": self.warmup,
                "repeats": self.repeats,
                "min_repeats": min(3, self.repeats),
                "budget_s": self.budget_s,
                "threads": args.threads,
                "quick": self.quick,
                "seed": SEED,
                "num_classes": NUM_CLASSES,
                "timeout_s": args.timeout,
                "device": self.device,
            },
            "configs": self.configs,
            "cases": [
                {**dataclasses.asdict(c), "gflop": self._work_gflop(c)}
                for c in self.cases
            ],
            "flop_convention": FLOP_CONVENTION,
            "flops": self.flops,
            "peak": self.peak,
            "peak_reference": dict(
                zip(("name", "gflops"), self._peak_reference())
            ),
            "backend_choices": self.choices,
            "results": self.results,
            "chart": chart,
            "table": text,
        }
        with open(paths["json"], "w") as f:
            json.dump(report, f, indent=1)
        if not final:
            return report
        print()
        print(text, flush=True)
        print(f"wrote {', '.join(paths.values())}")
        return report


FLOP_CONVENTION = (
    "torch FlopCounterMode on the transformers model (meta device, eager "
    "attention; multiply-add = 2 FLOP); a case's work = forward FLOPs per "
    "image x batch, x3 for a training step (forward + backward ~ 2x "
    "forward)"
)


def _describe_peak(peak):
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


def _describe_flops(flops):
    if flops.get("status") != "ok":
        return f"{flops.get('status')}: {short_error(flops.get('error', ''))}"
    return ", ".join(
        f"{k} {v['forward_flop_per_image'] / 1e9:.2f} GFLOP/image"
        for k, v in flops["flops"].items()
    )


# ---------------------------------------------------------------------------
# Rendering


def _number(value):
    """One decimal from 1 up, three significant digits below."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def _status_text(result):
    if result is None:
        return "-"
    if result.get("status") != "ok":
        return str(result.get("status", "error"))
    return None


def _cell_lines(bench, column, case):
    """Text of one table cell, one string per metric row."""
    r = bench.cell(column, case)
    status = _status_text(r)
    if status is not None:
        return [status] + [""] * (len(_metric_rows(bench)) - 1)
    _, stats = primary_figure(r)
    median = (
        f"{stats['median_ms']:.1f} [{stats['q1_ms']:.1f}-{stats['q3_ms']:.1f}]"
    )
    ratio = (
        f"x{r['time_vs_transformers']:.2f}"
        if "time_vs_transformers" in r
        else "-"
    )
    if "gflops_per_s" in r:
        share = r.get("share_of_peak")
        rate = _number(r["gflops_per_s"])
        rate += f" ({100 * share:.1f}%)" if share is not None else ""
    else:
        rate = "-"
    memory = f"{r['rss_peak_mb']:.0f} (+{r['rss_run_mb']:.0f})"
    startup = f"{r['build_s']:.1f} / {stats['warmup_s']:.1f}"
    second = (r.get("figures") or {}).get("predict_on_batch")
    second = f"{second['median_ms']:.1f}" if second else "-"
    lines = [median, ratio, rate, memory, startup, second]
    if bench.device == "gpu":
        device_mb = r.get("device_peak_mb")
        lines.append("-" if device_mb is None else f"{device_mb:.0f}")
    return lines


METRIC_ROWS = (
    "median ms [IQR]",
    "time vs transformers",
    "GFLOP/s (% peak)",
    "peak RSS MB (+run)",
    "build / warm-up s",
    "predict_on_batch ms",
)


def _metric_rows(bench):
    return METRIC_ROWS + (("GPU peak MB",) if bench.device == "gpu" else ())


def _format_grid(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:])
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _notes(bench, markdown=False):
    """Legend and context lines shared by the text and Markdown tables."""
    peak_name, peak = bench._peak_reference()
    notes = []
    warm = bench.warmup
    least = min(3, bench.repeats)
    repeats = (
        str(least) if least == bench.repeats else f"{least}-{bench.repeats}"
    )
    notes.append(
        f"median of {repeats} timed calls (fewer once {bench.budget_s:g} s "
        f"have gone by) after {warm} untimed warm-up call(s); [IQR] = "
        "interquartile range. Inference: Keras "
        "model.predict(x, verbose=0), transformers model(pixel_values=x) "
        "under torch.inference_mode(). Training: one optimizer step "
        "(train_on_batch; transformers backward + AdamW.step)."
    )
    notes.append(
        "time vs transformers = column median / transformers median "
        "(x0.50 = half the time, twice as fast)."
    )
    notes.append(f"GFLOP: {FLOP_CONVENTION}.")
    peak_parts = []
    for key in PEAK_KEYS[bench.device]:
        entry = bench.peak.get(key) or {}
        if "gflops" in entry:
            peak_parts.append(
                f"{key} {entry['gflops']:.1f} GFLOP/s "
                f"({entry['size']}x{entry['size']} matmul)"
            )
        else:
            peak_parts.append(f"{key} {entry.get('status', 'error')}")
    reference = (
        f"% peak = GFLOP/s / {peak_name} {peak:.1f} GFLOP/s"
        if peak
        else "% peak: no matmul peak measured"
    )
    notes.append(f"{reference}. Matmul: {'; '.join(peak_parts)}.")
    notes.append(
        "peak RSS = the worker's high-water resident size (VmHWM); +run = "
        "peak minus the RSS after imports and model build, before the "
        "first call. build / warm-up = seconds to build the model "
        "(random init) / for the untimed first calls (tracing, compilation)."
    )
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
        detail = ""
        if "median_ms" in choice:
            detail = (
                " ("
                + ", ".join(
                    f"{b} {ms:.1f} ms" for b, ms in choice["median_ms"].items()
                )
                + ")"
            )
        notes.append(
            f"{spec}: backend {choice['backend']}, {choice['how']}{detail}."
        )
    m = bench.machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    gpu = f"GPU {m['accelerator']}, " if m.get("accelerator") else ""
    notes.append(
        f"machine: {gpu}{m.get('cpu_model')}, {m.get('usable_cores')} cores "
        f"(flags {' '.join(m.get('cpu_flags', [])) or '?'}), "
        f"{m.get('memory_gb')} GB; load average {m.get('load_average_start')} "
        f"-> {m.get('load_average_end')}; {versions}; "
        f"{bench.started:%Y-%m-%d %H:%M}."
    )
    for name, entry in (("matmul peak", bench.peak), ("FLOPs", bench.flops)):
        if entry.get("status") != "ok":
            notes.append(
                f"{name}: {entry.get('status')}: "
                f"{short_error(entry.get('error', ''))}"
            )
    for r in bench.results:
        if r["status"] != "ok":
            notes.append(
                f"{r['impl']} / {r['case']}: {r['status']}: "
                f"{short_error(r.get('error', ''))} (log: {r['log']})"
            )
    if markdown:
        return [f"- {n}" for n in notes]
    return [f"* {n}" for n in notes]


def _bf16_rows(bench):
    """Per inference case: bf16 vs float32 on the bf16 column's backend."""
    rows = []
    for column in bench.columns:
        if not column.bf16:
            continue
        for case in bench.cases:
            r = bench.cell(column, case)
            if r is None:
                continue
            f32 = next(
                (
                    x
                    for x in bench.results
                    if x["impl"] == f"ours-{r['backend']}"
                    and x["case"] == case.name
                    and x["status"] == "ok"
                ),
                None,
            )
            if r["status"] != "ok":
                rows.append([case.name, r["impl"], r["status"], "", "", "", ""])
                continue
            bf16_ms = primary_figure(r)[1]["median_ms"]
            f32_ms = primary_figure(f32)[1]["median_ms"] if f32 else None
            rows.append(
                [
                    case.name,
                    r["impl"],
                    f"{f32_ms:.1f}" if f32_ms else "-",
                    f"{bf16_ms:.1f}",
                    f"x{f32_ms / bf16_ms:.2f}" if f32_ms else "-",
                    f"{100 * r['argmax_agreement']:.2f}%",
                    f"{r['max_abs_logit_diff']:.3g}",
                ]
            )
    return rows


BF16_HEADER = [
    "case",
    "column",
    "float32 ms",
    "bfloat16 ms",
    "speed-up",
    "argmax = float32",
    "max |logit diff|",
]


def render_text(bench):
    """The plain-text table (rows = cases x metrics, columns = impls)."""
    header = ["case / metric"] + [c.name for c in bench.columns]
    rows = [header]
    for case in bench.cases:
        gflop = bench._work_gflop(case)
        label = case.name + (f" ({_number(gflop)} GFLOP)" if gflop else "")
        rows.append([label] + [""] * len(bench.columns))
        cells = [_cell_lines(bench, col, case) for col in bench.columns]
        for i, metric in enumerate(_metric_rows(bench)):
            if case.train and metric.startswith("predict_on_batch"):
                continue
            rows.append([f"  {metric}"] + [cell[i] for cell in cells])
    lines = ["SegFormer benchmark (ms per call, lower is better)", ""]
    lines += _format_grid(rows)
    bf16 = _bf16_rows(bench)
    if bf16:
        lines += ["", "bfloat16 vs float32 (same weights, same smooth input)"]
        lines += _format_grid([BF16_HEADER] + bf16)
    lines += [""] + _notes(bench)
    return "\n".join(lines) + "\n"


def render_markdown(bench):
    """A compact Markdown table for a README."""
    header = ["case", "GFLOP"] + [f"`{c.name}`" for c in bench.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for case in bench.cases:
        gflop = bench._work_gflop(case)
        cells = [f"`{case.name}`", _number(gflop) if gflop else "-"]
        for column in bench.columns:
            r = bench.cell(column, case)
            status = _status_text(r)
            if status is not None:
                cells.append(status)
                continue
            median = primary_figure(r)[1]["median_ms"]
            extra = []
            if "time_vs_transformers" in r:
                extra.append(f"x{r['time_vs_transformers']:.2f}")
            if "share_of_peak" in r:
                extra.append(f"{100 * r['share_of_peak']:.1f}% peak")
            if r.get("device_peak_mb") is not None:
                extra.append(f"GPU {r['device_peak_mb']:.0f} MB")
            else:
                extra.append(f"{r['rss_peak_mb']:.0f} MB")
            cells.append(f"**{median:.1f} ms**<br>{' · '.join(extra)}")
        lines.append("| " + " | ".join(cells) + " |")
    bf16 = _bf16_rows(bench)
    if bf16:
        lines += [
            "",
            "| " + " | ".join(BF16_HEADER) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in bf16]
    lines += [""] + _notes(bench, markdown=True)
    return "\n".join(lines) + "\n"


def _chart_data(bench):
    """(case names, column names, {(col, case): (median, q1, q3)})."""
    values = {}
    for column in bench.columns:
        for case in bench.cases:
            r = bench.cell(column, case)
            if r is not None and r.get("status") == "ok":
                _, s = primary_figure(r)
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


def draw_chart(path, cases, columns, values, use_matplotlib=True):
    """Grouped bars of median latency per case and column, with the IQR
    as error bars; log scale when the values span more than 20x.

    Args:
        path: str. PNG file to write.
        cases: list of str. Groups (x axis), in order.
        columns: list of str. Bars of each group, in order.
        values: dict. ``(column, case) -> (median, q1, q3)`` in ms; a
            missing pair leaves a gap.
        use_matplotlib: bool. Use matplotlib when it is installed; else
            (or when False) draw with PIL.

    Returns:
        str, how it was drawn (recorded in the JSON).
    """
    if use_matplotlib:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            _chart_pil(path, cases, columns, values)
            return "PIL (matplotlib is not installed)"
        _chart_matplotlib(path, cases, columns, values)
        return "matplotlib"
    _chart_pil(path, cases, columns, values)
    return "PIL"


def _use_log(values):
    positive = [v[0] for v in values.values() if v[0] > 0]
    return bool(positive) and max(positive) / min(positive) > 20


def _chart_matplotlib(path, cases, columns, values):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(
        figsize=(max(8, 1.3 * len(cases) * len(columns) / 2), 5)
    )
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
            xs, heights, width, yerr=[low, high], label=column, capsize=2
        )
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=2)
    if _use_log(values):
        ax.set_yscale("log")
    ax.set_xticks(range(len(cases)), cases, rotation=20, ha="right")
    ax.set_ylabel("median ms per call (lower is better)")
    ax.set_title("SegFormer: latency per case (bars: IQR)")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)


def _text(draw, xy, text, font, align="left"):
    """Text at ``xy``: left edge, centre or right edge (bitmap fonts have
    no anchors)."""
    x, y = xy
    width = draw.textlength(text, font=font)
    if align == "center":
        x -= width / 2
    elif align == "right":
        x, y = x - width, y - 6
    draw.text((x, y), text, fill="black", font=font)


def _chart_pil(path, cases, columns, values):
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except (TypeError, OSError, ImportError):  # old Pillow, no FreeType
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((measure.textlength(c, font=font) for c in cases), default=0)
    left, right, top, bottom = 80, 20, 40, 110
    group = int(max(90, 22 * len(columns) + 30, label_w + 20))
    width = max(520, left + right + group * max(1, len(cases)))
    height = 480
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_h = height - top - bottom
    medians = [v[0] for v in values.values() if v[0] > 0]
    log = _use_log(values)
    if medians:
        lo = min(v[1] for v in values.values())
        hi = max(v[2] for v in values.values())
        if log:
            vmin = 10 ** math.floor(math.log10(max(lo, 1e-3)))
            vmax = 10 ** math.ceil(math.log10(hi))
        else:
            vmin, vmax = 0.0, hi * 1.1
    else:
        vmin, vmax = (1.0, 10.0) if log else (0.0, 1.0)

    def y_of(v):
        if log:
            v = max(v, vmin)
            f = (math.log10(v) - math.log10(vmin)) / (
                math.log10(vmax) - math.log10(vmin)
            )
        else:
            f = (v - vmin) / (vmax - vmin or 1.0)
        return top + plot_h * (1 - f)

    # Axes and ticks.
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    draw.line(
        [(left, top + plot_h), (width - right, top + plot_h)], fill="black"
    )
    if log:
        ticks = [
            10**e
            for e in range(int(math.log10(vmin)), int(math.log10(vmax)) + 1)
        ]
    else:
        step = 10 ** math.floor(math.log10(vmax / 5 or 1.0))
        ticks = [i * step for i in range(int(vmax / step) + 1)]
    for t in ticks:
        y = y_of(t)
        draw.line([(left - 4, y), (width - right, y)], fill=(225, 225, 225))
        _text(draw, (left - 6, y), f"{t:g}", font, align="right")
    draw.text(
        (left, 12),
        "median ms per call (lower is better)" + (", log scale" if log else ""),
        fill="black",
        font=font,
    )
    # Bars.
    bar = (group - 30) / max(1, len(columns))
    for i, case in enumerate(cases):
        x0 = left + i * group + 15
        for j, column in enumerate(columns):
            if (column, case) not in values:
                continue
            median, q1, q3 = values[column, case]
            xa = x0 + j * bar
            color = PALETTE[j % len(PALETTE)]
            draw.rectangle(
                [xa, y_of(median), xa + bar - 2, top + plot_h], fill=color
            )
            xm = xa + (bar - 2) / 2
            draw.line([(xm, y_of(q1)), (xm, y_of(q3))], fill="black")
        _text(
            draw,
            (x0 + (group - 30) / 2, top + plot_h + 6),
            case,
            font,
            "center",
        )
    # Legend.
    y = height - bottom + 30
    x = left
    for j, column in enumerate(columns):
        draw.rectangle([x, y, x + 12, y + 12], fill=PALETTE[j % len(PALETTE)])
        draw.text((x + 16, y), column, fill="black", font=font)
        x += 24 + int(draw.textlength(column, font=font))
        if x > width - 150:
            x, y = left, y + 20
    image.save(path)


# ---------------------------------------------------------------------------
# Command line


def _split(text):
    if not text:
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser):
    """Register the benchmark options on an ``argparse`` parser."""
    impls = (
        ", ".join(f"ours-{b}" for b in BACKENDS)
        + ", transformers, keras-hub (fastest backend) or keras-hub-<backend>"
        ", ours-bf16 (fastest float32 backend) or ours-<backend>-bf16"
    )
    parser.add_argument("--out", default="benchmark_out", help="output folder")
    parser.add_argument(
        "--cases",
        help="comma-separated '[train-]<b0..b5|tiny>-<H>x<W>-b<batch>' "
        f"(default: {', '.join(default_case_names())})",
    )
    parser.add_argument(
        "--train-variants",
        default="b0",
        help="variants of the default training cases (512x512, batch 2), "
        "e.g. b0,b2",
    )
    parser.add_argument(
        "--impls",
        help=f"comma-separated columns among {impls} "
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
        help="backend of the bfloat16 column (default: fastest float32)",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed calls first (default 3; quick 1)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="most timed calls (default 10; quick 2); at least 3 (or this, "
        "if less) are made",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds of timed calls after which a figure stops (after 3)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads per worker (OMP/MKL/TF intra-op env, torch); default: "
        "each library's own default (all cores); JAX is not limited",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where every column runs: cpu (default; GPUs hidden) or gpu "
        "(the first GPU; a library that sees none fails its cells)",
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        help="side of the matmul peak measurement (default 2048, GPU "
        "8192; quick 256)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds before a worker is stopped and marked 'timeout'",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny SegFormer, 64x64, batch 1, 1 warm-up, 2 "
        "repeats (cases " + ", ".join(QUICK_CASES) + ")",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def run(args):
    """Run the benchmark described by parsed ``args``; return 0."""
    if args.worker:
        return worker_main(json.loads(args.worker))
    Benchmark(args).run()
    return 0


def main(argv=None):
    """Entry point of ``python tools/benchmark.py`` and
    ``python -m keras_segformer.benchmark``."""
    parser = argparse.ArgumentParser(
        prog="benchmark",
        description="SegFormer speed and memory: this project vs "
        "transformers and keras-hub.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if argv is not None:  # called from Python: record what it was given
        args.command_line = [
            sys.executable,
            "-m",
            "keras_segformer.benchmark",
            *argv,
        ]
    try:
        return run(args)
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
