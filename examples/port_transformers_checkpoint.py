"""Port a transformers SegFormer checkpoint and check the numbers.

Usage:
    python examples/port_transformers_checkpoint.py HF_DIR_OR_HUB_ID [IMAGE]

Loads the checkpoint with keras_segformer.from_pretrained, runs the same
image through transformers (if installed) and Keras, prints the largest
logit difference and writes the Keras prediction as mask + overlay PNGs.
"""

import sys

import keras
import numpy as np

import keras_segformer
from keras_segformer.inference import Segmenter, preprocess, save_prediction


def main(source, image=None):
    model = keras_segformer.from_pretrained(source)
    print(model.load_report)
    if image is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (300, 417, 3), dtype=np.uint8)
    pixel_values = preprocess([image], size=(512, 512))
    logits = keras.ops.convert_to_numpy(model.predict_on_batch(pixel_values))
    try:
        import torch
        from transformers import SegformerForSemanticSegmentation
    except ImportError:
        print("transformers not installed: skipping the comparison")
    else:
        reference = SegformerForSemanticSegmentation.from_pretrained(source)
        with torch.no_grad():
            ref = reference(
                torch.from_numpy(pixel_values.transpose(0, 3, 1, 2))
            ).logits.numpy()
        diff = np.abs(logits - ref.transpose(0, 2, 3, 1)).max()
        print(f"max abs logit difference vs transformers: {diff:.2e}")
    mask = Segmenter(model, size=(512, 512)).predict_mask(image)
    save_prediction(
        image, mask, "ported", "example", class_names=model.id2label
    )
    print("wrote ported/example_mask.png and ported/example_overlay.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
