"""keras-hub SegFormer / MiT presets -> Keras models, without keras-hub
(the way back: ``to_keras_hub.save_to_preset``).

A keras-hub preset folder holds ``config.json`` (the
backbone, ``registered_name`` ``keras_hub>SegFormerBackbone`` or
``keras_hub>MiTBackbone``), ``task.json`` (``SegFormerImageSegmenter``
and its ``num_classes``), ``preprocessor.json`` (its image converter:
size, per-channel scale and offset), ``model.weights.h5`` (backbone) and
``task.weights.h5`` (the classifier). The h5 files are Keras weight files
keyed by object path (``layers/functional/layers/
hierarchical_transformer_encoder_3/attn/q/vars/0``), read here (and
written by ``to_keras_hub``) with h5py.

Numerics: keras-hub's MiT blocks compute the tanh GELU and use LayerNorm
epsilon 1e-6 in their two pre-norms (1e-5 elsewhere). A preset is loaded
with those numerics (``approximate_gelu=True``,
``block_norm_epsilon=1e-6``), so its logits equal keras-hub's own.
keras-hub's segmenter resizes the logits to the input size and takes one
square size; ours returns them at 1/4 of the input, at any size.
"""

import json
import os

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
