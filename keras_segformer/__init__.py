"""SegFormer semantic segmentation for Keras 3 (TensorFlow, JAX, PyTorch).

``import keras_segformer`` imports Keras (and with it the backend) and
registers the package's Keras objects, so that a ``.keras`` file naming
them loads. The ``keras-segformer`` command line is the exception: it
starts without Keras, so that ``--help`` works with no backend installed,
and imports the package once a sub-command has chosen the backend and
checked its dependencies (``keras_segformer.cli``).
"""

import os as _os
import sys as _sys


def _started_as_cli():
    """Whether this process is the ``keras-segformer`` command: the
    installed script, or ``python -m keras_segformer``."""
    script = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    if script in ("keras-segformer", "keras-segformer.exe"):
        return True
    argv = list(getattr(_sys, "orig_argv", ()))
    return any(
        a == "-m" and b == "keras_segformer" for a, b in zip(argv, argv[1:])
    )


def _import_all():
    """Import the public API (and with it Keras and its backend), which
    registers the package's Keras objects. Runs on import, except in the
    command line, which calls it once its backend is chosen."""
    # Bound here, published below: the package's public names.
    import keras_segformer.configs as configs  # noqa: F401
    import keras_segformer.layers as layers  # noqa: F401
    from keras_segformer.convert import from_pretrained  # noqa: F401
    from keras_segformer.models import (  # noqa: F401
        MiTB0,
        MiTB0Classifier,
        MiTB1,
        MiTB1Classifier,
        MiTB2,
        MiTB2Classifier,
        MiTB3,
        MiTB3Classifier,
        MiTB4,
        MiTB4Classifier,
        MiTB5,
        MiTB5Classifier,
        MiTBackbone,
        MiTClassifier,
        SegFormer,
        SegFormerB0,
        SegFormerB1,
        SegFormerB2,
        SegFormerB3,
        SegFormerB4,
        SegFormerB5,
        build_classifier,
        build_mit,
        build_segformer,
    )

    globals().update(locals())


def __getattr__(name):
    # The command line before it has imported the API: on first use
    # (a submodule's name is bound by its import, never looked up here).
    if name in __all__ and name not in ("configs", "layers"):
        _import_all()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from keras_segformer.version import __version__  # noqa: E402, F401

__all__ = [
    "MiTB0",
    "MiTB0Classifier",
    "MiTB1",
    "MiTB1Classifier",
    "MiTB2",
    "MiTB2Classifier",
    "MiTB3",
    "MiTB3Classifier",
    "MiTB4",
    "MiTB4Classifier",
    "MiTB5",
    "MiTB5Classifier",
    "MiTBackbone",
    "MiTClassifier",
    "SegFormer",
    "SegFormerB0",
    "SegFormerB1",
    "SegFormerB2",
    "SegFormerB3",
    "SegFormerB4",
    "SegFormerB5",
    "build_classifier",
    "build_mit",
    "build_segformer",
    "configs",
    "from_pretrained",
    "layers",
]


if not _started_as_cli():
    _import_all()
