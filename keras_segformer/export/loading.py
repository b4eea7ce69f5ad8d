"""Load a model from what a user has on disk: ``.keras``, a transformers
directory, or bare Keras weights plus the variant they belong to."""

import os
import re
import warnings
import zipfile

import keras
import numpy as np

_WEIGHT_SUFFIXES = (".weights.h5",)


# Bounds on what a .keras archive may inflate to, read from its zip
# directory before any member is read. A SegFormer-B5 with its optimizer
# state is about 1 GiB; model weights compress little (float32 noise),
# a zip bomb a thousandfold.
MAX_KERAS_BYTES = 2 * 2**30
MAX_KERAS_RATIO = 20
_RATIO_FROM_BYTES = 16 * 2**20


def check_keras_archive(path):
    """Refuse a ``.keras`` zip whose members would inflate past a sane
    bound, from the sizes in its zip directory, before anything is read.

    Raises:
        ValueError: the archive inflates past ``MAX_KERAS_BYTES`` in all,
            or a member of more than 16 MiB past ``MAX_KERAS_RATIO`` times
            its compressed size; the message names the member.
    """
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    total = sum(m.file_size for m in members)
    for m in members:
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size > _RATIO_FROM_BYTES and ratio > MAX_KERAS_RATIO:
            raise ValueError(
                f"{path!r}: its member {m.filename!r} inflates to "
                f"{m.file_size / 2**20:.0f} MiB, {ratio:.0f} times its "
                f"compressed size (model weights compress at most "
                f"{MAX_KERAS_RATIO} times): not a model file; not read."
            )
    if total > MAX_KERAS_BYTES:
        raise ValueError(
            f"{path!r} inflates to {total / 2**30:.1f} GiB, more than the "
            f"{MAX_KERAS_BYTES / 2**30:.0f} GiB any SegFormer model file "
            "takes: not read."
        )


def _load_keras_file(path):
    if not zipfile.is_zipfile(path):
        # Keras would say "File not found" about a file that is there.
        raise ValueError(
            f"{path!r} is not a Keras model file: a .keras file is a zip "
            "archive written by model.save; this one is corrupt or truncated."
        )
    check_keras_archive(path)  # before Keras inflates any member
    try:
        model = keras.saving.load_model(path)
    except Exception as e:
        if _MISFIT.search(str(e)):
            # Keras' message prints whole variables: one line instead.
            raise ValueError(
                f"The Keras model file {path!r} contradicts itself: the "
                "model its config.json describes (classes, variant) does "
                f"not fit its weights: {_misfit(e)}"
            ) from None
        raise ValueError(
            f"Could not read the Keras model file {path!r} "
            f"({type(e).__name__}: {e})."
        ) from e
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{path!r} holds a {type(model).__name__}, not a keras.Model."
        )
    return model


def _load_weights_file(path, variant, num_classes):
    from keras_segformer.models import build_segformer

    if variant is None or num_classes is None:
        raise ValueError(
            f"{path!r} holds only weights: pass the `variant` (b0 ... b5) "
            "and `num_classes` of the SegFormer they belong to (CLI: "
            "--variant and --num-classes)."
        )
    model = build_segformer(int(num_classes), variant)  # checks variant
    with warnings.catch_warnings(record=True) as said:
        # Keras warns about every container it cannot match before it
        # fails: kept back unless the weights load.
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except Exception as e:
            raise ValueError(
                f"Could not load the weights file {path!r} into a SegFormer "
                f"{variant!r} with {num_classes} classes: {_misfit(e)} Pass "
                "the `variant` and `num_classes` of the model that saved it "
                "(CLI: --variant and --num-classes)."
            ) from e
    for warning in said:
        warnings.warn_explicit(
            warning.message, warning.category, warning.filename, warning.lineno
        )
    return model


# Keras' message for weights that do not fit (it prints the whole variable).
_MISFIT = re.compile(
    r"A total of (\d+) objects could not be loaded.*?variable\.shape="
    r"(\([^)]*\)), Received: value\.shape=(?:torch\.Size\(\[([^\]]*)\]\)"
    r"|(\([^)]*\))).*?Target variable: <Variable path=([^,]+),",
    re.DOTALL,
)


def _misfit(error):
    """One sentence on why weights did not load: the first variable whose
    shape differs, from Keras' message (or that message's first line)."""
    text = str(error)
    found = _MISFIT.search(text)
    if found is None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"{type(error).__name__}: {first[:300]}."
    count, here, torch_shape, shape, name = found.groups()
    there = shape or f"({torch_shape}{',' if ',' not in torch_shape else ''})"
    return (
        f"{count} of its layers do not fit, e.g. {name} is {here} in this "
        f"model and {there} in the file."
    )


def _check_finite(model, path):
    """Refuse a model whose weights hold NaN or inf (a diverged training,
    a damaged file): every prediction would be meaningless."""
    from keras_segformer.convert import CheckpointError

    bad = [
        w.path
        for w in model.weights
        if not np.isfinite(keras.ops.convert_to_numpy(w.value)).all()
    ]
    if bad:
        raise CheckpointError(
            f"{path!r} holds {len(bad)} weights with NaN or infinite "
            f"values: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}."
        )
    return model


def load_model(path, variant=None, num_classes=None):
    """Load a model from a ``.keras`` file, a transformers directory or
    Keras weights.

    Args:
        path: str or path-like. One of: a ``.keras`` file written by
            ``model.save``; a directory written by transformers'
            ``save_pretrained`` (``config.json`` + weights; loaded with
            ``keras_segformer.from_pretrained``); a ``.weights.h5`` file
            written by ``model.save_weights``, which needs ``variant`` and
            ``num_classes``.
        variant: str or None. ``"b0"`` ... ``"b5"``, for a weights file.
        num_classes: int or None. Classes of the model, for a weights file.

    Returns:
        ``keras.Model``.

    Example:
    >>> model = load_model("segformer_b0.keras")
    >>> model = load_model("ckpt.weights.h5", variant="b0", num_classes=19)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model not found: {path!r}")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            from keras_segformer.convert import from_pretrained

            return from_pretrained(path)
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"{path!r} is an exported SavedModel, which cannot be "
                "loaded back as a Keras model. Pass a .keras file, a "
                "transformers directory or a .weights.h5 file."
            )
        raise ValueError(
            f"{path!r} is a directory without config.json: not a "
            "transformers checkpoint directory."
        )
    if path.endswith(".keras"):
        return _check_finite(_load_keras_file(path), path)
    if path.endswith(_WEIGHT_SUFFIXES):
        return _check_finite(
            _load_weights_file(path, variant, num_classes), path
        )
    raise ValueError(
        f"Cannot tell the kind of model file {path!r}: expected a .keras "
        "file, a .weights.h5 file or a transformers directory."
    )
