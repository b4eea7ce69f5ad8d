"""Any SegFormer checkpoint -> Keras model: detect, infer, map, assign.

Formats (described in ``hf.py``, ``nvlabs.py`` and ``mmseg.py``):
transformers (``hf``), NVlabs segmentation (``nvlabs``) and ImageNet MiT
(``mit``) checkpoints, and mmsegmentation (``mmseg``). The format comes
from the key names, the architecture from tensor shapes and counts
(depths, hidden sizes, patch sizes, spatial-reduction ratios, MLP ratios,
decoder size, number of classes, head type); what weights cannot tell
(attention heads, strides) comes from the variant table
(``configs.VARIANTS``, matched by hidden sizes) or from arguments.

Every reader is a key map from the canonical transformers names of the
plans in ``hf.py`` (and ``mmseg.head_plan``) to the checkpoint's names,
with splits for fused tensors; the renamed plan then goes through the one
assignment path, ``assign``: every source tensor is used exactly once or
skipped by name, every copy checks its shape, nothing is assigned unless
everything matches.
"""

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from keras_segformer.configs import COMMON, VARIANTS, variant_config
from keras_segformer.convert import hf, mmseg, nvlabs
from keras_segformer.convert.assign import assign
from keras_segformer.convert.state_dict import CheckpointError, read_state_dict

FORMATS = ("auto", "hf", "nvlabs", "mit", "mmseg")
TASKS = ("segmentation", "classification", "backbone")
_FORMAT_NAMES = {
    "hf": "transformers checkpoint",
    **nvlabs.FORMAT_NAMES,
    **mmseg.FORMAT_NAMES,
}
# transformers' LayerNorms all use PyTorch's default (its config's
# layer_norm_eps is never read).
HF_LAYER_NORM_EPSILON = 1e-5


@dataclass(frozen=True)
class Layout:
    """How a checkpoint names its tensors.

    Args:
        format: str. ``"hf"``, ``"nvlabs"``, ``"mit"`` or ``"mmseg"``.
        prefix: str. Prefix of the backbone names (``"backbone."`` or
            ``""``; ``"segformer.encoder"`` names for ``hf``).
    """

    format: str
    prefix: str = ""

    @property
    def family(self):
        return "nvlabs" if self.format == "mit" else self.format

    def source(self, canonical):
        """``(key, part, transform)`` of a canonical plan key."""
        if self.family == "hf":
            return canonical, None, None
        module = nvlabs if self.family == "nvlabs" else mmseg
        return module.source_key(canonical, self.prefix)

    def skip(self, key):
        """Whether a source tensor is deliberately not loaded."""
        if self.family == "hf":
            return key.endswith(hf.SKIP_SUFFIXES)
        module = nvlabs if self.family == "nvlabs" else mmseg
        return key.startswith(module.SKIP_PREFIXES) or key.endswith(
            module.SKIP_SUFFIXES
        )

    def is_head(self, key):
        """Whether a source tensor belongs to a task head."""
        if self.family == "hf":
            return not key.startswith("segformer.")
        module = nvlabs if self.family == "nvlabs" else mmseg
        return key.startswith(module.HEAD_PREFIXES)

    @property
    def layer_norm_epsilon(self):
        if self.family == "hf":
            return HF_LAYER_NORM_EPSILON
        module = nvlabs if self.family == "nvlabs" else mmseg
        return module.LAYER_NORM_EPSILON


