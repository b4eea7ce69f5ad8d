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
        depths: list of ints or None. Blocks per stage.
        hidden_sizes: list of ints or None. Channels per stage.
        num_heads: list of ints or None. Attention heads per stage.
        sr_ratios: list of ints or None. Spatial-reduction ratios.
        patch_sizes: list of ints or None. Patch-embedding kernel sizes.
        strides: list of ints or None. Patch-embedding strides.
        mlp_ratios: list of ints or None. Mix-FFN expansion per stage.
        **kwargs: other ``MiTBackbone`` arguments (``drop_path_rate``,
            ``dropout``, ``attention_dropout``, ``layer_norm_epsilon``,
            ``input_shape``, ``include_preprocessing``, ``dtype``, ``name``).

    Returns:
        ``MiTBackbone``: four stage maps at strides 4, 8, 16 and 32.

    Raises:
        ValueError: an unknown ``variant``, a field missing without a
            variant, or a field out of range (named in the message).

    Example:
    >>> backbone = build_mit("b0", hidden_sizes=[16, 32, 80, 128])
    >>> c1, c2, c3, c4 = backbone(np.zeros((1, 64, 96, 3), "float32"))
    """
    given = (depths, hidden_sizes, num_heads, sr_ratios, patch_sizes)
    given += (strides, mlp_ratios)
    cfg = _resolve(variant, dict(zip(BACKBONE_FIELDS, given)))
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
        "block_norm_epsilon",
        "approximate_gelu",
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

    Returns:
        ``SegFormer``, compiled with the training recipe.

    Raises:
        TypeError: an argument the builder does not take.
        ValueError: an unknown ``variant``, a missing
            ``decoder_hidden_size`` without a variant, or a config field
            out of range (named in the message).

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

    Returns:
        ``MiTClassifier``, compiled (sparse cross-entropy, accuracy,
        AdamW).

    Raises:
        TypeError: an argument the builder does not take.
        ValueError: an unknown ``variant`` or a field out of range.

    Example:
    >>> model = build_classifier(10, "b0")
    >>> model(np.zeros((2, 64, 64, 3), "float32")).shape  # (2, 10)
    """
    backbone_kwargs = _split_backbone_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"Unexpected arguments: {sorted(kwargs)}")
    backbone = build_mit(variant, **backbone_kwargs)
    return MiTClassifier(backbone, num_classes, id2label=id2label, name=name)


# One docstring template per family, filled from the variant table (the
# pattern of keras.applications' convnext.py): the functions below are
# written out, one line each, so help() and an IDE show them.
_OPTIONS_DOC = """
        include_preprocessing: bool. Take raw 0-255 RGB and normalize
            inside the model (default ``False``: ImageNet-normalized
            pixels, like transformers' ``pixel_values``).
        input_shape: tuple. ``(height, width, channels)``, ``None`` for
            any size (default ``(None, None, 3)``).
        drop_path_rate: float. Stochastic depth of the last block
            (default 0.1).
        {hidden_dropout}: float. Dropout after attention and Mix-FFN
            (transformers' ``hidden_dropout_prob``, default 0.0).
        attention_dropout: float. Dropout on attention probabilities
            (default 0.0).
        layer_norm_epsilon: float. Every LayerNorm's epsilon (1e-5).
        dtype: dtype policy, e.g. ``"mixed_bfloat16"``.
        depths: list of ints. Blocks per stage (this field and the ones
            below replace the variant's).
        hidden_sizes: list of ints. Channels per stage.
        num_heads: list of ints. Attention heads per stage.
        sr_ratios: list of ints. Spatial-reduction ratios per stage.
        patch_sizes: list of ints. Patch-embedding kernel sizes.
        strides: list of ints. Patch-embedding strides.
        mlp_ratios: list of ints. Mix-FFN expansion per stage."""

_SEGFORMER_DOC = """SegFormer-{V}: semantic segmentation, MiT-{V} encoder.

    Depths {depths}, hidden sizes {hidden_sizes},
    an all-MLP decoder of {decoder} channels (Xie et al. 2021, table 6).
    The model returns logits at 1/4 of the image size and comes compiled
    with the training recipe (``SegFormerLoss``, ``GroupedAdamW``,
    ``MeanIoU``).
    ``build_segformer(num_classes, "{v}", ...)``.

    Args:
        num_classes: int. Output classes (default 150, ADE20K).
        **kwargs: ``build_segformer`` arguments:
        decoder_hidden_size: int. Decoder channels (default {decoder}).
        dropout: float. Dropout before the classifier only (transformers'
            ``classifier_dropout_prob``, default 0.1); the encoder's is
            ``hidden_dropout``.
        id2label: dict or None. Class names.
        head: str. ``"mlp"`` (paper, transformers) or ``"mmseg"``.
        name: str. Model name (default ``"segformer"``).{options}

    Returns:
        ``SegFormer``.

    Raises:
        TypeError: an argument the builder does not take, or of the wrong
            type (named).
        ValueError: a value out of range (named).

    Example:
    >>> model = keras_segformer.{name}(num_classes=19)
    >>> logits = model(np.zeros((1, 512, 1024, 3), "float32"))  # 128x256
    """

_MIT_DOC = """MiT-{V}: the Mix Transformer encoder alone.

    Depths {depths}, hidden sizes {hidden_sizes};
    returns the four stage maps ``[c1, c2, c3, c4]`` at strides 4, 8, 16
    and 32.
    ``build_mit("{v}", ...)``.

    Args:
        **kwargs: ``MiTBackbone`` arguments:{options}
        name: str. Model name (default ``"mit"``).

    Returns:
        ``MiTBackbone``.

    Raises:
        TypeError: an argument the builder does not take, or of the wrong
            type (named).
        ValueError: a value out of range (named).

    Example:
    >>> backbone = keras_segformer.{name}()
    >>> c1, c2, c3, c4 = backbone(np.zeros((1, 64, 96, 3), "float32"))
    """

