"""Fine-tune SegFormer-B0 on your own image/mask folders.

Usage:
    python examples/finetune_on_folders.py IMAGES MASKS NUM_CLASSES [INIT]

IMAGES and MASKS are folders paired by file stem (masks: single-channel
class-id PNGs or palette PNGs, 255 = ignore). INIT may be an ImageNet MiT
checkpoint (mit_b0.pth), an NVlabs/mmseg checkpoint or a transformers
directory of a B0; its encoder is loaded into a fresh head.
"""

import sys

import keras_segformer
from keras_segformer.convert import load_weights
from keras_segformer.data import make_dataset
from keras_segformer.training import trainer


def main(images, masks, num_classes, init=None):
    num_classes = int(num_classes)
    train_ds = make_dataset(
        images,
        masks,
        batch_size=8,
        training=True,
        crop_size=512,
        num_classes=num_classes,
        repeat=True,
        validate=True,  # report bad files before training starts
    )
    model = keras_segformer.SegFormerB0(num_classes=num_classes)
    if init is not None:
        print(load_weights(model, init, backbone_only=True))
    trainer.fit(
        model,
        train_ds,
        out_dir="runs/finetune",
        epochs=20,
        steps_per_epoch=500,
    )
    print("saved runs/finetune/model.keras")


if __name__ == "__main__":
    main(*sys.argv[1:])
