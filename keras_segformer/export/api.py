"""``export_model``: argument checks, calibration data and the dispatch to
TensorFlow (in this process, or in a TensorFlow worker process when Keras
runs on JAX or PyTorch)."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings

import keras
import numpy as np

from keras_segformer.decode import IMAGE_EXTENSIONS

# In their own module, which tf_export.py reads too; imported from here too.
from keras_segformer.export.formats import (
    FORMATS,  # noqa: F401
    INPUT_DTYPES,
    ONNX_OPSET,  # noqa: F401
    QUANTIZATIONS,
    QUANTIZED_FORMATS,
    canonical_format,
    model_normalizes,
)
from keras_segformer.inference.processing import (
    _check_pair,
    load_image,
    resize_image,
)

# Default calibration: this many synthetic images (keras_segformer.data
# .synthetic) at the fixed input size, or at this size for dynamic models.
NUM_SYNTHETIC_CALIBRATION = 32
SYNTHETIC_CALIBRATION_SIZE = (256, 256)
MAX_CALIBRATION_IMAGES = 500


def _image_files(directory):
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    )


def calibration_images(images=None, size=None):
    """Calibration images for int8 quantization, as uint8 RGB arrays.

    Args:
        images: None (synthetic shapes from ``keras_segformer.data
            .synthetic``, with a warning: pass real images for the best
            int8 accuracy); a directory of images; an image file; a list of
            image files / uint8 arrays / PIL images; or a uint8 array
            ``(N, H, W, 3)``. At most ``MAX_CALIBRATION_IMAGES`` are used.
        size: None or ``(height, width)``. Resize every image to it (PIL
            bilinear), as a model with a fixed input size needs.

    Returns:
        list of uint8 arrays ``(H, W, 3)``.
    """
    size = None if size is None else _check_pair(size, "input_size")
    if images is None:
        from keras_segformer.data import synthetic

        warnings.warn(
            "int8 calibration on synthetic shapes "
            "(keras_segformer.data.synthetic): pass representative images "
            "of your data (CLI: --calibration DIR) for the best accuracy.",
            stacklevel=3,
        )
        render_size = size or SYNTHETIC_CALIBRATION_SIZE
        return [
            synthetic.render(
                np.random.default_rng([7, i]),
                render_size,
                synthetic.MAX_CLASSES,
            )[0]
            for i in range(NUM_SYNTHETIC_CALIBRATION)
        ]
    source = "`representative_images`"
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        if os.path.isdir(path):
            images = _image_files(path)
            source = f"directory {path!r} (extensions {IMAGE_EXTENSIONS})"
        elif os.path.isfile(path):
            images = [path]
        else:
            raise FileNotFoundError(f"Calibration images not found: {path!r}")
    elif isinstance(images, np.ndarray) and images.ndim < 4:
        images = [images]  # one image
    else:  # a list, or a (N, H, W, 3) array
        images = list(images)
    if not images:
        raise ValueError(
            "int8 quantization needs calibration images, and "
            f"{source} holds none."
        )
    out = []
    for image in images[:MAX_CALIBRATION_IMAGES]:
        rgb = load_image(image)
        out.append(rgb if size is None else resize_image(rgb, size))
    return out


def _check_output_path(path, format):
    path = os.path.abspath(os.fspath(path))
    if format == "tf_saved_model":
        if os.path.isfile(path):
            raise OSError(
                f"Output path {path!r} is a file; a SavedModel is a directory."
            )
    elif os.path.isdir(path):
        raise OSError(
            f"Output path {path!r} is a directory; a {format} export is "
            "a single file."
        )
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OSError(
            f"Output path {path!r} is not writable: cannot write to "
            f"{parent!r} ({e.strerror or e})."
        ) from e
    return path


def _check_model(model, include_postprocessing):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`model` must be a keras.Model (e.g. a keras_segformer "
            f"SegFormer). Received: {type(model).__name__}"
        )
    try:
        output = model.output
    except (AttributeError, ValueError) as e:
        raise ValueError(
            "`model` has no defined input/output yet: build or call it "
            "once before exporting."
        ) from e
    if include_postprocessing and (
        isinstance(output, (list, tuple, dict)) or len(output.shape) != 4
    ):
        raise ValueError(
            "`include_postprocessing=True` needs a segmentation model "
            "returning logits (batch, height, width, classes). This model "
            f"returns {keras.tree.map_structure(lambda t: t.shape, output)}."
        )


def _prepare_job(
    model,
    path,
    format="tf_saved_model",
    *,
    include_preprocessing=False,
    include_postprocessing=False,
    input_size=None,
    quantization=None,
    representative_images=None,
    input_dtype=None,
):
    format = canonical_format(format)
    if quantization is not None:
        if quantization not in QUANTIZATIONS:
            raise ValueError(
                f"Unknown quantization {quantization!r}. Expected None or "
                f"one of {QUANTIZATIONS}."
            )
        if format not in QUANTIZED_FORMATS[quantization]:
            raise ValueError(
                f"Quantization {quantization!r} is available for the "
                f"{' and '.join(QUANTIZED_FORMATS[quantization])} "
                f"format(s). Received format={format!r}."
            )
    if representative_images is not None and quantization != "int8":
        raise ValueError(
            "`representative_images` are calibration data for "
            '`quantization="int8"`; this export uses '
            f"quantization={quantization!r}."
        )
    _check_model(model, include_postprocessing)
    if input_size is not None:
        input_size = _check_pair(input_size, "input_size")
        min_size = getattr(
            getattr(model, "backbone", None), "min_input_size", 1
        )
        if min(input_size) < min_size:
            raise ValueError(
                f"`input_size` {input_size} is too small: this network "
                f"needs at least {min_size}x{min_size} pixels."
            )
    if input_dtype is None:
        input_dtype = "uint8" if include_preprocessing else "float32"
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(
            f"`input_dtype` must be one of {INPUT_DTYPES}. Received: "
            f"{input_dtype!r}"
        )
    raw_input = include_preprocessing or model_normalizes(model)
    if input_dtype == "uint8" and not raw_input:
        raise ValueError(
            'input_dtype="uint8" means raw 0-255 pixels: it needs '
            "include_preprocessing=True."
        )
    images = None
    if quantization == "int8":
        images = calibration_images(representative_images, input_size)
    return {
        "path": _check_output_path(path, format),
        "format": format,
        "include_preprocessing": bool(include_preprocessing),
        "include_postprocessing": bool(include_postprocessing),
        "input_size": None if input_size is None else list(input_size),
        "quantization": quantization,
        "representative_images": images,
        "input_dtype": input_dtype,
        "normalized_input": not raw_input,
    }


def _tensorflow_worker(model, jobs):
    """Run the jobs with Keras on TensorFlow in a child process."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ModuleNotFoundError(
            "Exporting needs TensorFlow (pip install "
            "'keras-segformer[export]'): every export format is written "
            "from a TensorFlow graph.",
            name="tensorflow",
        )
    with tempfile.TemporaryDirectory(prefix="keras_segformer_export_") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        model.save(model_path)
        payload = []
        for i, job in enumerate(jobs):
            job = dict(job)
            if job["representative_images"] is not None:
                file = os.path.join(tmp, f"calibration_{i}.npz")
                np.savez(file, *job["representative_images"])
                job["representative_images"] = file
            payload.append(job)
        job_file = os.path.join(tmp, "jobs.json")
        with open(job_file, "w") as f:
            json.dump({"model": model_path, "jobs": payload}, f)
        package_root = os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p
        )
        proc = subprocess.run(
            [sys.executable, "-m", "keras_segformer.export._worker", job_file],
            env=env,
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise RuntimeError(
            f"The TensorFlow export process failed (exit code "
            f"{proc.returncode}):\n{tail}"
        )


def export_many(model, exports):
    """Export one model to several artifacts in one go.

    Same as calling ``export_model`` for each entry, but on JAX and
    PyTorch all artifacts are written by a single TensorFlow worker
    process (one start-up and one model load instead of one per artifact).

    Args:
        model: ``keras.Model``.
        exports: list of dicts of ``export_model`` keyword arguments, each
            with at least ``path`` and ``format``.

    Returns:
        list of the absolute output paths, in order.

    Example:
    >>> export_many(model, [
    ...     {"path": "out/model.onnx", "format": "onnx"},
    ...     {"path": "out/model.tflite", "format": "litert",
    ...      "quantization": "float16"},
    ... ])
    """
    # Every argument is checked before anything slow starts.
    jobs = [_prepare_job(model, **dict(spec)) for spec in exports]
    if keras.backend.backend() == "tensorflow":
        from keras_segformer.export.tf_export import export_job

        cache = {}
        for job in jobs:
            export_job(model, job, cache)
    else:
        _tensorflow_worker(model, jobs)
    return [job["path"] for job in jobs]


def export_model(
    model,
    path,
    format="tf_saved_model",
    *,
    include_preprocessing=False,
    include_postprocessing=False,
    input_size=None,
    quantization=None,
    representative_images=None,
    input_dtype=None,
):
    """Export a model for inference as a SavedModel, TFLite or ONNX file.

    The artifact takes ``images`` ``(batch, height, width, 3)`` and returns
    ``logits`` (float32, ``(batch, ceil(H / 4), ceil(W / 4), classes)``,
    the model's output) or, with ``include_postprocessing``, ``mask``
    (int32 class indices ``(batch, H, W)``). Height and width are dynamic
    unless ``input_size`` fixes them; the batch size is always dynamic
    (TFLite allocates batch 1 until resized). The model runs with
    ``training=False``. Every format is written from a TensorFlow graph;
    under the JAX and PyTorch backends a TensorFlow worker process rebuilds
    the model from a ``.keras`` copy (see the module docstring).

    Args:
        model: ``keras.Model``, e.g. a ``SegFormer``.
        path: str or path-like. Output directory (``tf_saved_model``) or
            file (``.tflite``, ``.onnx``); parent directories are created.
        format: str. ``"tf_saved_model"`` (SavedModel), ``"litert"``
            (TFLite) or ``"onnx"``; ``"saved_model"`` and ``"tflite"`` are
            aliases.
        include_preprocessing: bool. The artifact takes raw 0-255 RGB
            pixels (``uint8`` unless ``input_dtype="float32"``) and
            normalizes them with the ImageNet mean and std in the graph.
        include_postprocessing: bool. The artifact resizes the logits
            bilinearly to the input size and returns the argmax mask.
        input_size: None or ``(height, width)``. Fix the spatial input
            size (useful for TFLite on mobile delegates).
        quantization: None, ``"float16"`` (TFLite: weights stored as
            float16) or ``"int8"`` (TFLite and ONNX: weights and
            activations int8, calibrated on ``representative_images``;
            TFLite keeps layer norms, softmaxes and GELU float, ONNX is
            ONNX Runtime's static QDQ quantization of the MatMuls and
            convolutions; see docs/export.md).
        representative_images: int8 calibration data (see
            ``calibration_images``): a directory, files, arrays, or None
            for built-in synthetic images (with a warning).
        input_dtype: None, ``"float32"`` or ``"uint8"``. None: ``uint8``
            with ``include_preprocessing``, else ``float32``.

    Returns:
        str. The absolute output path.

    Raises:
        TypeError: ``model`` is not a ``keras.Model``.
        ValueError: an unknown ``format`` or option, an option that
            ``format`` does not take, a model not built yet, or an
            ``input_size`` or ``input_dtype`` the model cannot take.
        FileNotFoundError: ``representative_images`` names no folder.
        OSError: the output path cannot be written, or the TensorFlow
            worker (JAX and PyTorch backends) failed.

    Example:
    >>> export_model(model, "out/segformer.onnx", "onnx")
    >>> export_model(model, "out/segformer.tflite", "litert",
    ...              include_preprocessing=True,
    ...              include_postprocessing=True, input_size=(512, 512),
    ...              quantization="int8", representative_images="val/")
    """
    spec = {
        "path": path,
        "format": format,
        "include_preprocessing": include_preprocessing,
        "include_postprocessing": include_postprocessing,
        "input_size": input_size,
        "quantization": quantization,
        "representative_images": representative_images,
        "input_dtype": input_dtype,
    }
    return export_many(model, [spec])[0]
