"""Export SegFormer models to SavedModel, TFLite and ONNX.

Placeholder docstring (matrix below is filled in after measurement).
"""

from keras_segformer.export.api import (
    FORMATS,
    calibration_images,
    export_many,
    export_model,
)
from keras_segformer.export.loading import load_model
from keras_segformer.export.runtime import ExportedModel, artifact_format

__all__ = [
    "FORMATS",
    "ExportedModel",
    "artifact_format",
    "calibration_images",
    "export_many",
    "export_model",
    "load_model",
]
