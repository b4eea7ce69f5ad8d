"""Generic builders and the named B0-B5 variants.

``build_segformer`` / ``build_mit`` / ``build_classifier`` take every config
field; a ``variant`` fills in the fields not given. The named builders
(``SegFormerB0`` ... ``MiTB5Classifier``) are thin wrappers over one row of
``keras_segformer.configs.VARIANTS``.
"""

from keras_segformer.configs import (
    BACKBONE_FIELDS,
    check_rate,
    variant_config,
)
from keras_segformer.models.mit import MiTBackbone
from keras_segformer.models.segformer import MiTClassifier, SegFormer


def _resolve(variant, fields):
    """Merge explicit fields over a variant row; all fields must end up set."""
    base = variant_config(variant) if variant is not None else {}
    given = {k: v for k, v in fields.items() if v is not None}
    merged = {**base, **given}
    missing = [k for k in fields if merged.get(k) is None]
    if missing:
        raise ValueError(
            f"Missing config fields {missing}: pass them or pass a "
            "`variant` such as 'b0'."
        )
    return merged


def build_mit(
    variant=None,
    *,
    depths=None,
    hidden_sizes=None,
    num_heads=None,
    sr_ratios=None,
    patch_sizes=None,
    strides=None,
    mlp_ratios=None,
    **kwargs,
):
    """Build a ``MiTBackbone`` from a variant and/or explicit fields.

    Args:
        variant: str or None. ``"b0"`` ... ``"b5"``; fields given explicitly
            override the variant's.
        depths, hidden_sizes, num_heads, sr_ratios, patch_sizes, strides,
            mlp_ratios: per-stage lists (see ``MiTBackbone``).
        **kwargs: other ``MiTBackbone`` arguments (``drop_path_rate``,
            ``dropout``, ``attention_dropout``, ``layer_norm_epsilon``,
            ``input_shape``, ``include_preprocessing``, ``dtype``, ``name``).
    """
    cfg = _resolve(
        variant,
        {
            "depths": depths,
            "hidden_sizes": hidden_sizes,
            "num_heads": num_heads,
            "sr_ratios": sr_ratios,
            "patch_sizes": patch_sizes,
            "strides": strides,
            "mlp_ratios": mlp_ratios,
        },
    )
    return MiTBackbone(**{k: cfg[k] for k in BACKBONE_FIELDS}, **kwargs)


def _split_backbone_kwargs(kwargs):
    keys = set(BACKBONE_FIELDS) | {
        "drop_path_rate",
        "hidden_dropout",
        "attention_dropout",
        "layer_norm_epsilon",
        "input_shape",
        "include_preprocessing",
        "dtype",
    }
    backbone = {k: kwargs.pop(k) for k in list(kwargs) if k in keys}
    if "hidden_dropout" in backbone:
        backbone["dropout"] = check_rate(
            backbone.pop("hidden_dropout"), "hidden_dropout"
        )
    return backbone


def build_segformer(
    num_classes=150,
    variant=None,
    *,
    decoder_hidden_size=None,
    dropout=0.1,
    id2label=None,
    head="mlp",
    name="segformer",
    **kwargs,
):
    """Build a ``SegFormer`` from a variant and/or every config field.

    Args:
        num_classes: int. Output classes.
        variant: str or None. ``"b0"`` ... ``"b5"``.
        decoder_hidden_size: int or None. Decoder channels (variant default:
            256 for B0/B1, 768 for B2-B5).
        dropout: float. Classifier dropout (``classifier_dropout_prob``).
        id2label: dict or None. Class names.
        head: str. ``"mlp"`` (paper, transformers) or ``"mmseg"``
            (mmsegmentation's ``SegformerHead``).
        **kwargs: backbone fields and options: ``depths``, ``hidden_sizes``,
            ``num_heads``, ``sr_ratios``, ``patch_sizes``, ``strides``,
            ``mlp_ratios``, ``drop_path_rate``, ``hidden_dropout``,
            ``attention_dropout``, ``layer_norm_epsilon``, ``input_shape``,
            ``include_preprocessing``, ``dtype``.

    Example:
    >>> model = keras_segformer.build_segformer(
    ...     num_classes=3, depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64],
    ...     num_heads=[1, 2, 3, 4], sr_ratios=[8, 4, 2, 1],
    ...     patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
    ...     mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=32)
    """
    backbone_kwargs = _split_backbone_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"Unexpected arguments: {sorted(kwargs)}")
    if decoder_hidden_size is None:
        if variant is None:
            raise ValueError(
                "Missing `decoder_hidden_size`: pass it or a `variant`."
            )
        decoder_hidden_size = variant_config(variant)["decoder_hidden_size"]
    backbone = build_mit(variant, **backbone_kwargs)
    return SegFormer(
        backbone,
        num_classes,
        decoder_hidden_size=decoder_hidden_size,
        dropout=dropout,
        id2label=id2label,
        head=head,
        name=name,
    )


