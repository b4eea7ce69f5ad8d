"""Keras models -> keras-hub SegFormer / MiT presets, without keras-hub.

``save_to_preset`` writes the folder ``keras_hub.py`` reads (its
docstring describes the files and the numerics); ``numerics_gap`` says
how far keras-hub's numerics move a model's logits.
"""

import json
import os
import warnings

import numpy as np

from keras_segformer.convert import hf
from keras_segformer.convert.keras_hub import (
    _CONV1X1,
    _FLOAT32,
    BACKBONE_WEIGHTS,
    KERAS_HUB_NUMERICS,
    MIT,
    SEGFORMER,
    SEGMENTER,
    TASK_WEIGHTS,
    _encoder_root,
    _suffix,
    preset_key,
)
from keras_segformer.convert.state_dict import CheckpointError


def _preset_kind(model):
    from keras_segformer.models.mit import MiTBackbone
    from keras_segformer.models.segformer import SegFormer

    if isinstance(model, SegFormer):
        if model.head != "mlp":
            raise CheckpointError(
                "keras-hub's SegFormer has the all-MLP head; this model has "
                f"head={model.head!r}. Save it as .keras instead."
            )
        return "segformer"
    if isinstance(model, MiTBackbone):
        return "mit"
    raise TypeError(
        "save_to_preset writes a SegFormer (keras-hub "
        "SegFormerImageSegmenter) or an MiTBackbone (keras-hub "
        f"MiTBackbone). Received: {type(model).__name__}; for a "
        "classifier, save `model.backbone`."
    )


def _preset_size(model, image_size):
    """The preset's square input side, checked against keras-hub's
    limits (one square size; its stage sizes are ``size / stride``)."""
    backbone = getattr(model, "backbone", model)
    if image_size is None:
        h, w = backbone.image_shape[:2]
        size = (model.preprocessor_config or {}).get("size") or {}
        if h is None or w is None:
            h, w = size.get("height", 512), size.get("width", 512)
        if h != w:
            raise ValueError(
                f"keras-hub presets take one square size; the model's is "
                f"{h}x{w}. Pass image_size=<side>."
            )
        image_size = h
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise ValueError(
            "`image_size` must be a positive int (keras-hub presets are "
            f"square). Received: {image_size!r}"
        )
    step = int(np.prod(backbone.strides))
    if image_size % step or image_size < backbone.min_input_size:
        raise ValueError(
            f"`image_size` must be a multiple of {step} (the product of the "
            "strides: keras-hub computes each stage's side as size / "
            f"stride) and at least {backbone.min_input_size}. Received: "
            f"{image_size}"
        )
    return int(image_size)


def _check_representable(model, kind):
    backbone = getattr(model, "backbone", model)
    if any(r != 4 for r in backbone.mlp_ratios):
        raise CheckpointError(
            "keras-hub's MiT has Mix-FFN expansion 4 in every stage; this "
            f"model has mlp_ratios={backbone.mlp_ratios}."
        )
    dims = backbone.hidden_sizes
    if kind == "segformer" and len(set(dims)) != len(dims):
        raise CheckpointError(
            "keras-hub names its decoder layers linear_<hidden size>: the "
            f"stages' hidden sizes must differ. Received: {dims}"
        )


def _mit_config(backbone, size):
    return {
        "module": "keras_hub.src.models.mit.mit_backbone",
        "class_name": "MiTBackbone",
        "config": {
            "name": "mi_t_backbone",
            "trainable": True,
            "dtype": _FLOAT32,
            "layerwise_depths": list(backbone.depths),
            "hidden_dims": list(backbone.hidden_sizes),
            "image_shape": [size, size, int(backbone.image_shape[-1])],
            "num_layers": backbone.num_stages,
            "layerwise_num_heads": list(backbone.num_heads),
            "layerwise_sr_ratios": list(backbone.sr_ratios),
            "max_drop_path_rate": float(backbone.drop_path_rate),
            "layerwise_patch_sizes": list(backbone.patch_sizes),
            "layerwise_strides": list(backbone.strides),
        },
        "registered_name": MIT,
    }


