"""Export-time versions of the ops for the TFLite graph (TensorFlow only).

The layers compute the same function; only how it is spelled for the
TFLite converter and its CPU delegate (XNNPACK) changes:

- Static shapes. The training-time ops reshape with the batch size read
  from the tensor (``tf.shape``) and run N-d matmuls through
  ``tf.tensordot``; in TFLite that leaves ~300 shape ops (SHAPE, GATHER,
  REDUCE_PROD, PACK) and RESHAPEs with computed shapes, which XNNPACK does
  not take: the float B0 graph ran as 68 delegate partitions. Here every
  shape is a constant with ``-1`` for the batch (still resizable), and a
  projection is a 2-D matmul (FULLY_CONNECTED): 3 partitions.
- Float islands for int8. TFLite's int8 layer norm (SQUARED_DIFFERENCE,
  RSQRT), SOFTMAX and GELU have no XNNPACK kernels and their built-in
  kernels are slow (measured on a 2-core AMD EPYC: int8 softmax over
  16384x256 scores 156 ms against 3.4 ms in float; int8 layer norm over
  128x128x32 21 ms against 0.4 ms). They are traced under the name scope
  ``FLOAT_SCOPE``, which ``write_tflite`` keeps in float (dequantize ->
  XNNPACK float kernels -> quantize); so is the matmul after each
  softmax (int8 there broke deep models, see ``attention``); every other
  matmul, convolution and elementwise op stays int8.
"""

import contextlib
import math
import warnings

import tensorflow as tf

from keras_segformer.ops import attention as attention_ops
from keras_segformer.ops import nn
from keras_segformer.ops.dispatch import MODES

# Nodes under this name scope stay float in an int8 TFLite model.
FLOAT_SCOPE = "float_island"


def _static(shape):
    """The dimensions after the batch as Python ints, or None."""
    dims = shape[1:]
    if any(d is None for d in dims):
        return None
    return [int(d) for d in dims]


def reshape(x, shape):
    """``tf.reshape`` with a constant shape: the batch (``shape[0]``, read
    from a tensor) becomes ``-1`` when the rest of ``x``'s shape is static."""
    dims = _static(x.shape)
    shape = list(shape)
    rest = shape[1:]
    if dims is None or not all(isinstance(d, int) for d in rest):
        return tf.reshape(x, shape)
    if -1 in rest:  # the -1 after the batch, from the static sizes
        known = math.prod(d for d in rest if d != -1)
        rest[rest.index(-1)] = math.prod(dims) // known
    return tf.reshape(x, [-1, *rest])


def affine(x, kernel, bias):
    """``x @ kernel + bias`` over the last axis as a 2-D matmul."""
    dims = _static(x.shape)
    if dims is None or len(dims) < 2:
        return tf.matmul(x, kernel) + bias
    flat = tf.reshape(x, [-1, dims[-1]])
    y = tf.matmul(flat, kernel)
    if bias is not None:
        y = y + bias
    return tf.reshape(y, [-1, *dims[:-1], kernel.shape[-1]])


def dense(layer, x):
    """A ``keras.layers.Dense`` as ``affine`` (and its activation); a
    Keras-quantized or LoRA layer computes its own way."""
    if getattr(layer, "quantization_mode", None) or getattr(
        layer, "lora_enabled", False
    ):
        return layer(x)
    kernel, bias = nn.kernel_and_bias(layer)
    return layer.activation(affine(x, kernel, bias))


def layer_norm(layer, x):
    """Layer norm over the last axis (in float32), kept float in int8
    models."""
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    if axis not in (-1, len(x.shape) - 1, (-1,), (len(x.shape) - 1,)):
        return nn.layer_norm.generic(layer, x)
    with tf.name_scope(FLOAT_SCOPE):
        y = tf.cast(x, tf.float32)
        mean = tf.reduce_mean(y, axis=-1, keepdims=True)
        centered = y - mean
        variance = tf.reduce_mean(centered * centered, axis=-1, keepdims=True)
        y = centered * tf.math.rsqrt(variance + layer.epsilon)
        if layer.scale:
            y = y * tf.cast(layer.gamma, tf.float32)
        if layer.center:
            y = y + tf.cast(layer.beta, tf.float32)
        return tf.cast(y, x.dtype)


