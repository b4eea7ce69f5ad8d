"""The per-column jobs. Each runs in a fresh process that
``processes.WorkerRunner`` starts with ``KERAS_BACKEND`` set for it, and
imports only what its column needs: the transformers worker never
imports Keras. ``worker_main`` writes the job's result (JSON)."""

import contextlib
import gc
import json
import os
import sys
import time

from benchmarks import probes
from benchmarks.cases import (
    DROP_PATH_RATE,
    LEARNING_RATE,
    Case,
    hf_segformer_config,
    random_labels,
    smooth_images,
)
from benchmarks.turns import Turns


def build_ours(config, case, num_classes, dtype=None):
    """This project's SegFormer of an architecture dict (random init)."""
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


def build_hub(config, case, num_classes, dtype=None):
    """keras-hub's SegFormerImageSegmenter of the same architecture."""
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


def agreement(logits, reference, axis=-1):
    """How far bf16 logits are from the float32 ones of the same weights."""
    import numpy as np

    same = logits.argmax(axis) == reference.argmax(axis)
    return {
        "argmax_agreement": float(same.mean()),
        "max_abs_logit_diff": float(
            np.abs(logits.astype(np.float64) - reference).max()
        ),
        "reference_logit_std": float(reference.std()),
    }


def _keras_model(spec, case, images):
    """The column's model and build time; for bf16 inference, first a
    float32 model whose weights it takes and whose logits it is
    compared with (returned too, else None)."""
    import keras
    import numpy as np

    build = build_ours if spec["kind"] == "ours" else build_hub
    config, num_classes = spec["config"], spec["num_classes"]
    dtype = "mixed_bfloat16" if spec["bf16"] else None
    reference = weights = None
    if spec["bf16"] and not case.train:
        model = build(config, case, num_classes)
        reference = np.asarray(model.predict(images, verbose=0))
        weights = model.get_weights()
        del model
        keras.backend.clear_session()
        gc.collect()
    start = time.perf_counter()
    model = build(config, case, num_classes, dtype=dtype)
    if weights is not None:
        model.set_weights(weights)
    return model, time.perf_counter() - start, reference


def _keras_calls(spec, case, model, images, labels):
    """``{figure: (call, warm-up calls)}`` in the order they are timed."""
    import keras

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
        step = lambda: model.train_on_batch(images, targets)  # noqa: E731
        return {"train_on_batch": (step, spec["warmup"])}
    predict = lambda: model.predict(images, verbose=0)  # noqa: E731
    on_batch = lambda: model.predict_on_batch(images)  # noqa: E731
    if not case.overhead:
        # One untimed predict_on_batch: it may trace or compile a function
        # of its own (on JAX it does).
        return {
            "predict": (predict, spec["warmup"]),
            "predict_on_batch": (on_batch, 1),
        }
    x = keras.ops.convert_to_tensor(images)
    backend = keras.backend.backend()

    def call():
        # Host out, as predict_on_batch and transformers' forward.
        with probes.no_grad(backend):
            return keras.ops.convert_to_numpy(model(x, training=False))

    return {
        "predict_on_batch": (on_batch, spec["warmup"]),
        "call": (call, spec["warmup"]),
        "predict": (predict, 1),
    }


def keras_job(spec, case, images, labels):
    """One column of this project or keras-hub (Keras, any backend)."""
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
    probes.set_threads(spec["threads"])
    out = {
        "keras_version": keras.__version__,
        "import_s": time.perf_counter() - start,
        "accelerator": probes.check_device(spec, backend),
    }
    probes.seed_everything(spec["seed"], backend)
    model, out["build_s"], reference = _keras_model(spec, case, images)
    out["parameters"] = int(model.count_params())
    out["dtype"] = "mixed_bfloat16" if spec["bf16"] else "float32"
    calls = _keras_calls(spec, case, model, images, labels)
    out["headline"] = next(iter(calls))
    out["rss_baseline_mb"] = probes.rss_mb()
    figures = {}
    for name, (call, warmup) in calls.items():
        figures[name] = probes.time_calls(
            call, warmup=warmup, **probes.timing(spec)
        )
    if not case.train:
        logits = np.asarray(model.predict_on_batch(images))
        out["output_shape"] = list(logits.shape)
        if reference is not None:
            out.update(agreement(logits, reference))
    out["jit_compile"] = str(getattr(model, "jit_compile", None))
    if out["accelerator"]:
        out["device_peak_mb"] = probes.device_peak_mb(backend)
    out["figures"] = figures
    return out


