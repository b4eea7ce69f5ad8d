"""The context of a forward pass whose tensors no gradient will need."""

import contextlib

from keras_segformer.ops.dispatch import op


@op
def no_autograd():
    """A context manager for ``predict_on_batch``: inside it, no tensor
    records what a backward pass would need.

    Generic: nothing (Keras' own predict step already turns gradients
    off). PyTorch (cpu): ``torch.inference_mode()``, which also skips
    the per-op version counters and view tracking that ``torch.no_grad``
    keeps (~0.3 ms of a 4.4 ms forward pass of the tiny overhead model).
    Tensors made inside are inference tensors: the logits leave as NumPy.
    """
    return contextlib.nullcontext()


@op
def compiled_forward(model, example, variables):
    """A function ``x -> model(x, training=False)`` compiled for inputs
    like ``example`` (a concrete array of an eager call) and the model's
    ``variables`` (its list now), or None: the eager call then runs op
    by op. See ``CompiledCalls``.

    Generic: None (PyTorch runs eager calls at the kernels' speed).
    TensorFlow: a ``tf.function`` traced once for any batch and image size
    (the rank, channels and dtype of ``example``); its ``any_shape``
    attribute says so. JAX: ``jax.jit`` of the call, the variables'
    values passed on each call (XLA compiles once per shape).
    """
    return None


@op
def is_eager_value(x):
    """Whether ``x`` is a concrete array called outside any trace (no
    ``tf.function``, ``jax.jit``, gradient transformation or Keras
    stateless scope): the calls ``CompiledCalls`` may compile.
    Generic: False."""
    return False


class CompiledCalls:
    """A model's compiled eager inference calls.

    A repeated eager call should not pay Python's price per operation
    again: on TensorFlow and JAX, op by op, the tiny overhead model's
    ``model(x)`` took 20-40x the time of its compiled forward pass. So an
    inference call (``training`` None or False, outside any other Keras
    call) on a concrete input runs the model compiled once it is the
    second call with that input's shape and dtype; the first runs eagerly
    (a single call would pay the compile and gain nothing). A compiled
    function reads the variables' current values on each call; it is
    rebuilt when the model's variables, the ops' mode or the input's
    rank, channels or dtype change. TensorFlow's function takes any batch
    and size once traced; JAX compiles per shape, as ``predict`` does.
    """

    # Shapes counted before the table starts over (long runs of new sizes).
    MAX_SEEN = 256

    def __init__(self, owner):
        self.owner = owner  # id() of the model (a deep copy starts over)
        self.seen = {}  # (mode, shape, dtype) -> calls
        self.functions = {}  # (mode, rank, channels, dtype, variables) -> fn

    def __deepcopy__(self, memo):
        return CompiledCalls(None)

    def function(self, model, x, mode, dtype):
        """The compiled function for this call, or None to run eagerly."""
        shape = tuple(x.shape)
        key = (mode, shape, dtype)
        count = self.seen.get(key, 0) + 1
        if count <= 2:
            if len(self.seen) >= self.MAX_SEEN:
                self.seen.clear()
            self.seen[key] = count
        if count < 2 and not self.functions:
            return None
        variables = model.variables
        general = (mode, len(shape), shape[-1], dtype, *map(id, variables))
        fn = self.functions.get(general)
        if count < 2 and not getattr(fn, "any_shape", False):
            return None  # JAX would compile this shape now
        if fn is None:
            fn = compiled_forward(model, x, variables)
            if fn is None:
                return None
            # Variables or mode changed: the old functions are stale.
            self.functions = {general: fn}
        return fn
