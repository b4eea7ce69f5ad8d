"""What an export can be: the formats, their options and the ONNX opset.

Shared by ``api.py`` (the checks, on every backend), ``tf_export.py``
(the TensorFlow writers) and the command line, so that neither imports
the other's module; imports nothing (the command line reads it before
Keras is imported).

One word for each format and option, Keras' own where Keras has one, in
``export_model``, ``model.export`` and the command line; the older
spellings still work as aliases:

| canonical (Python / CLI) | alias |
|---|---|
| format ``"tf_saved_model"`` | ``"saved_model"`` |
| format ``"litert"`` | ``"tflite"`` |
| ``include_preprocessing`` / ``--include-preprocessing`` | ``--raw-input`` |
| ``include_postprocessing`` / ``--include-postprocessing`` | ``--argmax`` |
| ``quantization`` / ``--quantization`` | ``--quantize`` |
| ``representative_images`` / ``--representative-images`` | ``--calibration`` |
"""

# Keras' names (``model.export(format=...)``).
FORMATS = ("tf_saved_model", "litert", "onnx")
# Older spellings -> the canonical name.
FORMAT_ALIASES = {"saved_model": "tf_saved_model", "tflite": "litert"}
# Option -> its command-line aliases (the flag is the option's name with
# dashes: --include-preprocessing ...).
OPTION_ALIASES = {
    "include_preprocessing": ("--raw-input",),
    "include_postprocessing": ("--argmax",),
    "quantization": ("--quantize",),
    "representative_images": ("--calibration",),
}
QUANTIZATIONS = ("float16", "int8")
# The formats each quantization is written for: int8 ONNX is ONNX
# Runtime's static quantization (QDQ) of the float ONNX file.
QUANTIZED_FORMATS = {"float16": ("litert",), "int8": ("litert", "onnx")}
INPUT_DTYPES = ("float32", "uint8")
# The opset every ONNX artifact is written with.
ONNX_OPSET = 17
# What an artifact takes, recorded in it for ``ExportedModel``: "raw"
# (0-255 pixels) or "normalized" (float32 ImageNet-normalized pixels).
# An ONNX file's metadata key; a SavedModel's string variable.
INPUT_PIXELS = "keras_segformer_input_pixels"


def model_normalizes(model):
    """Whether the model takes raw 0-255 pixels itself
    (``include_preprocessing=True`` backbone).

    Args:
        model: ``keras.Model``.

    Returns:
        bool.
    """
    backbone = getattr(model, "backbone", None)
    return bool(getattr(backbone, "include_preprocessing", False))


def canonical_format(format):
    """The canonical name of an export format (an alias is translated).

    Args:
        format: str. ``"tf_saved_model"``, ``"litert"``, ``"onnx"``, or an
            alias (``"saved_model"``, ``"tflite"``).

    Returns:
        str. One of ``FORMATS``.

    Raises:
        ValueError: an unknown format, naming the accepted ones.

    Example:
    >>> canonical_format("tflite")
    'litert'
    """
    name = FORMAT_ALIASES.get(format, format)
    if name not in FORMATS:
        aliases = ", ".join(f"{a!r}" for a in FORMAT_ALIASES)
        raise ValueError(
            f"Unknown export format {format!r}. Expected one of {FORMATS} "
            f"(aliases: {aliases})."
        )
    return name
