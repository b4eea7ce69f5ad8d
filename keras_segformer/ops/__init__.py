"""The model's operations, and the only place with backend code.

Each op has a generic version written with ``keras.ops`` and, where one
was measured faster, versions registered per backend and device kind
(``_tensorflow.py``, ``_jax.py``, ``_torch.py``); see ``dispatch.py``.

- ``nn``: dense, conv2d, depthwise_conv2d, gelu, layer_norm,
  kernel_and_bias, matmul, reshape.
- ``attention``: scaled dot-product attention.
- ``resize``: bilinear resize (PyTorch's ``align_corners=False``).
- ``losses``: cross-entropy, argmax, banded upsampling.
- ``checks``: the in-graph input size check.
- ``optimizer``: the AdamW update of a group of variables.
- ``inference``: ``no_autograd()``, the context of ``predict_on_batch``;
  ``compiled_forward`` and ``eager_calls_first``, the compiled eager
  calls of the functional models (``CompiledCalls``).

``use("generic")`` (a context manager) and the environment variable
``KERAS_SEGFORMER_OPS=generic`` put every op on its generic version.
"""

from keras_segformer.ops import (
    attention,
    checks,
    inference,
    losses,
    nn,
    optimizer,
    resize,
)
from keras_segformer.ops.dispatch import (
    DEVICE_KINDS,
    ENV_VAR,
    MODES,
    default_jit_compile,
    device_kind,
    mode,
    use,
)

__all__ = [
    "DEVICE_KINDS",
    "ENV_VAR",
    "MODES",
    "attention",
    "checks",
    "default_jit_compile",
    "device_kind",
    "inference",
    "losses",
    "mode",
    "nn",
    "optimizer",
    "resize",
    "use",
]
