"""The one weight-assignment path every checkpoint reader goes through."""

from dataclasses import dataclass, field

import numpy as np

from keras_segformer.convert.state_dict import CheckpointError


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


@dataclass
class LoadReport:
    """What a load did: tensors assigned, skipped on purpose, left alone."""

    assigned: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    not_loaded: list = field(default_factory=list)

    def __str__(self):
        lines = [f"assigned {len(self.assigned)} tensors"]
        if self.skipped:
            lines.append(
                f"skipped {len(self.skipped)} source tensors: "
                + ", ".join(self.skipped[:8])
                + (" ..." if len(self.skipped) > 8 else "")
            )
        if self.not_loaded:
            lines.append(
                f"kept the initial values of {len(self.not_loaded)} "
                "variables: "
                + ", ".join(self.not_loaded[:8])
                + (" ..." if len(self.not_loaded) > 8 else "")
            )
        return "\n".join(lines)


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
    optional = tuple(optional)
    report = LoadReport()
    staged, missing, mismatched, non_finite = [], [], [], []
    seen = set()
    for key, variable, transform in plan:
        if key in seen:
            raise AssertionError(f"Plan uses {key!r} twice.")
        seen.add(key)
        if key not in state_dict:
            if optional and key.startswith(optional):
                report.not_loaded.append(variable.path)
                continue
            missing.append(key)
            continue
        value = TRANSFORMS[transform](np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{key}: checkpoint {tuple(state_dict[key].shape)} -> "
                f"{tuple(value.shape)}, model {variable.path} expects "
                f"{tuple(variable.shape)}"
            )
            continue
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad = value[~np.isfinite(value)]
            non_finite.append(
                f"{key} ({bad.size} of {value.size} values are NaN or inf, "
                f"e.g. {bad.flat[0]})"
            )
            continue
        staged.append((key, variable, value))
    unexpected = []
    for key in state_dict:
        if key in seen:
            continue
        if skip and (key in skip or key.startswith(skip)):
            report.skipped.append(key)
        else:
            unexpected.append(key)
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} tensors missing from the {source}: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensors in the {source}: "
            + ", ".join(sorted(unexpected)[:10])
            + (" ..." if len(unexpected) > 10 else "")
        )
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:5])
        )
    if non_finite:
        problems.append(
            f"{len(non_finite)} tensors with non-finite values: "
            + "; ".join(non_finite[:5])
            + (" ..." if len(non_finite) > 5 else "")
        )
    if problems:
        raise CheckpointError(
            "Weights do not match the model:\n  " + "\n  ".join(problems)
        )
    for key, variable, value in staged:
        variable.assign(value.astype(variable.dtype))
        report.assigned.append(key)
    return report
