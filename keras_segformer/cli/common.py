"""Helpers shared by the sub-commands: model loading, folders, labels."""

import json
import os


def load_any_model(path, *, variant=None, num_classes=None):
    """Load a model from a ``.keras`` file, a transformers directory, or a
    Keras weights file (``.weights.h5``, needs ``variant`` and
    ``num_classes``); see ``keras_segformer.export.load_model``.
    """
    from keras_segformer.export.loading import load_model

    return load_model(path, variant=variant, num_classes=num_classes)


def read_class_names(spec, num_classes=None):
    """Class names from ``ade20k``, ``cityscapes`` or a JSON file (a list or
    an ``id2label`` dict). Returns ``{id: name}`` or None."""
    if spec is None:
        return None
    from keras_segformer.inference import palettes

    builtin = {
        "ade20k": palettes.ADE20K_CLASSES,
        "cityscapes": palettes.CITYSCAPES_CLASSES,
    }
    if spec in builtin:
        names = list(builtin[spec])
    else:
        if not os.path.isfile(spec):
            raise FileNotFoundError(
                f"--labels: {spec!r} is neither 'ade20k', 'cityscapes' nor a "
                "JSON file."
            )
        with open(spec) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--labels: {spec!r} is not JSON: {e}") from e
        if isinstance(data, dict):
            data = data.get("id2label", data)
        if isinstance(data, dict) and all(
            str(k).strip().isdigit() for k in data
        ):
            names = [data[k] for k in sorted(data, key=int)]
        elif isinstance(data, list):
            names = data
        else:
            raise ValueError(
                f"--labels {spec!r} must hold a JSON list of class names or "
                "an object {index: name} (or a config.json with id2label)."
            )
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"--labels gives {len(names)} names for {num_classes} classes."
        )
    return dict(enumerate(names))
