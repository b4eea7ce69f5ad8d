"""Run exported artifacts on numpy images (checks, demos, tests).

Each format runs in its own runtime, independent of the Keras backend:
SavedModel in TensorFlow, TFLite in the TFLite interpreter
(``ai_edge_litert`` when installed, else ``tf.lite``), ONNX in
onnxruntime.
"""

import os
import warnings

import numpy as np

from keras_segformer.configs import COMMON, min_input_size
from keras_segformer.export.formats import INPUT_PIXELS

# The smallest image side any SegFormer takes (the variants share the
# patch embeddings and reduction ratios).
MIN_IMAGE_SIZE = min_input_size(
    COMMON["patch_sizes"], COMMON["strides"], COMMON["sr_ratios"]
)


def artifact_format(path):
    """``"tf_saved_model"``, ``"litert"`` or ``"onnx"``, from the path.

    Args:
        path: str or path-like. An exported artifact.

    Returns:
        str. The format's canonical name (``keras_segformer.export
        .formats``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "tf_saved_model"
        raise ValueError(f"{path!r} is a directory but not a SavedModel.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Exported model not found: {path!r}")
    if path.endswith(".tflite"):
        return "litert"
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
        tf = _runtime("tensorflow", "a TFLite file")
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter deprecation
        return Interpreter(model_path=path)


def _runtime(module, artifact):
    """Import the runtime of ``artifact``, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ModuleNotFoundError(
            f"Running {artifact} needs {module}, which is not installed: "
            "pip install 'keras-segformer[export]'.",
            name=module,
        ) from e


def _dims(shape):
    """A shape with None for every dynamic dimension (-1, None, a name)."""
    return tuple(
        int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None
        for d in shape
    )


