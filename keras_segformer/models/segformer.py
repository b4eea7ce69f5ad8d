"""SegFormer semantic segmentation model: MiT encoder + all-MLP decoder."""

import keras
import numpy as np

from keras_segformer.configs import check_positive_int
from keras_segformer.layers import MMSegSegFormerHead, SegFormerHead
from keras_segformer.layers.init import kernel_init
from keras_segformer.layers.input_check import ImageInputChecks
from keras_segformer.models.mit import MiTBackbone

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


def _is_array(x):
    """A single NumPy array or backend tensor (not a dataset, list, dict)."""
    return isinstance(x, np.ndarray) or keras.ops.is_tensor(x)


class _TaskModel(ImageInputChecks, keras.Model):
    """Shared plumbing of the task models: labels, compile defaults and
    (de)serialization."""

    def compile(self, *args, jit_compile="auto", **kwargs):
        """``keras.Model.compile``; ``jit_compile="auto"`` means no XLA on
        TensorFlow.

        TensorFlow's XLA has no gradient for bilinear resize on some
        devices (tensorflow issue 57575) and, measured on CPU, made a B0
        training step 8x slower than the plain graph. JAX always compiles
        with XLA; pass ``jit_compile=True`` to force it on TensorFlow.
        """
        if jit_compile == "auto" and keras.backend.backend() == "tensorflow":
            jit_compile = False
        return super().compile(*args, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compile on load for models that override compile();
        # this is Keras' own restore, through the override above.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None
    ):
        """``keras.Model.predict``, with a direct loop for in-memory arrays.

        A NumPy array or backend tensor (without ``steps`` or callbacks)
        goes through ``predict_on_batch`` batch by batch: the same compiled
        function and numbers, without the input pipeline Keras builds and
        tears down on every call (0.1-0.4 s per call on TensorFlow, more
        than a B0 forward pass at 512x512). Datasets, generators,
        ``PyDataset``, ``steps`` and callbacks go to Keras unchanged.
        """
        if steps is not None or callbacks or not _is_array(x):
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

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        **kwargs,
    ):
        """``keras.Model.export`` on every backend: ``"tf_saved_model"``,
        ``"litert"`` or ``"onnx"``, written from one TensorFlow graph by
        ``keras_segformer.export.keras_export`` (see there for the
        arguments)."""
        from keras_segformer.export.keras_api import keras_export

        keras_export(
            self,
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            **kwargs,
        )

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
        if not isinstance(backbone, MiTBackbone):
            raise TypeError(
                "`backbone` must be a keras_segformer.MiTBackbone. "
                f"Received: {type(backbone).__name__}"
            )
        num_classes = check_positive_int(num_classes, "num_classes")
        id2label = _label_maps(id2label, num_classes)
        inputs = keras.Input(shape=backbone.image_shape, name="images")
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
    """

    def __init__(
        self,
        backbone,
        num_classes=1000,
        id2label=None,
        name="mit_classifier",
        **kwargs,
    ):
        if not isinstance(backbone, MiTBackbone):
            raise TypeError(
                "`backbone` must be a keras_segformer.MiTBackbone. "
                f"Received: {type(backbone).__name__}"
            )
        num_classes = check_positive_int(num_classes, "num_classes")
        id2label = _label_maps(id2label, num_classes)
        inputs = keras.Input(shape=backbone.image_shape, name="images")
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

    def get_config(self):
        return self._base_config()