def preset_files(model, size):
    """The JSON files of a preset: ``{file name: object}``."""
    from keras_segformer.convert.to_hf import preprocessor_config
    from keras_segformer.version import __version__

    backbone = getattr(model, "backbone", model)
    kind = _preset_kind(model)
    mit = _mit_config(backbone, size)
    metadata = {
        "keras_version": _keras_version(),
        "keras_segformer_version": __version__,
        "parameter_count": int(model.count_params()),
        "tasks": ["ImageSegmenter"] if kind == "segformer" else [],
    }
    if kind == "mit":
        return {"metadata.json": metadata, "config.json": mit}
    processor = preprocessor_config(model, image_size=size)
    mean = np.asarray(processor["image_mean"], "float64")
    std = np.asarray(processor["image_std"], "float64")
    converter = {
        "module": "keras_hub.src.models.segformer.segformer_image_converter",
        "class_name": "SegFormerImageConverter",
        "config": {
            "name": "seg_former_image_converter",
            "trainable": True,
            "dtype": _FLOAT32,
            "image_size": [size, size],
            # x * scale + offset == (x * rescale - mean) / std
            "scale": [float(v) for v in processor["rescale_factor"] / std],
            "offset": [float(v) for v in -mean / std],
            "interpolation": "bilinear",
            "antialias": False,
            "crop_to_aspect_ratio": True,
            "pad_to_aspect_ratio": False,
            "bounding_box_format": "yxyx",
        },
        "registered_name": "keras_hub>SegFormerImageConverter",
    }
    preprocessor = {
        "module": (
            "keras_hub.src.models.segformer."
            "segformer_image_segmenter_preprocessor"
        ),
        "class_name": "SegFormerImageSegmenterPreprocessor",
        "config": {
            "name": "seg_former_image_segmenter_preprocessor",
            "trainable": True,
            "dtype": _FLOAT32,
            "image_converter": converter,
            "config_file": "preprocessor.json",
        },
        "registered_name": ("keras_hub>SegFormerImageSegmenterPreprocessor"),
    }
    config = {
        "module": "keras_hub.src.models.segformer.segformer_backbone",
        "class_name": "SegFormerBackbone",
        "config": {
            "name": "seg_former_backbone",
            "trainable": True,
            "dtype": _FLOAT32,
            "projection_filters": int(model.decoder_hidden_size),
            "image_encoder": mit,
        },
        "registered_name": SEGFORMER,
    }
    task = {
        "module": "keras_hub.src.models.segformer.segformer_image_segmenter",
        "class_name": "SegFormerImageSegmenter",
        "config": {
            "backbone": config,
            "preprocessor": preprocessor,
            "name": "seg_former_image_segmenter",
            "num_classes": int(model.num_classes),
        },
        "registered_name": SEGMENTER,
    }
    return {
        "image_converter.json": converter,
        "preprocessor.json": preprocessor,
        "metadata.json": metadata,
        "task.json": task,
        "config.json": config,
    }


def _keras_version():
    import keras

    return keras.__version__


def preset_arrays(model):
    """``{file: ({dataset path: array}, {group path: layer name})}`` of a
    model's weights in keras-hub's layout."""
    import keras

    kind = _preset_kind(model)
    backbone = getattr(model, "backbone", model)
    depths = list(backbone.depths)
    canonical = (
        hf.backbone_plan(model) if kind == "mit" else hf.model_plan(model)
    )
    files = {BACKBONE_WEIGHTS: ({}, {})}
    if kind == "segformer":
        files[TASK_WEIGHTS] = ({}, {})
    for key, variable, _ in canonical:
        file, path = preset_key(key, depths, kind)
        value = keras.ops.convert_to_numpy(variable).astype("float32")
        if key in _CONV1X1:
            value = value.reshape((1, 1) + value.shape)
        arrays = files[file][0]
        if path in arrays:
            raise AssertionError(f"Two variables map to {path!r}.")
        arrays[path] = value
    # Keras writes each layer's name beside its variables; our reader
    # finds the decoder's Dense layers by it.
    root = _encoder_root(kind)
    names = files[BACKBONE_WEIGHTS][1]
    n = 0
    for s, depth in enumerate(depths):
        group = f"overlapping_patching_and_embedding{_suffix(s)}"
        names[f"{root}/{group}/vars"] = f"patch_and_embed_{s}"
        for j in range(depth):
            group = f"hierarchical_transformer_encoder{_suffix(n)}"
            names[f"{root}/{group}/vars"] = f"hierarchical_encoder_{s}_{j}"
            n += 1
        if kind == "segformer":
            i = len(depths) - 1 - s
            names[f"layers/dense{_suffix(i)}/vars"] = (
                f"linear_{backbone.hidden_sizes[s]}"
            )
    if kind == "segformer":
        # keras-hub's default optimizer state (Adam, learning rate 5e-5),
        # so that loading the task does not warn about a missing optimizer.
        arrays, names = files[TASK_WEIGHTS]
        arrays["optimizer/vars/0"] = np.asarray(0, "int32")
        arrays["optimizer/vars/1"] = np.asarray(5e-5, "float32")
        names["optimizer/vars"] = "adam"
    return files


