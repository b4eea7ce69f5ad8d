"""Helpers shared by the sub-commands: model loading, folders, labels."""

import json
import os


def load_any_model(path, *, variant=None, num_classes=None):
    """Load a model from a ``.keras`` file, a transformers directory, or a
    Keras weights file (``.weights.h5``, needs ``variant`` and
    ``num_classes``).

    Args:
        path: str. The model.
        variant: str or None. ``b0`` ... ``b5`` for a weights file.
        num_classes: int or None. Classes for a weights file.
    """
    import keras

    import keras_segformer

    path = os.fspath(path)
    if os.path.isdir(path):
        return keras_segformer.from_pretrained(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model file or directory: {path!r}")
    if path.endswith(".weights.h5"):
        if variant is None or num_classes is None:
            raise ValueError(
                f"{path!r} holds weights only: pass --variant and "
                "--num-classes to say which model they belong to."
            )
        model = keras_segformer.build_segformer(num_classes, variant)
        model.load_weights(path)
        return model
    if path.endswith(".keras"):
        try:
            return keras.models.load_model(path)
        except Exception as e:
            raise ValueError(
                f"Could not load the Keras model {path!r}: {e}"
            ) from e
    raise ValueError(
        f"Unknown model format {path!r}: expected a .keras file, a "
        ".weights.h5 file or a transformers directory."
    )


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
            names = [data[k] for k in sorted(data, key=int)]
        else:
            names = list(data)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"--labels gives {len(names)} names for {num_classes} classes."
        )
    return dict(enumerate(names))
