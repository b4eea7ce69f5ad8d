"""TensorFlow fast versions, measured on CPU (the 2-core development
machine), and the in-graph input check (needed on every device).

The Keras layers already map to fused oneDNN kernels, so dense and the
convolutions need nothing here.
"""

import numpy as np
import tensorflow as tf
from keras import ops, tree

from keras_segformer.ops import attention as attention_ops
from keras_segformer.ops import checks, inference, losses, resize
from keras_segformer.ops import optimizer as optimizer_ops
from keras_segformer.ops.dispatch import DEVICE_KINDS

try:  # TensorFlow's executor switch for eager function calls (private)
    from tensorflow.python.eager.context import function_executor_type
except ImportError:  # pragma: no cover (a TensorFlow that moved it)
    function_executor_type = None


@attention_ops.attention.register("tensorflow", "cpu")
def attention(q, k, v, training=False):
    """Batched ``tf.matmul``: Keras' TensorFlow ``dot_product_attention``
    goes through ``tf.einsum``, which transposes every operand; with one
    head (stage 1, the longest sequence) no transpose is needed at all.
    The scale is applied to the queries (``dim`` wide) rather than the
    scores (``keys`` wide)."""
    heads = q.shape[2]
    scale = ops.cast(q.shape[-1] ** -0.5, q.dtype)
    if heads == 1:
        scores = tf.matmul(q[:, :, 0] * scale, k[:, :, 0], transpose_b=True)
        probs = tf.cast(tf.nn.softmax(tf.cast(scores, "float32")), v.dtype)
        return tf.matmul(probs, v[:, :, 0])[:, :, None]
    q, k, v = (tf.transpose(t, (0, 2, 1, 3)) for t in (q * scale, k, v))
    scores = tf.matmul(q, k, transpose_b=True)
    probs = tf.cast(tf.nn.softmax(tf.cast(scores, "float32")), v.dtype)
    return tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3))


@resize.resize_bilinear.register("tensorflow", "cpu")
def resize_bilinear(x, size):
    """``tf.image.resize``: one 2-D kernel, symbolic sizes accepted."""
    out = tf.image.resize(x, size, method="bilinear", antialias=False)
    return tf.cast(out, x.dtype)  # tf.image.resize returns float32


@losses.softmax_cross_entropy.register("tensorflow", "cpu")
def softmax_cross_entropy(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, "int32"), logits=logits
    )


@losses.argmax.register("tensorflow", "cpu")
def argmax(x, axis=-1):
    return tf.argmax(x, axis=axis, output_type="int32")


@optimizer_ops.adamw_update.register("tensorflow", "cpu")
def adamw_update(
    variables,
    grads,
    momentums,
    velocities,
    alpha,
    decay,
    beta_1,
    beta_2,
    epsilon,
    velocity_hats=None,
):
    """TensorFlow's fused Adam kernel, one op per variable
    (``ResourceApplyAdam``, ``...WithAmsgrad``) instead of a dozen: a
    first training step of B0 traces ~2,500 fewer graph ops (the time
    saved: docs/design.md).

    The kernel computes Keras' formulas with ``alpha`` as its learning
    rate (beta powers 0: its own bias correction is then 1), except that
    it forms ``1 - beta`` in the variable's dtype from the rounded
    ``beta``, where Keras rounds ``1 - beta``: for 0.999 in float32 that is
    1.3e-5 apart relatively, a second-moment step 1.3e-5 smaller (Keras'
    ``beta_2`` read as 0.99900001). Float32 and float64 only (its
    bfloat16 kernel returns garbage); other dtypes take the generic
    version.
    """
    dtype = alpha.dtype
    if dtype not in (tf.float32, tf.float64):
        return optimizer_ops.adamw_update.generic(
            variables,
            grads,
            momentums,
            velocities,
            alpha,
            decay,
            beta_1,
            beta_2,
            epsilon,
            velocity_hats,
        )
    zero = tf.zeros((), dtype)
    constants = {
        name: tf.constant(value, dtype)
        for name, value in (
            ("beta1", beta_1),
            ("beta2", beta_2),
            ("epsilon", epsilon),
        )
    }
    hats = velocity_hats or [None] * len(variables)
    for variable, grad, m, v, v_hat in zip(
        variables, grads, momentums, velocities, hats
    ):
        if decay is not None:
            variable.assign_sub(variable * decay)
        # Keras' TensorFlow variables give their tf.Variable's handle (under
        # a tf.distribute update: the current device's copy).
        common = dict(
            var=variable.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=zero,
            beta2_power=zero,
            lr=alpha,
            grad=tf.cast(grad, dtype),
            **constants,
        )
        if v_hat is None:
            tf.raw_ops.ResourceApplyAdam(**common)
        else:
            tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=v_hat.handle, **common)


