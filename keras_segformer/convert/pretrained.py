"""``from_pretrained``: a Hub id or a transformers directory -> Keras model.

Resolves the argument to a local directory (``huggingface_hub`` downloads
a Hub id) and loads it with the one loader, ``load_checkpoint``.
"""

import numbers
import os

from keras_segformer.convert import hf
from keras_segformer.convert.hf import attach_preprocessing
from keras_segformer.convert.loader import load_checkpoint
from keras_segformer.convert.state_dict import CheckpointError

PREPROCESSOR_FILE = "preprocessor_config.json"


def _resolve_directory(path_or_id):
    """A local transformers directory for a folder or a Hub model id."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        raise ValueError(
            f"{path_or_id!r} is a file; from_pretrained expects a directory "
            "with config.json (use load_checkpoint for a weights file)."
        )
    if path_or_id.count("/") != 1 or path_or_id.startswith((".", "/")):
        raise FileNotFoundError(f"No such directory: {path_or_id!r}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(
            f"{path_or_id!r} is not a local directory; downloading it from "
            "the Hugging Face Hub needs `huggingface_hub`."
        ) from e
    try:
        return snapshot_download(
            path_or_id,
            allow_patterns=["config.json", "*.safetensors", "*.json", "*.bin"],
        )
    except Exception as e:
        raise OSError(
            f"Could not fetch {path_or_id!r} from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). Offline? Pass a local directory "
            "written by save_pretrained."
        ) from e


def _numbers(value, count=None):
    return (
        isinstance(value, (list, tuple))
        and (count is None or len(value) == count)
        and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool)
            for v in value
        )
    )


def read_preprocessor_config(path):
    """Read and check a transformers ``preprocessor_config.json``.

    Args:
        path: str. The file.

    Returns:
        dict: the file's content (a ``SegformerImageProcessor`` config),
        with ``size`` as ``{"height", "width"}`` (or absent).

    Raises:
        CheckpointError: not a JSON object, or a field of the wrong type,
            named with the file.
    """
    config = hf.read_json_object(
        path, "expected an object (SegformerImageProcessor fields)."
    )
    for name in ("image_mean", "image_std"):
        value = config.get(name)
        if value is not None and not _numbers(value, 3):
            raise CheckpointError(
                f"{path!r}: field {name!r} must be 3 numbers. "
                f"Received: {value!r}"
            )
    if config.get("image_std") and min(config["image_std"]) <= 0:
        raise CheckpointError(
            f"{path!r}: 'image_std' must be positive. "
            f"Received: {config['image_std']!r}"
        )
    factor = config.get("rescale_factor")
    if factor is not None and not _numbers([factor]):
        raise CheckpointError(
            f"{path!r}: field 'rescale_factor' must be a number. "
            f"Received: {factor!r}"
        )
    size = config.get("size")
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = {"height": int(size), "width": int(size)}
    if size is not None:
        ok = isinstance(size, dict) and all(
            isinstance(size.get(k), numbers.Integral) and size.get(k) > 0
            for k in ("height", "width")
        )
        if not ok:
            raise CheckpointError(
                f"{path!r}: field 'size' must be {{'height': int, 'width': "
                f"int}} (positive). Received: {size!r}"
            )
        config["size"] = {"height": size["height"], "width": size["width"]}
    return config


def _config_task(config):
    """The task a transformers config's ``architectures`` names, or None."""
    for arch in config.get("architectures") or []:
        if "SemanticSegmentation" in arch:
            return "segmentation"
        if "ImageClassification" in arch:
            return "classification"
        if arch == "SegformerModel":
            return "backbone"
    return None


def from_pretrained(
    path_or_id,
    *,
    task=None,
    num_classes=None,
    id2label=None,
    backbone_only=False,
    **kwargs,
):
    """Build the Keras model of a transformers SegFormer checkpoint.

    Reads ``config.json`` and ``model.safetensors`` (or
    ``pytorch_model.bin``, read with ``weights_only=True``) from a directory
    written by ``save_pretrained``, or a Hub model id when online, and
    loads it with ``load_checkpoint(directory, format="hf", ...)``. A
    ``preprocessor_config.json`` beside them is kept as
    ``model.preprocessor_config`` (normalization and size). A keras-hub
    preset folder (SegFormer or MiT backbone, ``config.json`` naming
    ``keras_hub>...``) is read with ``keras_hub.load_preset``: the model
    gets keras-hub's numerics (tanh GELU, block LayerNorm epsilon 1e-6).

    Args:
        path_or_id: str. Local directory or Hub id
            (e.g. ``"nvidia/segformer-b0-finetuned-ade-512-512"``).
        task: str or None. ``"segmentation"``, ``"classification"`` or
            ``"backbone"``; default the checkpoint's.
        num_classes: int or None. A different class count needs
            ``backbone_only=True`` (fresh head).
        id2label: dict or None. Class names (default: the config's).
        backbone_only: bool. Load only the encoder weights; without
            ``num_classes`` the new head has the checkpoint's classes.
        **kwargs: ``load_checkpoint`` arguments and backbone options:
            ``input_shape``, ``include_preprocessing``, ``dtype``,
            ``drop_path_rate``, ...

    Returns:
        ``SegFormer``, ``MiTClassifier`` or ``MiTBackbone`` with the weights.
        ``model.load_report`` (a ``LoadReport``) says what was loaded.

    Raises:
        FileNotFoundError: ``path_or_id`` is neither a directory nor a Hub
            id, or its directory has no ``config.json``.
        ValueError: ``path_or_id`` is a file (``load_checkpoint`` reads
            weights files).
        ImportError: a Hub id without ``huggingface_hub`` installed.
        OSError: the Hub id could not be fetched (offline, unknown id).
        CheckpointError: a missing, unexpected, mis-shaped or non-finite
            tensor, or a malformed ``config.json``; nothing is assigned.

    Example:
    >>> model = keras_segformer.from_pretrained(
    ...     "nvidia/segformer-b0-finetuned-ade-512-512"
    ... )
    >>> model = keras_segformer.from_pretrained("out/hf-b0")  # a folder
    >>> encoder = keras_segformer.from_pretrained(
    ...     "out/hf-b0", num_classes=5, backbone_only=True
    ... )
    """
    directory = _resolve_directory(os.fspath(path_or_id))
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No config.json in {directory!r}.")
    from keras_segformer.convert import keras_hub

    if keras_hub.is_preset(directory):
        return keras_hub.load_preset(
            directory,
            task=task,
            num_classes=num_classes,
            id2label=id2label,
            backbone_only=backbone_only,
            **kwargs,
        )
    # Read first: a corrupt config is named before the weights are read.
    config = hf.read_config(config_path)
    if backbone_only:
        task = task or _config_task(config)
        if num_classes is None and task != "backbone":
            _, head_kwargs = hf.config_to_kwargs(config)
            num_classes = head_kwargs["num_classes"]
            if id2label is None:
                id2label = head_kwargs["id2label"]
    preprocessor_path = os.path.join(directory, PREPROCESSOR_FILE)
    preprocessor = None
    if os.path.isfile(preprocessor_path):
        preprocessor = read_preprocessor_config(preprocessor_path)
    model = load_checkpoint(
        directory,
        format="hf",
        task=task,
        num_classes=num_classes,
        labels=id2label,
        backbone_only=backbone_only,
        **kwargs,
    )
    if preprocessor is not None:
        attach_preprocessing(model, preprocessor, preprocessor_path)
    return model
