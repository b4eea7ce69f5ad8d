"""The fast paths that read Keras internals fall back to Keras' public path
when those names are missing (keras_segformer/ops/internals.py).

Each case hides one name from keras_segformer's code only (Keras' own
code still sees it), as a Keras that renamed it would look to us, and
checks that predict, a direct call and fit still work and give the
numbers of the fast path."""

import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, tiny_segformer

from keras_segformer.models import segformer as segformer_module
from keras_segformer.ops import dispatch, internals
from keras_segformer.training.optimizer import GroupedAdamW

_NOT_FOUND = object()


class _Hidden:
    """A class attribute that hides ``name`` from keras_segformer's modules
    (``AttributeError`` there) and serves everyone else as before: the
    class attribute it replaces, or the instance's own value."""

    def __init__(self, owner, name):
        self.name = name
        self.asked = False  # whether keras_segformer read it
        self.original = _NOT_FOUND
        for cls in owner.__mro__:
            if name in cls.__dict__:
                self.original = cls.__dict__[name]
                break

    def __get__(self, obj, owner=None):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("keras_segformer"):
            self.asked = True
            raise AttributeError(f"{self.name} (hidden by the test)")
        if obj is not None and self.name in obj.__dict__:
            return obj.__dict__[self.name]
        if self.original is _NOT_FOUND:
            if obj is None:
                return self
            raise AttributeError(self.name)
        if hasattr(type(self.original), "__get__"):
            return self.original.__get__(obj, owner)
        return self.original

    def __set__(self, obj, value):
        if hasattr(type(self.original), "__set__"):
            self.original.__set__(obj, value)
        else:
            obj.__dict__[self.name] = value

    def __delete__(self, obj):
        del obj.__dict__[self.name]


def _hide(monkeypatch, owner, name):
    hidden = _Hidden(owner, name)
    monkeypatch.setattr(owner, name, hidden, raising=False)
    return hidden


def _functional():
    from keras.src.models.functional import Functional

    return Functional


def _variable():
    return type(keras.Variable(0.0))


# Two runs, each hiding names that do not keep each other from being read
# (once a path is off, the names it reads are no longer asked for):
# (owner class, name, the path that turns off or None where the fast path
# goes on with Keras' public name in its place).
FIRST = [(_functional, "_nodes_by_depth", "direct_graph")]
SECOND = [
    (lambda: keras.layers.Layer, "_call_context_args", "direct_graph"),
    (lambda: keras.layers.Layer, "_dtype_policy", "direct_call"),
]
if BACKEND == "torch":  # its ops read variables' values and the policy
    FIRST.append((_variable, "_value", None))
    SECOND[1] = (*SECOND[1][:2], {"direct_call", "torch_weights"})

_X = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")


def _predict(before_use=lambda: None):
    """A tiny SegFormer's predict and (PyTorch: elsewhere it compiles one
    more function) eager call; same seed every time. ``before_use`` runs
    once the model is built."""
    keras.utils.set_random_seed(3)
    model = tiny_segformer(num_classes=4)
    before_use()
    numbers = [model.predict(_X, verbose=0)]
    if BACKEND == "torch":
        numbers.append(keras.ops.convert_to_numpy(model(_X)))
    return numbers


@pytest.fixture(scope="module")
def fast_path_numbers():
    assert internals.off() == {}  # every fast path on, on a tested Keras
    return _predict()


def _check_turned_off(hidden, paths, caught):
    """Every hidden name was read by a fast path (which did without it);
    exactly ``paths`` are off, each with its warning."""
    assert [h.name for h in hidden if not h.asked] == []
    assert set(internals.off()) == paths
    messages = [str(w.message) for w in caught]
    for path in paths:  # one warning naming the path and the Keras
        assert any(repr(path) in m and keras.__version__ in m for m in messages)


@pytest.mark.parametrize("names", [FIRST, SECOND], ids=["first", "second"])
def test_hidden_keras_names_fall_back_with_the_same_numbers(
    monkeypatch, fast_path_numbers, names
):
    monkeypatch.setattr(internals, "_off", {})
    hidden = []

    def hide():
        for owner, name, _ in names:
            hidden.append(_hide(monkeypatch, owner(), name))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        numbers = _predict(hide)
    paths = set()
    for _, _, path in names:
        paths |= {path} if isinstance(path, str) else set(path or ())
    _check_turned_off(hidden, paths, caught)
    for got, want in zip(numbers, fast_path_numbers, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def _optimizer_steps(before_build=lambda: None):
    """Two AdamW steps of a Dense layer's kernel (10x rate, decayed) and
    bias (not decayed) on fixed gradients."""
    layer = keras.layers.Dense(3, name="head")
    layer.build((None, 4))
    rng = np.random.default_rng(0)
    for variable in layer.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    optimizer = GroupedAdamW(
        1e-2, weight_decay=0.1, lr_multipliers={"kernel": 10.0}
    )
    before_build()
    variables = layer.trainable_variables
    for _ in range(2):
        grads = [
            keras.ops.convert_to_tensor(rng.normal(size=v.shape), "float32")
            for v in variables
        ]
        optimizer.apply(grads, variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_optimizer_without_adam_slots_takes_adamw_update_step(monkeypatch):
    want = _optimizer_steps()
    monkeypatch.setattr(internals, "_off", {})
    hidden = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        got = _optimizer_steps(
            lambda: hidden.append(
                _hide(monkeypatch, keras.optimizers.AdamW, "_momentums")
            )
        )
    _check_turned_off(hidden, {"grouped_update"}, caught)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_fit_guard_without_variable_values(monkeypatch):
    # ``_guarded`` (fit, evaluate) keeps the variables' stored values to
    # repair what an interrupted JAX step leaves; without the name, the
    # error still comes out as it is and the model keeps its weights.
    model = tiny_segformer(num_classes=3)
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    hidden = _hide(monkeypatch, _variable(), "_value")
    with pytest.raises(ZeroDivisionError):
        with model._guarded():
            1 / 0  # noqa: B018
    assert hidden.asked
    for v, w in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), w)


