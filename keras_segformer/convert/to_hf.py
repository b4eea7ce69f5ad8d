"""Keras model -> transformers checkpoint (``config.json`` + safetensors).

The inverse of ``load_checkpoint`` for transformers checkpoints: the same
plans, read backwards, so
``SegformerForSemanticSegmentation.from_pretrained`` (or
``SegformerForImageClassification`` / ``SegformerModel``) loads the
directory and gives the same numbers.
"""

import errno
import json
import os
import warnings

import keras
import numpy as np

from keras_segformer.configs import COMMON, VARIANTS
from keras_segformer.convert import hf
from keras_segformer.convert.state_dict import CheckpointError
from keras_segformer.layers.preprocessing import IMAGENET_MEAN, IMAGENET_STD
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
        "hidden_act": (
            "gelu_new"
            if getattr(backbone, "approximate_gelu", False)
            else "gelu"
        ),
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


def _variant(backbone):
    """``"b0"`` ... ``"b5"`` when the backbone is a table variant, else None."""
    for name, row in VARIANTS.items():
        fields = {**COMMON, **row}
        if all(
            list(getattr(backbone, attr)) == list(fields[key])
            for key, attr in (
                ("depths", "depths"),
                ("hidden_sizes", "hidden_sizes"),
                ("num_heads", "num_heads"),
                ("sr_ratios", "sr_ratios"),
                ("patch_sizes", "patch_sizes"),
                ("strides", "strides"),
                ("mlp_ratios", "mlp_ratios"),
            )
        ):
            return name
    return None


def _normalization(backbone):
    """``(mean, std, scale)`` of the pixels the backbone's weights expect:
    its in-model ``ImageNormalization`` where it has one, else ImageNet's
    (transformers' ``pixel_values``)."""
    if getattr(backbone, "include_preprocessing", False):
        layer = backbone.get_layer("preprocessing")
        return list(layer.mean), list(layer.std), float(layer.scale)
    return list(IMAGENET_MEAN), list(IMAGENET_STD), 1 / 255


def _check_size(image_size):
    try:
        h, w = (
            (image_size, image_size) if np.isscalar(image_size) else image_size
        )
        ok = all(
            isinstance(n, (int, np.integer))
            and not isinstance(n, bool)
            and n > 0
            for n in (h, w)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "`image_size` must be a positive int or a pair (height, width). "
            f"Received: {image_size!r}"
        )
    return int(h), int(w)


def preprocessor_config(model, image_size=None):
    """The transformers ``SegformerImageProcessor`` config of a model.

    The normalization is what the model's weights expect: the config a
    model was loaded with (``model.preprocessor_config``, from
    ``from_pretrained``), else its in-model normalization
    (``include_preprocessing=True``), else ImageNet mean and std. The size
    is ``image_size``, else the loaded config's, else the model's fixed
    input size, else 512x512 (transformers' default).

    Args:
        model: ``SegFormer``, ``MiTClassifier`` or ``MiTBackbone``.
        image_size: int, pair ``(height, width)`` or None.

    Returns:
        dict, the content of ``preprocessor_config.json``.
    """
    backbone = getattr(model, "backbone", model)
    loaded = getattr(model, "preprocessor_config", None) or {}
    mean, std, scale = _normalization(backbone)
    config = {
        "image_processor_type": "SegformerImageProcessor",
        "do_resize": True,
        "size": {"height": 512, "width": 512},
        "resample": 2,  # PIL bilinear
        "do_rescale": True,
        "rescale_factor": scale,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_reduce_labels": False,
    }
    if loaded:
        config.update(
            {k: v for k, v in loaded.items() if k in config and k != "size"}
        )
        if isinstance(loaded.get("size"), dict):
            config["size"] = dict(loaded["size"])
    h, w = backbone.image_shape[:2]
    if not loaded and h is not None and w is not None:
        config["size"] = {"height": int(h), "width": int(w)}
    if image_size is not None:
        h, w = _check_size(image_size)
        config["size"] = {"height": h, "width": w}
    return config