def build_classifier(
    num_classes=1000,
    variant=None,
    *,
    id2label=None,
    name="mit_classifier",
    **kwargs,
):
    """Build a ``MiTClassifier`` (ImageNet-style) from a variant/fields.

    Args:
        num_classes: int. Output classes (1000 for ImageNet-1k).
        variant: str or None. ``"b0"`` ... ``"b5"``.
        id2label: dict or None. Class names.
        **kwargs: backbone fields and options, as for ``build_segformer``.
    """
    backbone_kwargs = _split_backbone_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"Unexpected arguments: {sorted(kwargs)}")
    backbone = build_mit(variant, **backbone_kwargs)
    return MiTClassifier(backbone, num_classes, id2label=id2label, name=name)


def _named(builder, variant, name, default_classes):
    def named_builder(num_classes=default_classes, **kwargs):
        return builder(num_classes, variant, **kwargs)

    named_builder.__name__ = named_builder.__qualname__ = name
    named_builder.__doc__ = (
        f"`{builder.__name__}` with the SegFormer-{variant.upper()} config "
        f"(num_classes={default_classes} by default); see "
        f"`{builder.__name__}` for the keyword arguments."
    )
    return named_builder


def _named_mit(variant):
    def named_builder(**kwargs):
        return build_mit(variant, **kwargs)

    named_builder.__name__ = named_builder.__qualname__ = (
        f"MiT{variant.upper()}"
    )
    named_builder.__doc__ = (
        f"MiT-{variant.upper()} encoder returning [c1, c2, c3, c4]; see "
        "`MiTBackbone` for the keyword arguments."
    )
    return named_builder


SegFormerB0 = _named(build_segformer, "b0", "SegFormerB0", 150)
SegFormerB1 = _named(build_segformer, "b1", "SegFormerB1", 150)
SegFormerB2 = _named(build_segformer, "b2", "SegFormerB2", 150)
SegFormerB3 = _named(build_segformer, "b3", "SegFormerB3", 150)
SegFormerB4 = _named(build_segformer, "b4", "SegFormerB4", 150)
SegFormerB5 = _named(build_segformer, "b5", "SegFormerB5", 150)

MiTB0 = _named_mit("b0")
MiTB1 = _named_mit("b1")
MiTB2 = _named_mit("b2")
MiTB3 = _named_mit("b3")
MiTB4 = _named_mit("b4")
MiTB5 = _named_mit("b5")

MiTB0Classifier = _named(build_classifier, "b0", "MiTB0Classifier", 1000)
MiTB1Classifier = _named(build_classifier, "b1", "MiTB1Classifier", 1000)
MiTB2Classifier = _named(build_classifier, "b2", "MiTB2Classifier", 1000)
MiTB3Classifier = _named(build_classifier, "b3", "MiTB3Classifier", 1000)
MiTB4Classifier = _named(build_classifier, "b4", "MiTB4Classifier", 1000)
MiTB5Classifier = _named(build_classifier, "b5", "MiTB5Classifier", 1000)
