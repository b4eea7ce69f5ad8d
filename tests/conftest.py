"""Shared test fixtures. Run the suite once per backend:
``KERAS_BACKEND=jax pytest`` (see the Makefile's ``test`` target)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

# Tiny but complete: 4 stages, every stage with spatial reduction except the
# last, heads > 1 so head splitting is exercised.
TINY = {
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [8, 16, 24, 32],
    "num_heads": [1, 2, 3, 4],
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "mlp_ratios": [4, 4, 4, 4],
}
TINY_DECODER = 16


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (set KERAS_BACKEND to change)"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


def tiny_segformer(num_classes=5, **kwargs):
    import keras_segformer

    return keras_segformer.build_segformer(
        num_classes, decoder_hidden_size=TINY_DECODER, **TINY, **kwargs
    )
