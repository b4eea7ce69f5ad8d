"""Checkpoint readers and writers (transformers, NVlabs, mmsegmentation)."""

from keras_segformer.convert.assign import LoadReport, assign
from keras_segformer.convert.detect import (
    ConversionReport,
    detect_format,
    infer_architecture,
    load_checkpoint,
    load_weights,
    resolve_labels,
)
from keras_segformer.convert.hf import (
    canonicalize,
    config_to_kwargs,
    from_pretrained,
    load_hf_weights,
)
from keras_segformer.convert.pickle_reader import load_torch_file
from keras_segformer.convert.state_dict import CheckpointError, read_state_dict
from keras_segformer.convert.to_hf import save_pretrained

__all__ = [
    "CheckpointError",
    "ConversionReport",
    "LoadReport",
    "assign",
    "canonicalize",
    "config_to_kwargs",
    "detect_format",
    "from_pretrained",
    "infer_architecture",
    "load_checkpoint",
    "load_hf_weights",
    "load_torch_file",
    "load_weights",
    "read_state_dict",
    "resolve_labels",
    "save_pretrained",
]
