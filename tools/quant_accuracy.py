"""Accuracy of quantized exports against float32 on a labelled folder.

Exports a trained model as float32, float16 and int8 LiteRT and float32
and int8 ONNX (raw uint8 pixels in, mask out, fixed input size), the int8
ones calibrated on training images, and prints for each artifact its
file size, the mIoU on the held-out images and the share of pixels whose
class equals the float32 artifact's of the same format (JSON).

    KERAS_BACKEND=tensorflow python tools/quant_accuracy.py \\
        model.keras data/ --out /tmp/quant_eval

``data/`` holds ``images/{train,val}`` and ``masks/{train,val}`` (PNG
masks of class indices, 255 ignored), as ``make demo`` writes.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

ARTIFACTS = {
    "litert_float32": ("litert", None),
    "litert_float16": ("litert", "float16"),
    "litert_int8": ("litert", "int8"),
    "onnx_float32": ("onnx", None),
    "onnx_int8": ("onnx", "int8"),
}
IGNORE = 255


def _files(folder):
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if not name.startswith(".")
    )


def mean_iou(confusion):
    """mIoU over the classes present in labels or predictions."""
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def evaluate(model_path, data, out, num_calibration=64, size=None):
    """Export ``model_path`` five ways and measure each on ``data``'s val
    split; returns the results dict."""
    import keras

    import keras_segformer  # noqa: F401 (registers the layers)
    from keras_segformer.export import ExportedModel, export_many

    model = keras.saving.load_model(model_path)
    val_images = _files(os.path.join(data, "images", "val"))
    val_masks = _files(os.path.join(data, "masks", "val"))
    images = np.stack(
        [np.asarray(Image.open(f).convert("RGB")) for f in val_images]
    )
    labels = np.stack([np.asarray(Image.open(f)) for f in val_masks])
    size = size or images.shape[1:3]
    train = _files(os.path.join(data, "images", "train"))[:num_calibration]
    os.makedirs(out, exist_ok=True)
    specs = []
    for name, (fmt, quantization) in ARTIFACTS.items():
        ext = "tflite" if fmt == "litert" else "onnx"
        spec = {
            "path": os.path.join(out, f"{name}.{ext}"),
            "format": fmt,
            "include_preprocessing": True,
            "include_postprocessing": True,
            "input_size": tuple(size),
            "quantization": quantization,
        }
        if quantization == "int8":
            spec["representative_images"] = train
        specs.append(spec)
    paths = export_many(model, specs)
    num_classes = model.output.shape[-1]
    masks = {}
    results = {}
    for name, path in zip(ARTIFACTS, paths):
        runner = ExportedModel(path)
        pred = np.concatenate(
            [runner(images[i : i + 1]) for i in range(len(images))]
        )
        masks[name] = pred
        valid = labels != IGNORE
        confusion = np.bincount(
            labels[valid].astype(np.int64) * num_classes + pred[valid],
            minlength=num_classes**2,
        ).reshape(num_classes, num_classes)
        reference = masks[f"{ARTIFACTS[name][0]}_float32"]
        results[name] = {
            "mIoU": round(100 * mean_iou(confusion), 2),
            "agreement_with_float32": round(
                float((pred == reference).mean()), 5
            ),
            "size_bytes": os.path.getsize(path),
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="trained .keras file")
    parser.add_argument("data", help="folder with images/ and masks/")
    parser.add_argument("--out", default="quant_eval", help="artifacts folder")
    parser.add_argument(
        "--calibration", type=int, default=64, help="training images used"
    )
    args = parser.parse_args()
    results = evaluate(args.model, args.data, args.out, args.calibration)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