_CLASSIFIER_DOC = """MiT-{V} image classifier (ImageNet-style).

    The MiT-{V} encoder (depths {depths},
    hidden sizes {hidden_sizes}), then the last stage's mean over
    positions and a linear classifier, as
    transformers' ``SegformerForImageClassification``; comes compiled
    (sparse cross-entropy, accuracy, AdamW).
    ``build_classifier(num_classes, "{v}", ...)``.

    Args:
        num_classes: int. Output classes (default 1000, ImageNet-1k).
        **kwargs: ``build_classifier`` arguments:
        id2label: dict or None. Class names.
        name: str. Model name (default ``"mit_classifier"``).{options}

    Returns:
        ``MiTClassifier``.

    Raises:
        TypeError: an argument the builder does not take, or of the wrong
            type (named).
        ValueError: a value out of range (named).

    Example:
    >>> model = keras_segformer.{name}(num_classes=10)
    """


def _doc(template, name, variant):
    """``template`` filled from the variant table's row ``variant``."""
    cfg = variant_config(variant)
    hidden_dropout = "dropout" if template is _MIT_DOC else "hidden_dropout"
    return template.format(
        v=variant,
        V=variant.upper(),
        name=name,
        depths=list(cfg["depths"]),
        hidden_sizes=list(cfg["hidden_sizes"]),
        decoder=cfg["decoder_hidden_size"],
        options=_OPTIONS_DOC.format(hidden_dropout=hidden_dropout),
    )


def SegFormerB0(num_classes=150, **kwargs):
    return build_segformer(num_classes, "b0", **kwargs)


def SegFormerB1(num_classes=150, **kwargs):
    return build_segformer(num_classes, "b1", **kwargs)


def SegFormerB2(num_classes=150, **kwargs):
    return build_segformer(num_classes, "b2", **kwargs)


def SegFormerB3(num_classes=150, **kwargs):
    return build_segformer(num_classes, "b3", **kwargs)


def SegFormerB4(num_classes=150, **kwargs):
    return build_segformer(num_classes, "b4", **kwargs)


def SegFormerB5(num_classes=150, **kwargs):
    return build_segformer(num_classes, "b5", **kwargs)


def MiTB0(**kwargs):
    return build_mit("b0", **kwargs)


def MiTB1(**kwargs):
    return build_mit("b1", **kwargs)


def MiTB2(**kwargs):
    return build_mit("b2", **kwargs)


def MiTB3(**kwargs):
    return build_mit("b3", **kwargs)


def MiTB4(**kwargs):
    return build_mit("b4", **kwargs)


def MiTB5(**kwargs):
    return build_mit("b5", **kwargs)


def MiTB0Classifier(num_classes=1000, **kwargs):
    return build_classifier(num_classes, "b0", **kwargs)


def MiTB1Classifier(num_classes=1000, **kwargs):
    return build_classifier(num_classes, "b1", **kwargs)


def MiTB2Classifier(num_classes=1000, **kwargs):
    return build_classifier(num_classes, "b2", **kwargs)


def MiTB3Classifier(num_classes=1000, **kwargs):
    return build_classifier(num_classes, "b3", **kwargs)


def MiTB4Classifier(num_classes=1000, **kwargs):
    return build_classifier(num_classes, "b4", **kwargs)


def MiTB5Classifier(num_classes=1000, **kwargs):
    return build_classifier(num_classes, "b5", **kwargs)


SegFormerB0.__doc__ = _doc(_SEGFORMER_DOC, "SegFormerB0", "b0")
SegFormerB1.__doc__ = _doc(_SEGFORMER_DOC, "SegFormerB1", "b1")
SegFormerB2.__doc__ = _doc(_SEGFORMER_DOC, "SegFormerB2", "b2")
SegFormerB3.__doc__ = _doc(_SEGFORMER_DOC, "SegFormerB3", "b3")
SegFormerB4.__doc__ = _doc(_SEGFORMER_DOC, "SegFormerB4", "b4")
SegFormerB5.__doc__ = _doc(_SEGFORMER_DOC, "SegFormerB5", "b5")
MiTB0.__doc__ = _doc(_MIT_DOC, "MiTB0", "b0")
MiTB1.__doc__ = _doc(_MIT_DOC, "MiTB1", "b1")
MiTB2.__doc__ = _doc(_MIT_DOC, "MiTB2", "b2")
MiTB3.__doc__ = _doc(_MIT_DOC, "MiTB3", "b3")
MiTB4.__doc__ = _doc(_MIT_DOC, "MiTB4", "b4")
MiTB5.__doc__ = _doc(_MIT_DOC, "MiTB5", "b5")
MiTB0Classifier.__doc__ = _doc(_CLASSIFIER_DOC, "MiTB0Classifier", "b0")
MiTB1Classifier.__doc__ = _doc(_CLASSIFIER_DOC, "MiTB1Classifier", "b1")
MiTB2Classifier.__doc__ = _doc(_CLASSIFIER_DOC, "MiTB2Classifier", "b2")
MiTB3Classifier.__doc__ = _doc(_CLASSIFIER_DOC, "MiTB3Classifier", "b3")
MiTB4Classifier.__doc__ = _doc(_CLASSIFIER_DOC, "MiTB4Classifier", "b4")
MiTB5Classifier.__doc__ = _doc(_CLASSIFIER_DOC, "MiTB5Classifier", "b5")
