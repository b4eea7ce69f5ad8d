"""keras-hub SegFormer / MiT presets <-> Keras models, without keras-hub.

A keras-hub preset folder (``save_to_preset``) holds ``config.json`` (the
backbone, ``registered_name`` ``keras_hub>SegFormerBackbone`` or
``keras_hub>MiTBackbone``), ``task.json`` (``SegFormerImageSegmenter``
and its ``num_classes``), ``preprocessor.json`` (its image converter:
size, per-channel scale and offset), ``model.weights.h5`` (backbone) and
``task.weights.h5`` (the classifier). The h5 files are Keras weight files
keyed by object path (``layers/functional/layers/
hierarchical_transformer_encoder_3/attn/q/vars/0``); they are read and
written here with h5py.

Numerics: keras-hub's MiT blocks compute the tanh GELU and use LayerNorm
epsilon 1e-6 in their two pre-norms (1e-5 elsewhere). A preset is loaded
with those numerics (``approximate_gelu=True``,
``block_norm_epsilon=1e-6``), so its logits equal keras-hub's own.
keras-hub's segmenter resizes the logits to the input size and takes one
square size; ours returns them at 1/4 of the input, at any size.
"""

import json
import os
import warnings

import numpy as np

from keras_segformer.convert import hf
from keras_segformer.convert.state_dict import CheckpointError

SEGFORMER = "keras_hub>SegFormerBackbone"
MIT = "keras_hub>MiTBackbone"
SEGMENTER = "keras_hub>SegFormerImageSegmenter"
BACKBONE_WEIGHTS = "model.weights.h5"
TASK_WEIGHTS = "task.weights.h5"

# What keras-hub's MiT computes (mit_layers.py), as MiTBackbone options.
KERAS_HUB_NUMERICS = {
    "approximate_gelu": True,
    "block_norm_epsilon": 1e-6,
    "layer_norm_epsilon": 1e-5,
}

# Canonical block module -> keras-hub's HierarchicalTransformerEncoder path.
_BLOCK_MODULES = {
    "layer_norm_1": "norm1",
    "attention.self.query": "attn/q",
    "attention.self.key": "attn/k",
    "attention.self.value": "attn/v",
    "attention.self.sr": "attn/sr",
    "attention.self.layer_norm": "attn/norm",
    "attention.output.dense": "attn/proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp/fc1",
    "mlp.dwconv.dwconv": "mlp/dwconv",
    "mlp.dense2": "mlp/fc2",
}
# Keras' variable order: kernel, bias / gamma, beta / BN's four.
_VAR_INDEX = {
    "weight": 0,
    "bias": 1,
    "running_mean": 2,
    "running_var": 3,
}
# keras-hub 1x1 Conv2D kernels (1, 1, in, out) that are Dense (in, out) here.
_CONV1X1 = ("decode_head.linear_fuse.weight", "decode_head.classifier.weight")

_FLOAT32 = {
    "module": "keras",
    "class_name": "DTypePolicy",
    "config": {"name": "float32"},
    "registered_name": None,
}


def _suffix(n):
    """Keras' name counter: ``dense``, ``dense_1``, ``dense_2`` ..."""
    return "" if n == 0 else f"_{n}"


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Corrupt {path!r}: {e}") from None


