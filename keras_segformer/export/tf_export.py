"""TensorFlow side of the export: one serving graph, three writers.

Backend-specific on purpose: this module runs only under the TensorFlow
backend, either in the caller's process or in the worker process that
``export_model`` starts from JAX or PyTorch (``keras_segformer.export
._worker``). Every format is written from the same ``tf.function``, so
SavedModel, TFLite and ONNX artifacts compute the same graph.
"""

import logging
import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from keras_segformer.export.formats import (
    INPUT_PIXELS,
    ONNX_OPSET,
    model_normalizes,
)
from keras_segformer.io_atomic import (
    disk_full_error,
    no_space,
    write_atomic,
    write_bytes,
    written_in_place,
)
from keras_segformer.layers.preprocessing import IMAGENET_MEAN, IMAGENET_STD

SIGNATURE = "serving_default"


def serving_function(
    model,
    *,
    include_preprocessing=False,
    include_postprocessing=False,
    input_dtype="float32",
    input_size=None,
):
    """The inference graph as a ``tf.function`` with one input signature.

    Input ``images``: ``(batch, height, width, 3)`` of ``input_dtype``,
    height and width dynamic unless ``input_size`` fixes them. Output: a
    dict with ``"logits"`` (float32, ``(batch, ceil(H/4), ceil(W/4), K)``)
    or, with post-processing, ``"mask"`` (int32, ``(batch, H, W)``); a
    model with several outputs (``MiTBackbone``) gives one float32 entry
    per output, named after its output layer (``model.output_names``).

    Args:
        model: ``keras.Model`` (TensorFlow backend). Called with
            ``training=False``.
        include_preprocessing: bool. Take raw 0-255 pixels and normalize
            them in the graph (skipped when the model normalizes itself).
        include_postprocessing: bool. Resize the logits bilinearly
            (half-pixel centres, no antialiasing: PyTorch's
            ``align_corners=False``) to the input size and take the argmax
            (a positive logit for one-class models).
        input_dtype: str. ``"float32"`` or ``"uint8"``.
        input_size: None or ``(height, width)``. Fix the spatial size.
    """
    height, width = input_size if input_size else (None, None)
    spec = tf.TensorSpec(
        (None, height, width, 3), tf.as_dtype(input_dtype), name="images"
    )
    normalize = include_preprocessing and not model_normalizes(model)

    def serve(images):
        x = images
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        if normalize:
            # Constants made inside the graph: captured eager tensors
            # would become extra inputs of the ONNX graph.
            mean = tf.constant(IMAGENET_MEAN, tf.float32)
            std = tf.constant(IMAGENET_STD, tf.float32)
            # x / 255 (not x * (1 / 255)): the correctly rounded quotient,
            # as the float64 rescale of the numpy pre-processing gives.
            x = (x / 255.0 - mean) / std
        # An explicit training=False: never inherit a training flag.
        outputs = model(x, training=False)
        if isinstance(outputs, (list, tuple)):
            # Several outputs (an MiTBackbone's four feature maps): named
            # after the model's output layers.
            return {
                name: tf.cast(y, tf.float32)
                for name, y in zip(model.output_names, outputs)
            }
        logits = tf.cast(outputs, tf.float32)
        if not include_postprocessing:
            return {"logits": logits}
        size = tf.shape(images)[1:3]
        logits = tf.image.resize(
            logits, size, method="bilinear", antialias=False
        )
        if logits.shape[-1] == 1:
            mask = tf.cast(logits[..., 0] > 0, tf.int32)
        else:
            mask = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"mask": mask}

    function = tf.function(serve, input_signature=[spec], autograph=False)
    # The model's output order, for a ``serve`` that returns a list
    # (nest orders a dict's entries by name).
    several = isinstance(model.output, (list, tuple))
    function.output_order = list(model.output_names) if several else None
    return function


def _holder(fn):
    # Track the tf.Variables the graph captures (not the Keras variables
    # wrapping them): then the SavedModel restores them and the TFLite
    # converter freezes them into constants. Tracking the Keras variables
    # instead leaves TFLite with uninitialized resource variables (NaN).
    concrete = fn.get_concrete_function()
    holder = tf.Module()
    holder.captured_variables = list(concrete.variables)
    holder.serve = fn
    return holder, concrete


