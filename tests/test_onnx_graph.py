"""The ONNX graph ``write_onnx`` writes: Keras' TensorFlow patterns become
the ONNX ops ONNX Runtime runs as one kernel (``export/onnx_graph.py``),
with the same numbers, and only where the pattern proves it.

TensorFlow graph work (tf2onnx reads TensorFlow graphs): checked on the
TensorFlow backend; ``test_export.py`` checks the artifacts from every
backend.
"""

import collections

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer

from keras_segformer.layers.layer_norm import LayerNorm

pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf2onnx converts TensorFlow graphs (TensorFlow backend only)",
)

if BACKEND == "tensorflow":
    import onnx
    import tensorflow as tf

    from keras_segformer.export.tf_export import serving_function, write_onnx


def _convert(fn, shape, tmp_path):
    """``fn`` on float32 ``shape`` (None: dynamic) as ONNX: the op counts
    and an ONNX Runtime session."""
    spec = tf.TensorSpec(shape, tf.float32, name="x")
    function = tf.function(fn, input_signature=[spec], autograph=False)
    path = tmp_path / "graph.onnx"
    write_onnx(function, str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    session = ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    return ops, session


def _run(session, x):
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _randomize(layer, seed=0):
    """Weights far from their initial values (gamma 1, beta 0, bias 0
    would hide a scale or shift applied wrongly)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.5, 1.0, w.shape).astype("float32"))


@pytest.mark.parametrize(
    "layer_class", [LayerNorm, keras.layers.LayerNormalization]
)
@pytest.mark.parametrize("shape", [(None, None, 8), (None, None, None, 8)])
def test_layer_norm_is_one_node(layer_class, shape, tmp_path):
    layer = layer_class(epsilon=1e-5)
    layer.build(shape)
    _randomize(layer)
    ops, session = _convert(layer, shape, tmp_path)
    assert ops["LayerNormalization"] == 1
    assert not ops["ReduceMean"] and not ops["Sqrt"]
    rng = np.random.default_rng(1)
    # A mean far from zero and a small spread: a variance computed as
    # E[x^2] - E[x]^2 would lose digits here.
    x = rng.normal(3.0, 0.5, (2, 5, 7, 8)[-len(shape) :]).astype("float32")
    want = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(_run(session, x), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "fresh", ["gamma", "beta", "both"], ids=["ones", "zeros", "initial"]
)
def test_layer_norm_with_initial_weights_is_one_node(fresh, tmp_path):
    # A freshly built layer (a model before training) scales by ones and
    # shifts by zeros: still one LayerNormalization, the same numbers.
    shape = (None, None, 8)
    layer = LayerNorm(epsilon=1e-5)
    layer.build(shape)
    _randomize(layer)
    if fresh in ("gamma", "both"):
        layer.gamma.assign(np.ones(8, "float32"))
    if fresh in ("beta", "both"):
        layer.beta.assign(np.zeros(8, "float32"))
    ops, session = _convert(layer, shape, tmp_path)
    assert ops["LayerNormalization"] == 1
    assert not ops["ReduceMean"] and not ops["Sqrt"]
    x = np.random.default_rng(2).normal(3.0, 0.5, (2, 5, 8)).astype("float32")
    want = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(_run(session, x), want, atol=2e-5, rtol=0)


def test_layer_norm_over_another_axis_is_left_decomposed(tmp_path):
    layer = keras.layers.LayerNormalization(axis=1, epsilon=1e-5)
    shape = (None, 6, None, 8)
    layer.build(shape)
    _randomize(layer)
    ops, session = _convert(layer, shape, tmp_path)
    assert not ops["LayerNormalization"]
    x = np.random.default_rng(1).normal(size=(2, 6, 5, 8)).astype("float32")
    want = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(_run(session, x), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "shape", [(None, None, None, 8), (1, 5, 7, 8)], ids=["dynamic", "fixed"]
)
def test_dense_on_a_map_is_one_matmul(shape, tmp_path):
    layer = keras.layers.Dense(6)
    layer.build(shape)
    _randomize(layer)
    ops, session = _convert(layer, shape, tmp_path)
    assert ops["MatMul"] == 1
    # No flattening to 2-D and back, no shape arithmetic.
    assert not ops["Reshape"] and not ops["ReduceProd"] and not ops["Shape"]
    x = np.random.default_rng(1).normal(size=(1, 5, 7, 8)).astype("float32")
    want = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(_run(session, x), want, atol=2e-5, rtol=0)


def test_tensordot_over_another_axis_is_left_alone(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")

    def contract_axis_1(x):  # (batch, 5, 4) -> (batch, 4, 3)
        return tf.tensordot(x, tf.constant(kernel), [[1], [0]])

    ops, session = _convert(contract_axis_1, (None, 5, 4), tmp_path)
    assert ops["Reshape"] >= 2  # tf2onnx's own conversion of tensordot
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype("float32")
    want = np.tensordot(x, kernel, [[1], [0]])
    np.testing.assert_allclose(_run(session, x), want, atol=2e-5, rtol=0)


def test_gelu_becomes_onnx_runtime_gelu(tmp_path):
    def gelu(x):
        return keras.ops.gelu(x, approximate=False)

    ops, session = _convert(gelu, (None, None), tmp_path)
    assert ops["Erf"] == 1 and not ops["Neg"] and not ops["Sub"]
    x = np.linspace(-12, 12, 4001, dtype="float32").reshape(1, -1)
    want = keras.ops.convert_to_numpy(gelu(x))
    np.testing.assert_allclose(_run(session, x), want, atol=1e-6, rtol=0)
    # ONNX Runtime's graph optimizer recognizes the pattern.
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(
        str(tmp_path / "graph.onnx"),
        options,
        providers=["CPUExecutionProvider"],
    )
    optimized = onnx.load(options.optimized_model_filepath)
    assert [node.op_type for node in optimized.graph.node] == ["Gelu"]


@pytest.mark.parametrize("trained", [True, False], ids=["trained", "fresh"])
def test_segformer_graph(trained, tmp_path):
    model = tiny_segformer(num_classes=3)
    # A fresh model (the benchmark's, layer norms scaling by ones and
    # shifting by zeros) and a trained one: one node per layer norm.
    for layer in model._flatten_layers() if trained else ():
        if not layer._flatten_layers(include_self=False):
            _randomize(layer, seed=len(layer.name))
    norms = sum(
        isinstance(layer, keras.layers.LayerNormalization)
        for layer in model._flatten_layers()
    )
    path = tmp_path / "model.onnx"
    write_onnx(serving_function(model), str(path))
    graph = onnx.load(str(path))
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    assert ops["LayerNormalization"] == norms > 0
    for gone in ("ReduceMean", "ReduceProd", "Sqrt", "Reciprocal", "Neg"):
        assert not ops[gone], gone
    # Dynamic height and width stay dynamic.
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False] * 3 + [True]
    session = ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).normal(size=(1, 61, 83, 3))
    x = x.astype("float32")
    want = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    np.testing.assert_allclose(_run(session, x), want, atol=1e-4, rtol=0)
