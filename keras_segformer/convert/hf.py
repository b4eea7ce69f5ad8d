"""Hugging Face transformers SegFormer checkpoints <-> Keras models.

The canonical key names are those ``save_pretrained`` writes
(``segformer.encoder.block.{i}.{j}.attention.self.query`` ...). The in-memory
names of transformers 5.x (``segformer.stages.{i}.blocks.{j}.attention.q_proj``
...) are renamed to them first, so both load.
"""

import json
import re
from dataclasses import dataclass

import numpy as np

from keras_segformer.convert.state_dict import CheckpointError
from keras_segformer.models.segformer import MiTClassifier, SegFormer

# transformers 5.x in-memory name -> save_pretrained name (applied in order).
_NEW_TO_SAVED = (
    (r"\bstages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"\bstages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"\bstages\.(\d+)\.layer_norm\b", r"encoder.layer_norm.\1"),
    (r"attention\.q_proj\b", "attention.self.query"),
    (r"attention\.k_proj\b", "attention.self.key"),
    (r"attention\.v_proj\b", "attention.self.value"),
    (
        r"attention\.sequence_reduction\.sequence_reduction\b",
        "attention.self.sr",
    ),
    (
        r"attention\.sequence_reduction\.layer_norm\b",
        "attention.self.layer_norm",
    ),
    (r"attention\.o_proj\b", "attention.output.dense"),
    (r"mlp\.fc1\b", "mlp.dense1"),
    (r"mlp\.fc2\b", "mlp.dense2"),
    (r"layernorm_before\b", "layer_norm_1"),
    (r"layernorm_after\b", "layer_norm_2"),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# transformers' ``hidden_act`` -> ``approximate_gelu``: "gelu" is the exact
# erf GELU; "gelu_new" and "gelu_pytorch_tanh" are the tanh approximation
# (the same formula, also keras.ops.gelu(x, approximate=True)).
HIDDEN_ACTS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}

# Bookkeeping tensors with no Keras counterpart.
SKIP_SUFFIXES = ("num_batches_tracked",)


