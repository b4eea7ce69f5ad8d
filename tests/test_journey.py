"""A new user's journey in fresh processes, as the README writes it:
``keras-segformer train`` on one backend, then the trained model loaded,
used and exported from the others (a test inside one process could hide a
class that only an earlier import registered).

Every step runs in its own process with its backend set, so the journey
does not depend on the backend of the test run: it runs once (listed as
backend-independent in tests/conftest.py) and still passes through all
three backends: trained on PyTorch, loaded and exported on JAX,
predicted with the CLI on TensorFlow."""

import os
import subprocess
import sys

import numpy as np

from keras_segformer.data import synthetic
from keras_segformer.export import ExportedModel

NUM_CLASSES = 3
# Where each step runs.
TRAIN, USE, PREDICT = "torch", "jax", "tensorflow"

_USE_ELSEWHERE = """
import sys
import keras
import numpy as np
import keras_segformer

model = keras.models.load_model(sys.argv[1])
assert type(model.optimizer).__name__ == "GroupedAdamW"
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x, verbose=0))
"""


def _run(args, backend, timeout=900):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (args, result.stderr[-3000:])
    return result


def _cli(*args, backend):
    return _run([sys.executable, "-m", "keras_segformer", *args], backend)


def test_train_then_predict_and_export_on_other_backends(tmp_path):
    files = synthetic.generate(
        tmp_path / "data", 4, 2, size=(61, 83), num_classes=NUM_CLASSES
    )
    train, val = files["train"], files["val"]
    run = tmp_path / "run"
    _cli(
        "train",
        "--variant",
        "b0",
        "--num-classes",
        str(NUM_CLASSES),
        "--images",
        os.path.dirname(train.images[0]),
        "--masks",
        os.path.dirname(train.masks[0]),
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--base-size",
        "128",
        "64",
        "--out",
        str(run),
        backend=TRAIN,
    )
    model_file = run / "model.keras"
    assert model_file.is_file()

    x = np.random.default_rng(0).standard_normal((2, 61, 83, 3), "float32")
    np.save(tmp_path / "x.npy", x)
    _run(
        [
            sys.executable,
            "-c",
            _USE_ELSEWHERE,
            str(model_file),
            str(tmp_path / "x.npy"),
            str(tmp_path / "logits.npy"),
        ],
        USE,
    )
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (2, 16, 21, NUM_CLASSES)

    preds = tmp_path / "preds"
    _cli(
        "predict",
        "--model",
        str(model_file),
        "--input",
        os.path.dirname(val.images[0]),
        "--output",
        str(preds),
        backend=PREDICT,
    )
    written = sorted(os.listdir(preds))
    stems = [os.path.splitext(os.path.basename(p))[0] for p in val.images]
    for stem in stems:
        assert any(name.startswith(stem) for name in written), written

    onnx_file = tmp_path / "model.onnx"
    _cli(
        "export",
        "--model",
        str(model_file),
        "--format",
        "onnx",
        "--out",
        str(onnx_file),
        backend=USE,
    )
    exported = ExportedModel(str(onnx_file))(x)
    np.testing.assert_allclose(exported, logits, atol=1e-4)
