"""Keras' ``model.export(filepath, format=...)`` for the task models,
written by ``export_model`` so that it works on every backend.

Keras' own ``Model.export`` traces the model with the running backend
(jax2tf, torch.export, TorchScript), which fails on SegFormer's dynamic
height and width under JAX and PyTorch; under TensorFlow its ONNX file is
rejected by onnxruntime (Keras 3.15). ``keras_export`` takes Keras'
arguments, passes them to ``export_model`` and writes the same artifacts
from every backend: ``"tf_saved_model"``, ``"litert"``, ``"onnx"`` (the
same names as ``export_model``'s; ``"saved_model"`` and ``"tflite"`` are
aliases). ``"openvino"`` and ``"torch"`` are refused. As with Keras, the
reloaded SavedModel's ``serve(x)`` returns the output tensor (a list for
a model with several outputs); the ``serving_default`` signature, the
TFLite signature and the ONNX graph name the input and outputs
(``images``; ``logits`` or ``mask``; an ``MiTBackbone``'s
``stage1_norm`` ... ``stage4_norm``).
"""

import os

from keras_segformer.export.api import export_model
from keras_segformer.export.formats import (
    FORMAT_ALIASES,
    FORMATS,
    INPUT_DTYPES,
    ONNX_OPSET,
    canonical_format,
)

# export_model's options, also accepted by ``model.export``.
EXTRA_OPTIONS = (
    "include_preprocessing",
    "include_postprocessing",
    "quantization",
    "representative_images",
    "input_dtype",
)
# tf.lite.Optimize members that all mean "quantize" (the last two are
# deprecated aliases of DEFAULT).
_OPTIMIZE_DEFAULT = {"DEFAULT", "OPTIMIZE_FOR_SIZE", "OPTIMIZE_FOR_LATENCY"}
_ALTERNATIVE = (
    "keras_segformer.export.export_model(model, path, format, ...) "
    f"(formats {FORMATS})"
)


def _enum_name(value):
    # tf.lite enums by their value, without importing TensorFlow.
    return str(getattr(value, "value", value))


def _litert_quantization(optimizations, target_spec, quantization):
    """export_model's ``quantization`` for Keras' LiteRT converter options.

    ``optimizations=[tf.lite.Optimize.DEFAULT]`` with
    ``target_spec.supported_types=[tf.float16]`` is float16 quantization;
    ``optimizations`` alone goes with an explicit ``quantization``; other
    combinations have no ``export_model`` equivalent.
    """
    import keras

    optimize = {_enum_name(o) for o in optimizations or ()}
    unknown = sorted(optimize - _OPTIMIZE_DEFAULT)
    if unknown:
        raise ValueError(
            f"LiteRT option `optimizations` {unknown} is not supported. "
            "Expected [tf.lite.Optimize.DEFAULT] (with float16 "
            "`target_spec.supported_types`) or nothing."
        )
    types = set()
    if target_spec is not None:
        ops = {_enum_name(o) for o in getattr(target_spec, "supported_ops", ())}
        if ops - {"TFLITE_BUILTINS"}:
            raise ValueError(
                "LiteRT option `target_spec.supported_ops` "
                f"{sorted(ops)} is not supported: the export uses TFLite "
                "builtin ops only (int8 kernels with "
                'quantization="int8"). Use ' + _ALTERNATIVE + "."
            )
        types = {
            keras.backend.standardize_dtype(t)
            for t in getattr(target_spec, "supported_types", ()) or ()
        }
        if types - {"float16"}:
            raise ValueError(
                "LiteRT option `target_spec.supported_types` "
                f"{sorted(types)} is not supported. Expected [tf.float16] "
                '(= quantization="float16") or nothing.'
            )
    if types == {"float16"} and quantization not in (None, "float16"):
        raise ValueError(
            f"quantization={quantization!r} contradicts the LiteRT option "
            "`target_spec.supported_types=[tf.float16]`."
        )
    if not optimize:
        if types and quantization is None:
            raise ValueError(
                "LiteRT option `target_spec.supported_types=[tf.float16]` "
                "needs `optimizations=[tf.lite.Optimize.DEFAULT]` "
                '(or pass quantization="float16").'
            )
        return quantization
    if types == {"float16"}:
        return "float16"
    if quantization is not None:
        return quantization
    raise ValueError(
        "LiteRT option `optimizations=[tf.lite.Optimize.DEFAULT]` alone "
        "asks for dynamic-range quantization, which this export does not "
        'write. Pass quantization="float16" (or target_spec.supported_'
        'types=[tf.float16]), or quantization="int8" with '
        "representative_images=..., or use " + _ALTERNATIVE + "."
    )