def canonicalize(state_dict):
    """Rename transformers 5.x in-memory keys to ``save_pretrained`` keys and
    add the ``segformer.`` prefix to bare ``SegformerModel`` keys."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _NEW_TO_SAVED:
            new = re.sub(pattern, repl, new)
        if new.startswith("encoder."):
            new = "segformer." + new
        if new in out:
            raise CheckpointError(f"Tensor {key!r} appears twice (as {new!r}).")
        out[new] = value
    return out


_BACKBONE_KEYS = (
    (
        "patch_embedding",
        re.compile(
            r"segformer\.encoder\.patch_embeddings\.(\d+)\."
            r"(proj|layer_norm)\.(\w+)"
        ),
    ),
    (
        "block",
        re.compile(r"segformer\.encoder\.block\.(\d+)\.(\d+)\.(.+)\.(\w+)"),
    ),
    (
        "stage_norm",
        re.compile(r"segformer\.encoder\.layer_norm\.(\d+)\.(\w+)"),
    ),
)


def split_backbone_key(canonical):
    """Parse a canonical encoder name into its parts.

    The foreign formats rename from these parts (``EncoderKeyMap``).

    Args:
        canonical: str. A key of ``backbone_plan``.

    Returns:
        ``None`` for a name outside the encoder, else ``(kind, parts)``:
        ``("patch_embedding", (stage, "proj" | "layer_norm", param))``,
        ``("block", (stage, block, module, param))`` or
        ``("stage_norm", (stage, param))``, with 0-based int indices.
    """
    for kind, pattern in _BACKBONE_KEYS:
        m = pattern.fullmatch(canonical)
        if m:
            parts = tuple(int(g) if g.isdigit() else g for g in m.groups())
            return kind, parts
    return None


@dataclass(frozen=True)
class EncoderKeyMap:
    """A foreign format's names of the encoder's tensors: a rename table.

    The templates take ``prefix`` (the checkpoint's backbone prefix),
    ``stage`` (0-based), ``stage1`` (1-based), ``block`` and ``param``.

    Args:
        patch_embedding: dict. ``"proj"`` and ``"layer_norm"`` -> template.
        block: str. Template of a block's name; its modules follow.
        modules: dict. Canonical block module -> ``(name, transform)``;
            the transform replaces the plan's for weights (``None``: keep).
        fused: dict. Canonical block module -> ``(template, part)``: the
            tensor is slice ``part = (index, count, name)`` of a fused one.
        stage_norm: str. Template of the stage norms.
    """

    patch_embedding: dict
    block: str
    modules: dict
    fused: dict
    stage_norm: str

    def rename(self, canonical, prefix):
        """``(key, part, transform)`` of an encoder name, else ``None``."""
        parsed = split_backbone_key(canonical)
        if parsed is None:
            return None
        kind, parts = parsed
        names = {"prefix": prefix, "stage": parts[0], "stage1": parts[0] + 1}
        if kind == "patch_embedding":
            _, module, param = parts
            key = self.patch_embedding[module].format(param=param, **names)
            return key, None, None
        if kind == "stage_norm":
            return self.stage_norm.format(param=parts[1], **names), None, None
        _, j, module, param = parts
        block = self.block.format(block=j, **names)
        if module in self.fused:
            template, part = self.fused[module]
            return f"{block}.{template.format(param=param)}", part, None
        if module in self.modules:
            name, transform = self.modules[module]
            transform = transform if param == "weight" else None
            return f"{block}.{name}.{param}", None, transform
        return None


def head_fields(
    task="backbone", head=None, decoder_hidden_size=None, num_classes=None
):
    """What a checkpoint's head is, as ``infer_architecture`` reports it."""
    return {
        "task": task,
        "head": head,
        "decoder_hidden_size": decoder_hidden_size,
        "num_classes": num_classes,
    }


def head_info(shape):
    """Task, head type, decoder width and classes of a checkpoint whose
    tensors have the canonical (transformers) head names.

    Args:
        shape: callable, canonical name -> shape tuple or ``None``.

    Returns:
        ``head_fields`` (``None`` where there is no head).
    """
    linear = shape("decode_head.linear_c.0.proj.weight")
    if linear is not None:
        pred = shape("decode_head.classifier.weight")
        return head_fields("segmentation", "mlp", linear[0], pred and pred[0])
    cls = shape("classifier.weight")
    if cls is not None:
        return head_fields("classification", num_classes=cls[0])
    return head_fields()


def _norm(prefix, layer):
    return [
        (f"{prefix}.weight", layer.gamma, "identity"),
        (f"{prefix}.bias", layer.beta, "identity"),
    ]


def _dense(prefix, layer, transform="linear"):
    plan = [(f"{prefix}.weight", layer.kernel, transform)]
    if layer.use_bias:
        plan.append((f"{prefix}.bias", layer.bias, "identity"))
    return plan


def _conv(prefix, layer, transform="conv"):
    return [
        (f"{prefix}.weight", layer.kernel, transform),
        (f"{prefix}.bias", layer.bias, "identity"),
    ]


def backbone_plan(backbone, prefix="segformer.encoder"):
    """(hf key, keras variable, transform) for every MiT variable."""
    plan = []
    for s, depth in enumerate(backbone.depths):
        embed = backbone.get_layer(f"stage{s + 1}_patch_embedding")
        p = f"{prefix}.patch_embeddings.{s}"
        plan += _conv(f"{p}.proj", embed.proj)
        plan += _norm(f"{p}.layer_norm", embed.layer_norm)
        for b in range(depth):
            block = backbone.get_layer(f"stage{s + 1}_block{b + 1}")
            p = f"{prefix}.block.{s}.{b}"
            attn = block.attention
            plan += _norm(f"{p}.layer_norm_1", block.norm1)
            plan += _dense(f"{p}.attention.self.query", attn.query)
            plan += _dense(f"{p}.attention.self.key", attn.key)
            plan += _dense(f"{p}.attention.self.value", attn.value)
            if attn.sr_ratio > 1:
                plan += _conv(f"{p}.attention.self.sr", attn.sr)
                plan += _norm(f"{p}.attention.self.layer_norm", attn.sr_norm)
            plan += _dense(f"{p}.attention.output.dense", attn.output_dense)
            plan += _norm(f"{p}.layer_norm_2", block.norm2)
            plan += _dense(f"{p}.mlp.dense1", block.mlp.dense1)
            plan += _conv(
                f"{p}.mlp.dwconv.dwconv", block.mlp.dwconv, "depthwise"
            )
            plan += _dense(f"{p}.mlp.dense2", block.mlp.dense2)
        plan += _norm(
            f"{prefix}.layer_norm.{s}", backbone.get_layer(f"stage{s + 1}_norm")
        )
    return plan


def head_plan(model):
    """Plan for the task head of a ``SegFormer`` or ``MiTClassifier``."""
    if isinstance(model, MiTClassifier):
        return _dense("classifier", model.get_layer("classifier"))
    if getattr(model, "head", "mlp") != "mlp":
        raise CheckpointError(
            "transformers SegFormer checkpoints have the all-MLP head; this "
            f"model has head={model.head!r} (mmsegmentation's "
            "SegformerHead), which transformers has no counterpart for."
        )
    head = model.get_layer("decode_head")
    plan = []
    for i, linear in enumerate(head.linear_c):
        plan += _dense(f"decode_head.linear_c.{i}.proj", linear)
    plan += _dense("decode_head.linear_fuse", head.linear_fuse, "conv1x1")
    bn = head.batch_norm
    plan += [
        ("decode_head.batch_norm.weight", bn.gamma, "identity"),
        ("decode_head.batch_norm.bias", bn.beta, "identity"),
        ("decode_head.batch_norm.running_mean", bn.moving_mean, "identity"),
        ("decode_head.batch_norm.running_var", bn.moving_variance, "identity"),
    ]
    plan += _dense("decode_head.classifier", head.classifier, "conv1x1")
    return plan


def model_plan(model):
    """Full plan: backbone, plus the head for task models."""
    if isinstance(model, (SegFormer, MiTClassifier)):
        return backbone_plan(model.backbone) + head_plan(model)
    return backbone_plan(model)


def read_config(path):
    """Read a transformers ``config.json`` and check it is a JSON object.

    Args:
        path: str. The file.

    Returns:
        dict.
    """
    return read_json_object(
        path,
        "a transformers config.json is a JSON object (SegformerConfig fields).",
    )


def read_json_object(path, expected):
    """The JSON object in ``path``; a ``CheckpointError`` naming the file
    when it is not JSON, or holds another JSON type (``expected`` ends
    that message)."""
    with open(path, "rb") as f:
        try:
            config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"Corrupt {path!r}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path!r} holds a JSON {type(config).__name__}; {expected}"
        )
    return config


