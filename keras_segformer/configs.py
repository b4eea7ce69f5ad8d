"""Variant table and config validation for MiT / SegFormer.

Every variant is one row of ``VARIANTS``; everything not in the row comes from
``COMMON``. Adding a variant is adding a row.
"""

import numbers

# Shared by B0-B5 (Xie et al. 2021, table 6; transformers' SegformerConfig).
COMMON = {
    "num_heads": (1, 2, 5, 8),
    "sr_ratios": (8, 4, 2, 1),
    "patch_sizes": (7, 3, 3, 3),
    "strides": (4, 2, 2, 2),
    "mlp_ratios": (4, 4, 4, 4),
}

# One row per variant: depths, hidden sizes, decoder channels.
_ROWS = {
    "b0": ((2, 2, 2, 2), (32, 64, 160, 256), 256),
    "b1": ((2, 2, 2, 2), (64, 128, 320, 512), 256),
    "b2": ((3, 4, 6, 3), (64, 128, 320, 512), 768),
    "b3": ((3, 4, 18, 3), (64, 128, 320, 512), 768),
    "b4": ((3, 8, 27, 3), (64, 128, 320, 512), 768),
    "b5": ((3, 6, 40, 3), (64, 128, 320, 512), 768),
}
VARIANTS = {
    name: dict(zip(("depths", "hidden_sizes", "decoder_hidden_size"), row))
    for name, row in _ROWS.items()
}

BACKBONE_FIELDS = ("depths", "hidden_sizes") + tuple(COMMON)


def variant_config(variant):
    """Return the full config dict of a named variant.

    Args:
        variant: str. One of ``"b0"`` ... ``"b5"`` (case-insensitive, an
            optional ``"mit-"``/``"segformer-"`` prefix is accepted).

    Returns:
        dict with ``depths``, ``hidden_sizes``, ``num_heads``, ``sr_ratios``,
        ``patch_sizes``, ``strides``, ``mlp_ratios`` and
        ``decoder_hidden_size``.
    """
    if not isinstance(variant, str):
        raise TypeError(
            f"`variant` must be a string such as 'b0'. Received: {variant!r}"
        )
    key = variant.lower()
    for prefix in ("segformer-", "segformer_", "mit-", "mit_", "mit"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown variant {variant!r}. Expected one of {sorted(VARIANTS)}."
        )
    return {**COMMON, **VARIANTS[key]}


def backbone_kwargs(config):
    """Pick the MiT constructor fields out of a variant config."""
    return {k: config[k] for k in BACKBONE_FIELDS}


def validate_backbone_config(
    depths, hidden_sizes, num_heads, sr_ratios, patch_sizes, strides, mlp_ratios
):
    """Check per-stage lists: same length, positive ints, divisible heads.

    Returns the lists as tuples of ints.
    """
    given = (depths, hidden_sizes, num_heads, sr_ratios, patch_sizes)
    fields = dict(zip(BACKBONE_FIELDS, given + (strides, mlp_ratios)))
    out = {}
    for name, value in fields.items():
        try:
            value = tuple(value)
        except TypeError:
            raise TypeError(
                f"`{name}` must be a list with one entry per stage. "
                f"Received: {value!r}"
            ) from None
        # mlp_ratios may be fractional (hidden * ratio is truncated).
        integer = name != "mlp_ratios"
        for v in value:
            bad = isinstance(v, bool) or not isinstance(v, numbers.Real)
            if not bad:
                bad = v <= 0 or (integer and not float(v).is_integer())
            if bad:
                kind = "positive integers" if integer else "positive numbers"
                raise ValueError(
                    f"`{name}` entries must be {kind}. "
                    f"Received: {name}={list(value)}"
                )
        if not value:
            raise ValueError(f"`{name}` must not be empty.")
        out[name] = tuple(int(v) if integer else v for v in value)
    lengths = {name: len(v) for name, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "All per-stage config lists must have the same length (one entry "
            f"per stage). Received lengths: {lengths}"
        )
    for stage, (size, heads) in enumerate(
        zip(out["hidden_sizes"], out["num_heads"])
    ):
        if size % heads:
            raise ValueError(
                f"hidden_sizes[{stage}]={size} is not divisible by "
                f"num_heads[{stage}]={heads}."
            )
        ratio = out["mlp_ratios"][stage]
        if int(size * ratio) < 1:
            raise ValueError(
                f"mlp_ratios[{stage}]={ratio} gives a Mix-FFN of "
                f"int({size} * {ratio}) = 0 channels."
            )
    return out


def check_positive_int(value, name):
    """Return ``value`` as an int; ``TypeError`` / ``ValueError`` unless it
    is a positive integer (``True`` and ``2.5`` are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be a positive integer. Received: {value!r}"
        )
    if value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {value!r}"
        )
    return int(value)


def check_rate(value, name):
    """Return ``value`` as a float; ``ValueError`` unless it is in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a float in [0, 1). Received: {value!r}"
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {value!r}")
    return float(value)


def validate_backbone_options(
    drop_path_rate,
    dropout,
    attention_dropout,
    layer_norm_epsilon,
    input_shape,
    include_preprocessing,
):
    """Check the MiT options that are not per-stage lists.

    Returns ``input_shape`` as a tuple (entries int or None).
    """
    check_rate(drop_path_rate, "drop_path_rate")
    check_rate(dropout, "dropout")
    check_rate(attention_dropout, "attention_dropout")
    if (
        isinstance(layer_norm_epsilon, bool)
        or not isinstance(layer_norm_epsilon, numbers.Real)
        or not layer_norm_epsilon > 0
    ):
        raise ValueError(
            "`layer_norm_epsilon` must be a positive float. Received: "
            f"{layer_norm_epsilon!r}"
        )
    if not isinstance(include_preprocessing, bool):
        raise TypeError(
            "`include_preprocessing` must be True or False. Received: "
            f"{include_preprocessing!r}"
        )
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels). "
            f"Received: {input_shape!r}"
        )
    for n in shape:
        if n is not None and (
            isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1
        ):
            raise ValueError(
                "`input_shape` entries must be positive integers or None. "
                f"Received: {input_shape!r}"
            )
    if shape[2] is None:
        raise ValueError(
            f"`input_shape` must give the channels. Received: {input_shape!r}"
        )
    if include_preprocessing and shape[2] != 3:
        raise ValueError(
            "`include_preprocessing=True` normalizes RGB (3 channels). "
            f"Received input_shape={input_shape!r}"
        )
    return tuple(None if n is None else int(n) for n in shape)


def min_input_size(patch_sizes, strides, sr_ratios):
    """Smallest image side the network accepts.

    Each stage with ``sr_ratio > 1`` runs a ``sr x sr`` stride-``sr`` valid
    convolution on its feature map, which needs at least ``sr`` pixels.
    """
    size = 1
    while True:
        side, ok = size, True
        for k, s, r in zip(patch_sizes, strides, sr_ratios):
            side = (side + 2 * (k // 2) - k) // s + 1
            if side < 1 or (r > 1 and side < r):
                ok = False
                break
        if ok:
            return size
        size += 1


def stage_size(size, patch_sizes, strides):
    """Spatial sizes of the four feature maps for an input side ``size``."""
    sizes = []
    for k, s in zip(patch_sizes, strides):
        size = (size + 2 * (k // 2) - k) // s + 1
        sizes.append(size)
    return sizes
