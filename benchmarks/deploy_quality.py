"""Accuracy of the deployed artifacts on a trained model and its data
(``--quant-model`` / ``--quant-data``): mIoU of the float32 Keras model
and of each of our artifacts on the held-out images, and how many pixels'
argmax the artifact changes. One worker per deployed column (TensorFlow
backend): export, then score; nothing is timed.

The data folder is ``images/`` and ``masks/`` paired by file name (as
``make demo`` writes it); with ``train/`` and ``val/`` subfolders, the
artifact is scored on ``val/`` and int8 is calibrated on the first
``CALIBRATION_FILES`` images of ``train/`` (else of the scored images).
"""

import os
import time
import warnings

CALIBRATION_FILES = 8
BATCH_SIZE = 8


def data_split(data):
    """``(scored images, masks, calibration image files)`` of a folder."""
    images, masks = (os.path.join(data, k) for k in ("images", "masks"))
    for folder in (images, masks):
        if not os.path.isdir(folder):
            raise ValueError(
                f"--quant-data: expected the folder {folder!r} (images/ "
                "and masks/ paired by file name, as `make demo` writes)."
            )
    calibration = images
    if os.path.isdir(os.path.join(images, "val")):
        images, masks = (os.path.join(k, "val") for k in (images, masks))
        train = os.path.join(calibration, "train")
        calibration = train if os.path.isdir(train) else images
    files = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(calibration)
        for name in names
        if name.lower().endswith((".png", ".jpg", ".jpeg"))
    )
    return images, masks, files[:CALIBRATION_FILES]


def _batches(images, masks, num_classes):
    from keras_segformer.data import make_dataset

    dataset = make_dataset(
        images,
        masks,
        batch_size=BATCH_SIZE,
        training=False,
        num_classes=num_classes,
    )
    return list(dataset.as_numpy_iterator())


def _scores(confusion):
    import keras

    from keras_segformer.training.metrics import segmentation_scores

    matrix = keras.ops.convert_to_numpy(confusion.result())
    return segmentation_scores(matrix)["mIoU"]


def quality_job(spec):
    """Export the trained model as the column says, score both on the
    data."""
    import numpy as np

    from benchmarks.deploy import Unavailable
    from keras_segformer.export import ExportedModel, export_model, load_model
    from keras_segformer.training.metrics import ConfusionMatrix

    _, format, quantization = spec["artifact"]
    model = load_model(spec["quant_model"])
    num_classes = max(int(model.num_classes), 2)
    images, masks, calibration = data_split(spec["quant_data"])
    batches = _batches(images, masks, num_classes)
    size = tuple(batches[0][0].shape[1:3])
    options = {"quantization": quantization}
    if format == "litert":
        options["input_size"] = size
    if quantization == "int8":
        options["representative_images"] = calibration
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(model, spec["artifact_path"], format, **options)
    except (ValueError, NotImplementedError) as e:
        raise Unavailable(str(e)) from e
    export_s = time.perf_counter() - start
    run = ExportedModel(spec["artifact_path"])
    keras_cm, artifact_cm = (ConfusionMatrix(num_classes) for _ in "12")
    same = total = 0
    for x, labels in batches:
        reference = np.asarray(model.predict_on_batch(x))
        logits = np.asarray(run(x))
        keras_cm.update_state(labels, reference)
        artifact_cm.update_state(labels, logits)
        same += int((logits.argmax(-1) == reference.argmax(-1)).sum())
        total += reference[..., 0].size
    return {
        "images": sum(len(x) for x, _ in batches),
        "input_size": list(size),
        "miou_float32": _scores(keras_cm),
        "miou": _scores(artifact_cm),
        "argmax_agreement": same / total,
        "export_s": export_s,
        "calibration": (
            f"{len(calibration)} images of {os.path.dirname(calibration[0])}"
            if quantization == "int8" and calibration
            else None
        ),
    }
