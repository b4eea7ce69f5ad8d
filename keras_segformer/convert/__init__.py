"""Checkpoint readers and writers (transformers, NVlabs, mmsegmentation).

One loader (``load_checkpoint``; ``from_pretrained`` for Hub ids,
transformers directories and keras-hub presets; ``load_weights`` into an
existing model), one report type (``LoadReport``) and one registry of
formats (``formats.REGISTRY``). Writers: ``save_pretrained``
(transformers) and ``save_to_preset`` (keras-hub).
"""

from keras_segformer.classes import resolve_labels
from keras_segformer.convert.architecture import infer_architecture
from keras_segformer.convert.assign import ConversionReport, LoadReport, assign
from keras_segformer.convert.formats import FORMATS, REGISTRY, detect_format
from keras_segformer.convert.hf import canonicalize, config_to_kwargs
from keras_segformer.convert.keras_hub import load_preset
from keras_segformer.convert.loader import (
    load_checkpoint,
    load_hf_weights,
    load_weights,
)
from keras_segformer.convert.pickle_reader import load_torch_file
from keras_segformer.convert.pretrained import from_pretrained
from keras_segformer.convert.state_dict import CheckpointError, read_state_dict
from keras_segformer.convert.to_hf import preprocessor_config, save_pretrained
from keras_segformer.convert.to_keras_hub import save_to_preset

__all__ = [
    "FORMATS",
    "REGISTRY",
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
    "load_preset",
    "load_torch_file",
    "load_weights",
    "preprocessor_config",
    "read_state_dict",
    "resolve_labels",
    "save_pretrained",
    "save_to_preset",
]