def gelu(x):
    """Exact GELU, kept float in int8 models (TFLite's int8 GELU is a
    built-in lookup table outside XNNPACK: B0 int8 ran 0.51x of float32
    with it, 0.44x with float GELU inside XNNPACK)."""
    with tf.name_scope(FLOAT_SCOPE):
        return tf.nn.gelu(x, approximate=False)


def attention(q, k, v, training=False):
    """Batched matmuls with the softmax and the matmul after it kept float
    in int8 models; one head with static sizes is a reshape, not a slice
    (STRIDED_SLICE is not delegated).

    ``probs @ v`` in int8 broke a random-weight B2 at 512x512 (argmax
    agreement with float32 1.5%, max logit difference 3.25; the attention
    output's error relative to float grew to 0.7-0.9 in every block,
    compounding over B2's 16 blocks): its attention is near-uniform over
    256 keys, so each probability (~0.004) sits within a few int8 steps of
    zero and the output, a small average of ``v``, is rounded in ``v``'s
    wide range. Float there: 93.0% (ONNX int8, which keeps the same
    matmul float, 95.1%)."""
    heads, dim = q.shape[2], q.shape[3]
    scale = tf.cast(dim**-0.5, q.dtype)
    single = heads == 1 and _static(q.shape) and _static(k.shape)
    if single:
        queries = q.shape[1]
        q, k, v = (reshape(t, [None, -1, dim]) for t in (q * scale, k, v))
    else:
        q, k, v = (tf.transpose(t, (0, 2, 1, 3)) for t in (q * scale, k, v))
    scores = tf.matmul(q, k, transpose_b=True)
    with tf.name_scope(FLOAT_SCOPE):
        probs = tf.nn.softmax(scores)
        out = tf.matmul(probs, v)
    if single:
        return reshape(out, [None, queries, 1, dim])
    return tf.transpose(out, (0, 2, 1, 3))


_REPLACEMENTS = (
    (nn.reshape, reshape),
    (nn.affine, affine),
    (nn.dense, dense),
    (nn.layer_norm, layer_norm),
    (nn.gelu, gelu),
    (attention_ops.attention, attention),
)


@contextlib.contextmanager
def tflite_ops():
    """Trace with the TFLite versions of the ops above (in every mode);
    the registry's own choice comes back on exit."""
    # Register the backend's fast versions first: registering clears an
    # op's looked-up functions, so a model never called before would
    # (on its first call, inside this block) drop the replacements: an
    # int8 model without float islands (every softmax int8).
    for op, _ in _REPLACEMENTS:
        op.implementation()
    saved = [(op, dict(op._resolved)) for op, _ in _REPLACEMENTS]
    try:
        for op, fn in _REPLACEMENTS:
            for mode in MODES:
                op._resolved[mode] = fn
        yield
    finally:
        for op, resolved in saved:
            op._resolved.clear()
            op._resolved.update(resolved)


def quantize_int8(converter):
    """The int8 model of ``converter`` (with its ``representative_dataset``
    set): calibrated, every node int8 except those under ``FLOAT_SCOPE``;
    float input and output.

    The converter's public int8 path quantizes every op that has an int8
    kernel; keeping chosen nodes float takes the two steps TFLite's own
    ``QuantizationDebugger`` uses (calibrate, then quantize with a
    denylist), which are not public API.

    Args:
        converter: ``tf.lite.TFLiteConverter``.

    Returns:
        bytes. The flatbuffer.
    """
    from tensorflow.lite.python import convert

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation
        interpreter = tf.lite.Interpreter(model_content=calibrated)
    float_nodes = [
        t["name"]
        for t in interpreter.get_tensor_details()
        if FLOAT_SCOPE in t["name"]
    ]
    return convert.mlir_quantize(calibrated, denylisted_nodes=float_nodes)
