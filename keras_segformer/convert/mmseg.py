"""Key map of mmsegmentation's own SegFormer checkpoints (0.x >= v0.17, 1.x).

Backbone ``backbone.layers.{s}.0`` is the patch embedding
(``projection``, ``norm``), ``backbone.layers.{s}.1.{j}`` the blocks
(``norm1``, ``attn.attn.in_proj_weight`` / ``in_proj_bias`` packed as
``[q; k; v]``, ``attn.attn.out_proj``, ``attn.sr``, ``attn.norm``,
``norm2``, ``ffn.layers.0`` / ``.1`` / ``.4`` = 1x1 conv, depthwise 3x3,
1x1 conv) and ``backbone.layers.{s}.2`` the stage norm. Backbone-only
files (mmseg's ``mit2mmseg`` output) have the same names without
``backbone.``. All LayerNorms use eps 1e-6, which ``MiTBackbone`` expresses
exactly (``layer_norm_epsilon=1e-6``).

The head is mmseg's ``SegformerHead``, not the all-MLP head:
``decode_head.convs.{i}`` (1x1 conv without bias + BN + ReLU),
``decode_head.fusion_conv`` (same) and ``decode_head.conv_seg``; it loads
into ``SegFormer(..., head="mmseg")`` (``MMSegSegFormerHead``).
"""

import re

from keras_segformer.convert import hf
from keras_segformer.convert.state_dict import CheckpointError

FORMAT_NAMES = {"mmseg": "mmsegmentation SegFormer checkpoint"}
LAYER_NORM_EPSILON = 1e-6

ENCODER = hf.EncoderKeyMap(
    patch_embedding={
        "proj": "{prefix}layers.{stage}.0.projection.{param}",
        "layer_norm": "{prefix}layers.{stage}.0.norm.{param}",
    },
    block="{prefix}layers.{stage}.1.{block}",
    modules={
        "layer_norm_1": ("norm1", None),
        "attention.self.sr": ("attn.sr", None),
        "attention.self.layer_norm": ("attn.norm", None),
        "attention.output.dense": ("attn.attn.out_proj", None),
        "layer_norm_2": ("norm2", None),
        # mmseg's MixFFN uses 1x1 convolutions where transformers has Linear.
        "mlp.dense1": ("ffn.layers.0", "conv1x1"),
        "mlp.dwconv.dwconv": ("ffn.layers.1", None),
        "mlp.dense2": ("ffn.layers.4", "conv1x1"),
    },
    # nn.MultiheadAttention packs the three input projections as [q; k; v].
    fused={
        "attention.self.query": ("attn.attn.in_proj_{param}", (0, 3, "q")),
        "attention.self.key": ("attn.attn.in_proj_{param}", (1, 3, "k")),
        "attention.self.value": ("attn.attn.in_proj_{param}", (2, 3, "v")),
    },
    stage_norm="{prefix}layers.{stage}.2.{param}",
)

SKIP_PREFIXES = ()
SKIP_SUFFIXES = ("num_batches_tracked",)
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")

SIGNATURE = re.compile(r"^(backbone\.)?layers\.0\.0\.projection\.weight$")
# Present when the checkpoint has mmseg's SegformerHead.
HEAD_SIGNATURE = "decode_head.convs.0.conv.weight"


def source_key(canonical, prefix="backbone."):
    """mmseg name of a canonical (transformers) tensor name.

    Keys of the mmseg head plan (``decode_head.convs...``) map to
    themselves.

    Args:
        canonical: str. A key of ``hf.backbone_plan`` or ``head_plan``.
        prefix: str. ``"backbone."`` or ``""`` (backbone-only files).

    Returns:
        ``(key, part, transform)`` as in ``nvlabs.source_key``.
    """
    found = ENCODER.rename(canonical, prefix)
    if found is not None:
        return found
    if re.match(r"decode_head\.(convs\.\d+|fusion_conv|conv_seg)\.", canonical):
        return canonical, None, None
    raise CheckpointError(
        f"mmsegmentation checkpoints have no counterpart of {canonical!r}."
    )


def _batch_norm(prefix, bn):
    return [
        (f"{prefix}.weight", bn.gamma, "identity"),
        (f"{prefix}.bias", bn.beta, "identity"),
        (f"{prefix}.running_mean", bn.moving_mean, "identity"),
        (f"{prefix}.running_var", bn.moving_variance, "identity"),
    ]


def head_plan(model):
    """(mmseg key, keras variable, transform) for a ``head="mmseg"`` model.

    Args:
        model: ``SegFormer`` built with ``head="mmseg"``.
    """
    if getattr(model, "head", None) != "mmseg":
        raise CheckpointError(
            "mmsegmentation's SegformerHead loads into a SegFormer built "
            f"with head='mmseg'; this model has head="
            f"{getattr(model, 'head', None)!r}."
        )
    head = model.get_layer("decode_head")
    plan = []
    for i, (conv, bn) in enumerate(zip(head.convs, head.conv_norms)):
        plan.append(
            (f"decode_head.convs.{i}.conv.weight", conv.kernel, "conv1x1")
        )
        plan += _batch_norm(f"decode_head.convs.{i}.bn", bn)
    plan.append(
        (
            "decode_head.fusion_conv.conv.weight",
            head.fusion_conv.kernel,
            "conv1x1",
        )
    )
    plan += _batch_norm("decode_head.fusion_conv.bn", head.fusion_norm)
    plan += [
        ("decode_head.conv_seg.weight", head.classifier.kernel, "conv1x1"),
        ("decode_head.conv_seg.bias", head.classifier.bias, "identity"),
    ]
    return plan


def head_info(shape):
    """Task, head type, decoder width and classes of an mmseg checkpoint.

    Args:
        shape: callable, plan name -> shape tuple or ``None``.

    Returns:
        ``hf.head_fields``; the head is ``"mmseg"`` when there is one.
    """
    convs = shape(HEAD_SIGNATURE)
    if convs is None:
        return hf.head_fields()
    seg = shape("decode_head.conv_seg.weight")
    return hf.head_fields("segmentation", "mmseg", convs[0], seg and seg[0])