def is_preset(directory):
    """Whether ``directory/config.json`` is a keras-hub preset config (a
    JSON object whose ``registered_name`` starts with ``keras_hub>``)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return False
    try:
        config = _read_json(path)
    except (CheckpointError, OSError):
        return False
    name = config.get("registered_name") if isinstance(config, dict) else None
    return isinstance(name, str) and name.startswith("keras_hub>")


def _encoder_fields(encoder, path):
    """``MiTBackbone`` arguments of a keras-hub MiT config, checked."""
    names = (
        "layerwise_depths",
        "hidden_dims",
        "layerwise_num_heads",
        "layerwise_sr_ratios",
        "layerwise_patch_sizes",
        "layerwise_strides",
    )
    missing = [n for n in names if not isinstance(encoder.get(n), list)]
    if missing:
        raise CheckpointError(
            f"{path!r}: the MiT config lacks the lists {missing}."
        )
    shape = encoder.get("image_shape") or [None, None, 3]
    return {
        "depths": encoder["layerwise_depths"],
        "hidden_sizes": encoder["hidden_dims"],
        "num_heads": encoder["layerwise_num_heads"],
        "sr_ratios": encoder["layerwise_sr_ratios"],
        "patch_sizes": encoder["layerwise_patch_sizes"],
        "strides": encoder["layerwise_strides"],
        # keras-hub's MixFFN hard-codes 4 (mit_layers.py).
        "mlp_ratios": [4] * len(encoder["layerwise_depths"]),
        "drop_path_rate": float(encoder.get("max_drop_path_rate", 0.1)),
        "input_shape": (None, None, int(shape[-1])),
    }


def read_preset(directory):
    """The architecture of a keras-hub preset folder.

    Args:
        directory: str. A folder written by keras-hub's ``save_to_preset``
            (or ours).

    Returns:
        dict: ``kind`` (``"segformer"`` or ``"mit"``), ``backbone``
        (``MiTBackbone`` arguments), ``decoder_hidden_size``,
        ``num_classes`` (None without a segmenter ``task.json``),
        ``image_size`` and ``preprocessing`` (a transformers processor
        config, or None).

    Raises:
        CheckpointError: another keras-hub model, or a malformed file.
    """
    path = os.path.join(directory, "config.json")
    config = _read_json(path)
    name = config.get("registered_name")
    inner = config.get("config")
    if name not in (SEGFORMER, MIT) or not isinstance(inner, dict):
        raise CheckpointError(
            f"{path!r} is a keras-hub preset of {name!r}; only "
            f"{SEGFORMER!r} and {MIT!r} presets can be read."
        )
    info = {"kind": "segformer" if name == SEGFORMER else "mit"}
    if name == SEGFORMER:
        encoder = (inner.get("image_encoder") or {}).get("config")
        if not isinstance(encoder, dict):
            raise CheckpointError(f"{path!r} has no 'image_encoder' config.")
        info["decoder_hidden_size"] = int(inner["projection_filters"])
    else:
        encoder = inner
        info["decoder_hidden_size"] = None
    info["backbone"] = _encoder_fields(encoder, path)
    image_shape = encoder.get("image_shape") or [None, None]
    info["image_size"] = tuple(image_shape[:2])
    info["num_classes"] = None
    task_path = os.path.join(directory, "task.json")
    if name == SEGFORMER and os.path.isfile(task_path):
        task = _read_json(task_path)
        if isinstance(task, dict) and task.get("registered_name") == SEGMENTER:
            info["num_classes"] = int(task["config"]["num_classes"])
    info["preprocessing"] = _read_preprocessing(directory, info["image_size"])
    return info


def _read_preprocessing(directory, image_size):
    """keras-hub's image converter (``x * scale + offset`` on 0-255 RGB,
    resized to ``image_size``) as a transformers processor config."""
    path = os.path.join(directory, "preprocessor.json")
    if not os.path.isfile(path):
        return None
    config = _read_json(path)
    converter = (config.get("config") or {}).get("image_converter") or {}
    converter = converter.get("config") or {}
    scale = converter.get("scale")
    offset = converter.get("offset")
    scale = np.broadcast_to(np.asarray(1.0 if scale is None else scale), 3)
    offset = np.broadcast_to(np.asarray(0.0 if offset is None else offset), 3)
    std = 1.0 / (255.0 * scale.astype("float64"))
    size = converter.get("image_size") or image_size
    out = {
        "image_processor_type": "SegformerImageProcessor",
        "do_resize": True,
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        # 12 digits: 0.485, not 0.48500000000000004 after the round trip.
        "image_mean": [float(f"{v:.12g}") for v in -offset * std],
        "image_std": [float(f"{v:.12g}") for v in std],
        "do_reduce_labels": False,
    }
    if size and None not in tuple(size):
        out["size"] = {"height": int(size[0]), "width": int(size[1])}
    return out


def _encoder_root(kind):
    # A SegFormerBackbone keeps the MiT layers in its feature extractor,
    # a keras.Model (Keras' path for it: "functional").
    return "layers/functional/layers" if kind == "segformer" else "layers"


def preset_key(canonical, depths, kind):
    """``(file, h5 dataset path)`` of a canonical (transformers) name.

    Args:
        canonical: str. A key of ``hf.model_plan`` / ``hf.backbone_plan``.
        depths: list of ints. Blocks per stage.
        kind: str. ``"segformer"`` or ``"mit"``.
    """
    root = _encoder_root(kind)
    parsed = hf.split_backbone_key(canonical)
    if parsed is not None:
        part, fields = parsed
        if part == "patch_embedding":
            s, module, param = fields
            sub = "proj" if module == "proj" else "norm"
            layer = f"overlapping_patching_and_embedding{_suffix(s)}/{sub}"
        elif part == "stage_norm":
            s, param = fields
            layer = f"layer_normalization{_suffix(s)}"
        else:
            s, j, module, param = fields
            n = sum(depths[:s]) + j
            layer = (
                f"hierarchical_transformer_encoder{_suffix(n)}/"
                f"{_BLOCK_MODULES[module]}"
            )
        return BACKBONE_WEIGHTS, f"{root}/{layer}/vars/{_VAR_INDEX[param]}"
    *module, param = canonical.split(".")
    module = ".".join(module)
    index = _VAR_INDEX[param]
    if module.startswith("decode_head.linear_c."):
        # Keras lists the decoder's Dense layers last stage first.
        i = int(module.split(".")[2])
        n = len(depths) - 1 - i
        return BACKBONE_WEIGHTS, f"layers/dense{_suffix(n)}/vars/{index}"
    if module == "decode_head.linear_fuse":
        return BACKBONE_WEIGHTS, "layers/sequential/layers/conv2d/vars/0"
    if module == "decode_head.batch_norm":
        return (
            BACKBONE_WEIGHTS,
            f"layers/sequential/layers/batch_normalization/vars/{index}",
        )
    if module == "decode_head.classifier":
        return TASK_WEIGHTS, f"layers/conv2d/vars/{index}"
    raise CheckpointError(f"{canonical!r} has no keras-hub counterpart.")


def _read_h5(path):
    """``{dataset path: array}`` of a Keras weights file, and the
    ``name`` attribute of each ``vars`` group (``{name: layer path}``)."""
    import h5py

    arrays, names = {}, {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            arrays[name] = np.asarray(obj[()])
        elif name.endswith("/vars") and "name" in obj.attrs:
            names[str(obj.attrs["name"])] = name[: -len("/vars")]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as e:
        raise CheckpointError(f"Cannot read {path!r} as HDF5: {e}") from None
    return arrays, names


def _plan(model, kind, depths, names, encoder_only):
    """``(state key, variable, "identity", canonical key)`` for every
    variable loaded; the state keys are ``<file>/<dataset path>``."""
    backbone = getattr(model, "backbone", model)
    if encoder_only:
        canonical = hf.backbone_plan(backbone)
    else:
        canonical = hf.model_plan(model)
    plan = []
    for key, variable, _ in canonical:
        file, path = preset_key(key, depths, kind)
        if key.startswith("decode_head.linear_c."):
            # By the layer's name (``linear_{dim}``) where the file has it.
            dim = backbone.hidden_sizes[int(key.split(".")[2])]
            layer = names.get(file, {}).get(f"linear_{dim}")
            if layer is not None:
                path = f"{layer}/vars/{path.rsplit('/', 1)[1]}"
        plan.append((f"{file}/{path}", variable, "identity", key))
    return plan


def load_preset(
    directory,
    *,
    task=None,
    num_classes=None,
    id2label=None,
    backbone_only=False,
    **kwargs,
):
    """Build our model of a keras-hub SegFormer or MiT preset folder.

    The model computes what keras-hub's does (tanh GELU, block LayerNorm
    epsilon 1e-6): its logits, resized to the input size, equal keras-hub's
    ``SegFormerImageSegmenter`` on the same (square) input. keras-hub is
    not needed: the weights are read with h5py.

    Args:
        directory: str. The preset folder.
        task: str or None. ``"segmentation"`` or ``"backbone"`` (the MiT
            encoder alone); default the preset's.
        num_classes: int or None. Classes of a new head (with
            ``backbone_only=True``, or for a preset without a segmenter).
        id2label: dict or None. Class names (keras-hub keeps none).
        backbone_only: bool. Load only the encoder under a new head.
        **kwargs: ``MiTBackbone`` options (``input_shape``, ``dtype``,
            ``include_preprocessing`` ...); the numerics can be overridden
            too (``approximate_gelu``, ``block_norm_epsilon``).

    Returns:
        ``SegFormer`` or ``MiTBackbone``, with ``load_report`` and
        ``preprocessor_config`` (keras-hub's converter as a transformers
        processor config).

    Example:
    >>> model = keras_segformer.from_pretrained("segformer_b0_preset/")
    """
    from keras_segformer.convert.assign import assign
    from keras_segformer.convert.hf import attach_preprocessing
    from keras_segformer.models.builders import build_mit
    from keras_segformer.models.segformer import SegFormer

    info = read_preset(directory)
    if task is None:
        task = "backbone" if info["kind"] == "mit" else "segmentation"
    if task not in ("segmentation", "backbone"):
        raise ValueError(
            f"A keras-hub {info['kind']} preset loads as task='segmentation' "
            f"or 'backbone'. Received: task={task!r}"
        )
    if task == "segmentation" and info["kind"] == "mit":
        backbone_only = True
    if task == "segmentation":
        if not backbone_only and num_classes is not None:
            if num_classes != info["num_classes"]:
                raise ValueError(
                    f"The preset has {info['num_classes']} classes, "
                    f"num_classes={num_classes} was asked for: pass "
                    "backbone_only=True to load the encoder into a new head."
                )
        if num_classes is None:
            num_classes = info["num_classes"]
        if num_classes is None:
            raise ValueError(
                f"{directory!r} has no segmenter task.json: pass num_classes "
                "(a new head) or task='backbone'."
            )
        if info["num_classes"] is None:
            backbone_only = True
    options = {**info["backbone"], **KERAS_HUB_NUMERICS, **kwargs}
    backbone = build_mit(**options)
    if task == "backbone":
        model = backbone
    else:
        decoder = info["decoder_hidden_size"] or 256
        model = SegFormer(
            backbone,
            num_classes,
            decoder_hidden_size=decoder,
            id2label=id2label,
        )
    encoder_only = backbone_only or task == "backbone"
    names, state = {}, {}
    files = (
        [BACKBONE_WEIGHTS] if encoder_only else [BACKBONE_WEIGHTS, TASK_WEIGHTS]
    )
    for file in files:
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
            raise CheckpointError(f"No {file} in {directory!r}.")
        arrays, names[file] = _read_h5(path)
        state.update({f"{file}/{k}": v for k, v in arrays.items()})
    depths = info["backbone"]["depths"]
    plan = _plan(model, info["kind"], depths, names, encoder_only)
    for key, _, _, canonical in plan:
        if canonical in _CONV1X1 and key in state and state[key].ndim == 4:
            state[key] = state[key].reshape(state[key].shape[2:])
    skip = [f"{TASK_WEIGHTS}/optimizer/", f"{TASK_WEIGHTS}/preprocessor/"]
    if encoder_only:
        # The preset's decoder, deliberately not loaded under a new head.
        encoder = f"{BACKBONE_WEIGHTS}/{_encoder_root(info['kind'])}/"
        skip += [k for k in state if not k.startswith(encoder)]
    report = assign(
        [(k, v, t) for k, v, t, _ in plan], state, skip=skip, source=directory
    )
    report.format = "keras_hub"
    if encoder_only and task != "backbone":
        loaded = {id(v) for _, v, _, _ in plan}
        report.fresh = [w.path for w in model.weights if id(w) not in loaded]
    report.notes.append(
        "keras-hub numerics: tanh GELU, block LayerNorm epsilon 1e-6"
    )
    model.load_report = report
    if info["preprocessing"] is not None:
        attach_preprocessing(
            model,
            info["preprocessing"],
            os.path.join(directory, "preprocessor.json"),
        )
    return model


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
