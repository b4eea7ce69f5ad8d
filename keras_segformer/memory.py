"""How much memory a SegFormer call needs, to refuse sizes that cannot fit.

One estimate per kind of work, each from the model's dimensions (a built
model or a variant's config) and the sizes asked for, set against what
the system has available now (``available_memory``: ``MemAvailable``):

- ``inference_bytes``: one image through the network, at each test-time
  scale (``predict``, ``Segmenter``, an export's calibration): the largest
  activation (stage 1 at a quarter of the view's size) for a batch of
  views, plus the logits kept at the image's size;
- ``training_bytes``: one training step (``train``, ``trainer.fit``):
  every activation the backward pass keeps, for the whole batch, plus the
  weights, their gradients and Adam's two moments.

These are estimates to refuse what cannot fit before the memory is
spent (the process would be killed by the system, without a word), not
bounds: a size that passes may still not fit. Nothing here imports a
backend at the top (``runs_on_host`` asks the one Keras uses).
"""

import os

# Bytes of a float32.
_FLOAT = 4


def available_memory():
    """Bytes of memory available to this process now: ``MemAvailable``
    of ``/proc/meminfo``, else free pages (``os.sysconf``); None where
    neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def runs_on_host():
    """Whether Keras' backend computes on this machine's CPUs (no GPU or
    TPU in use): then a step's activations take the memory that
    ``available_memory`` counts."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not any(
            tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU")
        )
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "torch":
        import torch

        return not torch.cuda.is_available()
    return True


def model_dims(model):
    """The dimensions the estimates read from a model: ``hidden_sizes``,
    ``decoder_hidden_size`` and ``num_classes`` (defaults where a model
    does not say); None for a callable that is not a Keras model with an
    output (nothing to estimate)."""
    output = getattr(model, "output", None)
    shape = getattr(output, "shape", None)
    if not shape or not isinstance(shape[-1], int):
        return None
    backbone = getattr(model, "backbone", None)
    return {
        "hidden_sizes": list(getattr(backbone, "hidden_sizes", None) or [64]),
        "decoder_hidden_size": int(
            getattr(model, "decoder_hidden_size", None) or 768
        ),
        "num_classes": int(shape[-1]),
    }


def inference_bytes(dims, image_size, views, *, flip, crop_size, batch_size):
    """Rough bytes to segment one image of ``image_size`` ``(height,
    width)``: the model's largest activation (stage 1 at a quarter of the
    view's size: its attention over the reduced keys, its Mix-FFN, the
    decode head's concatenated features) for a batch of views (a window's
    size with ``crop_size``), plus the float32 logits kept per view at the
    image's size.

    Args:
        dims: dict. ``model_dims`` of the model.
        image_size: pair. The image's ``(height, width)``.
        views: list of pairs. The size each test-time scale resizes the
            image to (one per scale; ``flip`` doubles them).
        flip: bool. Mirrored views too.
        crop_size: pair or None. Sliding windows of this size.
        batch_size: int. Views (or windows) per model call.

    Returns:
        int.
    """
    height, width = image_size
    hidden = dims["hidden_sizes"]
    decoder = dims["decoder_hidden_size"]
    classes = dims["num_classes"]
    count = len(views) * (2 if flip else 1)
    largest = 0
    for view in views:
        if crop_size is not None:
            view = tuple(min(v, c) for v, c in zip(view, crop_size))
        tokens = (view[0] / 4) * (view[1] / 4)
        activation = tokens * max(
            tokens / 64,  # stage-1 attention: keys reduced 8x8, one head
            4 * hidden[0],  # Mix-FFN
            5 * decoder,  # decode head: 4 maps concatenated, then fused
        )
        logits = view[0] * view[1] * classes  # before the resize
        largest = max(largest, activation + logits)
    batch = min(batch_size, count) if crop_size is None else batch_size
    kept = count * height * width * classes * (2 if crop_size else 1)
    scaled = max(v[0] * v[1] for v in views) * (classes + 3)
    # float32, and a factor for the tensors alive beside the largest.
    return int(_FLOAT * (2 * batch * largest + kept + scaled))


def training_bytes(config, num_classes, crop_size, batch_size):
    """Rough bytes of one training step on ``batch_size`` crops of
    ``crop_size`` ``(height, width)``: the activations the backward pass
    keeps, per block of each stage (its normalizations, attention logits
    and probabilities over the reduced keys, the Mix-FFN's three
    4x-wide maps), the decode head's upsampled and fused features and the
    logits, for every sample; plus weights, gradients and Adam's moments.

    Args:
        config: dict. A variant's config (``configs.variant_config``):
            ``depths``, ``hidden_sizes``, ``num_heads``, ``sr_ratios``,
            ``strides``, ``mlp_ratios``, ``decoder_hidden_size``.
        num_classes: int. Classes of the head.
        crop_size: pair. ``(height, width)`` of a training crop.
        batch_size: int. Crops per step (on one device).

    Returns:
        int.
    """
    height, width = crop_size
    stride, per_sample, params, first = 1, 0.0, 0.0, None
    decoder = config["decoder_hidden_size"]
    previous = 3
    for stage, channels in enumerate(config["hidden_sizes"]):
        stride *= config["strides"][stage]
        tokens = -(-height // stride) * -(-width // stride)
        keys = tokens / config["sr_ratios"][stage] ** 2
        heads = config["num_heads"][stage]
        wide = config["mlp_ratios"][stage]
        block = tokens * channels * (4 + 2 * wide) + heads * tokens * keys
        per_sample += 3 * tokens * channels  # patch embedding, final norm
        per_sample += config["depths"][stage] * block
        per_sample += 2 * tokens * decoder  # the head's projection, resize
        first = tokens if first is None else first
        params += config["depths"][stage] * (4 + 2 * wide) * channels**2
        params += previous * channels * 9 + channels * decoder
        previous = channels
    per_sample += first * (6 * decoder + 2 * num_classes)  # fuse, logits
    per_sample += height * width * 4  # the image and its labels
    params += 4 * decoder * decoder + decoder * num_classes
    # Weights, gradients, Adam's two moments.
    return int(_FLOAT * (batch_size * per_sample + 4 * params))


def gib(size):
    """``size`` bytes in GiB for a message: ``"3.2"``."""
    return f"{size / 2**30:.1f}"


def check_fits(need, what, remedy):
    """Refuse work that needs more memory than is available now.

    Args:
        need: int. Bytes the work needs (an estimate of this module).
        what: str. The work, naming the argument or flag: ``"--scales 1 4
            on a.png (2000x1500)"``.
        remedy: str. What to change, naming the arguments or flags.

    Raises:
        ValueError: ``what needs about N GiB, more than the M GiB of
            memory available: remedy.`` (nothing where the available
            memory is unknown).
    """
    available = available_memory()
    if available is not None and need > available:
        raise ValueError(
            f"{what} needs about {gib(need)} GiB, more than the "
            f"{gib(available)} GiB of memory available: {remedy}."
        )
