"""Run exported artifacts on numpy images (checks, demos, tests).

Each format runs in its own runtime, independent of the Keras backend:
SavedModel in TensorFlow, TFLite in the TFLite interpreter
(``ai_edge_litert`` when installed, else ``tf.lite``), ONNX in
onnxruntime.
"""

import os
import warnings

import numpy as np


def artifact_format(path):
    """``"saved_model"``, ``"tflite"`` or ``"onnx"``, from the path.

    Args:
        path: str or path-like. An exported artifact.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "saved_model"
        raise ValueError(f"{path!r} is a directory but not a SavedModel.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Exported model not found: {path!r}")
    if path.endswith(".tflite"):
        return "tflite"
    if path.endswith(".onnx"):
        return "onnx"
    raise ValueError(
        f"Cannot tell the format of {path!r}: expected a SavedModel "
        "directory, a .tflite or an .onnx file."
    )


def _tflite_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter deprecation
        return Interpreter(model_path=path)


class ExportedModel:
    """An exported artifact as a numpy function ``images -> output``.

    Args:
        path: str or path-like. SavedModel directory, ``.tflite`` or
            ``.onnx`` file written by ``export_model``.

    Attributes:
        format: str. The artifact's format.
        output_names: list of str. ``["logits"]``, ``["mask"]``, or one
            name per output of a model with several (an ``MiTBackbone``).
        output_name: str or None. The only output's name (None when
            there are several).
        input_dtype: numpy dtype of the ``images`` input.

    Example:
    >>> run = ExportedModel("out/segformer.onnx")
    >>> logits = run(images)  # (B, ceil(H/4), ceil(W/4), K) float32
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.format = artifact_format(self.path)
        if self.format == "saved_model":
            import tensorflow as tf

            self._loaded = tf.saved_model.load(self.path)
            fn = self._loaded.signatures["serving_default"]
            spec = fn.structured_input_signature[1]["images"]
            self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
            self.output_names = sorted(fn.structured_outputs)
            self._fn = fn
        elif self.format == "tflite":
            interpreter = _tflite_interpreter(self.path)
            runner = interpreter.get_signature_runner()
            (detail,) = runner.get_input_details().values()
            self.input_dtype = np.dtype(detail["dtype"])
            self.output_names = sorted(runner.get_output_details())
            self._interpreter = interpreter
            self._fn = runner
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(
                self.path, providers=["CPUExecutionProvider"]
            )
            (inp,) = session.get_inputs()
            self.input_dtype = np.dtype(
                {"tensor(uint8)": "uint8", "tensor(float)": "float32"}[inp.type]
            )
            self._input_name = inp.name
            self.output_names = [o.name for o in session.get_outputs()]
            self._fn = session
        names = self.output_names
        self.output_name = names[0] if len(names) == 1 else None

    def __call__(self, images):
        """Run the artifact.

        Args:
            images: array ``(batch, height, width, 3)``, cast to the
                artifact's input dtype.

        Returns:
            numpy array: logits or mask; a dict name -> array when the
            artifact has several outputs.
        """
        x = np.ascontiguousarray(np.asarray(images).astype(self.input_dtype))
        if self.format == "saved_model":
            out = self._fn(images=x)
            out = {k: v.numpy() for k, v in out.items()}
        elif self.format == "tflite":
            out = self._fn(images=x)
        else:
            values = self._fn.run(None, {self._input_name: x})
            out = dict(zip(self.output_names, values))
        if self.output_name is not None:
            return out[self.output_name]
        return {name: out[name] for name in self.output_names}
