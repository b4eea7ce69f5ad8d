"""Export SegFormer models to SavedModel, TFLite (LiteRT) and ONNX.

Formats by Keras' names: ``"tf_saved_model"``, ``"litert"``, ``"onnx"``
(``"saved_model"`` and ``"tflite"`` are aliases); the option names and
their command-line aliases are listed in ``keras_segformer.export
.formats``.

Every format is written from one TensorFlow graph (``tf_export
.serving_function``): the model called with ``training=False``, plus the
optional in-graph pre-processing (raw 0-255 pixels in, ImageNet
normalization) and post-processing (bilinear resize of the logits to the
input size, argmax: int32 mask out). Under the TensorFlow backend this
happens in the calling process. Under JAX and PyTorch, ``export_model``
saves the model to a temporary ``.keras`` file and a worker process with
``KERAS_BACKEND=tensorflow`` rebuilds it (same layers, same weights) and
writes the artifacts: the exports need TensorFlow installed on every
backend, and only models whose layers are importable (keras_segformer's
own, or registered by an imported module) can cross over.

| Keras backend | SavedModel | TFLite (fp32/fp16/int8) | ONNX (fp32/int8) |
|---|---|---|---|
| TensorFlow | yes (in process) | yes (in process) | yes (tf2onnx) |
| JAX | yes (TF worker) | yes (TF worker) | yes (TF worker) |
| PyTorch | yes (TF worker) | yes (TF worker) | yes (TF worker) |

"TF worker": written by the TensorFlow worker process described above.
The TFLite graph is traced with export-time versions of some ops
(``tflite_graph``: static shapes, float islands in int8); int8 ONNX is
ONNX Runtime's static quantization of the float ONNX file
(``onnx_quantize``).

The tests require the logits of SavedModel, TFLite float32 and ONNX to
lie within 1e-4 of the Keras model of the running backend, and the
argmax of quantized TFLite to equal the float model's on 99.5% (float16)
and 90% (int8) of the pixels; the measured figures are in
docs/performance.md.

Artifacts: input ``images`` ``(batch, height, width, 3)`` (float32, or
uint8 with ``include_preprocessing``), height and width dynamic unless
``input_size`` fixes them; output ``logits`` (float32, ``(batch,
ceil(H/4), ceil(W/4), classes)``) or ``mask`` (int32, ``(batch, H,
W)``). The SavedModel has a ``serving_default`` signature, the TFLite file
the same signature (``interpreter.get_signature_runner()``), the ONNX
graph (opset 17) the same input and output names with dynamic axes. As
with Keras' own export, the reloaded SavedModel's ``serve(x)`` returns the
output tensor (a list for an ``MiTBackbone``'s four outputs).
``ExportedModel`` runs any of them on numpy arrays, and checks the input
against the size and batch the artifact was exported for.

Why not Keras' own ``model.export`` on JAX/PyTorch (tried on this model
with dynamic height and width, Keras 3.15): on JAX, ``"tf_saved_model"``
(jax2tf with symbolic shapes) fails in the attention's reshapes
(``InconclusiveDimensionOperation``) and ``"onnx"`` needs jax2onnx,
which traces with the same symbolic shapes; on PyTorch, ``"onnx"``
(TorchScript tracing, shapes become constants) fails in ``Conv2D`` and
``"tf_saved_model"`` fails in ``torch.export`` (dynamic-shape spec
mismatch). Going through the TensorFlow graph gives the same
dynamic-shape artifacts from every backend.

Example:
>>> from keras_segformer.export import export_model, ExportedModel
>>> export_model(model, "out/segformer.onnx", "onnx")
>>> logits = ExportedModel("out/segformer.onnx")(images)
>>> export_model(model, "out/segformer_int8.tflite", "litert",
...              include_preprocessing=True, include_postprocessing=True,
...              input_size=(512, 512), quantization="int8",
...              representative_images="data/val_images")
"""

# Imported on first use, so that the command line (which reads
# ``formats``) starts without Keras.
_PUBLIC = {
    "FORMATS": "formats",
    "FORMAT_ALIASES": "formats",
    "canonical_format": "formats",
    "calibration_images": "api",
    "export_many": "api",
    "export_model": "api",
    "keras_export": "keras_api",
    "load_model": "loading",
    "ExportedModel": "runtime",
    "artifact_format": "runtime",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