@pytest.mark.skipif(BACKEND != "torch", reason="only the PyTorch ops read them")
def test_torch_ops_read_hidden_names_through_keras(monkeypatch, rng):
    # A Dense kernel without ``_kernel``, a BatchNormalization without
    # ``renorm`` (Keras < 3.14), variables without ``_value``: the fast
    # ops read Keras' public attributes instead, with the same numbers.
    from keras_segformer.ops import nn

    dense = keras.layers.Dense(6)
    dense.build((None, 5))
    norm = keras.layers.BatchNormalization(epsilon=1e-5)
    norm.build((None, 6))
    norm.moving_mean.assign(rng.normal(size=6).astype("float32"))
    norm.moving_variance.assign(rng.uniform(0.5, 2, size=6).astype("float32"))
    x = keras.ops.convert_to_tensor(rng.normal(size=(3, 5)).astype("float32"))

    def run():
        y = nn.dense(dense, x)
        return [keras.ops.convert_to_numpy(t) for t in (y, norm_op(y))]

    def norm_op(y):
        return nn.batch_norm(norm, y, training=False)

    want = run()
    monkeypatch.setattr(internals, "_off", {})
    owners = (keras.layers.Dense, keras.layers.BatchNormalization, _variable())
    hidden = [
        _hide(monkeypatch, owner, name)
        for owner, name in zip(owners, ("_kernel", "renorm", "_value"))
    ]
    got = run()
    assert [h.name for h in hidden if not h.asked] == []
    assert internals.off() == {}  # the fast ops ran on
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    keras_dense = keras.ops.convert_to_numpy(dense(x))
    np.testing.assert_allclose(got[0], keras_dense, atol=1e-6)
    keras_norm = norm(keras.ops.convert_to_tensor(got[0]), training=False)
    np.testing.assert_allclose(
        got[1], keras.ops.convert_to_numpy(keras_norm), atol=1e-6
    )


def test_update_hooks_of_another_signature_are_refused(monkeypatch):
    monkeypatch.setattr(internals, "_off", {})
    assert internals.check_update_hooks(keras.optimizers.AdamW)

    class Renamed(keras.optimizers.AdamW):
        _backend_update_step = None

    class Reshaped(keras.optimizers.AdamW):
        def _backend_update_step(self, grads, variables):
            pass

    for cls in (Renamed, Reshaped):
        monkeypatch.setattr(internals, "_off", {})
        with pytest.warns(RuntimeWarning, match="'grouped_update'"):
            assert not internals.check_update_hooks(cls)
        assert "_backend_update_step" in internals.off()["grouped_update"]


def test_turn_off_names_its_paths():
    with pytest.raises(ValueError, match="`path` must be one of"):
        internals.turn_off("fast", AttributeError("x"))


def test_torch_default_device_without_keras_module(monkeypatch):
    # Without the Keras module that holds it, Keras' choice made here: the
    # environment variable, then MPS, CUDA, the CPU (a stand-in torch).
    import types

    available = {"mps": False, "cuda": False}

    def backend(kind):
        return types.SimpleNamespace(is_available=lambda: available[kind])

    torch = types.SimpleNamespace(
        backends=types.SimpleNamespace(mps=backend("mps")), cuda=backend("cuda")
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "keras.src.backend.torch.core", None)
    monkeypatch.delenv("KERAS_TORCH_DEVICE", raising=False)
    assert dispatch._torch_default_device() == "cpu"
    available["cuda"] = True
    assert dispatch._torch_default_device() == "cuda"
    available["mps"] = True
    assert dispatch._torch_default_device() == "mps"
    monkeypatch.setenv("KERAS_TORCH_DEVICE", "cuda:1")
    assert dispatch._torch_default_device() == "cuda:1"


def test_model_built_in_a_stateless_scope_without_the_keras_check(
    monkeypatch,
):
    # Where Keras moved ``in_stateless_scope``, construction tries to
    # compile and leaves that to ``compile()`` inside a stateless scope.
    monkeypatch.setattr(segformer_module, "in_stateless_scope", None)
    with keras.StatelessScope(initialize_variables=False):
        model = tiny_segformer(num_classes=3)
    assert getattr(model, "optimizer", None) is None
    model.compile()
    assert model.optimizer is not None