def _spec_shape(spec):
    shape = spec.shape
    if hasattr(shape, "as_list"):  # tf.TensorShape
        shape = shape.as_list() if shape.rank is not None else None
    if shape is None:
        return None
    return tuple(None if d is None else int(d) for d in shape)


def _signature_options(model, input_signature):
    """``input_size`` and ``input_dtype`` from Keras' ``input_signature``."""
    import keras

    spec = input_signature
    if isinstance(spec, (list, tuple)):
        if len(spec) != 1:
            raise ValueError(
                "`input_signature` must hold one spec (the images input). "
                f"Received {len(spec)} entries: {input_signature!r}"
            )
        (spec,) = spec
    if not (hasattr(spec, "shape") and hasattr(spec, "dtype")):
        raise TypeError(
            "`input_signature` must be a keras.InputSpec, tf.TensorSpec or "
            "keras.KerasTensor (or a list of one). Received: "
            f"{type(spec).__name__}"
        )
    shape = _spec_shape(spec)
    channels = model.input.shape[-1]
    if (
        shape is None
        or len(shape) != 4
        or shape[3] not in (None, channels)
        or (shape[1] is None) != (shape[2] is None)
    ):
        raise ValueError(
            "`input_signature` must have shape (batch, height, width, "
            f"{channels}), height and width both fixed or both None. "
            f"Received: {shape}"
        )
    input_size = None if shape[1] is None else shape[1:3]
    dtype = spec.dtype
    if dtype is not None:
        dtype = keras.backend.standardize_dtype(dtype)
        if dtype not in INPUT_DTYPES:
            raise ValueError(
                f"`input_signature` dtype must be one of {INPUT_DTYPES}. "
                f"Received: {dtype!r}"
            )
    return input_size, dtype


def export_options(model, filepath, format, input_signature=None, **kwargs):
    """``export_model`` keyword arguments for Keras' ``export`` arguments.

    Args: see ``keras_export``.

    Returns:
        dict with ``path``, ``format`` and the options of ``export_model``.
    """
    if format not in FORMATS and format not in FORMAT_ALIASES:
        raise ValueError(
            f"Unsupported export format {format!r} for {model.name}: "
            f"model.export writes {FORMATS} on every backend (aliases "
            f"{tuple(FORMAT_ALIASES)}). Other formats (openvino, torch) are "
            "not available; see also " + _ALTERNATIVE + "."
        )
    format = canonical_format(format)
    options = {k: kwargs.pop(k) for k in EXTRA_OPTIONS if k in kwargs}
    if format == "litert":
        if not os.fspath(filepath).endswith(".tflite"):
            raise ValueError(
                "The LiteRT export requires the filepath to end with "
                f"'.tflite'. Received: {os.fspath(filepath)!r}"
            )
        if "optimizations" in kwargs or "target_spec" in kwargs:
            options["quantization"] = _litert_quantization(
                kwargs.pop("optimizations", None),
                kwargs.pop("target_spec", None),
                options.get("quantization"),
            )
    if format == "onnx":
        opset = kwargs.pop("opset_version", None)
        if opset not in (None, ONNX_OPSET):
            raise ValueError(
                f"`opset_version` must be {ONNX_OPSET} (the opset the "
                f"export is tested with). Received: {opset!r}"
            )
    if kwargs:
        hint = ""
        if "representative_dataset" in kwargs:
            hint = (
                ' For int8, pass quantization="int8" and '
                "representative_images (uint8 RGB images or a folder)."
            )
        raise ValueError(
            f"Unsupported option(s) {sorted(kwargs)} for "
            f"model.export(format={format!r}). It accepts verbose, "
            f"input_signature, {', '.join(EXTRA_OPTIONS)}"
            + (
                ", optimizations and target_spec (float16)"
                if format == "litert"
                else ", opset_version"
                if format == "onnx"
                else ""
            )
            + f".{hint} See also {_ALTERNATIVE}."
        )
    if input_signature is not None:
        input_size, dtype = _signature_options(model, input_signature)
        given = options.get("input_dtype")
        if dtype is not None and given is not None and dtype != given:
            raise ValueError(
                f"input_dtype={given!r} contradicts the `input_signature` "
                f"dtype {dtype!r}."
            )
        options["input_size"] = input_size
        if dtype is not None:
            options["input_dtype"] = dtype
    return {"path": filepath, "format": format, **options}


