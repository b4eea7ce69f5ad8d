"""Any SegFormer checkpoint -> Keras model: the one loader.

``from_pretrained`` resolves a Hub id or a folder to a local transformers
directory and calls ``load_checkpoint``, which reads any supported
checkpoint: the format comes from the tensor names (``formats.REGISTRY``:
transformers, NVlabs segmentation, ImageNet MiT, mmsegmentation), the
architecture from the tensor shapes (``architecture.py``) and from a
``config.json`` next to transformers weights. ``load_weights`` loads into
a model that exists; every path ends in ``_load``: the canonical
transformers plan of ``hf.py`` renamed to the checkpoint's names
(``remap``, fused tensors split), then ``assign``: every source tensor is
used exactly once or skipped by name, every copy checks its shape,
nothing is assigned unless everything matches. All of them report with
one type, ``LoadReport``.
"""

import os

import numpy as np

from keras_segformer.classes import resolve_labels
from keras_segformer.configs import variant_config
from keras_segformer.convert import hf
from keras_segformer.convert.architecture import complete, infer_architecture
from keras_segformer.convert.assign import assign
from keras_segformer.convert.formats import prepare
from keras_segformer.convert.state_dict import CheckpointError, read_state_dict

TASKS = ("segmentation", "classification", "backbone")


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


def _plan_for(model, layout, backbone_only):
    from keras_segformer.models.segformer import MiTClassifier, SegFormer

    plan = hf.backbone_plan(getattr(model, "backbone", model))
    if backbone_only or not isinstance(model, (SegFormer, MiTClassifier)):
        return plan
    return plan + layout.spec.head_plan(model)


def _load(model, state_dict, layout, backbone_only, source, arch=None):
    """Plan, rename, assign; the report of every load."""
    plan = _plan_for(model, layout, backbone_only)
    plan, renamed, _ = remap(plan, state_dict, layout)
    skip = [k for k in renamed if layout.skip(k)]
    if backbone_only:
        skip += [k for k in renamed if layout.is_head(k)]
    report = assign(plan, renamed, skip=skip, source=source)
    report.format = layout.format
    report.architecture = dict(arch or {})
    in_plan = {id(v) for _, v, _ in plan}
    report.fresh += [w.path for w in model.weights if id(w) not in in_plan]
    eps = getattr(getattr(model, "backbone", model), "layer_norm_epsilon", None)
    if layout.spec.note and eps is not None:
        report.notes.append(layout.spec.note.format(eps=eps))
    return report


def find_weights(directory):
    """The weights file of a transformers directory.

    Args:
        directory: str.

    Returns:
        str. The first of ``hf.WEIGHT_FILES`` that exists.
    """
    for name in hf.WEIGHT_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(
        f"No weights in {directory!r}: expected one of {hf.WEIGHT_FILES}."
    )


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
    return find_weights(path)


def load_weights(
    model, checkpoint, *, format="auto", backbone_only=False, source=None
):
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
        source: str or None. The checkpoint's name in messages (default:
            the file, or ``"state dict"``).

    Returns:
        ``LoadReport``.

    Example:
    >>> model = keras_segformer.SegFormerB0(num_classes=19)
    >>> report = load_weights(model, "mit_b0.pth", backbone_only=True)
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        path = _weights_file(checkpoint, format)
        source = source or path
        checkpoint = read_state_dict(path)
    state_dict, layout = prepare(checkpoint, format)
    return _load(
        model, state_dict, layout, backbone_only, source or "state dict"
    )


def load_hf_weights(model, state_dict, *, backbone_only=False, source=None):
    """Load a transformers SegFormer state dict into a Keras model.

    ``load_weights`` with ``format="hf"``: both the names
    ``save_pretrained`` writes and transformers 5.x in-memory names load.

    Args:
        model: ``SegFormer``, ``MiTClassifier`` or ``MiTBackbone``.
        state_dict: dict of numpy arrays, or a path to a checkpoint file.
        backbone_only: bool. Load only the encoder; head tensors in the
            checkpoint are skipped and the model's head keeps its values.
        source: str. Name used in messages.

    Returns:
        ``LoadReport``.
    """
    return load_weights(
        model,
        state_dict,
        format="hf",
        backbone_only=backbone_only,
        source=source,
    )


def _read(path, format):
    """Weights file, state dict, layout and config of a checkpoint path.

    The config is the format's ``config_file`` next to the weights
    (transformers' ``config.json``), when there is one.
    """
    path = _weights_file(path, format)
    state_dict, layout = prepare(read_state_dict(path), format)
    config = None
    if layout.spec.config_file:
        folder = os.path.dirname(os.path.abspath(path))
        config_path = os.path.join(folder, layout.spec.config_file)
        if os.path.isfile(config_path):
            config = hf.read_config(config_path)
    return path, state_dict, layout, config