_LIST_FIELDS = (
    "depths",
    "hidden_sizes",
    "num_attention_heads",
    "sr_ratios",
    "patch_sizes",
    "strides",
    "mlp_ratios",
)


def _check_config_types(config):
    """Refuse fields of the wrong JSON type, naming them."""
    lengths = set()
    for name in _LIST_FIELDS:
        value = config[name]
        kinds = (int, float) if name == "mlp_ratios" else int
        if not isinstance(value, list) or not all(
            isinstance(v, kinds) and not isinstance(v, bool) and v > 0
            for v in value
        ):
            raise CheckpointError(
                f"config.json field {name!r} must be a list of positive "
                f"{'numbers' if name == 'mlp_ratios' else 'ints'}. "
                f"Received: {value!r}"
            )
        lengths.add(len(value))
    if len(lengths) != 1 or 0 in lengths:
        raise CheckpointError(
            "config.json fields "
            + ", ".join(f"{n}={config[n]}" for n in _LIST_FIELDS)
            + " must be lists of one length (one entry per stage)."
        )
    num_labels = config.get("num_labels")
    if num_labels is not None and (
        not isinstance(num_labels, int)
        or isinstance(num_labels, bool)
        or num_labels < 1
    ):
        raise CheckpointError(
            "config.json field 'num_labels' must be a positive int. "
            f"Received: {num_labels!r}"
        )
    id2label = config.get("id2label")
    if id2label is not None and not isinstance(id2label, dict):
        raise CheckpointError(
            "config.json field 'id2label' must be an object {index: name}. "
            f"Received: {type(id2label).__name__}"
        )
    for name in ("decoder_hidden_size", "num_channels"):
        value = config.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise CheckpointError(
                f"config.json field {name!r} must be a positive int. "
                f"Received: {value!r}"
            )


