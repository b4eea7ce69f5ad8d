"""Mix Transformer (MiT) encoder as a functional Keras model."""

import keras

from keras_segformer.configs import (
    min_input_size,
    validate_backbone_config,
    validate_backbone_options,
)
from keras_segformer.layers import (
    ImageNormalization,
    InputCheck,
    MiTBlock,
    OverlappingPatchEmbedding,
)
from keras_segformer.layers.input_check import check_image_shape
from keras_segformer.layers.layer_norm import LayerNorm
from keras_segformer.models.hub_io import HubIO
from keras_segformer.ops.layer_call import DirectGraph


def _serialize_dtype(dtype):
    if dtype is None or isinstance(dtype, str):
        return dtype
    return keras.dtype_policies.serialize(dtype)


def _stages(x, cfg, *, drop_path_rate, layer_norm_epsilon, dtype, **block):
    """The stages on ``x``: patch embedding, blocks, LayerNorm each.

    Returns the list of the stages' feature maps. ``block`` holds the
    blocks' own options (``dropout``, ``attention_dropout``,
    ``block_norm_epsilon``, ``approximate_gelu``); block ``i`` of ``n``
    drops its path with ``drop_path_rate * i / (n - 1)``.
    """
    total = sum(cfg["depths"])
    drop_paths = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    features = []
    block_index = 0
    for s, depth in enumerate(cfg["depths"]):
        x = OverlappingPatchEmbedding(
            cfg["hidden_sizes"][s],
            cfg["patch_sizes"][s],
            cfg["strides"][s],
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=dtype,
            name=f"stage{s + 1}_patch_embedding",
        )(x)
        for b in range(depth):
            x = MiTBlock(
                cfg["hidden_sizes"][s],
                cfg["num_heads"][s],
                sr_ratio=cfg["sr_ratios"][s],
                mlp_ratio=cfg["mlp_ratios"][s],
                drop_path=drop_paths[block_index],
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"stage{s + 1}_block{b + 1}",
                **block,
            )(x)
            block_index += 1
        x = LayerNorm(
            epsilon=layer_norm_epsilon, dtype=dtype, name=f"stage{s + 1}_norm"
        )(x)
        features.append(x)
    return features


