"""What the two decode heads share (``SegFormerHead``, ``MMSegSegFormerHead``).

Their arguments, checks and config, the per-scale and fuse projections,
the classifier (float32 logits) and the sum of the per-scale maps at
``c1``'s size.
Each head creates its layers in the order it always did, under the same
names, so variable paths and weight order stay as they are.
"""

import keras
from keras import ops

from keras_segformer.configs import check_positive_int, check_rate
from keras_segformer.layers.init import kernel_init
from keras_segformer.ops.layer_call import BatchNormalization, DirectCall
from keras_segformer.ops.resize import add_resized
from keras_segformer.serializable import attribute_config


def batch_norm(name, policy):
    """PyTorch's BatchNorm2d: eps 1e-5, momentum 0.1 (= Keras 0.9)."""
    return BatchNormalization(
        momentum=0.9, epsilon=1e-5, dtype=policy, name=name
    )


class BaseDecodeHead(DirectCall, keras.layers.Layer):
    """Base of the decode heads: ``features [c1, ..., cN] -> logits``.

    Args:
        num_classes: int. Output channels (logits).
        decoder_hidden_size: int. Channels of the per-scale and fused maps.
        dropout: float. Dropout before the classifier.
        num_inputs: int. Number of feature maps (stages).
    """

    def __init__(
        self,
        num_classes,
        decoder_hidden_size=256,
        dropout=0.1,
        num_inputs=4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_classes = check_positive_int(num_classes, "num_classes")
        decoder_hidden_size = check_positive_int(
            decoder_hidden_size, "decoder_hidden_size"
        )
        dropout = check_rate(dropout, "dropout")
        self.num_classes = num_classes
        self.decoder_hidden_size = decoder_hidden_size
        self.dropout_rate = dropout
        self.num_inputs = num_inputs
        self._create_layers()

    def _create_layers(self):
        """Create the head's layers (a subclass's own)."""
        raise NotImplementedError

    def _dense(self, name, use_bias=True):
        # A 1x1 convolution is a per-pixel Dense; Dense skips the conv setup.
        return keras.layers.Dense(
            self.decoder_hidden_size,
            use_bias=use_bias,
            kernel_initializer=kernel_init(),
            dtype=self.dtype_policy,
            name=name,
        )

    def _per_input(self, make, name):
        """``make(name)`` for each input, ``name`` formatted with 1 ... N."""
        return [make(name.format(i + 1)) for i in range(self.num_inputs)]

    def _classifier(self):
        # In the compute dtype, as the rest of the head (bfloat16 under
        # mixed_bfloat16: its GEMM is the widest of the head, ~4x as fast
        # as float32's on CPUs with bf16 units); ``logits`` returns float32.
        return keras.layers.Dense(
            self.num_classes,
            kernel_initializer=kernel_init(),
            dtype=self.dtype_policy,
            name="classifier",
        )

    @staticmethod
    def _float32(logits):
        """The logits in float32, whatever the compute dtype (losses and
        softmax take them there)."""
        return ops.cast(logits, "float32")

    def _check_inputs(self, input_shape):
        if len(input_shape) != self.num_inputs:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_inputs} feature "
                f"maps. Received {len(input_shape)}."
            )

    @staticmethod
    def _sum_at(maps):
        """``sum_i up(y_i)`` in scale order: the first map as it is, the
        others resized bilinearly (``align_corners=False``) to its size."""
        x = None
        for y in maps:
            x = y if x is None else add_resized(x, y)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.num_classes,)

    def get_config(self):
        names = ("num_classes", "decoder_hidden_size", "num_inputs")
        config = attribute_config(self, names, dropout="dropout_rate")
        return {**super().get_config(), **config}
