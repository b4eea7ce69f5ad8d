"""Weight initialization: transformers' SegFormer scheme, drawn on the host.

transformers initializes every ``nn.Linear`` and ``nn.Conv2d`` weight from
``N(0, initializer_range=0.02)``, biases and norms with zeros and ones
(``PreTrainedModel._init_weights``); this project does the same for its
Dense, Conv2D and DepthwiseConv2D kernels.

The numbers come from numpy rather than a backend random op: on JAX every
new weight shape compiles its own random program (0.3-1.7 s each on
XLA:CPU), which made building SegFormer-B0 take 15 s there.
"""

import keras
import numpy as np
from keras import ops

INITIALIZER_RANGE = 0.02


@keras.saving.register_keras_serializable(package="keras_segformer")
class HostNormal(keras.initializers.Initializer):
    """``N(mean, stddev)`` values drawn with numpy, then made a tensor.

    With ``seed=None`` numbers come from numpy's global generator, which
    ``keras.utils.set_random_seed`` seeds: the same seed builds the same
    model. With an int seed every call returns the same values (as Keras'
    seeded initializers do).

    Args:
        mean: float. Mean of the distribution.
        stddev: float. Standard deviation.
        seed: int or None.
    """

    def __init__(self, mean=0.0, stddev=INITIALIZER_RANGE, seed=None):
        self.mean = float(mean)
        self.stddev = float(stddev)
        self.seed = seed

    def __call__(self, shape, dtype=None):
        if self.seed is None:
            values = np.random.normal(self.mean, self.stddev, size=shape)
        else:
            rng = np.random.default_rng(self.seed)
            values = rng.normal(self.mean, self.stddev, size=shape)
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return ops.convert_to_tensor(values.astype(np.float32), dtype=dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


def kernel_init():
    """The initializer of one Dense / Conv kernel (a fresh instance)."""
    return HostNormal()