def model_card(model, config, preprocessor):
    """A short ``README.md`` for a saved model: task, variant, classes,
    preprocessing and how the files were made."""
    from keras_segformer.version import __version__

    backbone = getattr(model, "backbone", model)
    variant = _variant(backbone)
    name = f"MiT-{variant}" if variant else "a custom MiT"
    task = {
        "SegformerForSemanticSegmentation": "semantic segmentation",
        "SegformerForImageClassification": "image classification",
        "SegformerModel": "feature extraction (encoder only)",
    }[config["architectures"][0]]
    pipeline_tag = {
        "semantic segmentation": "image-segmentation",
        "image classification": "image-classification",
    }.get(task, "image-feature-extraction")
    report = getattr(model, "load_report", None)
    origin = (
        f"loaded from `{os.path.basename(str(report.source))}`"
        f" ({report.format or 'checkpoint'} format) and "
        if report is not None
        else ""
    )
    size = preprocessor["size"]
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        "- segformer",
        "- keras-segformer",
        "---",
        "",
        f"# SegFormer ({name}), {task}",
        "",
        f"A SegFormer {name} encoder (depths {list(backbone.depths)}, "
        f"hidden sizes {list(backbone.hidden_sizes)})"
        + (
            f" with the all-MLP decoder ({config['decoder_hidden_size']} "
            "channels)"
            if "decoder_hidden_size" in config
            else ""
        )
        + ".",
        "",
        "## How it was made",
        "",
        f"A Keras `{type(model).__name__}` {origin}written by keras-segformer "
        f"{__version__} (`model.save_pretrained`). The same folder loads in "
        "transformers (`SegformerFor...from_pretrained`, "
        f'`pipeline("{pipeline_tag}", model=...)`) and in '
        "keras-segformer (`keras_segformer.from_pretrained`).",
        "",
        f"Input: RGB resized to {size['height']}x{size['width']}, times "
        f"{preprocessor['rescale_factor']:.6g}, normalized with mean "
        f"{preprocessor['image_mean']} and std {preprocessor['image_std']} "
        "(`preprocessor_config.json`).",
    ]
    if config.get("hidden_act", "gelu") != "gelu":
        lines += [
            "",
            f"The Mix-FFNs use the tanh GELU (`hidden_act="
            f'"{config["hidden_act"]}"`), as the model was trained.',
        ]
    if "id2label" in config:
        lines += ["", "## Classes", "", "| index | class |", "|---|---|"]
        for k in sorted(config["id2label"], key=int):
            lines.append(f"| {k} | {config['id2label'][k]} |")
    return "\n".join(lines) + "\n"


def save_pretrained(model, directory, image_size=None):
    """Write a Keras SegFormer as a transformers checkpoint directory.

    Writes ``model.safetensors``, ``preprocessor_config.json`` (the
    ``SegformerImageProcessor`` settings: ``preprocessor_config``), a model
    card ``README.md`` and, last, ``config.json`` (with ``architectures``,
    ``id2label`` and ``label2id``), each under a temporary name renamed
    into place. ``transformers``' ``from_pretrained``, ``AutoImageProcessor``
    and ``pipeline`` load the result.

    Args:
        model: ``SegFormer`` with the all-MLP head, ``MiTClassifier`` or
            ``MiTBackbone``. A ``head="mmseg"`` model is refused
            (transformers has no such head).
        directory: str. Created if needed.
        image_size: int, pair or None. The processor's resize target
            (default: see ``preprocessor_config``).

    Returns:
        dict of the paths written: ``config``, ``weights``,
        ``preprocessor`` and ``readme``.

    Raises:
        CheckpointError: a model transformers cannot hold.
        ValueError: a bad ``image_size``.

    Example:
    >>> keras_segformer.convert.save_pretrained(model, "out/hf")
    >>> hf = transformers.SegformerForSemanticSegmentation.from_pretrained(
    ...     "out/hf")
    """
    from safetensors.numpy import save_file

    from keras_segformer.io_atomic import no_space
    from keras_segformer.training.run_files import write_atomic

    config = hf_config(model)
    state = hf_state_dict(model)
    preprocessor = preprocessor_config(model, image_size)
    backbone = getattr(model, "backbone", model)
    eps = getattr(backbone, "layer_norm_epsilon", None)
    block_eps = getattr(backbone, "block_norm_epsilon", None)
    for value in (eps, block_eps):
        if value is not None and value != 1e-5:
            warnings.warn(
                f"The model's LayerNorms use eps={value:g}; transformers "
                "always uses 1e-5, so its outputs will differ slightly "
                "(~1e-6).",
                stacklevel=2,
            )
            break
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = {
        name: os.path.join(directory, file)
        for name, file in (
            ("weights", "model.safetensors"),
            ("preprocessor", "preprocessor_config.json"),
            ("readme", "README.md"),
            ("config", "config.json"),  # last: the folder is complete
        )
    }

    def text(content):
        def write(temporary):
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(content)

        return write

    def as_json(obj):
        return json.dumps(obj, indent=2, sort_keys=True) + "\n"

    def weights(temporary):
        try:
            save_file(state, temporary, metadata={"format": "pt"})
        except Exception as error:  # safetensors' own error, no OSError
            if isinstance(error, OSError) or not no_space(error):
                raise
            raise OSError(errno.ENOSPC, str(error)) from None

    writers = {
        "weights": weights,
        "preprocessor": text(as_json(preprocessor)),
        "readme": text(model_card(model, config, preprocessor)),
        "config": text(as_json(config)),
    }
    for name, path in paths.items():
        write_atomic(path, writers[name])
    return paths
