"""Keras model -> transformers checkpoint (``config.json`` + safetensors).

The inverse of ``load_checkpoint`` for transformers checkpoints: the same
plans, read backwards, so
``SegformerForSemanticSegmentation.from_pretrained`` (or
``SegformerForImageClassification`` / ``SegformerModel``) loads the
directory and gives the same numbers.
"""

import json
import os
import tempfile
import warnings

import keras
import numpy as np

from keras_segformer.convert import hf
from keras_segformer.convert.state_dict import CheckpointError
from keras_segformer.models.mit import MiTBackbone
from keras_segformer.models.segformer import MiTClassifier, SegFormer


def _linear(w):  # Dense (in, out) -> Linear (out, in)
    return w.T


def _conv(w):  # Conv2D (kh, kw, in, out) -> Conv2d (out, in, kh, kw)
    return w.transpose(3, 2, 0, 1)


def _depthwise(w):  # DepthwiseConv2D (kh, kw, C, 1) -> (C, 1, kh, kw)
    return w.transpose(2, 3, 0, 1)


def _conv1x1(w):  # Dense (in, out) -> 1x1 Conv2d (out, in, 1, 1)
    return w.T[:, :, None, None]


INVERSE = {
    "linear": _linear,
    "conv": _conv,
    "depthwise": _depthwise,
    "conv1x1": _conv1x1,
    "identity": lambda w: w,
}

_ARCHITECTURES = {
    SegFormer: "SegformerForSemanticSegmentation",
    MiTClassifier: "SegformerForImageClassification",
    MiTBackbone: "SegformerModel",
}


def _architecture(model):
    for cls, name in _ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(
        "`model` must be a SegFormer, MiTClassifier or MiTBackbone. "
        f"Received: {type(model).__name__}"
    )


def hf_config(model):
    """The transformers ``SegformerConfig`` dict of a Keras model.

    Args:
        model: ``SegFormer`` (all-MLP head), ``MiTClassifier`` or
            ``MiTBackbone``.
    """
    architecture = _architecture(model)
    if getattr(model, "head", "mlp") != "mlp":
        raise CheckpointError(
            "transformers has no counterpart of mmsegmentation's "
            f"SegformerHead (head={model.head!r}); only models with the "
            "all-MLP head (head='mlp') can be saved in its format. Save "
            "this one as .keras or .weights.h5."
        )
    backbone = getattr(model, "backbone", model)
    config = {
        "architectures": [architecture],
        "model_type": "segformer",
        "num_channels": int(backbone.image_shape[-1]),
        "num_encoder_blocks": backbone.num_stages,
        "depths": list(backbone.depths),
        "sr_ratios": list(backbone.sr_ratios),
        "hidden_sizes": list(backbone.hidden_sizes),
        "patch_sizes": list(backbone.patch_sizes),
        "strides": list(backbone.strides),
        "num_attention_heads": list(backbone.num_heads),
        "mlp_ratios": list(backbone.mlp_ratios),
        "hidden_act": "gelu",
        "hidden_dropout_prob": float(backbone.dropout),
        "attention_probs_dropout_prob": float(backbone.attention_dropout),
        "drop_path_rate": float(backbone.drop_path_rate),
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,  # transformers' default; never read by it
        "semantic_loss_ignore_index": 255,
    }
    if isinstance(model, SegFormer):
        config["decoder_hidden_size"] = int(model.decoder_hidden_size)
        config["classifier_dropout_prob"] = float(model.dropout)
    if isinstance(model, (SegFormer, MiTClassifier)):
        id2label = model.id2label or {
            i: f"LABEL_{i}" for i in range(model.num_classes)
        }
        config["id2label"] = {str(k): v for k, v in id2label.items()}
        config["label2id"] = {v: int(k) for k, v in id2label.items()}
        config["num_labels"] = int(model.num_classes)
    return config


def hf_state_dict(model):
    """``{transformers name: numpy array}`` of a Keras model's weights.

    Every model variable is exported exactly once; a variable outside the
    plans is an error, not a silent omission.
    """
    config = hf_config(model)  # refuses models transformers cannot hold
    if isinstance(model, MiTBackbone):
        plan = hf.backbone_plan(model, prefix="encoder")
    else:
        plan = hf.model_plan(model)
    state = {}
    for key, variable, transform in plan:
        value = keras.ops.convert_to_numpy(variable).astype("float32")
        state[key] = np.ascontiguousarray(INVERSE[transform](value))
    exported = {id(v) for _, v, _ in plan}
    left = [w.path for w in model.weights if id(w) not in exported]
    if left:
        raise CheckpointError(
            f"{len(left)} variables have no transformers name: {left[:5]}"
        )
    if config["architectures"][0] == "SegformerForSemanticSegmentation":
        # BatchNorm's step counter: not a Keras variable, expected by torch.
        state["decode_head.batch_norm.num_batches_tracked"] = np.zeros(
            (), "int64"
        )
    return state


def save_pretrained(model, directory):
    """Write a Keras SegFormer as a transformers checkpoint directory.

    Writes ``config.json`` (with ``architectures``, ``id2label`` and
    ``label2id``) and ``model.safetensors``; files appear only once both
    are complete. ``transformers``' ``from_pretrained`` loads the result.

    Args:
        model: ``SegFormer`` with the all-MLP head, ``MiTClassifier`` or
            ``MiTBackbone``. A ``head="mmseg"`` model is refused
            (transformers has no such head).
        directory: str. Created if needed.

    Returns:
        dict ``{"config": path, "weights": path}``.

    Example:
    >>> keras_segformer.convert.save_pretrained(model, "out/hf")
    >>> hf = transformers.SegformerForSemanticSegmentation.from_pretrained(
    ...     "out/hf")
    """
    from safetensors.numpy import save_file

    config = hf_config(model)
    state = hf_state_dict(model)
    eps = getattr(getattr(model, "backbone", model), "layer_norm_epsilon", None)
    if eps is not None and eps != 1e-5:
        warnings.warn(
            f"The model's LayerNorms use eps={eps:g}; transformers always "
            "uses 1e-5, so its outputs will differ slightly (~1e-6).",
            stacklevel=2,
        )
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {
        "config": os.path.join(directory, "config.json"),
        "weights": os.path.join(directory, "model.safetensors"),
    }
    temps = {}
    try:
        for kind in paths:
            fd, temps[kind] = tempfile.mkstemp(dir=directory, suffix=".partial")
            os.close(fd)
        with open(temps["config"], "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        save_file(state, temps["weights"], metadata={"format": "pt"})
        for kind in ("weights", "config"):
            os.replace(temps.pop(kind), paths[kind])
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.remove(temp)
    return paths
