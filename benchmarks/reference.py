"""What every column is measured against, computed in one worker first:
the machine's matmul rates and the model FLOPs."""

from benchmarks import probes
from benchmarks.cases import hf_segformer_config

# Matmul peak keys; the first measured float32 one is the "% peak"
# reference.
PEAK_KEYS = {
    "cpu": ("tensorflow_float32", "tensorflow_bfloat16", "torch_float32"),
    "gpu": (
        "torch_cuda_float32",
        "torch_cuda_bfloat16",
        "jax_gpu_float32",
        "jax_gpu_bfloat16",
    ),
}

FLOP_CONVENTION = (
    "torch FlopCounterMode on the transformers model (meta device, eager "
    "attention; multiply-add = 2 FLOP); a case's work = forward FLOPs per "
    "image x batch, x3 for a training step (forward + backward ~ 2x "
    "forward)"
)


def flops_job(spec):
    """Forward FLOPs per image of the transformers model, per shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import SegformerForSemanticSegmentation

    counts = {}
    for shape in spec["shapes"]:
        # Eager attention: the counter has no formula for the CPU
        # flash-SDPA kernel (B0 at 512x512: 14.7 instead of 16.8 GFLOP).
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
    stats = probes.time_calls(run, warmup=2, **probes.timing(spec))
    stats["gflops"] = 2 * size**3 / (stats["median_ms"] / 1e3) / 1e9
    stats["size"] = size
    return stats


def _torch_gpu_rates(size, spec, out):
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


def _jax_gpu_rates(size, spec, out):
    import jax
    import jax.numpy as jnp

    gpu = jax.devices("gpu")[0]  # raises without a GPU backend
    product = jax.jit(jnp.matmul)
    for dtype in ("float32", "bfloat16"):
        a, b = (
            jax.device_put(
                jax.random.normal(jax.random.key(k), (size, size), dtype), gpu
            )
            for k in (1, 2)
        )
        out[f"jax_gpu_{dtype}"] = _matmul_rate(
            lambda a=a, b=b: product(a, b).block_until_ready(), size, spec
        )


def gpu_peak_job(spec):
    """Matmul GFLOP/s on the GPU: torch and JAX, float32 and bfloat16,
    each library at its default precision (torch float32: no TF32)."""
    out = {}
    for key, rates in (
        ("torch_cuda_float32", _torch_gpu_rates),
        ("jax_gpu_float32", _jax_gpu_rates),
    ):
        try:
            rates(spec["matmul_size"], spec, out)
        except Exception as e:
            out[key] = probes.failure(e)
    return out


def _tensorflow_rates(size, spec, out):
    import tensorflow as tf

    for dtype in ("float32", "bfloat16"):
        try:
            a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
            b = tf.cast(tf.random.normal((size, size), seed=2), dtype)
            # The scalar sum makes .numpy() wait for the product.
            product = tf.function(
                lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))
            )
            out[f"tensorflow_{dtype}"] = _matmul_rate(
                lambda a=a, b=b, f=product: f(a, b).numpy(), size, spec
            )
        except Exception as e:
            out[f"tensorflow_{dtype}"] = probes.failure(e)


def peak_job(spec):
    """Matmul GFLOP/s: TensorFlow float32 and bfloat16, torch float32."""
    if spec.get("device") == "gpu":
        return gpu_peak_job(spec)
    size = spec["matmul_size"]
    out = {}
    probes.set_threads(spec["threads"])
    try:
        _tensorflow_rates(size, spec, out)
    except ModuleNotFoundError as e:
        out["tensorflow_float32"] = probes.failure(e)
        out["tensorflow_bfloat16"] = probes.failure(e)
    try:
        import torch

        probes.set_threads(spec["threads"])
        generator = torch.Generator().manual_seed(1)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        out["torch_float32"] = _matmul_rate(lambda: torch.mm(a, b), size, spec)
    except Exception as e:
        out["torch_float32"] = probes.failure(e)
    out["threads"] = probes.thread_settings()
    return out


def reference_job(spec):
    """Matmul rates and FLOP counts (one process: libraries load once)."""
    out = {}
    for key, job in (("peak", peak_job), ("flops", flops_job)):
        try:
            out[key] = {**job(spec), "status": "ok"}
        except Exception as e:
            out[key] = probes.failure(e)
    return out
