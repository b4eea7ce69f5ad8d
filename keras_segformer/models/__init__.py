"""Functional model builders: MiT encoder, SegFormer, MiT classifier."""

from keras_segformer.models.builders import *  # noqa: F401,F403
from keras_segformer.models.mit import MiTBackbone  # noqa: F401
from keras_segformer.models.segformer import (  # noqa: F401
    MiTClassifier,
    SegFormer,
)