def _unnamed(fn):
    """``fn`` returning what the model returns (Keras' ``serve``): the
    tensor of a one-output graph, else the list of its outputs in the
    model's order, instead of the dict of named outputs."""

    def serve(images):
        outputs = fn(images)
        if len(outputs) == 1:
            (output,) = outputs.values()
            return output
        return [outputs[name] for name in fn.output_order]

    return tf.function(
        serve, input_signature=fn.input_signature, autograph=False
    )


def write_saved_model(fn, path, normalized_input=None):
    """Write a SavedModel as Keras' ``model.export`` does: ``serve``
    returns the output tensor (a list for several outputs), and the
    ``serving_default`` signature keeps the named outputs (``logits`` or
    ``mask``; an ``MiTBackbone``'s ``stage1_norm`` ...).

    Args:
        fn: ``tf.function`` from ``serving_function``.
        path: str. Output directory.
        normalized_input: bool or None. Recorded for ``ExportedModel``
            (``INPUT_PIXELS``): the artifact takes normalized pixels.
    """
    holder, concrete = _holder(fn)
    holder.serve = _unnamed(fn)
    if normalized_input is not None:
        setattr(holder, INPUT_PIXELS, tf.Variable(_pixels(normalized_input)))
    with written_in_place(path) as temp:  # a link at `path` is replaced
        try:
            tf.saved_model.save(holder, temp, signatures={SIGNATURE: concrete})
        except tf.errors.OpError as e:
            # TensorFlow's own writer: a full disk is a ResourceExhausted
            # error, not an OSError (it came out as a traceback).
            if not no_space(e):
                raise
            raise disk_full_error(path, e) from None


def _representative_dataset(images, input_dtype, normalize):
    """The TFLite converter's calibration data: the batches the ONNX
    quantization calibrates on, each as a one-input list."""
    from keras_segformer.export.onnx_quantize import calibration_batches

    def generate():
        for x in calibration_batches(images, input_dtype, normalize):
            yield [x]

    return generate


def write_tflite(
    fn,
    path,
    quantization=None,
    representative_images=None,
    normalized_input=True,
):
    """Convert ``fn`` to a TFLite flatbuffer.

    The graph is traced again with the TFLite versions of the ops
    (``keras_segformer.export.tflite_graph``: static shapes, so that
    XNNPACK runs the whole float graph, and float islands for int8).

    Args:
        fn: ``tf.function`` from ``serving_function``.
        path: str. Output ``.tflite`` file.
        quantization: None, ``"float16"`` (weights stored as float16) or
            ``"int8"`` (weights and activations int8, calibrated; layer
            norms and softmaxes stay float; float input and output).
        representative_images: list of uint8 RGB arrays. Calibration
            images for ``"int8"``, in the artifact's input layout (already
            resized when the size is fixed).
        normalized_input: bool. The artifact takes normalized pixels, so
            calibration images are normalized first.
    """
    from keras_segformer.export import tflite_graph

    fn = tf.function(
        fn.python_function,
        input_signature=fn.input_signature,
        autograph=False,
    )
    with tflite_graph.tflite_ops():
        holder, concrete = _holder(fn)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [concrete], holder
    )
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        input_dtype = fn.input_signature[0].dtype.name
        converter.representative_dataset = _representative_dataset(
            representative_images, input_dtype, normalized_input
        )
        flatbuffer = tflite_graph.quantize_int8(converter)
    elif quantization is not None:
        raise ValueError(f"Unknown quantization {quantization!r}.")
    if quantization != "int8":
        flatbuffer = converter.convert()
    write_bytes(path, flatbuffer)  # atomic; a link there is replaced


def _pixels(normalized_input):
    return "normalized" if normalized_input else "raw"


