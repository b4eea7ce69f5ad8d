"""SegFormer semantic segmentation model: MiT encoder + all-MLP decoder."""

import contextlib
import sys

import keras
import numpy as np

from keras_segformer.configs import check_positive_int
from keras_segformer.errors import data_errors
from keras_segformer.layers import MMSegSegFormerHead, SegFormerHead
from keras_segformer.layers.init import kernel_init
from keras_segformer.layers.input_check import ImageInputChecks
from keras_segformer.models.hub_io import HubIO
from keras_segformer.models.mit import MiTBackbone
from keras_segformer.ops import default_jit_compile
from keras_segformer.ops.layer_call import DirectGraph
from keras_segformer.training.distribute import (
    num_replicas,
    synchronize_batch_norm,
)
from keras_segformer.training.losses import (
    SegFormerLoss,
    check_integer_labels,
    check_label_size,
    checked_datasets,
    foreign_objectives,
)
from keras_segformer.training.metrics import MeanIoU
from keras_segformer.training.optimizer import grouped_adamw

try:  # a Keras internal; where it moved, construction tries to compile
    from keras.src.backend.common.stateless_scope import in_stateless_scope
except ImportError:  # pragma: no cover
    in_stateless_scope = None


# Decode head layer per ``SegFormer(head=...)``.
HEADS = {"mlp": SegFormerHead, "mmseg": MMSegSegFormerHead}


def _label_maps(id2label, num_classes):
    if id2label is None:
        return None
    id2label = {int(k): str(v) for k, v in dict(id2label).items()}
    if sorted(id2label) != list(range(num_classes)):
        keys = sorted(id2label)
        raise ValueError(
            f"`id2label` must name classes 0..{num_classes - 1}. Received "
            f"{len(keys)} keys from {keys[0] if keys else None} to "
            f"{keys[-1] if keys else None}."
        )
    return id2label


def _task_inputs(backbone, num_classes, id2label):
    """A task model's checked arguments and its ``images`` input.

    Returns:
        ``(num_classes, id2label, inputs)``: the class count and names
        checked, and a ``keras.Input`` of the backbone's image shape.
    """
    if not isinstance(backbone, MiTBackbone):
        raise TypeError(
            "`backbone` must be a keras_segformer.MiTBackbone. "
            f"Received: {type(backbone).__name__}"
        )
    num_classes = check_positive_int(num_classes, "num_classes")
    id2label = _label_maps(id2label, num_classes)
    inputs = keras.Input(shape=backbone.image_shape, name="images")
    return num_classes, id2label, inputs


def _is_array(x):
    """A single NumPy array or backend tensor (not a dataset, list, dict)."""
    return isinstance(x, np.ndarray) or keras.ops.is_tensor(x)


def _is_tf_dataset(x):
    tf = sys.modules.get("tensorflow")  # a dataset has imported it
    return tf is not None and isinstance(x, tf.data.Dataset)


def _is_auto(value):
    return isinstance(value, str) and value == "auto"


