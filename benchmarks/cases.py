"""What is benchmarked: cases (table rows), columns (implementations),
model configs and the inputs every column gets."""

import dataclasses
import importlib.util
import os
import re

NUM_CLASSES = 150
BACKENDS = ("tensorflow", "jax", "torch")
DEVICES = ("cpu", "gpu")
LEARNING_RATE = 6e-5
DROP_PATH_RATE = 0.1
SEED = 0

# The per-call overhead case (issue 17): at 64x64 the arithmetic is
# negligible, so it times the framework around the kernels.
OVERHEAD_CASE = "tiny-64x64-b1"
DEFAULT_CASES = (
    OVERHEAD_CASE,
    "b0-512x512-b1",
    "b0-512x512-b8",
    "b2-512x512-b1",
    "b2-512x512-b8",
    "b0-1024x2048-b1",
)
TRAIN_SIZE, TRAIN_BATCH = 512, 2
QUICK_CASES = ("smoke-64x64-b1", "train-smoke-64x64-b1", OVERHEAD_CASE)
# Deployed artifacts (benchmarks/deploy.py): column -> (whose model,
# export format, quantization). Ours: keras_segformer.export.export_model
# on TensorFlow; transformers: torch.onnx.export of its PyTorch model.
# Inference cases only.
DEPLOYED = {
    "ours-onnx": ("ours", "onnx", None),
    "ours-onnx-int8": ("ours", "onnx", "int8"),
    "ours-litert": ("ours", "litert", None),
    "ours-litert-float16": ("ours", "litert", "float16"),
    "ours-litert-int8": ("ours", "litert", "int8"),
    "transformers-onnx": ("transformers", "onnx", None),
}
# ``--impls deployed``: every column of DEPLOYED.
DEPLOYED_GROUP = "deployed"
DEFAULT_IMPLS = (
    "ours-tensorflow",
    "ours-jax",
    "ours-torch",
    "transformers",
    "keras-hub",
    "ours-bf16",
    "transformers-bf16",
    *DEPLOYED,
)

_STAGES = {
    "sr_ratios": (8, 4, 2, 1),
    "patch_sizes": (7, 3, 3, 3),
    "strides": (4, 2, 2, 2),
    "mlp_ratios": (4, 4, 4, 4),
}
# Variants that are not in keras_segformer/configs.py.
SMALL_CONFIGS = {
    # The overhead model of issue 17 (heads as B0-B5).
    "tiny": {
        "depths": (1, 1, 1, 1),
        "hidden_sizes": (16, 32, 40, 64),
        "num_heads": (1, 2, 5, 8),
        **_STAGES,
        "decoder_hidden_size": 32,
    },
    # ``--quick``: the tiny config of the test suite (tests/conftest.py).
    "smoke": {
        "depths": (1, 1, 1, 1),
        "hidden_sizes": (8, 16, 24, 32),
        "num_heads": (1, 2, 3, 4),
        **_STAGES,
        "decoder_hidden_size": 16,
    },
}