def _outputs(options, model):
    size = options.get("input_size") or (None, None)
    if options.get("include_postprocessing"):
        return f"mask (None, {size[0]}, {size[1]}) int32"
    several = isinstance(model.output, (list, tuple))
    if size[0] is None:
        shapes = [y.shape for y in model.outputs]
    else:
        shapes = model.compute_output_shape((None, *size, 3))
        shapes = list(shapes) if several else [shapes]
    names = model.output_names if several else ["logits"]
    return ", ".join(
        f"{name} {tuple(shape)} float32" for name, shape in zip(names, shapes)
    )


def _summary(path, options, model):
    size = options.get("input_size") or (None, None)
    dtype = options.get("input_dtype") or (
        "uint8" if options.get("include_preprocessing") else "float32"
    )
    return (
        f"Saved artifact at '{path}'. Signature 'serving_default': "
        f"images (None, {size[0]}, {size[1]}, 3) {dtype} -> "
        f"{_outputs(options, model)}."
    )


def keras_export(
    model,
    filepath,
    format="tf_saved_model",
    verbose=None,
    input_signature=None,
    **kwargs,
):
    """Keras' ``Model.export`` written by ``export_model`` (any backend).

    The artifact takes ``images`` ``(batch, height, width, 3)`` and returns
    ``logits`` (or ``mask`` with ``include_postprocessing``); height and
    width are dynamic unless ``input_signature`` fixes them, the batch is
    always dynamic. As with Keras, the reloaded SavedModel's ``serve(x)``
    returns the tensor (a list for several outputs); its
    ``serving_default`` signature and the TFLite and ONNX signatures return
    the named outputs (``{"logits": ...}``).

    Args:
        model: ``keras.Model`` taking images: ``SegFormer``,
            ``MiTClassifier``, or ``MiTBackbone`` (one output per stage,
            named after its output layers).
        filepath: str or path-like. A directory (``"tf_saved_model"``), a
            ``.tflite`` file (``"litert"``) or a file (``"onnx"``).
        format: str. ``"tf_saved_model"``, ``"litert"`` or ``"onnx"``
            (aliases: ``"saved_model"``, ``"tflite"``).
        verbose: bool or None. Print the saved path and signature (None:
            True, as Keras).
        input_signature: None, or one ``keras.InputSpec`` /
            ``tf.TensorSpec`` / ``keras.KerasTensor`` (or a list of one)
            of shape ``(None, H, W, 3)``: fixed ``H, W`` fix the input
            size; dtype ``float32`` or ``uint8`` (raw pixels, with
            ``include_preprocessing=True`` unless the backbone normalizes).
        **kwargs: LiteRT: ``optimizations`` and ``target_spec`` (only
            float16 quantization maps); ONNX: ``opset_version`` (17). Any
            format: ``export_model``'s ``include_preprocessing``,
            ``include_postprocessing``, ``quantization``,
            ``representative_images``, ``input_dtype``. Other options raise
            a ``ValueError``.

    Returns:
        str. The absolute output path.

    Example:
    >>> model.export("out/segformer", format="tf_saved_model")
    >>> spec = keras.InputSpec(shape=(None, 512, 512, 3))
    >>> model.export("out/segformer.tflite", format="litert",
    ...              input_signature=[spec])
    """
    options = export_options(
        model, filepath, format, input_signature=input_signature, **kwargs
    )
    path = export_model(model, **options)
    if verbose is None or verbose:
        print(_summary(path, options, model))
    return path
