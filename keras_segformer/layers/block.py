"""Mix Transformer block: pre-norm attention and Mix-FFN with drop path."""

import keras

from keras_segformer.layers.attention import EfficientSelfAttention
from keras_segformer.layers.drop_path import DropPath, drop
from keras_segformer.layers.layer_norm import LayerNorm
from keras_segformer.layers.mix_ffn import MixFFN
from keras_segformer.ops.layer_call import DirectCall, Dropout
from keras_segformer.serializable import attribute_config


@keras.saving.register_keras_serializable(package="keras_segformer")
class MiTBlock(DirectCall, keras.layers.Layer):
    """``x + DropPath(Attn(LN(x)))`` then ``x + DropPath(MixFFN(LN(x)))``.

    Args:
        hidden_size: int. Channels.
        num_heads: int. Attention heads.
        sr_ratio: int. Key/value spatial reduction ratio.
        mlp_ratio: float. Mix-FFN expansion (intermediate = hidden * ratio).
        drop_path: float. Stochastic depth rate of this block.
        dropout: float. Dropout on the attention output and in the Mix-FFN.
        attention_dropout: float. Dropout on attention probabilities.
        layer_norm_epsilon: float. Epsilon of every LayerNorm in the block.
        block_norm_epsilon: float or None. Epsilon of the two pre-norms
            (``norm1``, ``norm2``) where it differs from the
            spatial-reduction norm's (NVlabs and keras-hub: 1e-6); None:
            ``layer_norm_epsilon``.
        approximate_gelu: bool. tanh GELU in the Mix-FFN (``MixFFN``).
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        sr_ratio=1,
        mlp_ratio=4,
        drop_path=0.0,
        dropout=0.0,
        attention_dropout=0.0,
        layer_norm_epsilon=1e-5,
        block_norm_epsilon=None,
        approximate_gelu=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path
        self.dropout_rate = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.block_norm_epsilon = block_norm_epsilon
        self.approximate_gelu = bool(approximate_gelu)
        policy = self.dtype_policy
        norm_epsilon = (
            layer_norm_epsilon
            if block_norm_epsilon is None
            else block_norm_epsilon
        )
        self.norm1 = LayerNorm(epsilon=norm_epsilon, dtype=policy, name="norm1")
        self.attention = EfficientSelfAttention(
            hidden_size,
            num_heads,
            sr_ratio=sr_ratio,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=policy,
            name="attention",
        )
        self.attention_output_dropout = Dropout(dropout, dtype=policy)
        self.norm2 = LayerNorm(epsilon=norm_epsilon, dtype=policy, name="norm2")
        self.mlp = MixFFN(
            hidden_size,
            int(hidden_size * mlp_ratio),
            dropout=dropout,
            approximate_gelu=approximate_gelu,
            dtype=policy,
            name="mlp",
        )
        self.drop_path = DropPath(drop_path, dtype=policy, name="drop_path")

    def build(self, input_shape):
        for layer in (
            self.norm1,
            self.attention,
            self.norm2,
            self.mlp,
            self.drop_path,
        ):
            layer.build(input_shape)

    def call(self, x, training=None):
        h = self.attention(self.norm1(x), training=training)
        h = drop(self.attention_output_dropout, h, training)
        x = x + drop(self.drop_path, h, training)
        h = self.mlp(self.norm2(x), training=training)
        return x + drop(self.drop_path, h, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        # The attention's arguments (passed through) and the block's own.
        names = EfficientSelfAttention.CONFIG_NAMES + (
            "mlp_ratio",
            "block_norm_epsilon",
            "approximate_gelu",
        )
        config = attribute_config(
            self, names, drop_path="drop_path_rate", dropout="dropout_rate"
        )
        return {**super().get_config(), **config}