class _TaskModel(HubIO, ImageInputChecks, DirectGraph, keras.Model):
    """Shared plumbing of the task models: labels, compile defaults and
    (de)serialization."""

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        metrics="auto",
        jit_compile="auto",
        **kwargs,
    ):
        """``keras.Model.compile`` with the SegFormer recipe as defaults.

        Built models come compiled with these defaults, so ``fit`` works
        as the first call. ``"auto"`` (the default of each argument, as in
        keras-hub) means: ``optimizer`` AdamW (lr 6e-5, weight decay 0.01,
        none on norms and biases; a SegFormer's ``decode_head`` at 10x the
        rate), constant rate; ``loss`` ``SegFormerLoss`` (logits upsampled
        to the label size, ``ignore_index=255``); ``metrics`` mIoU. A
        classifier gets sparse cross-entropy and accuracy. Anything passed
        replaces just that part. The recipe's warmup + poly schedule needs
        the number of training steps: use
        ``keras_segformer.training.compile_for_training(model,
        total_steps)`` for it.

        Losses and metrics other than this project's get the logits at
        1/4 of the image size; labels of another size stop the first step
        with an error naming ``SegFormerLoss`` and both shapes.

        ``jit_compile="auto"`` means no XLA on TensorFlow: TensorFlow's
        XLA has no gradient for bilinear resize on some devices
        (tensorflow issue 57575) and, measured on CPU, made a B0 training
        step 8x slower than the plain graph. JAX always compiles with XLA;
        pass ``jit_compile=True`` to force it on TensorFlow.

        Under a multi-device ``distribution_scope`` on TensorFlow, the
        BatchNorm layers switch to global batch statistics (SyncBN).
        """
        defaults = self._compile_defaults()
        if _is_auto(optimizer):
            optimizer = defaults["optimizer"]()
        if _is_auto(loss):
            loss = defaults["loss"]()
        if _is_auto(metrics):
            metrics = defaults["metrics"]()
        self._foreign_objectives = foreign_objectives(loss, metrics)
        if jit_compile == "auto":
            jit_compile = default_jit_compile()
        if num_replicas(self) > 1:
            synchronize_batch_norm(self)
        # Keras keeps the previous loss and metrics when given None; an
        # explicit None must mean none, not the defaults of construction.
        self._compile_loss = self._compile_metrics = self.loss = None
        return super().compile(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            jit_compile=jit_compile,
            **kwargs,
        )

    def _check_objectives(self, y, y_pred):
        if getattr(self, "_foreign_objectives", None):
            check_label_size(y, y_pred, self._foreign_objectives)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Keras builds the metrics before the loss (JAX, PyTorch): check
        # here too, so that a metric's own shape error does not come first.
        self._check_objectives(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        self._check_objectives(y, y_pred)
        return super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )

    def _compile_defaults_if_possible(self):
        """Compile with the defaults at construction, except inside a
        ``keras.StatelessScope`` (no variable may be created there: the
        optimizer's and metrics' would be); ``compile()`` later does it.
        The optimizer is a stand-in for none: a trained state loaded into
        it unbuilt is skipped without a warning (``GroupedAdamW``)."""
        if in_stateless_scope is not None and in_stateless_scope():
            return
        try:
            self.compile()
        except ValueError as e:  # (only where in_stateless_scope moved)
            if in_stateless_scope is None and "stateless scope" in str(e):
                return
            raise
        if hasattr(self.optimizer, "stand_in"):
            self.optimizer.stand_in = True

    def compile_from_config(self, config):
        # Keras skips compile on load for models that override compile();
        # this is Keras' own restore, through the override above.
        config = keras.saving.deserialize_keras_object(config)
        # The saved value is what "auto" meant on the backend that saved
        # the model (True on JAX); on PyTorch, True means torch.compile.
        config.pop("jit_compile", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @contextlib.contextmanager
    def _guarded(self):
        """Data errors out of ``tf.data`` as ``DataError``, and the model
        left usable after any error: Keras' JAX trainer detaches the
        variables' values while it runs and, stopped by an exception
        before it reattaches them, leaves every later call failing."""
        variables = [*self.variables, *self.metrics_variables]
        if getattr(self, "optimizer", None) is not None:
            variables += self.optimizer.variables
        # The stored values (a Keras internal: without it, no repair).
        values = [getattr(v, "_value", None) for v in variables]
        try:
            with data_errors():
                yield
        except BaseException:
            if hasattr(self, "jax_state_sync"):
                self.jax_state_sync()  # the last finished step, if any
            for variable, value in zip(variables, values):
                if value is not None and variable._value is None:
                    variable._value = value
            raise

    def _symbolic_build(self, *args, **kwargs):
        # Keras passes a ValueError of the first symbolic call on but wraps
        # any other in a RuntimeError ("Unable to automatically build the
        # model"): the input checks' TypeError (integer pixels) comes out
        # as it is, as on a direct call.
        try:
            return super()._symbolic_build(*args, **kwargs)
        except RuntimeError as e:
            if isinstance(e.__context__, TypeError):
                raise e.__context__ from None
            raise

    def make_train_function(self, force=False):
        # Keras' TensorFlow trainer without a distribution strategy builds
        # the optimizer inside the first trace of the train step, and a
        # tf.function that creates variables is traced twice, which
        # doubled the first step's time (figures: docs/design.md).
        # Built here, as Keras builds it before this call on JAX, PyTorch
        # and under a TensorFlow strategy, the step is traced once.
        optimizer = getattr(self, "optimizer", None)
        if self.built and optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``; a data file that a ``tf.data`` pipeline of
        this project cannot use stops it with a ``DataError`` naming the
        file (TensorFlow would wrap that message in its own error). A
        ``tf.data.Dataset`` is not shuffled by Keras, which warned on every
        call that its default ``shuffle=True`` is ignored: the default is
        False for one. In-memory float labels with a fractional part are a
        ``TypeError`` (they are not class indices)."""
        x = args[0] if args else kwargs.get("x")
        if len(args) < 8 and "shuffle" not in kwargs and _is_tf_dataset(x):
            kwargs["shuffle"] = False
        check_integer_labels(args[1] if len(args) > 1 else kwargs.get("y"))
        # Float labels of a tf.data dataset: checked batch by batch.
        args, kwargs = checked_datasets(args, kwargs, ("x", 0))
        args, kwargs = checked_datasets(args, kwargs, ("validation_data", 7))
        with self._guarded():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """``keras.Model.evaluate``, with data errors and label checks as
        in ``fit``."""
        check_integer_labels(args[1] if len(args) > 1 else kwargs.get("y"))
        args, kwargs = checked_datasets(args, kwargs, ("x", 0))
        with self._guarded():
            return super().evaluate(*args, **kwargs)

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None
    ):
        """``keras.Model.predict``, with a direct loop for in-memory arrays.

        A NumPy array or backend tensor (without ``steps`` or callbacks)
        goes through ``predict_on_batch`` batch by batch: the same compiled
        function and numbers, without the input pipeline Keras builds and
        tears down on every call (on TensorFlow it cost more than a B0
        forward pass at 512x512). Datasets, generators,
        ``PyDataset``, ``steps`` and callbacks go to Keras unchanged.
        """
        if steps is not None or callbacks or not _is_array(x):
            with self._guarded():
                return super().predict(
                    x,
                    batch_size=batch_size,
                    verbose=verbose,
                    steps=steps,
                    callbacks=callbacks,
                )
        total = int(x.shape[0])
        batch_size = int(batch_size or 32)
        progbar = keras.utils.Progbar(
            -(-total // batch_size), verbose=1 if verbose == "auto" else verbose
        )
        outputs = []
        for i, start in enumerate(range(0, total, batch_size)):
            batch = x[start : start + batch_size]
            outputs.append(
                keras.ops.convert_to_numpy(self.predict_on_batch(batch))
            )
            progbar.update(i + 1)
        if not outputs:
            raise ValueError("`x` holds no images (its first dimension is 0).")
        return np.concatenate(outputs, axis=0)

    # ``keras.Model.export`` on every backend: "tf_saved_model", "litert"
    # or "onnx", written from one TensorFlow graph by
    # ``keras_segformer.export.keras_export`` (see there for the arguments).
    export = MiTBackbone.export

    @property
    def label2id(self):
        if self.id2label is None:
            return None
        return {v: k for k, v in self.id2label.items()}

    def _base_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "num_classes": self.num_classes,
            "id2label": (
                None
                if self.id2label is None
                else {str(k): v for k, v in self.id2label.items()}
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_segformer")
class SegFormer(_TaskModel):
    """SegFormer for semantic segmentation.

    ``images -> logits`` of shape ``(batch, ceil(H / 4), ceil(W / 4),
    num_classes)`` (exactly the size transformers gives), channels-last,
    float32 even under a mixed-precision policy. Upsample the logits
    bilinearly to the image size and take the argmax to get a mask (see
    ``keras_segformer.inference``).

    Args:
        backbone: ``MiTBackbone``. The encoder.
        num_classes: int. Number of classes (1 means binary, sigmoid).
        decoder_hidden_size: int. Channels of the all-MLP decoder.
        dropout: float. Dropout before the classifier
            (transformers' ``classifier_dropout_prob``).
        id2label: dict or None. Class index -> name, kept in the config.
        head: str. ``"mlp"``: the all-MLP head of the paper and
            transformers; ``"mmseg"``: mmsegmentation's ``SegformerHead``
            (conv-BN-ReLU per scale), for its model-zoo checkpoints.

    Raises:
        TypeError: an argument of the wrong type (e.g. ``num_classes=2.5``
            or ``True``), named in the message.
        ValueError: a value out of range (a rate outside [0, 1), per-stage
            lists of different lengths, ``num_classes`` < 1),
            named in the message.

    Example:
    >>> model = keras_segformer.SegFormerB0(num_classes=150)
    >>> logits = model(np.zeros((1, 512, 512, 3), "float32"))  # 1x128x128x150
    """

    def __init__(
        self,
        backbone,
        num_classes,
        decoder_hidden_size=256,
        dropout=0.1,
        id2label=None,
        head="mlp",
        name="segformer",
        **kwargs,
    ):
        if head not in HEADS:
            raise ValueError(
                f"`head` must be one of {sorted(HEADS)}. Received: {head!r}"
            )
        num_classes, id2label, inputs = _task_inputs(
            backbone, num_classes, id2label
        )
        features = backbone(inputs)
        logits = HEADS[head](
            num_classes,
            decoder_hidden_size=decoder_hidden_size,
            dropout=dropout,
            num_inputs=backbone.num_stages,
            dtype=backbone.layer_dtype,
            name="decode_head",
        )(features)
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.decoder_hidden_size = decoder_hidden_size
        self.dropout = dropout
        self.id2label = id2label
        self.head = head
        self._compile_defaults_if_possible()

    def _compile_defaults(self):
        return {
            "optimizer": lambda: grouped_adamw(self),
            "loss": lambda: SegFormerLoss(ignore_index=255),
            "metrics": lambda: [
                MeanIoU(max(self.num_classes, 2), ignore_index=255)
            ],
        }

    def get_config(self):
        return {
            **self._base_config(),
            "decoder_hidden_size": self.decoder_hidden_size,
            "dropout": self.dropout,
            "head": self.head,
        }


@keras.saving.register_keras_serializable(package="keras_segformer")
class MiTClassifier(_TaskModel):
    """MiT image classifier (the ImageNet pre-training model).

    Last stage features (after the stage LayerNorm) -> mean over positions ->
    Dense. Returns float32 logits of shape ``(batch, num_classes)``.

    Args:
        backbone: ``MiTBackbone``. The encoder.
        num_classes: int. Number of classes.
        id2label: dict or None. Class index -> name, kept in the config.

    Raises:
        TypeError: an argument of the wrong type (e.g. ``num_classes=2.5``
            or ``True``), named in the message.
        ValueError: a value out of range (a rate outside [0, 1), per-stage
            lists of different lengths, ``num_classes`` < 1),
            named in the message.

    Example:
    >>> classifier = MiTClassifier(keras_segformer.MiTB0(), num_classes=10)
    >>> classifier(np.zeros((2, 64, 64, 3), "float32")).shape  # (2, 10)
    """

    def __init__(
        self,
        backbone,
        num_classes=1000,
        id2label=None,
        name="mit_classifier",
        **kwargs,
    ):
        num_classes, id2label, inputs = _task_inputs(
            backbone, num_classes, id2label
        )
        last = backbone(inputs)[-1]
        pooled = keras.layers.GlobalAveragePooling2D(
            dtype=backbone.layer_dtype, name="pool"
        )(last)
        logits = keras.layers.Dense(
            num_classes,
            kernel_initializer=kernel_init(),
            dtype="float32",
            name="classifier",
        )(pooled)
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.id2label = id2label
        self._compile_defaults_if_possible()

    def _compile_defaults(self):
        return {
            "optimizer": lambda: grouped_adamw(self, head_lr_multiplier=1.0),
            "loss": lambda: keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            "metrics": lambda: [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
        }

    def get_config(self):
        return self._base_config()
