"""Key map of NVlabs/SegFormer checkpoints (segmentation and ImageNet MiT).

The original repository (an old mmsegmentation fork) saves
``backbone.patch_embed{n}.proj``, ``backbone.block{n}.{j}.attn.kv`` ...
and the all-MLP head as ``decode_head.linear_c{n}.proj``,
``decode_head.linear_fuse.conv`` / ``.bn`` and ``decode_head.linear_pred``.
Its ImageNet MiT checkpoints (``mit_b0.pth`` ...) hold the same backbone
names without the ``backbone.`` prefix, plus the classifier ``head``.

The map goes from the canonical transformers names of
``keras_segformer.convert.hf`` to NVlabs names, so the plans of ``hf.py``
(and ``assign``) are reused unchanged. The fused ``attn.kv`` projection is
split: key = ``kv[:C]``, value = ``kv[C:]``.

LayerNorm epsilon: NVlabs uses 1e-6 in the blocks and stage norms and 1e-5
(PyTorch's default) in the patch-embedding and spatial-reduction norms.
``MiTBackbone`` has one epsilon for all norms; models built from these
checkpoints use 1e-6, so the patch-embedding and reduction norms differ
from NVlabs by 9e-6 in epsilon, a relative change of about ``4.5e-6 / var``
in their outputs (measured below 1e-5 on the logits in the tests).
"""

import re

from keras_segformer.convert import hf
from keras_segformer.convert.state_dict import CheckpointError

FORMAT_NAMES = {
    "nvlabs": "NVlabs/SegFormer segmentation checkpoint",
    "mit": "NVlabs MiT ImageNet checkpoint",
}
LAYER_NORM_EPSILON = 1e-6

ENCODER = hf.EncoderKeyMap(
    patch_embedding={
        "proj": "{prefix}patch_embed{stage1}.proj.{param}",
        "layer_norm": "{prefix}patch_embed{stage1}.norm.{param}",
    },
    block="{prefix}block{stage1}.{block}",
    modules={
        "layer_norm_1": ("norm1", None),
        "attention.self.query": ("attn.q", None),
        "attention.self.sr": ("attn.sr", None),
        "attention.self.layer_norm": ("attn.norm", None),
        "attention.output.dense": ("attn.proj", None),
        "layer_norm_2": ("norm2", None),
        "mlp.dense1": ("mlp.fc1", None),
        "mlp.dwconv.dwconv": ("mlp.dwconv.dwconv", None),
        "mlp.dense2": ("mlp.fc2", None),
    },
    # The fused key/value projection: (part index, number of parts, name).
    fused={
        "attention.self.key": ("attn.kv.{param}", (0, 2, "key")),
        "attention.self.value": ("attn.kv.{param}", (1, 2, "value")),
    },
    stage_norm="{prefix}norm{stage1}.{param}",
)
_HEAD = {
    "decode_head.linear_fuse.weight": "decode_head.linear_fuse.conv.weight",
    "decode_head.classifier.weight": "decode_head.linear_pred.weight",
    "decode_head.classifier.bias": "decode_head.linear_pred.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}

# Source tensors deliberately not loaded: BaseDecodeHead builds a
# ``conv_seg`` that the NVlabs MLP head never calls, and BatchNorm's step
# counter has no Keras counterpart.
SKIP_PREFIXES = ("decode_head.conv_seg.",)
SKIP_SUFFIXES = ("num_batches_tracked",)
# Task heads, skipped when only the backbone is loaded.
HEAD_PREFIXES = ("decode_head.", "auxiliary_head.", "head.")

# Recognises the layout (with or without the ``backbone.`` prefix).
SIGNATURE = re.compile(r"^(backbone\.)?patch_embed1\.proj\.weight$")


def source_key(canonical, prefix="backbone."):
    """NVlabs name of a canonical (transformers) tensor name.

    Args:
        canonical: str. A key of ``hf.backbone_plan`` / ``hf.head_plan``.
        prefix: str. ``"backbone."`` for segmentation checkpoints, ``""``
            for ImageNet MiT checkpoints.

    Returns:
        ``(key, part, transform)``: the NVlabs key, ``None`` or
        ``(index, count, name)`` when the tensor is one of ``count`` equal
        slices along axis 0 of ``key``, and ``None`` (the plan's transform).
    """
    found = ENCODER.rename(canonical, prefix)
    if found is not None:
        return found
    m = re.fullmatch(r"decode_head\.linear_c\.(\d+)\.proj\.(\w+)", canonical)
    if m:
        return f"decode_head.linear_c{int(m[1]) + 1}.proj.{m[2]}", None, None
    m = re.fullmatch(r"decode_head\.batch_norm\.(\w+)", canonical)
    if m:
        return f"decode_head.linear_fuse.bn.{m[1]}", None, None
    if canonical in _HEAD:
        return _HEAD[canonical], None, None
    raise CheckpointError(
        f"NVlabs checkpoints have no counterpart of {canonical!r}."
    )
