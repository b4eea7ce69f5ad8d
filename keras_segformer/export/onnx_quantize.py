"""int8 ONNX: ONNX Runtime's static quantization of a float ONNX file.

Called on the float ``.onnx`` that ``tf_export.write_onnx`` wrote, with
the calibration images of ``export_model(..., quantization="int8",
representative_images=...)``. The result is a QDQ model (QuantizeLinear /
DequantizeLinear pairs around int8 tensors) that ONNX Runtime runs on its
integer kernels; other runtimes read it too.

What is quantized: the inputs of the projections and convolutions
(MatMul, Conv), weights int8 per channel, activations uint8 (ONNX
Runtime's fast u8s8 kernels on x86; int8 activations ran B0 1.15x of
float32 on a 2-core AMD EPYC, uint8 0.72x). Layer norms, GELU, resizes
and the elementwise ops stay float: quantized, they only added
QuantizeLinear / DequantizeLinear round trips. The matmul after each
softmax stays float too: with its input quantized, ONNX Runtime runs the
softmax as QLinearSoftmax, which took ~12x the float softmax's time.
"""

import os
import tempfile

import numpy as np

# The op types whose inputs are quantized.
QUANTIZED_OPS = ("Conv", "MatMul")


def quantize_onnx(float_path, path, batches):
    """Write the int8 (QDQ) version of a float ONNX model.

    Args:
        float_path: str. The float ``.onnx`` file.
        path: str. Output ``.onnx`` file (may be ``float_path``).
        batches: iterable of arrays, each one input batch of the model
            (its ``images`` layout and dtype), for calibration.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ImportError(
            "int8 ONNX export needs onnxruntime "
            "(pip install 'keras-segformer[export]')."
        ) from e
    from keras_segformer.io_atomic import write_atomic

    class Images(CalibrationDataReader):
        def __init__(self, name, batches):
            self.name = name
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {self.name: batch}

    name = onnx.load(float_path, load_external_data=False).graph.input[0].name
    reader = Images(name, batches)
    with tempfile.TemporaryDirectory(prefix="keras_segformer_q_") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # Shape inference and ONNX Runtime's graph optimizations first, as
        # its quantization guide asks: the quantizer then sees fused ops.
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)

        after_softmax = _after_softmax(onnx.load(prepared).graph)

        def quantize(temp):
            quantize_static(
                prepared,
                temp,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=after_softmax,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )

        write_atomic(os.fspath(path), quantize)


def _after_softmax(graph):
    """The names of the MatMul nodes reading a Softmax's output."""
    producer = {out: node for node in graph.node for out in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and any(
            name in producer and producer[name].op_type == "Softmax"
            for name in node.input
        )
    ]


def calibration_batches(images, input_dtype, normalized_input):
    """One ``(1, H, W, 3)`` batch per calibration image, in the artifact's
    input layout (normalized pixels, or raw 0-255 of ``input_dtype``).

    Args:
        images: list of uint8 RGB arrays.
        input_dtype: str. The artifact's input dtype.
        normalized_input: bool. The artifact takes normalized pixels.

    Returns:
        generator of arrays.
    """
    from keras_segformer.inference.processing import normalize_image

    for rgb in images:
        if normalized_input:
            x = normalize_image(rgb)
        else:
            x = np.asarray(rgb).astype(input_dtype)
        yield np.ascontiguousarray(x[None])
