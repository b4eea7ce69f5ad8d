"""What an export can be: the formats, their options and the ONNX opset.

Shared by ``api.py`` (the checks, on every backend) and ``tf_export.py``
(the TensorFlow writers), so that neither imports the other's module.
"""

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float16", "int8")
INPUT_DTYPES = ("float32", "uint8")
# The opset every ONNX artifact is written with.
ONNX_OPSET = 17


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