@keras.saving.register_keras_serializable(package="keras_segformer")
class MiTBackbone(HubIO, DirectGraph, keras.Model):
    """Hierarchical Mix Transformer encoder.

    Takes channels-last images and returns the four stage feature maps
    ``[c1, c2, c3, c4]`` at strides 4, 8, 16 and 32 (for the default patch
    sizes and strides), each of shape ``(batch, h_i, w_i, hidden_sizes[i])``.

    Inputs are normalized pixels like transformers' ``pixel_values``
    (``(rgb / 255 - imagenet_mean) / imagenet_std``), unless
    ``include_preprocessing=True``, in which case the model takes raw 0-255
    RGB and normalizes inside the graph.

    Args:
        depths: list of ints. Blocks per stage.
        hidden_sizes: list of ints. Channels per stage.
        num_heads: list of ints. Attention heads per stage.
        sr_ratios: list of ints. Key/value spatial reduction per stage.
        patch_sizes: list of ints. Patch-embedding kernel per stage.
        strides: list of ints. Patch-embedding stride per stage.
        mlp_ratios: list of numbers. Mix-FFN expansion per stage.
        drop_path_rate: float. Stochastic depth rate of the last block; block
            ``i`` of ``n`` uses ``drop_path_rate * i / (n - 1)``.
        dropout: float. Hidden dropout (transformers' ``hidden_dropout_prob``).
        attention_dropout: float. Dropout on attention probabilities.
        layer_norm_epsilon: float. Epsilon of every LayerNorm (transformers
            uses 1e-5).
        block_norm_epsilon: float or None. Epsilon of the blocks' two
            pre-norms where it differs (NVlabs and keras-hub: 1e-6); None:
            ``layer_norm_epsilon``.
        approximate_gelu: bool. tanh GELU in the Mix-FFNs (keras-hub's
            MiT, transformers' ``hidden_act="gelu_new"``); default exact.
        input_shape: tuple. ``(height, width, channels)``; ``None`` for any
            size.
        include_preprocessing: bool. Normalize 0-255 input inside the model.
        dtype: dtype policy of the layers (e.g. ``"mixed_bfloat16"``).

    Raises:
        TypeError: an argument of the wrong type (e.g. a
            per-stage field that is not a list), named in the message.
        ValueError: a value out of range (a rate outside [0, 1),
            per-stage lists of different lengths), named in the message.

    Example:
    >>> backbone = keras_segformer.MiTB0()
    >>> c1, c2, c3, c4 = backbone(np.zeros((1, 64, 96, 3), "float32"))
    """

    def __init__(
        self,
        depths,
        hidden_sizes,
        num_heads,
        sr_ratios,
        patch_sizes=(7, 3, 3, 3),
        strides=(4, 2, 2, 2),
        mlp_ratios=(4, 4, 4, 4),
        drop_path_rate=0.1,
        dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
        input_shape=(None, None, 3),
        include_preprocessing=False,
        dtype=None,
        name="mit",
        block_norm_epsilon=None,
        approximate_gelu=False,
        **kwargs,
    ):
        cfg = validate_backbone_config(
            depths,
            hidden_sizes,
            num_heads,
            sr_ratios,
            patch_sizes,
            strides,
            mlp_ratios,
        )
        input_shape = validate_backbone_options(
            drop_path_rate,
            dropout,
            attention_dropout,
            layer_norm_epsilon,
            input_shape,
            include_preprocessing,
        )
        if block_norm_epsilon is not None and (
            isinstance(block_norm_epsilon, bool)
            or not isinstance(block_norm_epsilon, (int, float))
            or not block_norm_epsilon > 0
        ):
            raise ValueError(
                "`block_norm_epsilon` must be a positive float or None. "
                f"Received: {block_norm_epsilon!r}"
            )
        if not isinstance(approximate_gelu, bool):
            raise TypeError(
                "`approximate_gelu` must be True or False. Received: "
                f"{approximate_gelu!r}"
            )
        min_size = min_input_size(
            cfg["patch_sizes"], cfg["strides"], cfg["sr_ratios"]
        )
        inputs = keras.Input(shape=input_shape, name="images")
        x = InputCheck(min_size, dtype=dtype, name="input_check")(inputs)
        if include_preprocessing:
            # float32 even under mixed precision: 0-255 needs the range.
            x = ImageNormalization(dtype="float32", name="preprocessing")(x)
        features = _stages(
            x,
            cfg,
            dropout=dropout,
            attention_dropout=attention_dropout,
            drop_path_rate=drop_path_rate,
            layer_norm_epsilon=layer_norm_epsilon,
            block_norm_epsilon=block_norm_epsilon,
            approximate_gelu=approximate_gelu,
            dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=features, name=name, **kwargs)

        self.depths = list(cfg["depths"])
        self.hidden_sizes = list(cfg["hidden_sizes"])
        self.num_heads = list(cfg["num_heads"])
        self.sr_ratios = list(cfg["sr_ratios"])
        self.patch_sizes = list(cfg["patch_sizes"])
        self.strides = list(cfg["strides"])
        self.mlp_ratios = list(cfg["mlp_ratios"])
        self.drop_path_rate = drop_path_rate
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.block_norm_epsilon = block_norm_epsilon
        self.approximate_gelu = approximate_gelu
        self.image_shape = input_shape
        self.include_preprocessing = include_preprocessing
        self.min_input_size = min_size
        self.layer_dtype = dtype

    def _check_batch(self, x):
        check_image_shape(x.shape, self.min_input_size, self.image_shape[-1])

    @property
    def num_stages(self):
        return len(self.depths)

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
        arguments). The backbone's artifacts have one output per stage
        (``stage1_norm`` ... ``stage4_norm``); the task models share this
        method."""
        from keras_segformer.export.keras_api import keras_export

        keras_export(
            self,
            filepath,
            format=format,
            verbose=verbose,
            input_signature=input_signature,
            **kwargs,
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "depths": self.depths,
            "hidden_sizes": self.hidden_sizes,
            "num_heads": self.num_heads,
            "sr_ratios": self.sr_ratios,
            "patch_sizes": self.patch_sizes,
            "strides": self.strides,
            "mlp_ratios": self.mlp_ratios,
            "drop_path_rate": self.drop_path_rate,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "block_norm_epsilon": self.block_norm_epsilon,
            "approximate_gelu": self.approximate_gelu,
            "input_shape": list(self.image_shape),
            "include_preprocessing": self.include_preprocessing,
            "dtype": _serialize_dtype(self.layer_dtype),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
