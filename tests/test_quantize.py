"""Quantized exports: the TFLite graph XNNPACK runs whole, int8 LiteRT with
its float islands, int8 ONNX (ONNX Runtime's static QDQ quantization),
each against the float32 artifact of the same model.

TensorFlow graph work, the same from every backend: run on TensorFlow.
Speed is measured in docs/export.md, not asserted here.
"""

import collections

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from keras_segformer.export import ExportedModel, export_many  # noqa: E402
from keras_segformer.inference import normalize_image  # noqa: E402

pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="TensorFlow graph work, the same from every backend",
)
NUM_CLASSES = 3
SIZE = (64, 64)
# Share of pixels where the int8 artifact's class equals its float32
# peer's, on the briefly trained tiny model below (measured: LiteRT
# 0.99, ONNX 0.99; on the `make demo` model 0.993 and 0.998, docs/export.md).
MIN_AGREEMENT = 0.95


def _render_set(count, seed):
    from keras_segformer.data import synthetic

    pairs = [
        synthetic.render(np.random.default_rng([seed, i]), SIZE, NUM_CLASSES)
        for i in range(count)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny model trained briefly on synthetic shapes (so that its argmax
    means something), and its float32 / int8 artifacts at a fixed size."""
    keras.utils.set_random_seed(0)
    images, masks = _render_set(32, 0)
    x = np.stack([normalize_image(i) for i in images])
    y = np.stack(masks)[:, 2::4, 2::4].astype("int32")
    model = tiny_segformer(NUM_CLASSES)
    model.compile(
        optimizer=keras.optimizers.Adam(5e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, epochs=6, verbose=0)
    calibration, _ = _render_set(12, 1)
    out = tmp_path_factory.mktemp("quantize")
    names = ["float.tflite", "int8.tflite", "float.onnx", "int8.onnx"]
    specs = [
        {
            "path": out / name,
            "format": "litert" if name.endswith("tflite") else "onnx",
            "input_size": SIZE,
            "quantization": "int8" if name.startswith("int8") else None,
            "representative_images": (
                calibration if name.startswith("int8") else None
            ),
        }
        for name in names
    ]
    paths = dict(zip(names, export_many(model, specs)))
    return model, paths


def _tflite_ops(path):
    """``(op name, dtype of its first input)`` of every node."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return collections.Counter(
        (op["op_name"], tensors[op["inputs"][0]]["dtype"].__name__)
        for op in interpreter._get_ops_details()
    )


def test_tflite_graph_has_static_shapes(artifacts):
    """No shape arithmetic left for XNNPACK to refuse, yet the batch
    stays resizable and the numbers are the model's."""
    model, paths = artifacts
    ops = _tflite_ops(paths["float.tflite"])
    names = {name for name, _ in ops}
    assert not names & {"SHAPE", "GATHER", "PACK", "REDUCE_PROD"}, ops
    images, _ = _render_set(3, 2)
    x = np.stack([normalize_image(i) for i in images])
    got = ExportedModel(paths["float.tflite"])(x)  # batch 3
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_tflite_keeps_norms_softmax_gelu_float(artifacts):
    _, paths = artifacts
    ops = _tflite_ops(paths["int8.tflite"])
    for name in ("SOFTMAX", "GELU", "RSQRT"):
        assert (name, "float32") in ops, ops
        assert (name, "int8") not in ops, ops
    for name in ("FULLY_CONNECTED", "CONV_2D"):
        assert (name, "int8") in ops, ops
        assert (name, "float32") not in ops, ops
    # Per attention: q @ k int8, the softmax and probs @ v float.
    softmaxes = ops["SOFTMAX", "float32"]
    assert ops["BATCH_MATMUL", "int8"] == softmaxes, ops
    assert ops["BATCH_MATMUL", "float32"] == softmaxes, ops