def _transformers_calls(spec, case, model, images, labels, accelerator):
    """``(figure, call, forward)``: the timed call, and for inference the
    forward pass that takes a precision context (else None)."""
    import numpy as np
    import torch

    device = torch.device("cuda" if accelerator else "cpu")
    pixel_values = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )
    autocast = contextlib.nullcontext
    if spec["bf16"]:
        autocast = lambda: torch.autocast(device.type, torch.bfloat16)  # noqa: E731
    if case.train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        targets = torch.from_numpy(labels.astype(np.int64))

        def step():
            optimizer.zero_grad()
            with autocast():  # forward and loss; backward and step outside
                loss = model(
                    pixel_values=pixel_values.to(device),
                    labels=targets.to(device),
                ).loss
            loss.backward()
            optimizer.step()
            if accelerator:
                torch.cuda.synchronize()

        return "step", step, None
    model.eval()

    def forward(precision=autocast):
        # On a GPU: host in, host out, like Keras' predict.
        with torch.inference_mode(), precision():
            logits = model(pixel_values=pixel_values.to(device)).logits
            return logits.float().cpu()

    return "forward", forward, forward


def transformers_job(spec, case, images, labels):
    """transformers' SegFormer (PyTorch eager); ``bf16``: under autocast."""
    start = time.perf_counter()
    import torch
    import transformers
    from transformers import SegformerForSemanticSegmentation

    import_s = time.perf_counter() - start
    probes.set_threads(spec["threads"])
    accelerator = probes.check_device(spec, "torch")
    torch.manual_seed(spec["seed"])
    config = hf_segformer_config(spec["config"], spec["num_classes"])
    start = time.perf_counter()
    model = SegformerForSemanticSegmentation(config)
    model = model.to("cuda" if accelerator else "cpu")
    out = {
        "accelerator": accelerator,
        "import_s": import_s,
        "build_s": time.perf_counter() - start,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
        "dtype": "autocast bfloat16" if spec["bf16"] else "float32",
    }
    name, call, forward = _transformers_calls(
        spec, case, model, images, labels, accelerator
    )
    out["rss_baseline_mb"] = probes.rss_mb()
    figures = {
        name: probes.time_calls(
            call, warmup=spec["warmup"], **probes.timing(spec)
        )
    }
    if forward is not None:
        logits = forward().numpy()
        out["output_shape"] = list(logits.shape)
        if spec["bf16"]:
            reference = forward(contextlib.nullcontext).numpy()
            out.update(agreement(logits, reference, axis=1))
    if accelerator:
        out["device_peak_mb"] = probes.device_peak_mb("torch")
    out["figures"] = figures
    return out


def model_job(spec):
    """Time one column on one case."""
    case = Case(**spec["case"])
    images = smooth_images(case.batch, case.height, case.width, spec["seed"])
    labels = random_labels(
        case.batch, case.height, case.width, spec["num_classes"], spec["seed"]
    )
    if spec["kind"] == "transformers":
        out = transformers_job(spec, case, images, labels)
    else:
        out = keras_job(spec, case, images, labels)
    out["rss_peak_mb"] = probes.peak_rss_mb()
    out["threads"] = probes.thread_settings()
    # The transformers worker must not pay for Keras (memory, threads).
    out["imported_keras"] = "keras" in sys.modules
    return out


def worker_main(spec):
    """Run one job and write its result (JSON) to ``spec["result"]``."""
    from benchmarks.deploy import Unavailable, export_job, runtime_job
    from benchmarks.deploy_quality import quality_job
    from benchmarks.reference import reference_job

    jobs = {
        "model": model_job,
        "reference": reference_job,
        "export": export_job,
        "runtime": runtime_job,
        "quality": quality_job,
    }
    turns = Turns.from_spec(spec)
    if turns is not None:
        turns.wait()  # the worker runs only while it holds the baton
    try:
        out = jobs[spec["job"]](spec)
        out["status"] = "ok"
        out["interleaved"] = turns is not None
    except Unavailable as e:
        out = {"status": "unavailable", "error": str(e)}
    except Exception as e:
        out = probes.failure(e)
    finally:
        if turns is not None:
            turns.leave()
    path = spec["result"]
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(json.loads(sys.argv[1])))