def _strip_module_prefix(state_dict):
    # DataParallel / DistributedDataParallel wrappers prefix every name.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _sample(keys, n=6):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def detect_format(state_dict):
    """Tell the checkpoint layout from its tensor names.

    Args:
        state_dict: dict of tensor name -> array.

    Returns:
        ``Layout``.
    """
    keys = list(state_dict)
    for key in keys:
        m = nvlabs.SIGNATURE.match(key)
        if m:
            prefix = m[1] or ""
            return Layout("nvlabs" if prefix else "mit", prefix)
        m = mmseg.SIGNATURE.match(key)
        if m:
            return Layout("mmseg", m[1] or "")
    canonical = hf.canonicalize(dict.fromkeys(keys))
    if any(
        k.startswith("segformer.encoder.patch_embeddings.") for k in canonical
    ):
        return Layout("hf", "segformer.encoder.")
    raise CheckpointError(
        f"Unknown checkpoint layout: {len(keys)} tensors, none of them "
        "looks like the first patch embedding of a transformers "
        "(segformer.encoder.patch_embeddings.0.proj.weight), NVlabs "
        "([backbone.]patch_embed1.proj.weight) or mmsegmentation "
        "([backbone.]layers.0.0.projection.weight) SegFormer. Keys: "
        + (_sample(keys) if keys else "(none)")
    )


def _check_format(layout, format):
    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {FORMATS}. Received: {format!r}"
        )
    if format == "auto" or format == layout.format:
        return
    if {format, layout.format} == {"nvlabs", "mit"}:
        return  # same names; only the prefix differs
    raise CheckpointError(
        f"format={format!r} was asked for, but the tensor names are those "
        f"of a {_FORMAT_NAMES[layout.format]} ({layout.format!r})."
    )


def _prepare(state_dict, format="auto"):
    """Strip wrappers, detect the layout, canonicalize transformers names."""
    state_dict = _strip_module_prefix(dict(state_dict))
    layout = detect_format(state_dict)
    _check_format(layout, format)
    if layout.family == "hf":
        state_dict = hf.canonicalize(state_dict)
    return state_dict, layout


# ----------------------------------------------------------------------------
# Architecture inference


def _shape(state_dict, layout, canonical):
    key, _, _ = layout.source(canonical)
    value = state_dict.get(key)
    return None if value is None else tuple(np.shape(value))


def _variant_rows(hidden_sizes, depths=None):
    rows = []
    for name, row in VARIANTS.items():
        if list(row["hidden_sizes"]) != list(hidden_sizes):
            continue
        if depths is not None and list(row["depths"]) != list(depths):
            continue
        rows.append(name)
    return rows


