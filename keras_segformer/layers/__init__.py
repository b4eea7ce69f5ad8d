"""SegFormer building blocks, written with `keras.ops` only."""

from keras_segformer.layers.attention import EfficientSelfAttention
from keras_segformer.layers.block import MiTBlock
from keras_segformer.layers.decode_head import SegFormerHead
from keras_segformer.layers.drop_path import DropPath
from keras_segformer.layers.input_check import InputCheck
from keras_segformer.layers.layer_norm import LayerNorm
from keras_segformer.layers.mix_ffn import MixFFN
from keras_segformer.layers.mmseg_head import MMSegSegFormerHead
from keras_segformer.layers.patch_embedding import OverlappingPatchEmbedding
from keras_segformer.layers.preprocessing import ImageNormalization
from keras_segformer.ops.resize import resize_bilinear

__all__ = [
    "DropPath",
    "EfficientSelfAttention",
    "ImageNormalization",
    "InputCheck",
    "LayerNorm",
    "MMSegSegFormerHead",
    "MiTBlock",
    "MixFFN",
    "OverlappingPatchEmbedding",
    "SegFormerHead",
    "resize_bilinear",
]