CASE_PATTERN = re.compile(
    r"^(?P<train>train-)?(?P<variant>b[0-5]|tiny|smoke)-(?P<height>\d+)x"
    r"(?P<width>\d+)-b(?P<batch>\d+)$"
)
CASE_FORM = "'[train-]<b0..b5|tiny|smoke>-<H>x<W>-b<batch>'"


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row: a model variant, an input size and a mode."""

    name: str
    variant: str
    height: int
    width: int
    batch: int
    train: bool

    @property
    def shape_key(self):
        """Key of the FLOP count (per image, forward): variant and size."""
        return f"{self.variant}-{self.height}x{self.width}"

    @property
    def overhead(self):
        """An inference case of the ``tiny`` model: the headline is
        ``predict_on_batch`` and ``model(x)`` is timed too."""
        return self.variant == "tiny" and not self.train


def parse_case(name):
    """``[train-]<variant>-<H>x<W>-b<batch>`` -> ``Case``."""
    match = CASE_PATTERN.match(name.strip())
    if not match:
        raise ValueError(
            f"--cases: {name!r} is not a case name; expected {CASE_FORM}, "
            "e.g. 'b0-512x512-b1' or 'train-b0-512x512-b2'."
        )
    height, width, batch = (int(match[k]) for k in ("height", "width", "batch"))
    if min(height, width, batch) <= 0:
        raise ValueError(f"--cases: sizes must be positive in {name!r}.")
    return Case(
        name=name.strip(),
        variant=match["variant"],
        height=height,
        width=width,
        batch=batch,
        train=bool(match["train"]),
    )


def default_case_names(train_variants=("b0",), quick=False):
    """Case names run when ``--cases`` is not given."""
    if quick:
        return list(QUICK_CASES)
    train = [
        f"train-{v}-{TRAIN_SIZE}x{TRAIN_SIZE}-b{TRAIN_BATCH}"
        for v in train_variants
    ]
    return list(DEFAULT_CASES) + train


@dataclasses.dataclass
class Column:
    """One implementation (table column).

    ``backend`` None means "choose": keras-hub and ``ours-bf16`` take
    their fastest backend on the first case.
    """

    spec: str
    kind: str  # "ours", "transformers", "keras-hub" or "deployed"
    backend: str | None
    bf16: bool = False
    # Deployed columns: (whose model, format, quantization) of DEPLOYED.
    artifact: tuple | None = None

    @property
    def name(self):
        if self.kind == "deployed":
            return self.spec
        backend = self.backend or "auto"
        if self.kind == "transformers":
            return "transformers-bf16" if self.bf16 else "transformers"
        if self.kind == "keras-hub":
            return f"keras-hub-{backend}"
        if self.bf16:
            # Not chosen yet (or never: no bf16 units): its --impls name.
            return f"ours-{self.backend}-bf16" if self.backend else "ours-bf16"
        return f"ours-{backend}"


def column_names():
    """Every accepted ``--impls`` entry."""
    return (
        [f"ours-{b}" for b in BACKENDS]
        + ["transformers", "transformers-bf16", "keras-hub"]
        + [f"keras-hub-{b}" for b in BACKENDS]
        + ["ours-bf16"]
        + [f"ours-{b}-bf16" for b in BACKENDS]
        + list(DEPLOYED)
        + [DEPLOYED_GROUP]
    )


def expand_impls(specs):
    """``--impls`` entries with ``deployed`` replaced by its columns."""
    out = []
    for spec in specs:
        out += list(DEPLOYED) if spec == DEPLOYED_GROUP else [spec]
    return out


def parse_column(spec, hub_backend=None, bf16_backend=None):
    """An ``--impls`` entry -> ``Column``."""
    spec = spec.strip()
    if spec in DEPLOYED:
        source = DEPLOYED[spec][0]
        # The backend of the export worker.
        backend = "torch" if source == "transformers" else "tensorflow"
        return Column(spec, "deployed", backend, artifact=DEPLOYED[spec])
    if spec in ("transformers", "transformers-bf16"):
        return Column(spec, "transformers", "torch", bf16=spec.endswith("16"))
    if spec == "keras-hub":
        return Column(spec, "keras-hub", hub_backend)
    if spec == "ours-bf16":
        return Column(spec, "ours", bf16_backend, bf16=True)
    for backend in BACKENDS:
        if spec == f"ours-{backend}":
            return Column(spec, "ours", backend)
        if spec == f"ours-{backend}-bf16":
            return Column(spec, "ours", backend, bf16=True)
        if spec == f"keras-hub-{backend}":
            return Column(spec, "keras-hub", backend)
    raise ValueError(
        f"--impls: unknown {spec!r}; expected one of {column_names()}."
    )


def split(text):
    """A comma-separated option -> its non-empty, stripped entries."""
    if not text:
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def _lists(config):
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in config.items()
    }


def model_config(variant):
    """Every architecture field of a variant (JSON-ready lists)."""
    if variant in SMALL_CONFIGS:
        return _lists(SMALL_CONFIGS[variant])
    # configs.py by path: importing keras_segformer would load Keras (and
    # its default backend) into the parent process, which runs no model.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "keras_segformer", "configs.py")
    if not os.path.isfile(path):
        raise ValueError(
            f"variant {variant!r}: expected the variant table at {path} "
            "(a checkout of keras-segformer); it is not there."
        )
    spec = importlib.util.spec_from_file_location("_segformer_configs", path)
    configs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(configs)
    return _lists(configs.variant_config(variant))


def smooth_images(batch, height, width, seed=SEED, cell=32):
    """Low-frequency random images, float32 NHWC, about unit scale.

    Coarse Gaussian noise on a grid of one point per ``cell`` pixels,
    bilinearly upsampled: like a natural image, neighbouring pixels agree,
    so argmax maps of two precisions can be compared meaningfully.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    grid_h = max(2, -(-height // cell) + 1)
    grid_w = max(2, -(-width // cell) + 1)
    coarse = rng.standard_normal((batch, grid_h, grid_w, 3))

    def lerp(a, axis, size, grid):
        pos = np.linspace(0.0, grid - 1.0, size)
        lo = np.minimum(np.floor(pos).astype(int), grid - 2)
        frac = pos - lo
        shape = [1] * a.ndim
        shape[axis] = size
        frac = frac.reshape(shape)
        return np.take(a, lo, axis) * (1 - frac) + np.take(a, lo + 1, axis) * (
            frac
        )

    images = lerp(lerp(coarse, 1, height, grid_h), 2, width, grid_w)
    return images.astype(np.float32)


def random_labels(batch, height, width, num_classes, seed=SEED):
    """Integer labels ``(B, H, W)`` in ``[0, num_classes)``, int32."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, num_classes, (batch, height, width), np.int32)


def hf_segformer_config(config, num_classes, **kwargs):
    """transformers SegformerConfig of an architecture dict (model_config)."""
    from transformers import SegformerConfig

    return SegformerConfig(
        num_labels=num_classes,
        num_encoder_blocks=len(config["depths"]),
        depths=config["depths"],
        hidden_sizes=config["hidden_sizes"],
        num_attention_heads=config["num_heads"],
        sr_ratios=config["sr_ratios"],
        patch_sizes=config["patch_sizes"],
        strides=config["strides"],
        mlp_ratios=config["mlp_ratios"],
        decoder_hidden_size=config["decoder_hidden_size"],
        drop_path_rate=DROP_PATH_RATE,
        **kwargs,
    )