def config_to_kwargs(config):
    """Map a transformers ``SegformerConfig`` dict to builder arguments.

    Returns ``(backbone_kwargs, head_kwargs)``, for ``MiTBackbone`` and
    ``SegFormer``: ``dropout`` is each constructor's own, the encoder's
    ``hidden_dropout_prob`` in the first and the classifier's
    ``classifier_dropout_prob`` in the second.
    """
    if not isinstance(config, dict):
        raise CheckpointError(
            "A transformers config must be a dict (a JSON object). "
            f"Received: {type(config).__name__}"
        )
    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in HIDDEN_ACTS:
        raise ValueError(
            f"config.json field 'hidden_act' is {act!r}; SegFormer models "
            f"here support {sorted(HIDDEN_ACTS)} (exact or tanh GELU)."
        )
    missing = [k for k in _LIST_FIELDS if k not in config]
    if missing:
        raise ValueError(f"config.json lacks SegFormer fields {missing}.")
    _check_config_types(config)
    backbone = {
        "depths": config["depths"],
        "hidden_sizes": config["hidden_sizes"],
        "num_heads": config["num_attention_heads"],
        "sr_ratios": config["sr_ratios"],
        "patch_sizes": config["patch_sizes"],
        "strides": config["strides"],
        "mlp_ratios": config["mlp_ratios"],
        "drop_path_rate": config.get("drop_path_rate", 0.1),
        "dropout": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout": config.get("attention_probs_dropout_prob", 0.0),
        "input_shape": (None, None, config.get("num_channels", 3)),
        "approximate_gelu": HIDDEN_ACTS[act],
    }
    id2label = config.get("id2label")
    num_classes = config.get("num_labels") or (
        len(id2label) if id2label else None
    )
    head = {
        "num_classes": num_classes,
        "decoder_hidden_size": config.get("decoder_hidden_size", 256),
        "dropout": config.get("classifier_dropout_prob", 0.1),
        "id2label": id2label,
    }
    return backbone, head


def attach_preprocessing(model, config, source):
    """Keep a processor config on the model (``model.preprocessor_config``).

    A model that normalizes inside itself (``include_preprocessing=True``)
    must normalize as the file says: other values are refused.
    """
    backbone = getattr(model, "backbone", model)
    if getattr(backbone, "include_preprocessing", False):
        layer = backbone.get_layer("preprocessing")
        want = {
            "image_mean": list(layer.mean),
            "image_std": list(layer.std),
            "rescale_factor": layer.scale,
        }
        for name, value in want.items():
            if config.get(name) is None:
                continue
            if not np.allclose(config[name], value, rtol=1e-6, atol=0):
                raise ValueError(
                    f"{source!r} normalizes with {name}={config[name]}, "
                    "but include_preprocessing=True normalizes with "
                    f"{value}. Load without include_preprocessing and "
                    "normalize with model.preprocessor_config."
                )
    model.preprocessor_config = config
    return model