def infer_architecture(state_dict, layout):
    """Read the architecture off tensor shapes and counts.

    Args:
        state_dict: dict, names as in ``layout`` (after ``_prepare``).
        layout: ``Layout``.

    Returns:
        dict with ``depths``, ``hidden_sizes``, ``patch_sizes``,
        ``sr_ratios``, ``mlp_ratios``, ``num_channels``, ``task``
        (``"segmentation"``, ``"classification"`` or ``"backbone"``),
        ``head`` (``"mlp"``, ``"mmseg"`` or ``None``),
        ``decoder_hidden_size`` and ``num_classes`` (``None`` without a
        head), and ``num_heads`` / ``strides`` when the variant table
        knows them (else ``None``).
    """
    enc = "segformer.encoder"
    arch = {
        "depths": [],
        "hidden_sizes": [],
        "patch_sizes": [],
        "sr_ratios": [],
        "mlp_ratios": [],
    }
    s = 0
    while True:
        shape = _shape(
            state_dict, layout, f"{enc}.patch_embeddings.{s}.proj.weight"
        )
        if shape is None:
            break
        if len(shape) != 4 or shape[2] != shape[3]:
            raise CheckpointError(
                f"Stage {s + 1} patch embedding has kernel shape {shape}; "
                "a square (out, in, k, k) convolution was expected."
            )
        if s == 0:
            arch["num_channels"] = shape[1]
        hidden = shape[0]
        depth = 0
        while _shape(
            state_dict, layout, f"{enc}.block.{s}.{depth}.layer_norm_1.weight"
        ):
            depth += 1
        if depth == 0:
            raise CheckpointError(f"Stage {s + 1} has no blocks.")
        sr = _shape(
            state_dict, layout, f"{enc}.block.{s}.0.attention.self.sr.weight"
        )
        dense1 = _shape(
            state_dict, layout, f"{enc}.block.{s}.0.mlp.dense1.weight"
        )
        if dense1 is None:
            raise CheckpointError(f"Stage {s + 1} has no Mix-FFN weights.")
        ratio = dense1[0] / hidden
        arch["depths"].append(depth)
        arch["hidden_sizes"].append(hidden)
        arch["patch_sizes"].append(shape[2])
        arch["sr_ratios"].append(1 if sr is None else sr[2])
        arch["mlp_ratios"].append(int(ratio) if ratio.is_integer() else ratio)
        s += 1
    if s == 0:
        raise CheckpointError("The checkpoint has no patch embedding.")

    arch.update(task="backbone", head=None, decoder_hidden_size=None)
    arch["num_classes"] = None
    if layout.family == "mmseg":
        if mmseg.HEAD_SIGNATURE in state_dict:
            arch["task"], arch["head"] = "segmentation", "mmseg"
            arch["decoder_hidden_size"] = state_dict[
                mmseg.HEAD_SIGNATURE
            ].shape[0]
            seg = state_dict.get("decode_head.conv_seg.weight")
            arch["num_classes"] = None if seg is None else seg.shape[0]
    else:
        linear = _shape(
            state_dict, layout, "decode_head.linear_c.0.proj.weight"
        )
        cls = _shape(state_dict, layout, "classifier.weight")
        if linear is not None:
            arch["task"], arch["head"] = "segmentation", "mlp"
            arch["decoder_hidden_size"] = linear[0]
            pred = _shape(state_dict, layout, "decode_head.classifier.weight")
            arch["num_classes"] = None if pred is None else pred[0]
        elif cls is not None:
            arch["task"] = "classification"
            arch["num_classes"] = cls[0]

    rows = _variant_rows(arch["hidden_sizes"])
    exact = _variant_rows(arch["hidden_sizes"], arch["depths"])
    arch["variant"] = exact[0] if exact else None
    # Every row shares COMMON's heads and strides: a hidden-size match
    # is enough for them.
    arch["num_heads"] = list(COMMON["num_heads"]) if rows else None
    standard = list(arch["patch_sizes"]) == list(COMMON["patch_sizes"])
    arch["strides"] = list(COMMON["strides"]) if standard else None
    return arch


# ----------------------------------------------------------------------------
# Mapping and loading


def remap(plan, state_dict, layout):
    """Rename a canonical plan to the checkpoint's names.

    Fused tensors are split here: each slice becomes its own entry named
    ``"<key>[<part>]"``, so ``assign`` sees every slice once and the fused
    source tensor counts as used. Source tensors no plan entry asks for
    stay under their own names (``assign`` reports them as unexpected or
    skipped).

    Args:
        plan: list of ``(canonical key, variable, transform)``.
        state_dict: dict of source arrays.
        layout: ``Layout``.

    Returns:
        ``(plan, state_dict, origins)``: the renamed plan, the dict it
        reads, and ``{name in the plan: source key}``.
    """
    out_plan, out, origins, used = [], {}, {}, set()
    for canonical, variable, transform in plan:
        key, part, override = layout.source(canonical)
        name = key
        if part is not None:
            index, count, part_name = part
            name = f"{key}[{part_name}]"
            if key in state_dict:
                value = np.asarray(state_dict[key])
                if value.ndim == 0 or value.shape[0] % count:
                    raise CheckpointError(
                        f"{key} has shape {value.shape}: its first axis "
                        f"should split into {count} equal parts."
                    )
                n = value.shape[0] // count
                out[name] = value[index * n : (index + 1) * n]
        elif key in state_dict:
            out[name] = state_dict[key]
        out_plan.append((name, variable, override or transform))
        origins[name] = key
        used.add(key)
    for key, value in state_dict.items():
        if key not in used:
            out[key] = value
    return out_plan, out, origins