def _resolve_task(arch, task, num_classes, head, backbone_only):
    """What to build: ``(task, num_classes, head, backbone_only)``.

    Without ``backbone_only`` the task, classes and head must agree with
    the checkpoint's; a new head needs ``num_classes`` and a decoder size
    (asked for, or the matched variant's, written into ``arch``).
    """
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
    if task == "segmentation" and arch["decoder_hidden_size"] is None:
        if arch.get("variant") is None:
            raise ValueError(
                "Pass `decoder_hidden_size` for the new head (the "
                "checkpoint matches no variant to take it from)."
            )
        arch["decoder_hidden_size"] = variant_config(arch["variant"])[
            "decoder_hidden_size"
        ]
    return task, num_classes, head or arch["head"] or "mlp", backbone_only


def _build(arch, task, num_classes, head, id2label, options, head_dropout):
    """The Keras model of ``arch``; ``arch`` is updated to what was built."""
    from keras_segformer.models.builders import build_mit
    from keras_segformer.models.segformer import MiTClassifier, SegFormer

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
        return backbone
    if task == "segmentation":
        arch["head"] = head
        return SegFormer(
            backbone,
            num_classes,
            decoder_hidden_size=arch["decoder_hidden_size"],
            dropout=head_dropout,
            id2label=id2label,
            head=head,
        )
    arch["head"] = arch["decoder_hidden_size"] = None
    return MiTClassifier(backbone, num_classes, id2label=id2label)


def _settings(arch, layout, config, labels, backbone_only):
    """Backbone options, head dropout and class names; a transformers
    ``config.json`` also gives heads and strides (written into ``arch``).
    """
    options = {
        "layer_norm_epsilon": layout.layer_norm_epsilon,
        "input_shape": (None, None, arch["num_channels"]),
    }
    if config is None:
        return options, 0.1, labels
    backbone_kwargs, head_kwargs = hf.config_to_kwargs(config)
    arch["num_heads"] = list(backbone_kwargs["num_heads"])
    arch["strides"] = list(backbone_kwargs["strides"])
    for name in (
        "drop_path_rate",
        "dropout",
        "attention_dropout",
        "approximate_gelu",
    ):
        options[name] = backbone_kwargs[name]
    if labels is None and not backbone_only:
        labels = head_kwargs["id2label"]
    return options, head_kwargs["dropout"], labels


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

    Formats (``formats.REGISTRY``): transformers directories and files,
    NVlabs segmentation and ImageNet MiT ``.pth``, mmsegmentation. The
    format comes from the tensor names, the architecture from their
    shapes and a transformers ``config.json`` (heads, strides, dropouts,
    class names).

    Args:
        path: str. A checkpoint file (``.pth``, ``.bin``, ``.safetensors``)
            or a local transformers directory (Hub ids: ``from_pretrained``).
        format: str. ``"auto"``, ``"hf"``, ``"nvlabs"``, ``"mit"`` or
            ``"mmseg"``; a given format must agree with the names.
        task: str or None. ``"segmentation"``, ``"classification"`` or
            ``"backbone"``; default the checkpoint's (with
            ``backbone_only=True``: ``"segmentation"``).
        num_classes: int or None. Classes of a new head (other than the
            checkpoint's: needs ``backbone_only=True``).
        labels: class names: ``"ade20k"``, ``"cityscapes"``, a JSON file,
            a list or a dict (``classes.resolve_labels``).
        backbone_only: bool. Load the encoder under a fresh head.
        variant: str or None. ``"b0"`` ... ``"b5"``: heads and strides
            from the table (depths and hidden sizes checked).
        num_heads: list of ints or None. Attention heads per stage, for
            hidden sizes that match no variant.
        strides: list of ints or None. Patch-embedding strides per stage,
            for patch sizes that match no variant.
        decoder_hidden_size: int or None. Decoder channels of a new head.
        head: str or None. A new head's type, ``"mlp"`` or ``"mmseg"``.
        **kwargs: backbone options (``input_shape``, ``dtype``,
            ``include_preprocessing``, ``layer_norm_epsilon`` ...).

    Returns:
        ``SegFormer``, ``MiTClassifier`` or ``MiTBackbone``;
        ``model.load_report`` is a ``LoadReport``.

    Raises:
        ValueError: ``task`` is not one of ``TASKS``, or the options
            contradict the checkpoint (e.g. another class count without
            ``backbone_only=True``).
        CheckpointError: an unreadable or unknown file, or a missing,
            unexpected, mis-shaped or non-finite tensor; nothing is
            assigned.

    Example:
    >>> model = load_checkpoint("mit_b0.pth", num_classes=19,
    ...                         backbone_only=True, labels="cityscapes")
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: {task!r}")
    path, state_dict, layout, config = _read(path, format)
    arch = infer_architecture(state_dict, layout)
    options, head_dropout, labels = _settings(
        arch, layout, config, labels, backbone_only
    )
    complete(
        arch, variant, num_heads, strides, decoder_hidden_size, backbone_only
    )
    task, num_classes, head, backbone_only = _resolve_task(
        arch, task, num_classes, head, backbone_only
    )
    id2label = resolve_labels(
        labels, None if task == "backbone" else num_classes
    )
    options.update(kwargs)
    arch["layer_norm_epsilon"] = options["layer_norm_epsilon"]
    model = _build(
        arch, task, num_classes, head, id2label, options, head_dropout
    )
    model.load_report = _load(
        model, state_dict, layout, backbone_only, path, arch=arch
    )
    return model