def _write_h5(path, arrays, names):
    import h5py

    from keras_segformer.training.run_files import write_atomic

    def write(temporary):
        with h5py.File(temporary, "w") as f:
            for key, value in sorted(arrays.items()):
                f.create_dataset(key, data=value)
            for group, name in names.items():
                f.require_group(group).attrs["name"] = name

    write_atomic(path, write)


def numerics_gap(model, side=64, seed=0):
    """Max abs difference between this model's outputs and the same
    weights computed with keras-hub's numerics, or None when they are
    keras-hub's already. Measured on one random ``side x side`` input."""
    import keras

    from keras_segformer.models.segformer import SegFormer

    backbone = getattr(model, "backbone", model)
    if all(getattr(backbone, k) == v for k, v in KERAS_HUB_NUMERICS.items()):
        return None
    config = {**backbone.get_config(), **KERAS_HUB_NUMERICS}
    twin = type(backbone).from_config(config)
    if isinstance(model, SegFormer):
        twin = SegFormer(
            twin,
            model.num_classes,
            decoder_hidden_size=model.decoder_hidden_size,
        )
    twin.set_weights(model.get_weights())
    side = max(side, backbone.min_input_size)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (1, side, side, backbone.image_shape[-1]))
    if not backbone.include_preprocessing:
        x = (x / 127.5 - 1).astype("float32")
    x = x.astype("float32")
    ours, theirs = (
        [
            keras.ops.convert_to_numpy(t)
            for t in keras.tree.flatten(m(x, training=False))
        ]
        for m in (model, twin)
    )
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))


def save_to_preset(model, directory, image_size=None):
    """Write a model as a keras-hub preset folder.

    ``keras_hub.models.SegFormerImageSegmenter.from_preset(directory)`` (a
    ``SegFormer``) or ``keras_hub.models.MiTBackbone.from_preset(directory)``
    (an ``MiTBackbone``) loads it offline; keras-hub is not needed to
    write it. Files: ``config.json``, ``model.weights.h5``, and for a
    SegFormer ``task.json``, ``task.weights.h5``, ``preprocessor.json`` and
    ``image_converter.json`` (the model's normalization as keras-hub's
    per-channel scale and offset), ``metadata.json``; each written under a
    temporary name and renamed, ``config.json`` last.

    keras-hub's MiT computes the tanh GELU and block LayerNorm epsilon
    1e-6. A model with other numerics (transformers': exact GELU, 1e-5) is
    written anyway, with a one-line warning giving the measured size of
    the difference in keras-hub's outputs.

    Args:
        model: ``SegFormer`` (all-MLP head) or ``MiTBackbone``.
        directory: str. Created if needed.
        image_size: int or None. The preset's square input side (a
            multiple of the strides' product, 32 for B0-B5); default the
            model's fixed size, else its ``preprocessor_config`` size,
            else 512.

    Returns:
        dict ``{file name: path}`` of the files written.

    Raises:
        TypeError: a model keras-hub has no preset class for.
        CheckpointError: an architecture keras-hub cannot express.
        ValueError: a bad ``image_size``.

    Example:
    >>> model.save_to_preset("out/preset")
    >>> keras_hub.models.SegFormerImageSegmenter.from_preset("out/preset")
    """
    kind = _preset_kind(model)
    _check_representable(model, kind)
    size = _preset_size(model, image_size)
    gap = numerics_gap(model)
    if gap is not None:
        backbone = getattr(model, "backbone", model)
        warnings.warn(
            "keras-hub's MiT computes the tanh GELU and LayerNorm epsilon "
            "1e-6 in its blocks, this model "
            f"{'the tanh' if backbone.approximate_gelu else 'exact'} GELU "
            "and epsilon "
            f"{backbone.block_norm_epsilon or backbone.layer_norm_epsilon:g}"
            ": the preset's outputs in keras-hub differ from this model's "
            f"by {gap:.1e} (max abs, measured on a random input; build with "
            "approximate_gelu=True, block_norm_epsilon=1e-6 for equal "
            "numbers).",
            stacklevel=3,
        )
    from keras_segformer.training.run_files import write_atomic

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for file, (arrays, names) in preset_arrays(model).items():
        paths[file] = os.path.join(directory, file)
        _write_h5(paths[file], arrays, names)
    for file, content in preset_files(model, size).items():
        paths[file] = os.path.join(directory, file)
        text = json.dumps(content, indent=4) + "\n"

        def write(temporary, text=text):
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(text)

        write_atomic(paths[file], write)
    return paths