def test_int8_onnx_is_qdq_with_float_softmax(artifacts):
    import onnx

    _, paths = artifacts
    graph = onnx.load(str(paths["int8.onnx"])).graph
    types = collections.Counter(node.op_type for node in graph.node)
    assert types["QuantizeLinear"] and types["DequantizeLinear"], types
    # The softmax's output is not quantized: ONNX Runtime would run it as
    # QLinearSoftmax, ~12x slower than the float one.
    softmax_outputs = {
        node.output[0] for node in graph.node if node.op_type == "Softmax"
    }
    assert softmax_outputs
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.input[0] not in softmax_outputs, node.name
    weights = {
        init.name: init.data_type for init in graph.initializer
    }  # int8 weights: the file holds no float32 matmul kernels
    assert onnx.TensorProto.INT8 in weights.values()


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_agrees_with_float32(artifacts, fmt):
    model, paths = artifacts
    images, masks = _render_set(6, 3)
    x = np.stack([normalize_image(i) for i in images])
    reference = ExportedModel(paths[f"float.{fmt}"])(x)
    expected = reference.argmax(-1)
    # The model must be meaningful for the agreement to mean anything.
    labels = np.stack(masks)[:, 2::4, 2::4]
    majority = np.bincount(labels.ravel()).max() / labels.size
    assert (expected == labels).mean() > majority + 0.1
    got = ExportedModel(paths[f"int8.{fmt}"])(x)
    assert got.shape == reference.shape and got.dtype == np.float32
    agreement = (got.argmax(-1) == expected).mean()
    print(f"int8 {fmt} argmax agreement: {agreement:.4f}")
    assert agreement >= MIN_AGREEMENT, agreement


def test_int8_onnx_records_that_it_takes_normalized_pixels(artifacts):
    # ONNX Runtime's quantization keeps the float file's metadata: integer
    # pixels are refused as for the float file (test_export.py).
    _, paths = artifacts
    assert ExportedModel(paths["int8.onnx"]).input_pixels == "normalized"


def _smooth_images(count, size, seed):
    """uint8 RGB images whose normalized values are coarse unit Gaussian
    noise, bilinearly upsampled (as the benchmark's)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    grid = (count, size[0] // 32 + 1, size[1] // 32 + 1, 3)
    noise = tf.image.resize(rng.standard_normal(grid), size).numpy()
    std, mean = np.array([0.229, 0.224, 0.225]), np.array([0.485, 0.456, 0.406])
    pixels = np.rint((noise * std + mean) * 255.0)
    return list(np.clip(pixels, 0, 255).astype(np.uint8))


def test_int8_tflite_agrees_on_a_deep_random_model(tmp_path):
    """B2's depths (3, 4, 6, 3) with random weights at 256x256: near-uniform
    attention over 64 keys, where ``probs @ v`` in int8 compounded over the
    16 blocks (B2 at 512x512: argmax agreement 0.015)."""
    from keras_segformer import build_segformer

    size = (256, 256)
    keras.utils.set_random_seed(0)
    model = build_segformer(
        5,
        decoder_hidden_size=32,
        depths=[3, 4, 6, 3],
        hidden_sizes=[16, 32, 40, 64],
        num_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
    )
    path = tmp_path / "deep_int8.tflite"
    export_many(
        model,
        [
            {
                "path": path,
                "format": "litert",
                "input_size": size,
                "quantization": "int8",
                "representative_images": _smooth_images(8, size, 1),
            }
        ],
    )
    # Never called before the export: its float islands are there all the
    # same (they were not: the first call registered the backend's ops).
    ops = _tflite_ops(path)
    assert ("SOFTMAX", "int8") not in ops and ("GELU", "int8") not in ops
    assert ops["BATCH_MATMUL", "float32"] == 16, ops
    x = np.stack([normalize_image(i) for i in _smooth_images(2, size, 2)])
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = ExportedModel(path)(x)
    # Random weights leave near-ties, so the logits are compared, not the
    # argmax: their error against their spread over the classes.
    error = np.abs(got - expected).mean() / expected.std(-1).mean()
    agreement = (got.argmax(-1) == expected.argmax(-1)).mean()
    print(f"deep random int8 tflite: error {error:.3f}, agree {agreement:.3f}")
    assert error < 0.25, error
