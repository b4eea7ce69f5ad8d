"""Inference: the context of a forward pass whose tensors no gradient will
need, and the compiled eager calls of the functional models."""

import contextlib

from keras_segformer.ops.dispatch import op


@op
def no_autograd():
    """A context manager for ``predict_on_batch``: inside it, no tensor
    records what a backward pass would need.

    Generic: nothing (Keras' own predict step already turns gradients
    off). PyTorch (cpu): ``torch.inference_mode()``, which also skips
    the per-op version counters and view tracking that ``torch.no_grad``
    keeps (several percent of a small model's forward pass).
    Tensors made inside are inference tensors: the logits leave as NumPy.
    """
    return contextlib.nullcontext()


@op
def compiled_forward(model, example, variables):
    """A function ``x -> model(x, training=False)`` compiled for inputs
    like ``example`` (a concrete array of an eager call) and the model's
    ``variables`` (its list now). See ``CompiledCalls``.

    Generic: None (no backend compiles eager calls). TensorFlow: a
    ``tf.function`` traced once for any batch and image size (the rank,
    channels and dtype of ``example``); its ``any_shape`` attribute says
    so. JAX: ``jax.jit`` of the call, the variables' values passed on each
    call (XLA compiles once per shape).
    """
    return None


@op
def eager_calls_first(x):
    """How many eager calls of a shape run op by op before the model's
    call is compiled, or None: never (``x`` is not a concrete array called
    outside any trace, ``tf.function``, ``jax.jit``, gradient
    transformation or Keras stateless scope, or the backend compiles no
    eager call). Generic: None.

    TensorFlow: 1. Op by op, a first call costs a third of the trace: a
    single call is cheaper eager, and the trace then serves every size.
    JAX: 0. Op by op, each operation is compiled for a new shape (four
    times the cost of compiling the whole forward pass at once), so the
    whole forward pass is compiled at once.
    """
    return None


@op
def predict_batch(model, x):
    """``model.predict_on_batch(x)`` for one NumPy array or backend tensor
    ``x``, with less around Keras' predict function, or None: Keras' own
    ``predict_on_batch`` runs (its input checks done by the caller).

    Generic: None. TensorFlow (cpu): Keras' predict function (traced as
    Keras traces it) called through the concrete function for the input's
    shape and dtype, kept per model; a small batch by TensorFlow's
    single-threaded executor (no hand-offs between threads: at 64x64 they
    cost more than the kernels); the same graph and numbers. PyTorch (cpu):
    Keras' predict function on the array's tensor without a copy, the
    logits out without ``np.array`` (a copy through ``__array__``).
    """
    return None


class CompiledCalls:
    """A model's compiled eager inference calls.

    Op by op, TensorFlow and JAX pay Python and dispatch per operation:
    the tiny overhead model's eager ``model(x)`` took 20-50x its compiled
    forward pass. So an inference call (``training`` None or False,
    outside any other Keras call) on a concrete array runs the model
    compiled, after ``eager_calls_first`` op-by-op calls of its shape and
    dtype. A compiled function reads the variables' current values on
    each call; it is rebuilt when the model's variables, the ops' mode or
    the input's rank, channels or dtype change.
    """

    # Shapes counted before the table starts over (long runs of new sizes).
    MAX_SEEN = 256

    def __init__(self, owner):
        self.owner = owner  # id() of the model (a deep copy starts over)
        self.seen = {}  # (mode, shape, dtype) -> eager calls so far
        self.functions = {}  # (mode, rank, channels, dtype, variables) -> fn

    def __deepcopy__(self, memo):
        return CompiledCalls(None)

    def function(self, model, x, mode, dtype, eager_first):
        """The compiled function for this call, or None to run it op by op
        (the ``eager_first`` calls of a shape, see ``eager_calls_first``)."""
        shape = tuple(x.shape)
        key = (mode, shape, dtype)
        eager = self.seen.get(key, 0)
        if eager < eager_first and not self.functions:
            self._count(key, eager)
            return None
        variables = model.variables
        general = (mode, len(shape), shape[-1], dtype, *map(id, variables))
        fn = self.functions.get(general)
        if eager < eager_first and not getattr(fn, "any_shape", False):
            self._count(key, eager)
            return None  # (JAX would compile this shape now)
        if fn is None:
            fn = compiled_forward(model, x, variables)
            if fn is None:
                return None
            # Variables or mode changed: the old functions are stale.
            self.functions = {general: fn}
        return fn

    def _count(self, key, eager):
        if len(self.seen) >= self.MAX_SEEN:
            self.seen.clear()
        self.seen[key] = eager + 1