@dataclass
class ConversionReport:
    """What a checkpoint conversion read, inferred and assigned.

    Args:
        source: str. The checkpoint.
        format: str. Detected layout.
        architecture: dict. Inferred (and completed) configuration.
        load: ``LoadReport`` of ``assign`` (names as in the checkpoint).
        mapping: list of ``(source name, Keras variable path, shape)``.
        fresh: list of Keras variable paths not loaded (new head).
        notes: list of str. Approximations and choices made.
    """

    source: str
    format: str
    architecture: dict = field(default_factory=dict)
    load: object = None
    mapping: list = field(default_factory=list)
    fresh: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def assigned(self):
        return self.load.assigned

    @property
    def skipped(self):
        return self.load.skipped

    def summary(self):
        arch = self.architecture
        sources = {re.sub(r"\[\w+\]$", "", name) for name, _, _ in self.mapping}
        splits = sum(1 for name, _, _ in self.mapping if name.endswith("]"))
        lines = [
            f"{self.source}: {_FORMAT_NAMES.get(self.format, self.format)} "
            f"({self.format})",
        ]
        if arch:
            desc = ", ".join(
                f"{k}={arch[k]}"
                for k in (
                    "task",
                    "head",
                    "depths",
                    "hidden_sizes",
                    "num_heads",
                    "sr_ratios",
                    "decoder_hidden_size",
                    "num_classes",
                    "layer_norm_epsilon",
                )
                if arch.get(k) is not None
            )
            lines.append(f"architecture: {desc}")
        lines.append(
            f"assigned {len(self.mapping)} variables from {len(sources)} "
            f"source tensors ({splits} slices of fused tensors)"
        )
        if self.skipped:
            lines.append(
                f"skipped {len(self.skipped)} source tensors on purpose: "
                + _sample(self.skipped, 8)
            )
        if self.fresh:
            lines.append(
                f"{len(self.fresh)} variables keep their initial values "
                "(new head): " + _sample(self.fresh, 4)
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def details(self):
        """One line per copied tensor: source -> Keras variable."""
        return "\n".join(
            f"{name} -> {path} {shape}" for name, path, shape in self.mapping
        )

    def __str__(self):
        return self.summary()


def _plan_for(model, layout, backbone_only):
    from keras_segformer.models.segformer import MiTClassifier, SegFormer

    backbone = getattr(model, "backbone", model)
    plan = hf.backbone_plan(backbone)
    if backbone_only or not isinstance(model, (SegFormer, MiTClassifier)):
        return plan
    head = getattr(model, "head", None)
    if layout.family == "mmseg":
        if not isinstance(model, SegFormer):
            raise CheckpointError(
                "mmsegmentation checkpoints hold segmentation models; load "
                "this one into a SegFormer (or pass backbone_only=True)."
            )
        return plan + mmseg.head_plan(model)
    if head == "mmseg":
        raise CheckpointError(
            f"A {_FORMAT_NAMES[layout.format]} has the all-MLP head; the "
            "model was built with head='mmseg'."
        )
    return plan + hf.head_plan(model)


def _weights_file(path, format="auto"):
    """The weights file of a transformers directory; a file stays."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    if format not in ("auto", "hf"):
        raise ValueError(
            f"{path!r} is a directory (a transformers checkpoint); "
            f"format={format!r} needs a checkpoint file."
        )
    for name in hf.WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(
        f"No weights in {path!r}: expected one of {hf.WEIGHT_FILES}."
    )


def load_weights(model, checkpoint, *, format="auto", backbone_only=False):
    """Load a checkpoint of any supported format into an existing model.

    Strict: a missing, unexpected or mis-shaped tensor raises
    ``CheckpointError`` naming it (with the checkpoint's own names), and
    nothing is assigned.

    Args:
        model: ``SegFormer``, ``MiTClassifier`` or ``MiTBackbone``.
        checkpoint: str path (a file or a transformers directory) or a
            dict of arrays.
        format: str. ``"auto"`` (from the names), ``"hf"``, ``"nvlabs"``,
            ``"mit"`` or ``"mmseg"``.
        backbone_only: bool. Load the encoder only; the checkpoint's head
            tensors are skipped (and listed), the model's head keeps its
            values: the start of fine-tuning on new classes.

    Returns:
        ``ConversionReport``.

    Example:
    >>> model = keras_segformer.SegFormerB0(num_classes=19)
    >>> report = load_weights(model, "mit_b0.pth", backbone_only=True)
    """
    source = "state dict"
    if isinstance(checkpoint, (str, os.PathLike)):
        source = _weights_file(checkpoint, format)
        checkpoint = read_state_dict(source)
    state_dict, layout = _prepare(checkpoint, format)
    return _load(model, state_dict, layout, backbone_only, source)


def _load(model, state_dict, layout, backbone_only, source, arch=None):
    plan = _plan_for(model, layout, backbone_only)
    plan, renamed, _ = remap(plan, state_dict, layout)
    skip = [k for k in renamed if layout.skip(k)]
    if backbone_only:
        skip += [k for k in renamed if layout.is_head(k)]
    load = assign(plan, renamed, skip=skip, source=source)
    in_plan = {id(v) for _, v, _ in plan}
    report = ConversionReport(
        source=source,
        format=layout.format,
        architecture=dict(arch or {}),
        load=load,
        mapping=[
            (name, variable.path, tuple(variable.shape))
            for name, variable, _ in plan
            if name in set(load.assigned)
        ],
        fresh=[w.path for w in model.weights if id(w) not in in_plan],
    )
    eps = getattr(getattr(model, "backbone", model), "layer_norm_epsilon", None)
    if layout.family == "nvlabs" and eps is not None:
        report.notes.append(
            f"NVlabs LayerNorm eps is 1e-6 in blocks and stage norms, 1e-5 "
            f"in patch-embedding and reduction norms; the model uses {eps:g} "
            "everywhere (output differences ~1e-6)."
        )
    return report


# ----------------------------------------------------------------------------
# Class names


def resolve_labels(labels, num_classes=None):
    """Class names as an ``id2label`` dict.

    Args:
        labels: ``None``, ``"ade20k"``, ``"cityscapes"``, a path to a JSON
            file (a list of names, an ``{index: name}`` object or a
            transformers ``config.json`` with ``id2label``), a list of
            names or a dict.
        num_classes: int or None. Checked against the number of names.

    Returns:
        dict ``{int: str}`` or ``None``.
    """
    if labels is None:
        return None
    source = labels
    if isinstance(labels, (str, os.PathLike)):
        text = os.fspath(labels)
        key = text.lower().replace("-", "").replace("_", "")
        if key in ("ade20k", "cityscapes"):
            from keras_segformer.inference.palettes import get_class_names

            labels = get_class_names(key)
        elif os.path.isfile(text):
            with open(text) as f:
                try:
                    labels = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"`labels` file {text!r} is not valid JSON: {e}"
                    ) from e
            if isinstance(labels, dict) and "id2label" in labels:
                labels = labels["id2label"]
        else:
            raise ValueError(
                "`labels` must be 'ade20k', 'cityscapes', a JSON file, a "
                f"list or a dict. Received: {text!r} (no such file)."
            )
    if isinstance(labels, (list, tuple)):
        labels = dict(enumerate(labels))
    if not isinstance(labels, dict):
        raise TypeError(
            "`labels` must name the classes with a list or a dict. "
            f"Received: {type(labels).__name__}"
        )
    try:
        id2label = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"`labels` keys must be class indices: {e}") from e
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError("`labels` must name classes 0..n-1 without gaps.")
    if num_classes is not None and len(id2label) != num_classes:
        raise ValueError(
            f"`labels` ({source!r}) names {len(id2label)} classes; the "
            f"model has {num_classes}."
        )
    return id2label


# ----------------------------------------------------------------------------
# One call: checkpoint file -> Keras model


def _complete(
    arch, *, variant, num_heads, strides, decoder_hidden_size, new_head
):
    """Fill in what the weights cannot tell, from arguments or a variant."""
    if variant is not None:
        cfg = variant_config(variant)
        for name in ("hidden_sizes", "depths"):
            if list(cfg[name]) != list(arch[name]):
                raise ValueError(
                    f"variant={variant!r} has {name}={list(cfg[name])}; the "
                    f"checkpoint has {arch[name]}."
                )
        arch["num_heads"] = list(cfg["num_heads"])
        arch["strides"] = list(cfg["strides"])
        arch["variant"] = variant
    if num_heads is not None:
        arch["num_heads"] = list(num_heads)
    if strides is not None:
        arch["strides"] = list(strides)
    for name, flag in (("num_heads", "num_heads"), ("strides", "strides")):
        if arch[name] is None:
            raise ValueError(
                f"Cannot tell `{name}` from the weights: hidden sizes "
                f"{arch['hidden_sizes']} and patch sizes "
                f"{arch['patch_sizes']} match no variant. Pass `{flag}=` "
                "(one value per stage) or `variant=`."
            )
    if decoder_hidden_size is not None:
        if (
            not new_head
            and arch["decoder_hidden_size"] is not None
            and arch["decoder_hidden_size"] != decoder_hidden_size
        ):
            raise ValueError(
                f"The checkpoint's decoder has {arch['decoder_hidden_size']} "
                f"channels; decoder_hidden_size={decoder_hidden_size} was "
                "asked for."
            )
        arch["decoder_hidden_size"] = decoder_hidden_size
    return arch


def _sibling_config(path):
    config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config):
        return None
    return hf.read_config(config)


def load_checkpoint(
    path,
    *,
    format="auto",
    task=None,
    num_classes=None,
    labels=None,
    backbone_only=False,
    variant=None,
    num_heads=None,
    strides=None,
    decoder_hidden_size=None,
    head=None,
    **kwargs,
):
    """Build the Keras model of any SegFormer checkpoint and load it.

    Reads transformers directories/files, NVlabs segmentation and ImageNet
    MiT ``.pth`` files and mmsegmentation checkpoints. The format comes
    from the tensor names, the architecture from their shapes (or from
    ``config.json`` for transformers directories).

    Args:
        path: str. A checkpoint file (``.pth``, ``.bin``, ``.safetensors``)
            or a local transformers directory (``config.json`` next to
            the weights supplies heads, strides, dropouts and class
            names; for Hub ids use ``from_pretrained``).
        format: str. ``"auto"``, ``"hf"``, ``"nvlabs"``, ``"mit"`` or
            ``"mmseg"``; a given format must agree with the names.
        task: str or None. ``"segmentation"``, ``"classification"`` or
            ``"backbone"``; default: the checkpoint's (with
            ``backbone_only=True``: ``"segmentation"``).
        num_classes: int or None. Classes of a new head (needs
            ``backbone_only=True`` when it differs from the checkpoint).
        labels: class names: ``"ade20k"``, ``"cityscapes"``, a JSON file,
            a list or a dict (see ``resolve_labels``).
        backbone_only: bool. Load the encoder into a model with a fresh
            head (ImageNet MiT -> SegFormer with ``num_classes`` classes).
        variant: str or None. ``"b0"`` ... ``"b5"``: takes heads and
            strides from the table, checks depths and hidden sizes.
        num_heads: list of ints or None. Attention heads per stage, for
            hidden sizes that match no variant.
        strides: list of ints or None. Patch-embedding strides, for
            non-standard patch sizes.
        decoder_hidden_size: int or None. Decoder channels of a new head
            (default: the variant's).
        head: str or None. Head of a new segmentation head, ``"mlp"``
            (default) or ``"mmseg"``.
        **kwargs: backbone options (``input_shape``,
            ``include_preprocessing``, ``dtype``, ``drop_path_rate``,
            ``layer_norm_epsilon`` ...).

    Returns:
        ``SegFormer``, ``MiTClassifier`` or ``MiTBackbone``;
        ``model.load_report`` is a ``ConversionReport``.

    Example:
    >>> model = load_checkpoint("segformer.b0.512x512.ade.160k.pth",
    ...                         labels="ade20k")
    >>> print(model.load_report)
    >>> model = load_checkpoint("mit_b0.pth", num_classes=19,
    ...                         backbone_only=True, labels="cityscapes")
    """
    from keras_segformer.models.builders import build_mit
    from keras_segformer.models.segformer import MiTClassifier, SegFormer

    path = os.fspath(path)
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: {task!r}")
    path = _weights_file(path, format)
    state_dict, layout = _prepare(read_state_dict(path), format)
    arch = infer_architecture(state_dict, layout)
    config = _sibling_config(path) if layout.family == "hf" else None
    if config is not None:
        backbone_kwargs, head_kwargs = hf.config_to_kwargs(config)
        arch["num_heads"] = list(backbone_kwargs["num_heads"])
        arch["strides"] = list(backbone_kwargs["strides"])
        if labels is None and not backbone_only:
            labels = head_kwargs["id2label"]
    arch = _complete(
        arch,
        variant=variant,
        num_heads=num_heads,
        strides=strides,
        decoder_hidden_size=decoder_hidden_size,
        new_head=backbone_only,
    )
    if task is None:
        task = "segmentation" if backbone_only else arch["task"]
    if task != "backbone" and not backbone_only:
        if task != arch["task"]:
            raise ValueError(
                f"The checkpoint holds a {arch['task']} model, task={task!r} "
                "was asked for: pass backbone_only=True to load its encoder "
                "under a new head."
            )
        if num_classes is not None and num_classes != arch["num_classes"]:
            raise ValueError(
                f"The checkpoint has {arch['num_classes']} classes, "
                f"num_classes={num_classes} was asked for: pass "
                "backbone_only=True to load the encoder into a new head."
            )
        if head is not None and head != arch["head"]:
            raise ValueError(
                f"The checkpoint has the {arch['head']!r} head; head={head!r} "
                "was asked for."
            )
        num_classes = arch["num_classes"]
        head = arch["head"]
    if task == "backbone":
        backbone_only = True
    elif num_classes is None:
        raise ValueError(
            "A new head needs `num_classes` (the checkpoint's "
            f"{arch['task']} weights are not loaded with backbone_only=True)."
        )
    head = head or arch["head"] or "mlp"
    if task == "segmentation" and arch["decoder_hidden_size"] is None:
        if arch.get("variant") is None:
            raise ValueError(
                "Pass `decoder_hidden_size` for the new head (the "
                "checkpoint matches no variant to take it from)."
            )
        arch["decoder_hidden_size"] = variant_config(arch["variant"])[
            "decoder_hidden_size"
        ]
    id2label = resolve_labels(
        labels, None if task == "backbone" else num_classes
    )

    options = {
        "layer_norm_epsilon": layout.layer_norm_epsilon,
        "input_shape": (None, None, arch["num_channels"]),
    }
    if config is not None:
        options.update(
            {
                k: backbone_kwargs[k]
                for k in ("drop_path_rate", "dropout", "attention_dropout")
            }
        )
    options.update(kwargs)
    arch["layer_norm_epsilon"] = options["layer_norm_epsilon"]
    backbone = build_mit(
        depths=arch["depths"],
        hidden_sizes=arch["hidden_sizes"],
        num_heads=arch["num_heads"],
        sr_ratios=arch["sr_ratios"],
        patch_sizes=arch["patch_sizes"],
        strides=arch["strides"],
        mlp_ratios=arch["mlp_ratios"],
        **options,
    )
    arch.update(task=task, num_classes=num_classes)
    if task == "backbone":
        model = backbone
    elif task == "segmentation":
        arch["head"] = head
        model = SegFormer(
            backbone,
            num_classes,
            decoder_hidden_size=arch["decoder_hidden_size"],
            dropout=0.1 if config is None else head_kwargs["dropout"],
            id2label=id2label,
            head=head,
        )
    else:
        arch["head"] = arch["decoder_hidden_size"] = None
        model = MiTClassifier(backbone, num_classes, id2label=id2label)
    model.load_report = _load(
        model, state_dict, layout, backbone_only, path, arch=arch
    )
    return model