@checks.assert_image_size.register("tensorflow", *DEVICE_KINDS, always=True)
def assert_image_size(x, min_size, unknown):
    """The checks of ``layers.input_check.check_image_shape`` as graph ops.

    Keras compiles its predict, test and train steps with
    ``tf.function(reduce_retracing=True)``: after a few sizes the step is
    traced once with unknown batch, height and width and reused for every
    later size, so a Python check sees None. The assertions run on every
    call of the graph.
    """
    shape = tf.shape(x)
    asserts = []
    if unknown[0]:
        asserts.append(
            tf.debugging.Assert(
                shape[0] > 0,
                ["The batch holds no images. Received shape:", shape],
            )
        )
    if unknown[1] or unknown[2]:
        asserts.append(
            tf.debugging.Assert(
                tf.reduce_min(shape[1:3]) >= min_size,
                [
                    "Image is too small: this network needs at least "
                    f"{min_size}x{min_size} pixels. Received shape:",
                    shape,
                ],
            )
        )
    # XLA compiles Assert to nothing, but compiles each concrete size
    # and rejects a slice out of bounds: this slice needs one image of
    # min_size x min_size (its message is TensorFlow's own).
    with tf.control_dependencies(asserts):
        guard = tf.slice(x, [0, min_size - 1, min_size - 1, 0], [1, 1, 1, -1])
    with tf.control_dependencies([guard]):
        return tf.identity(x)


@inference.eager_calls_first.register("tensorflow", "cpu")
def eager_calls_first(x):
    """1 (see the op) in eager execution (no ``tf.function`` being
    traced), outside a ``tf.distribute`` strategy, on a NumPy array or
    eager tensor."""
    if (
        tf.executing_eagerly()
        and isinstance(x, (np.ndarray, tf.Tensor))
        and not tf.distribute.has_strategy()
    ):
        return 1
    return None


@inference.compiled_forward.register("tensorflow", "cpu")
def compiled_forward(model, example, variables):
    """A ``tf.function`` traced once for every batch and size: the input
    signature fixes only the rank, channels and dtype. The graph reads
    ``variables`` by reference: their current values."""
    shape = (None,) * (len(example.shape) - 1) + (example.shape[-1],)
    spec = tf.TensorSpec(shape, tf.as_dtype(example.dtype))
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[spec],
        autograph=False,
    )
    fn.any_shape = True  # a new size runs it at once (no new trace)
    return fn


# Whether predict_batch runs graphs by the single-threaded executor: off
# for the process once TensorFlow refused it (the call then ran again
# with the default executor and gave the same numbers).
_single_threaded = function_executor_type is not None
# Up to this many pixels per batch: measured on the 2-core CPU, 10-25%
# faster at 64x64 (the kernels are short, the hand-offs between threads
# are not); at 512x512 (B0) up to 10% slower (no ops run side by side).
_SINGLE_THREADED_PIXELS = 128 * 128


class _BatchFunctions:
    """A model's concrete predict functions per input shape and dtype, for
    its current Keras predict function (not deep-copied)."""

    MAX = 64

    def __init__(self, predict_function):
        self.predict_function = predict_function
        self.concrete = {}

    def __deepcopy__(self, memo):
        return _BatchFunctions(None)

    def get(self, x):
        key = (tuple(x.shape), x.dtype)
        concrete = self.concrete.get(key)
        if concrete is None:
            if len(self.concrete) >= self.MAX:
                self.concrete.clear()
            # The function Keras' own call would run (traced, or relaxed
            # to unknown sizes, as that call would).
            spec = tf.TensorSpec(x.shape, x.dtype)
            concrete = self.predict_function.get_concrete_function([(spec,)])
            self.concrete[key] = concrete
        return concrete


def _run(concrete, x):
    """``concrete([(x,)])``, for a small batch by the single-threaded
    executor (the default one once that is refused)."""
    global _single_threaded
    if _single_threaded and _pixels(x.shape) <= _SINGLE_THREADED_PIXELS:
        try:
            with function_executor_type("SINGLE_THREADED_EXECUTOR"):
                return concrete([(x,)])
        except (tf.errors.UnimplementedError, TypeError, AttributeError):
            _single_threaded = False  # an op it cannot run, or a new API
    return concrete([(x,)])


def _pixels(shape):
    pixels = 1
    for n in shape[:-1]:
        pixels *= n
    return pixels


@inference.predict_batch.register("tensorflow", "cpu")
def predict_batch(model, x):
    """Keras' TensorFlow ``predict_on_batch`` (one step, in eager
    execution, outside a ``tf.distribute`` strategy, not XLA-compiled):
    its predict function's concrete function for this shape and dtype,
    found once instead of by ``tf.function``'s dispatch on every call
    (hashing ~130 captured variables), a small batch run by the
    single-threaded executor. On the 2-core CPU (AMD EPYC), the overhead
    model at 64x64 (batch 1): median 5.2 -> 3.9 ms, transformers 4.5 ms."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            return None  # (Keras' conversion says what is wrong)
    elif not isinstance(x, tf.Tensor):
        return None
    if (
        model.run_eagerly
        or model.jit_compile
        or model.steps_per_execution != 1
        or not tf.executing_eagerly()
        or tf.distribute.has_strategy()
    ):
        return None
    model.make_predict_function()
    fn = model.predict_function
    if not hasattr(fn, "get_concrete_function"):
        return None
    calls = model.__dict__.get("_batch_functions")
    if calls is None or calls.predict_function is not fn:
        calls = _BatchFunctions(fn)
        object.__setattr__(model, "_batch_functions", calls)
    outputs = _run(calls.get(x), tf.convert_to_tensor(x))
    return tree.map_structure(_to_numpy, outputs)


def _to_numpy(x):
    """What Keras' predict_on_batch returns for one output."""
    if isinstance(x, (tf.RaggedTensor, tf.SparseTensor)):
        return x
    return x.numpy()
