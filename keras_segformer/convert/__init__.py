"""Checkpoint readers and writers (transformers, ...)."""

from keras_segformer.convert.assign import LoadReport, assign
from keras_segformer.convert.hf import (
    canonicalize,
    config_to_kwargs,
    from_pretrained,
    load_hf_weights,
)
from keras_segformer.convert.state_dict import CheckpointError, read_state_dict

__all__ = [
    "CheckpointError",
    "LoadReport",
    "assign",
    "canonicalize",
    "config_to_kwargs",
    "from_pretrained",
    "load_hf_weights",
    "read_state_dict",
]
