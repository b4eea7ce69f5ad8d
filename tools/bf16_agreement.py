"""How often bfloat16 gives the float32 argmax, on a trained model.

Loads a ``.keras`` model (for example the ``model.keras`` that
``keras-segformer train`` or ``make demo`` writes), rebuilds it with the
``mixed_bfloat16`` policy on the same weights, runs both on the images of
a folder (or on smooth random images) on the current Keras backend, and
prints the share of logit positions whose argmax is the same, and the
largest logit difference. Exits 1 when the agreement is below ``--min``.

    KERAS_BACKEND=jax python tools/bf16_agreement.py \\
        --model demo_out/train/model.keras --images demo_out/data/images/val

The benchmark's bf16 columns report the same figure for random weights
(where near ties make it lower); this is the figure for a model whose
classes are separated, as a user's are.
"""

import argparse
import os
import sys

import numpy as np

# The checkout's benchmarks/ (smooth images), installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bf16_copy(model):
    """``model`` rebuilt under the ``mixed_bfloat16`` policy (its config
    leaves the dtype to the global policy), with its weights."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        copy = keras.saving.deserialize_keras_object(config)
    finally:
        keras.config.set_dtype_policy(previous)
    if copy.dtype_policy.name != "mixed_bfloat16":
        sys.exit(
            f"--model: its config fixes the dtype {copy.dtype_policy.name}"
        )
    copy.set_weights(model.get_weights())
    return copy


def _images(folder, limit, size):
    from benchmarks.cases import smooth_images
    from keras_segformer.decode import decode_image

    if folder is None:
        return smooth_images(limit, size, size)
    names = sorted(os.listdir(folder))[:limit]
    if not names:
        sys.exit(f"--images: no files in {folder}")
    try:
        arrays = [decode_image(os.path.join(folder, n)) for n in names]
    except ValueError as error:  # names the file
        sys.exit(f"--images: {error}")
    if len({a.shape for a in arrays}) > 1:
        sys.exit(f"--images: the images in {folder} differ in size")
    return np.stack(arrays).astype("float32")


def _logits(model, images, batch):
    # The task model's predict: predict_on_batch batch by batch.
    return model.predict(images, batch_size=batch, verbose=0).astype("float32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a .keras model")
    parser.add_argument(
        "--images",
        help="a folder of images of one size (default: smooth "
        "random images of --size)",
    )
    parser.add_argument("--limit", type=int, default=48, help="images used")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--min", type=float, default=0.995, help="agreement needed (0-1)"
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.model):
        sys.exit(f"--model: no file {args.model}")
    if args.images is not None and not os.path.isdir(args.images):
        sys.exit(f"--images: no folder {args.images}")

    import keras

    import keras_segformer  # noqa: F401 (registers the classes)
    from benchmarks.workers import agreement

    images = _images(args.images, args.limit, args.size)
    model = keras.models.load_model(args.model)
    reference = _logits(model, images, args.batch)
    logits = _logits(_bf16_copy(model), images, args.batch)
    figures = agreement(logits, reference)
    same = figures["argmax_agreement"]
    print(
        f"bf16 agreement {keras.backend.backend()}: {same:.2%} of "
        f"{reference[..., 0].size} positions ({len(images)} images "
        f"{images.shape[1]}x{images.shape[2]}), max |logit diff| "
        f"{figures['max_abs_logit_diff']:.4f} (logit std "
        f"{figures['reference_logit_std']:.3f})"
    )
    return 0 if same >= args.min else 1


if __name__ == "__main__":
    sys.exit(main())