class ExportedModel:
    """An exported artifact as a numpy function ``images -> output``.

    Args:
        path: str or path-like. SavedModel directory, ``.tflite`` or
            ``.onnx`` file written by ``export_model``.

    Attributes:
        format: str. The artifact's format (``"tf_saved_model"``,
            ``"litert"`` or ``"onnx"``).
        input_shape: tuple. ``(batch, height, width, channels)`` the
            artifact takes, None where any size goes.
        output_names: list of str. ``["logits"]``, ``["mask"]``, or one
            name per output of a model with several (an ``MiTBackbone``).
        output_name: str or None. The only output's name (None when
            there are several).
        input_dtype: numpy dtype of the ``images`` input.
        input_pixels: str or None. ``"raw"`` (0-255 pixels: integer
            images are taken) or ``"normalized"`` (float32 normalized
            images: integer ones are refused); None where the artifact
            does not record it (integer images are taken with a warning).

    Example:
    >>> run = ExportedModel("out/segformer.onnx")
    >>> logits = run(images)  # (B, ceil(H/4), ceil(W/4), K) float32
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.input_pixels = None  # an artifact that does not say
        self._warned = False
        self.format = artifact_format(self.path)
        if self.format == "tf_saved_model":
            tf = _runtime("tensorflow", "a SavedModel")
            self._loaded = tf.saved_model.load(self.path)
            fn = self._loaded.signatures["serving_default"]
            spec = fn.structured_input_signature[1]["images"]
            self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
            self.input_shape = _dims(
                -1 if d is None else d for d in spec.shape.as_list()
            )
            self.output_names = sorted(fn.structured_outputs)
            self._fn = fn
            pixels = getattr(self._loaded, INPUT_PIXELS, None)
            if pixels is not None:
                self.input_pixels = pixels.numpy().decode()
        elif self.format == "litert":
            interpreter = _tflite_interpreter(self.path)
            runner = interpreter.get_signature_runner()
            (detail,) = runner.get_input_details().values()
            self.input_dtype = np.dtype(detail["dtype"])
            signature = detail.get("shape_signature")
            if signature is None or not len(signature):
                signature = detail["shape"]
            self.input_shape = _dims(signature)
            self.output_names = sorted(runner.get_output_details())
            self._interpreter = interpreter
            self._fn = runner
        else:
            onnxruntime = _runtime("onnxruntime", "an ONNX file")
            session = onnxruntime.InferenceSession(
                self.path, providers=["CPUExecutionProvider"]
            )
            (inp,) = session.get_inputs()
            self.input_dtype = np.dtype(
                {"tensor(uint8)": "uint8", "tensor(float)": "float32"}[inp.type]
            )
            self._input_name = inp.name
            self.input_shape = _dims(inp.shape)
            self.output_names = [o.name for o in session.get_outputs()]
            self._fn = session
            props = session.get_modelmeta().custom_metadata_map
            self.input_pixels = props.get(INPUT_PIXELS)
        names = self.output_names
        self.output_name = names[0] if len(names) == 1 else None
        if self.input_dtype == np.uint8:
            self.input_pixels = "raw"

    def __call__(self, images):
        """Run the artifact.

        Args:
            images: array ``(batch, height, width, 3)``, cast to the
                artifact's input dtype.

        Returns:
            numpy array: logits or mask; a dict name -> array when the
            artifact has several outputs.

        Raises:
            ValueError: the images do not fit the artifact: not ``(batch,
                height, width, channels)``, another height and width than
                the fixed size it was exported for, another batch size than
                a fixed one, an empty batch, or smaller than the network
                takes; one line naming what the artifact takes (instead of
                the runtime's own error).
        """
        x = np.asarray(images)
        self._check(x.shape)
        self._check_pixels(x.dtype)
        x = np.ascontiguousarray(x.astype(self.input_dtype))
        if self.format == "tf_saved_model":
            out = self._fn(images=x)
            out = {k: v.numpy() for k, v in out.items()}
        elif self.format == "litert":
            out = self._fn(images=x)
        else:
            values = self._fn.run(None, {self._input_name: x})
            out = dict(zip(self.output_names, values))
        if self.output_name is not None:
            return out[self.output_name]
        return {name: out[name] for name in self.output_names}

    def _check_pixels(self, dtype):
        """Refuse integer pixels for an artifact that takes normalized
        float32 images (exported without preprocessing): cast, they
        would be segmented as garbage (the Keras model raises a
        TypeError); warn where the artifact does not say what it takes
        (exported by an earlier version, or a TFLite file)."""
        if self.input_pixels == "raw" or not (
            np.issubdtype(dtype, np.integer) or dtype == np.bool_
        ):
            return
        name = os.path.basename(os.path.normpath(self.path))
        said = (
            f"{name} takes normalized float32 images (ImageNet mean and "
            "std: keras_segformer.inference.normalize_image); received "
            f"{dtype} pixels. Normalize them first, or export with "
            "--include-preprocessing (include_preprocessing=True) to feed "
            "raw 0-255 pixels"
        )
        if self.input_pixels == "normalized":
            raise TypeError(f"{said}.")
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{name} does not record whether it takes raw or normalized "
                f"pixels: if it {said[len(name) + 1 :]}.",
                stacklevel=3,
            )

    def _check(self, shape):
        """Refuse images the artifact cannot take, in one line naming what
        it takes (the runtimes answer with their internals)."""
        batch, height, width, channels = self.input_shape
        takes = (
            f"{os.path.basename(os.path.normpath(self.path))} takes images "
            f"(batch, height, width, {channels}) of "
            + (
                f"{height}x{width} pixels (its fixed input size)"
                if height is not None
                else f"at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels"
            )
            + ("" if batch is None else f", {batch} at a time")
        )
        if len(shape) != 4 or (channels is not None and shape[3] != channels):
            raise ValueError(f"{takes}; received an array of shape {shape}.")
        if shape[0] == 0:
            raise ValueError(f"{takes}; received no images (batch 0).")
        if batch is not None and shape[0] != batch:
            raise ValueError(
                f"{takes}: it was exported for batch {batch}; received "
                f"{shape[0]} images (run them {batch} at a time)."
            )
        size = tuple(shape[1:3])
        if height is not None and size != (height, width):
            raise ValueError(
                f"{takes}; received {size[0]}x{size[1]}. Resize the images, "
                "or export without a fixed input size (input_size=None)."
            )
        if min(size) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"{takes}; received {size[0]}x{size[1]} (too small for the "
                "network)."
            )
