"""The one weight-assignment path every checkpoint reader goes through."""

import re
from dataclasses import dataclass, field

import numpy as np

from keras_segformer.errors import CheckpointError, plural, sample


def _linear(w):  # torch Linear (out, in) -> Dense (in, out)
    return w.T


def _conv(w):  # torch Conv2d (out, in, kh, kw) -> Conv2D (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0)


def _depthwise(w):  # (C, 1, kh, kw) -> DepthwiseConv2D (kh, kw, C, 1)
    return w.transpose(2, 3, 0, 1)


def _conv1x1_dense(w):  # (out, in, 1, 1) -> Dense (in, out)
    if w.ndim == 4:
        if w.shape[2:] != (1, 1):
            raise CheckpointError(
                f"Expected a 1x1 convolution, got kernel shape {w.shape}."
            )
        w = w[:, :, 0, 0]
    return w.T


def _identity(w):
    return w


TRANSFORMS = {
    "linear": _linear,
    "conv": _conv,
    "depthwise": _depthwise,
    "conv1x1": _conv1x1_dense,
    "identity": _identity,
}


_ARCHITECTURE_FIELDS = (
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


@dataclass
class LoadReport:
    """What a checkpoint load read, inferred and assigned.

    ``model.load_report`` of ``load_checkpoint`` and ``from_pretrained``,
    and what ``load_weights`` and ``assign`` return. ``ConversionReport``
    is another name for it.

    Args:
        source: str. The checkpoint.
        format: str or None. Its format (``"hf"``, ``"nvlabs"``, ``"mit"``,
            ``"mmseg"``); ``None`` from a bare ``assign``.
        architecture: dict. Inferred (and completed) configuration.
        assigned: list of str. Source names copied (a slice of a fused
            tensor as ``"<name>[<part>]"``).
        skipped: list of str. Source tensors deliberately not loaded.
        mapping: list of ``(source name, Keras variable path, shape)``.
        fresh: list of str. Keras variable paths that keep their values
            (a new head).
        notes: list of str. Approximations and choices made.
    """

    source: str = "checkpoint"
    format: str = None
    architecture: dict = field(default_factory=dict)
    assigned: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    mapping: list = field(default_factory=list)
    fresh: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def not_loaded(self):
        """Variables that keep their values (the same as ``fresh``)."""
        return self.fresh

    def _header(self):
        if self.format is None:
            return self.source
        from keras_segformer.convert.formats import REGISTRY

        spec = REGISTRY.get(self.format)
        name = spec.description if spec else self.format
        return f"{self.source}: {name} ({self.format})"

    def summary(self):
        """A few lines: format, architecture, counts, skips, notes."""
        arch = self.architecture
        sources = {re.sub(r"\[\w+\]$", "", name) for name, _, _ in self.mapping}
        splits = sum(1 for name, _, _ in self.mapping if name.endswith("]"))
        lines = [self._header()]
        if arch:
            desc = ", ".join(
                f"{k}={arch[k]}"
                for k in _ARCHITECTURE_FIELDS
                if arch.get(k) is not None
            )
            lines.append(f"architecture: {desc}")
        lines.append(
            f"assigned {plural(len(self.mapping), 'variable')} from "
            f"{plural(len(sources), 'source tensor')} "
            f"({plural(splits, 'slice')} of fused tensors)"
        )
        if self.skipped:
            lines.append(
                f"skipped {plural(len(self.skipped), 'source tensor')} on "
                "purpose: " + sample(self.skipped, 8)
            )
        if self.fresh:
            lines.append(
                f"{plural(len(self.fresh), 'variable')} keep their initial "
                "values (new head): " + sample(self.fresh, 4)
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


# The name load_checkpoint's report had before there was one report type.
ConversionReport = LoadReport


def _listed(items, n, sep):
    """The first ``n`` items in their order, then ``...`` if more."""
    return sep.join(items[:n]) + (" ..." if len(items) > n else "")


def _check(key, variable, value, source_shape):
    """What is wrong with copying ``value`` into ``variable``, or None."""
    if tuple(value.shape) != tuple(variable.shape):
        return "mismatched", (
            f"{key}: checkpoint {source_shape} -> {tuple(value.shape)}, "
            f"model {variable.path} expects {tuple(variable.shape)}"
        )
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        bad = value[~np.isfinite(value)]
        return "non_finite", (
            f"{key} ({bad.size} of {value.size} values are NaN or inf, "
            f"e.g. {bad.flat[0]})"
        )
    return None


def _stage(plan, state_dict, optional, report):
    """Transform and check every plan entry; nothing is assigned yet.

    Returns:
        ``(staged, problems)``: ``(key, variable, value)`` ready to assign,
        and ``{"missing" | "mismatched" | "non_finite": [messages]}``.
        Optional entries that are missing go to ``report.fresh``.
    """
    staged = []
    problems = {"missing": [], "mismatched": [], "non_finite": []}
    seen = set()
    for key, variable, transform in plan:
        if key in seen:
            raise AssertionError(f"Plan uses {key!r} twice.")
        seen.add(key)
        if key not in state_dict:
            if optional and key.startswith(optional):
                report.fresh.append(variable.path)
            else:
                problems["missing"].append(key)
            continue
        value = TRANSFORMS[transform](np.asarray(state_dict[key]))
        problem = _check(key, variable, value, tuple(state_dict[key].shape))
        if problem is None:
            staged.append((key, variable, value))
        else:
            problems[problem[0]].append(problem[1])
    return staged, problems


def assign(plan, state_dict, *, skip=(), optional=(), source="checkpoint"):
    """Copy ``state_dict`` tensors into Keras variables following ``plan``.

    Every source tensor must be used exactly once or be named in ``skip``
    (exact keys or key prefixes); every plan entry must find its tensor
    unless its key starts with a prefix in ``optional``. Every copy checks
    the shape and that every value is finite (a NaN or inf weight is
    refused). Nothing is assigned unless everything checks out.

    Args:
        plan: list of ``(key, variable, transform_name)``.
        state_dict: dict of numpy arrays.
        skip: iterable of keys/prefixes deliberately not loaded.
        optional: iterable of key prefixes that may be missing (their
            variables keep their current values).
        source: str. Name of the checkpoint, for messages.

    Returns:
        ``LoadReport``.
    """
    skip = tuple(skip)
    report = LoadReport(source=source)
    staged, problems = _stage(plan, state_dict, tuple(optional), report)
    unexpected = []
    used = {key for key, _, _ in plan}
    for key in state_dict:
        if key in used:
            continue
        if skip and (key in skip or key.startswith(skip)):
            report.skipped.append(key)
        else:
            unexpected.append(key)
    problems["unexpected"] = sorted(unexpected)
    lines = [
        f"{len(problems[kind])} {what}: " + _listed(problems[kind], n, sep)
        for kind, what, n, sep in (
            ("missing", f"tensors missing from the {source}", 10, ", "),
            ("unexpected", f"unexpected tensors in the {source}", 10, ", "),
            ("mismatched", "shape mismatches", 5, "; "),
            ("non_finite", "tensors with non-finite values", 5, "; "),
        )
        if problems[kind]
    ]
    if lines:
        raise CheckpointError(
            "Weights do not match the model:\n  " + "\n  ".join(lines)
        )
    for key, variable, value in staged:
        variable.assign(value.astype(variable.dtype))
        report.assigned.append(key)
        report.mapping.append((key, variable.path, tuple(variable.shape)))
    return report
