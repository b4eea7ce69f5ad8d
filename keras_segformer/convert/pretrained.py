"""``from_pretrained``: a Hub id or a transformers directory -> Keras model.

Resolves the argument to a local directory (``huggingface_hub`` downloads
a Hub id) and loads it with the one loader, ``load_checkpoint``.
"""

import os

from keras_segformer.convert import hf
from keras_segformer.convert.loader import load_checkpoint


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
    loads it with ``load_checkpoint(directory, format="hf", ...)``.

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

    Example:
    >>> model = keras_segformer.from_pretrained("out/hf-b0")
    """
    directory = _resolve_directory(os.fspath(path_or_id))
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No config.json in {directory!r}.")
    # Read first: a corrupt config is named before the weights are read.
    config = hf.read_config(config_path)
    if backbone_only:
        task = task or _config_task(config)
        if num_classes is None and task != "backbone":
            _, head_kwargs = hf.config_to_kwargs(config)
            num_classes = head_kwargs["num_classes"]
            if id2label is None:
                id2label = head_kwargs["id2label"]
    return load_checkpoint(
        directory,
        format="hf",
        task=task,
        num_classes=num_classes,
        labels=id2label,
        backbone_only=backbone_only,
        **kwargs,
    )
