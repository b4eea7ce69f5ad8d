"""The checkpoint formats, one registry entry each.

An entry says how to recognise the format (a signature on the name of the
first patch embedding), how to rename the canonical transformers names of
the plans in ``hf.py`` to its names (``rename``, the key maps of
``nvlabs.py`` and ``mmseg.py``), which of its tensors are deliberately not
loaded, which belong to a task head, what its head looks like and the
LayerNorm epsilon it was trained with. The loader (``loader.py``) reads
these fields and has no per-format branch; adding a format is adding an
entry (and its key map).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

from keras_segformer.convert import hf, mmseg, nvlabs
from keras_segformer.errors import CheckpointError, sample


def _same_name(canonical, prefix):
    return canonical, None, None


def _not_in_encoder(key):
    return not key.startswith("segformer.")


def _prefixed(prefixes):
    return lambda key: key.startswith(prefixes)


@dataclass(frozen=True)
class Format:
    """One checkpoint format.

    Args:
        name: str. The ``format=`` value and ``report.format``.
        description: str. What the format is, for messages.
        example: str. Its first patch embedding's name, for messages.
        signature: compiled regex, matched against every tensor name
            (after ``canonicalize``); group 1 is the backbone names'
            prefix.
        rename: callable ``(canonical, prefix) -> (key, part, transform)``:
            the format's name of a plan entry, ``part`` =
            ``(index, count, name)`` for a slice of a fused tensor and a
            transform that replaces the plan's (or ``None``).
        head_info: callable ``shape -> dict`` with ``task``, ``head``,
            ``decoder_hidden_size``, ``num_classes``; ``shape`` maps a plan
            name to the shape of its tensor (``None`` when absent).
        head: str. The segmentation head of its checkpoints, ``"mlp"``
            (transformers' all-MLP head) or ``"mmseg"``.
        is_head: callable ``key -> bool``: a task-head tensor, skipped
            when only the backbone is loaded.
        skip_prefixes: tuple of str. Tensors never loaded.
        skip_suffixes: tuple of str. Tensors never loaded.
        layer_norm_epsilon: float. Its LayerNorms' epsilon.
        canonicalize: callable or None. Renames every name first.
        config_file: str or None. A file next to the weights that gives
            what shapes cannot tell (heads, strides, dropouts, names).
        same_names: tuple of str. Formats with the same tensor names
            (asking for one of them accepts the other).
        note: str or None. Said in the report; ``{eps}`` is the model's
            LayerNorm epsilon.
    """

    name: str
    description: str
    example: str
    signature: re.Pattern
    rename: Callable
    head_info: Callable
    head: str
    is_head: Callable
    skip_prefixes: tuple = ()
    skip_suffixes: tuple = ("num_batches_tracked",)
    layer_norm_epsilon: float = 1e-5
    canonicalize: Callable | None = None
    config_file: str | None = None
    same_names: tuple = ()
    note: str | None = None

    def skip(self, key):
        """Whether a source tensor is deliberately not loaded."""
        return key.startswith(self.skip_prefixes) or key.endswith(
            self.skip_suffixes
        )

    def head_plan(self, model):
        """Plan of the task head of ``model`` in canonical names."""
        from keras_segformer.models.segformer import SegFormer

        if self.head == "mmseg":
            if not isinstance(model, SegFormer):
                raise CheckpointError(
                    f"{self.description}s hold segmentation models; load "
                    "this one into a SegFormer (or pass backbone_only=True)."
                )
            return mmseg.head_plan(model)
        if getattr(model, "head", None) == "mmseg":
            raise CheckpointError(
                f"A {self.description} has the all-MLP head; the model was "
                "built with head='mmseg'."
            )
        return hf.head_plan(model)


_NVLABS = {
    "rename": lambda canonical, prefix: nvlabs.source_key(canonical, prefix),
    "head_info": hf.head_info,
    "head": "mlp",
    "is_head": _prefixed(nvlabs.HEAD_PREFIXES),
    "skip_prefixes": nvlabs.SKIP_PREFIXES,
    "skip_suffixes": nvlabs.SKIP_SUFFIXES,
    "layer_norm_epsilon": nvlabs.LAYER_NORM_EPSILON,
    "note": (
        "NVlabs LayerNorm eps is 1e-6 in blocks and stage norms, 1e-5 in "
        "patch-embedding and reduction norms; the model uses {eps:g} "
        "everywhere (output differences ~1e-6)."
    ),
}


def _nvlabs_format(name, example, signature, same_names):
    """NVlabs segmentation and ImageNet MiT files: the same key map."""
    return Format(
        name=name,
        description=nvlabs.FORMAT_NAMES[name],
        example=example,
        signature=re.compile(signature),
        same_names=same_names,
        **_NVLABS,
    )


REGISTRY = {
    f.name: f
    for f in (
        Format(
            name="hf",
            description="transformers checkpoint",
            example="transformers (segformer.encoder.patch_embeddings.0."
            "proj.weight)",
            signature=re.compile(r"^(segformer\.encoder\.)patch_embeddings\."),
            rename=_same_name,
            head_info=hf.head_info,
            head="mlp",
            is_head=_not_in_encoder,
            skip_suffixes=hf.SKIP_SUFFIXES,
            canonicalize=hf.canonicalize,
            config_file="config.json",
        ),
        _nvlabs_format(
            "nvlabs",
            "NVlabs (backbone.patch_embed1.proj.weight)",
            r"^(backbone\.)patch_embed1\.proj\.weight$",
            same_names=("mit",),
        ),
        _nvlabs_format(
            "mit",
            "ImageNet MiT (patch_embed1.proj.weight)",
            r"^()patch_embed1\.proj\.weight$",
            same_names=("nvlabs",),
        ),
        Format(
            name="mmseg",
            description=mmseg.FORMAT_NAMES["mmseg"],
            example="mmsegmentation ([backbone.]layers.0.0.projection.weight)",
            signature=mmseg.SIGNATURE,
            rename=lambda canonical, prefix: mmseg.source_key(
                canonical, prefix
            ),
            head_info=mmseg.head_info,
            head="mmseg",
            is_head=_prefixed(mmseg.HEAD_PREFIXES),
            skip_prefixes=mmseg.SKIP_PREFIXES,
            skip_suffixes=mmseg.SKIP_SUFFIXES,
            layer_norm_epsilon=mmseg.LAYER_NORM_EPSILON,
        ),
    )
}
FORMATS = ("auto",) + tuple(REGISTRY)


@dataclass(frozen=True)
class Layout:
    """How a checkpoint names its tensors: a format and a prefix.

    Args:
        format: str. A ``REGISTRY`` name.
        prefix: str. Prefix of the backbone names (``"backbone."`` or
            ``""``; ``"segformer.encoder."`` for ``hf``).
    """

    format: str
    prefix: str = ""

    @property
    def spec(self):
        """The ``Format`` entry."""
        return REGISTRY[self.format]

    def source(self, canonical):
        """``(key, part, transform)`` of a canonical plan key."""
        return self.spec.rename(canonical, self.prefix)

    def skip(self, key):
        """Whether a source tensor is deliberately not loaded."""
        return self.spec.skip(key)

    def is_head(self, key):
        """Whether a source tensor belongs to a task head."""
        return self.spec.is_head(key)

    @property
    def layer_norm_epsilon(self):
        return self.spec.layer_norm_epsilon


def detect_format(state_dict):
    """Tell the checkpoint layout from its tensor names.

    Args:
        state_dict: dict of tensor name -> array.

    Returns:
        ``Layout``.
    """
    keys = list(state_dict)
    # Formats that rename first (transformers) are tried last: their
    # renames are no use on the others' names.
    for spec in sorted(REGISTRY.values(), key=lambda f: bool(f.canonicalize)):
        names = keys
        if spec.canonicalize is not None:
            names = list(spec.canonicalize(dict.fromkeys(keys)))
        for name in names:
            m = spec.signature.match(name)
            if m:
                return Layout(spec.name, m[1] or "")
    raise CheckpointError(
        f"Unknown checkpoint layout: {len(keys)} tensors, none of them "
        "looks like the first patch embedding of a SegFormer checkpoint: "
        + ", ".join(spec.example for spec in REGISTRY.values())
        + ". Keys: "
        + (sample(keys) if keys else "(none)")
    )


def check_format(layout, format):
    """Refuse a ``format=`` that is unknown or disagrees with the names."""
    if format != "auto" and format not in REGISTRY:
        raise ValueError(
            f"`format` must be one of {('auto', *REGISTRY)}. "
            f"Received: {format!r}"
        )
    if format in ("auto", layout.format) or format in layout.spec.same_names:
        return
    raise CheckpointError(
        f"format={format!r} was asked for, but the tensor names are those "
        f"of a {layout.spec.description} ({layout.format!r})."
    )


def prepare(state_dict, format="auto"):
    """Strip wrappers, detect the layout, apply the format's renames.

    Returns:
        ``(state_dict, layout)``.
    """
    state_dict = dict(state_dict)
    # DataParallel / DistributedDataParallel wrappers prefix every name.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    layout = detect_format(state_dict)
    check_format(layout, format)
    if layout.spec.canonicalize is not None:
        state_dict = layout.spec.canonicalize(state_dict)
    return state_dict, layout
