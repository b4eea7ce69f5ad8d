"""The deployed columns' jobs (``cases.DEPLOYED``), two worker processes
per cell: ``export_job`` builds the float32 model (the same seed, so the
same weights, as the ``ours-tensorflow`` / ``transformers`` columns),
keeps its logits on the case's images as the reference and writes the
artifact; ``runtime_job`` loads the artifact in its own runtime and times
it, so that the export is not part of the timing and the runtime's
process holds no Keras model.

Ours: ``keras_segformer.export.export_model`` (ONNX with dynamic height
and width; LiteRT at the case's fixed size, as for a mobile delegate).
transformers: ``torch.onnx.export`` of ``SegformerForSemanticSegmentation``
(TorchScript exporter, opset 17, dynamic batch, height and width).
Runtimes: ``onnxruntime.InferenceSession`` with its default options;
LiteRT's ``Interpreter`` (``ai_edge_litert`` if installed, else
``tf.lite``) with every usable core and its default XNNPACK delegate.
"""

import os
import time
import warnings

from benchmarks import probes
from benchmarks.cases import (
    SEED,
    Case,
    hf_segformer_config,
    smooth_images,
)

ONNX_OPSET = 17
# int8 calibration: this many smooth images like the timed ones (other
# seeds), as uint8 pixels that the exporter normalizes (ImageNet mean and
# std) into the range of the timed inputs.
CALIBRATION_IMAGES = 8
CALIBRATION_SEED = SEED + 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Unavailable(Exception):
    """The exporter cannot write this artifact (an option it lacks)."""


def calibration_images(case, count=CALIBRATION_IMAGES):
    """uint8 RGB images ``(count, H, W, 3)`` whose ImageNet-normalized
    values are smooth images of the case's size (clipped to 0-255)."""
    import numpy as np

    images = np.concatenate(
        [
            smooth_images(1, case.height, case.width, CALIBRATION_SEED + i)
            for i in range(count)
        ]
    )
    pixels = (images * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _export_ours(spec, case, images, path):
    import keras
    import numpy as np

    from benchmarks.workers import build_ours
    from keras_segformer.export import export_model

    _, format, quantization = spec["artifact"]
    keras.utils.set_random_seed(spec["seed"])
    start = time.perf_counter()
    model = build_ours(spec["config"], case, spec["num_classes"])
    out = {"build_s": time.perf_counter() - start}
    reference = np.asarray(model.predict(images, verbose=0))
    options = {"quantization": quantization}
    if format == "litert":
        options["input_size"] = (case.height, case.width)
    if quantization == "int8":
        options["representative_images"] = list(calibration_images(case))
        out["calibration"] = (
            f"{CALIBRATION_IMAGES} smooth {case.height}x{case.width} images"
        )
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(model, path, format, **options)
    except (ValueError, NotImplementedError) as e:
        # The exporter refuses the option (e.g. int8 for this format).
        raise Unavailable(str(e)) from e
    out["export_s"] = time.perf_counter() - start
    out["exporter"] = f"keras_segformer.export.export_model({format!r})"
    return out, reference


def _export_transformers(spec, case, images, path):
    import numpy as np
    import torch
    from transformers import SegformerForSemanticSegmentation

    torch.manual_seed(spec["seed"])
    start = time.perf_counter()
    config = hf_segformer_config(spec["config"], spec["num_classes"])
    model = SegformerForSemanticSegmentation(config).eval()
    out = {"build_s": time.perf_counter() - start}
    pixels = torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    )

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    # eval() here too: the exporter restores the wrapper's mode, and a
    # wrapper left in training mode would put BatchNorm in training mode.
    wrapper = Logits(model).eval()
    with torch.inference_mode():
        reference = wrapper(pixels).numpy()
    dynamic = {0: "batch", 2: "height", 3: "width"}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (pixels,),
            path,
            input_names=["pixel_values"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamic_axes={"pixel_values": dynamic, "logits": dynamic},
            dynamo=False,
        )
    out["export_s"] = time.perf_counter() - start
    out["exporter"] = f"torch.onnx.export (TorchScript, opset {ONNX_OPSET})"
    return out, reference


def export_job(spec):
    """Write the artifact and the float32 reference logits (``.npy``)."""
    import numpy as np

    case = Case(**spec["case"])
    images = smooth_images(case.batch, case.height, case.width, spec["seed"])
    path = spec["artifact_path"]
    if spec["artifact"][0] == "transformers":
        out, reference = _export_transformers(spec, case, images, path)
    else:
        out, reference = _export_ours(spec, case, images, path)
    np.save(spec["reference_path"], reference)
    out["artifact_mb"] = os.path.getsize(path) / 2**20
    return out


def _onnx_call(path, x, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    runtime = f"onnxruntime {onnxruntime.__version__} (CPU, default options)"
    return (lambda: session.run(None, {name: x})[0]), runtime


def _litert_call(path, x, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter

        runtime = "ai_edge_litert Interpreter"
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
        runtime = f"tf.lite.Interpreter (TensorFlow {tf.__version__})"
    cores = threads or len(os.sched_getaffinity(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter deprecation
        interpreter = Interpreter(model_path=path, num_threads=cores)
    (inp,) = interpreter.get_input_details()
    (output,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()

    def call():
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(output["index"])

    return call, f"{runtime}, {cores} threads, XNNPACK (default)"


def runtime_job(spec):
    """Time the artifact in its runtime; compare its output with the
    float32 model's logits on the same images."""
    start = time.perf_counter()
    import numpy as np

    from benchmarks.workers import agreement

    case = Case(**spec["case"])
    source, format, quantization = spec["artifact"]
    images = smooth_images(case.batch, case.height, case.width, spec["seed"])
    if source == "transformers":  # NCHW, as the transformers column
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    maker = _onnx_call if format == "onnx" else _litert_call
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    call, runtime = maker(spec["artifact_path"], images, spec["threads"])
    out = {
        "import_s": import_s,
        "build_s": time.perf_counter() - start,  # loading the artifact
        "runtime": runtime,
        "format": format,
        "dtype": quantization or "float32",
        "headline": "run",
        "rss_baseline_mb": probes.rss_mb(),
    }
    out["figures"] = {
        "run": probes.time_calls(
            call, warmup=spec["warmup"], **probes.timing(spec)
        )
    }
    logits = np.asarray(call())
    out["output_shape"] = list(logits.shape)
    reference = np.load(spec["reference_path"])
    out.update(agreement(logits, reference, axis=1 if source != "ours" else -1))
    out["rss_peak_mb"] = probes.peak_rss_mb()
    out["threads"] = probes.thread_settings()
    return out
