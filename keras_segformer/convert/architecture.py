"""A checkpoint's architecture, read off its tensor shapes and counts.

Depths, hidden sizes, patch sizes, spatial-reduction ratios, MLP ratios,
input channels, decoder width, number of classes and the head type come
from the weights; what weights cannot tell (attention heads, strides)
comes from the variant table (``configs.VARIANTS``, matched by hidden
sizes), from a ``config.json`` or from arguments (``complete``).
"""

import numpy as np

from keras_segformer.configs import COMMON, VARIANTS, variant_config
from keras_segformer.convert.state_dict import CheckpointError

_ENCODER = "segformer.encoder"


def _shape_reader(state_dict, layout):
    """``canonical name -> shape or None`` for a checkpoint."""

    def shape(canonical):
        key, _, _ = layout.source(canonical)
        value = state_dict.get(key)
        return None if value is None else tuple(np.shape(value))

    return shape


def _variant_rows(hidden_sizes, depths=None):
    rows = []
    for name, row in VARIANTS.items():
        if list(row["hidden_sizes"]) != list(hidden_sizes):
            continue
        if depths is not None and list(row["depths"]) != list(depths):
            continue
        rows.append(name)
    return rows


def _stage(shape, s, kernel):
    """Depth, width, patch size, reduction and MLP ratio of stage ``s``."""
    if len(kernel) != 4 or kernel[2] != kernel[3]:
        raise CheckpointError(
            f"Stage {s + 1} patch embedding has kernel shape {kernel}; "
            "a square (out, in, k, k) convolution was expected."
        )
    hidden = kernel[0]
    depth = 0
    while shape(f"{_ENCODER}.block.{s}.{depth}.layer_norm_1.weight"):
        depth += 1
    if depth == 0:
        raise CheckpointError(f"Stage {s + 1} has no blocks.")
    sr = shape(f"{_ENCODER}.block.{s}.0.attention.self.sr.weight")
    dense1 = shape(f"{_ENCODER}.block.{s}.0.mlp.dense1.weight")
    if dense1 is None:
        raise CheckpointError(f"Stage {s + 1} has no Mix-FFN weights.")
    ratio = dense1[0] / hidden
    return {
        "depths": depth,
        "hidden_sizes": hidden,
        "patch_sizes": kernel[2],
        "sr_ratios": 1 if sr is None else sr[2],
        "mlp_ratios": int(ratio) if ratio.is_integer() else ratio,
    }


def _encoder(shape):
    """Per-stage lists of the encoder, and its input channels."""
    arch = {
        "depths": [],
        "hidden_sizes": [],
        "patch_sizes": [],
        "sr_ratios": [],
        "mlp_ratios": [],
    }
    s = 0
    while True:
        kernel = shape(f"{_ENCODER}.patch_embeddings.{s}.proj.weight")
        if kernel is None:
            break
        if s == 0:
            arch["num_channels"] = kernel[1]
        for name, value in _stage(shape, s, kernel).items():
            arch[name].append(value)
        s += 1
    if s == 0:
        raise CheckpointError("The checkpoint has no patch embedding.")
    return arch


def infer_architecture(state_dict, layout):
    """Read the architecture off tensor shapes and counts.

    Args:
        state_dict: dict, names as in ``layout`` (after ``prepare``).
        layout: ``Layout``.

    Returns:
        dict with ``depths``, ``hidden_sizes``, ``patch_sizes``,
        ``sr_ratios``, ``mlp_ratios``, ``num_channels``, ``task``
        (``"segmentation"``, ``"classification"`` or ``"backbone"``),
        ``head`` (``"mlp"``, ``"mmseg"`` or ``None``),
        ``decoder_hidden_size`` and ``num_classes`` (``None`` without a
        head), ``variant`` (the table row with these depths and widths, or
        ``None``), and ``num_heads`` / ``strides`` when the variant table
        knows them (else ``None``).
    """
    shape = _shape_reader(state_dict, layout)
    arch = _encoder(shape)
    arch.update(layout.spec.head_info(shape))
    rows = _variant_rows(arch["hidden_sizes"])
    exact = _variant_rows(arch["hidden_sizes"], arch["depths"])
    arch["variant"] = exact[0] if exact else None
    # Every row shares COMMON's heads and strides: a hidden-size match
    # is enough for them.
    arch["num_heads"] = list(COMMON["num_heads"]) if rows else None
    standard = list(arch["patch_sizes"]) == list(COMMON["patch_sizes"])
    arch["strides"] = list(COMMON["strides"]) if standard else None
    return arch


def _apply_variant(arch, variant):
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


def complete(arch, variant, num_heads, strides, decoder_hidden_size, new_head):
    """Fill in what the weights cannot tell, from arguments or a variant.

    Args:
        arch: dict from ``infer_architecture`` (changed in place).
        variant: str or None. Heads and strides from this table row.
        num_heads: list of ints or None.
        strides: list of ints or None.
        decoder_hidden_size: int or None. Must agree with the weights'
            unless ``new_head``.
        new_head: bool. The head is built fresh (``backbone_only``).

    Returns:
        ``arch``.
    """
    if variant is not None:
        _apply_variant(arch, variant)
    if num_heads is not None:
        arch["num_heads"] = list(num_heads)
    if strides is not None:
        arch["strides"] = list(strides)
    for name in ("num_heads", "strides"):
        if arch[name] is None:
            raise ValueError(
                f"Cannot tell `{name}` from the weights: hidden sizes "
                f"{arch['hidden_sizes']} and patch sizes "
                f"{arch['patch_sizes']} match no variant. Pass `{name}=` "
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
