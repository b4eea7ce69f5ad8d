"""Check this project against transformers on the machine at hand.

Loads a transformers SegFormer checkpoint (a ``save_pretrained``
directory, or a random-init model of ``--variant`` with perturbed weights),
runs transformers in float32 on the CPU (the reference) and this project on
the current Keras backend and its default device (a GPU if the backend
sees one), on the same smooth random images, and prints the largest
absolute logit difference. Exits 1 if it is above ``--tol``.

    KERAS_BACKEND=jax python tools/parity_check.py --variant b0
    KERAS_BACKEND=torch python tools/parity_check.py --checkpoint ./my-ckpt

On a GPU the difference depends on the library's float32 precision
settings (TF32): run it once as is and once with
``NVIDIA_TF32_OVERRIDE=0`` (torch, TensorFlow) or
``JAX_DEFAULT_MATMUL_PRECISION=highest`` (JAX) to see both.
"""

import argparse
import os
import sys
import tempfile

# The checkout's benchmarks/ (image maker, configs), installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.cases import (  # noqa: E402
    hf_segformer_config,
    model_config,
    smooth_images,
)
from benchmarks.probes import accelerator  # noqa: E402


def _random_checkpoint(variant, num_classes, path, seed):
    import torch
    from transformers import SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = hf_segformer_config(model_config(variant), num_classes)
    model = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        # No weight keeps its (often trivial) initial value.
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand_like(buffer))
    model.save_pretrained(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="save_pretrained directory")
    parser.add_argument(
        "--variant", default="b0", help="random model if no --checkpoint"
    )
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--size", default="300x417", help="HxW")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))

    import keras
    import numpy as np
    import torch
    from transformers import SegformerForSemanticSegmentation

    import keras_segformer

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint
        if path is None:
            path = tmp
            _random_checkpoint(args.variant, args.classes, tmp, args.seed)
        reference = SegformerForSemanticSegmentation.from_pretrained(path)
        reference = reference.float().eval()
        model = keras_segformer.from_pretrained(path)

    images = smooth_images(args.batch, height, width, args.seed)
    with torch.inference_mode():
        expected = reference(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        ).logits.numpy()
    expected = expected.transpose(0, 2, 3, 1)
    got = np.asarray(model.predict_on_batch(images))
    backend = keras.backend.backend()
    device = accelerator(backend) or "CPU"
    diff = float(np.abs(got.astype(np.float64) - expected).max())
    same = float((got.argmax(-1) == expected.argmax(-1)).mean())
    ok = diff <= args.tol
    print(
        f"parity {backend} on {device}: logits {tuple(got.shape)}, max |diff| "
        f"{diff:.3g} vs transformers (float32, CPU), argmax equal "
        f"{100 * same:.3f}%, tolerance {args.tol:g}: {'ok' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