def _erfc_handler(ctx, node, name, args):
    # TF's exact GELU uses Erfc, which ONNX lacks: erfc(x) = 1 - erf(x).
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.ones((), dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def write_onnx(fn, path, opset=ONNX_OPSET, normalized_input=None):
    """Convert ``fn`` to ONNX with tf2onnx.

    Input ``images`` and output ``logits`` (or ``mask``) keep the
    signature's names; dynamic dimensions stay dynamic. Layer norms,
    ``Dense`` layers on maps and exact GELUs are written as the ONNX ops
    ONNX Runtime runs as one kernel each (``export.onnx_graph``).

    Args:
        fn: ``tf.function`` from ``serving_function``.
        path: str. Output ``.onnx`` file.
        opset: int. ONNX opset.
        normalized_input: bool or None. Recorded for ``ExportedModel``
            in the model's metadata (``INPUT_PIXELS``).
    """
    try:
        import onnx
        import tf2onnx
    except ImportError as e:
        raise ImportError(
            "ONNX export needs `tf2onnx` and `onnx` "
            "(pip install 'keras-segformer[export]')."
        ) from e
    from tf2onnx import constants

    from keras_segformer.export import onnx_graph

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    # tf2onnx deep-copies the whole graph before each optimizer pass so it
    # can skip a failing one; that is most of its run time. Let failures
    # raise instead.
    catch_errors = os.environ.get(constants.ENV_TF2ONNX_CATCH_ERRORS)
    os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = "FALSE"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_proto, _ = tf2onnx.convert.from_function(
                fn,
                input_signature=fn.input_signature,
                opset=opset,
                custom_op_handlers={"Erfc": (_erfc_handler, [])},
                custom_rewriter=list(onnx_graph.REWRITERS),
            )
    finally:
        if catch_errors is None:
            del os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS]
        else:
            os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = catch_errors
    if normalized_input is not None:
        onnx.helper.set_model_props(
            model_proto, {INPUT_PIXELS: _pixels(normalized_input)}
        )
    write_atomic(path, lambda temp: onnx.save(model_proto, temp))


def _write_int8_onnx(fn, job):
    """The float ONNX file, then ONNX Runtime's static int8 quantization
    of it (``keras_segformer.export.onnx_quantize``)."""
    from keras_segformer.export import onnx_quantize

    with tempfile.TemporaryDirectory(prefix="keras_segformer_onnx_") as tmp:
        float_path = os.path.join(tmp, "float.onnx")
        write_onnx(fn, float_path, normalized_input=job["normalized_input"])
        batches = onnx_quantize.calibration_batches(
            job["representative_images"],
            job["input_dtype"],
            job["normalized_input"],
        )
        onnx_quantize.quantize_onnx(float_path, job["path"], batches)


def export_job(model, job, cache=None):
    """Write one artifact described by a checked job dict (see
    ``keras_segformer.export.api``).

    Args:
        model: ``keras.Model`` on the TensorFlow backend.
        job: dict with ``path``, ``format``, ``include_preprocessing``,
            ``include_postprocessing``, ``input_size``, ``input_dtype``,
            ``quantization``, ``representative_images`` (list of uint8
            arrays or None) and ``normalized_input``.
        cache: dict or None. Serving functions already traced for earlier
            jobs of the same model, reused when the graph options match.
    """
    options = {
        "include_preprocessing": job["include_preprocessing"],
        "include_postprocessing": job["include_postprocessing"],
        "input_dtype": job["input_dtype"],
        "input_size": (
            None if job["input_size"] is None else tuple(job["input_size"])
        ),
    }
    cache = {} if cache is None else cache
    key = tuple(sorted(options.items()))
    if key not in cache:
        cache[key] = serving_function(model, **options)
    fn = cache[key]
    if job["format"] == "tf_saved_model":
        write_saved_model(fn, job["path"], job["normalized_input"])
    elif job["format"] == "litert":
        write_tflite(
            fn,
            job["path"],
            quantization=job["quantization"],
            representative_images=job["representative_images"],
            normalized_input=job["normalized_input"],
        )
    elif job["format"] == "onnx" and job["quantization"] == "int8":
        _write_int8_onnx(fn, job)
    elif job["format"] == "onnx":
        write_onnx(fn, job["path"], normalized_input=job["normalized_input"])
    else:
        raise ValueError(f"Unknown export format {job['format']!r}.")
