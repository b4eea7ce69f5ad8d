"""Read PyTorch-style state dicts into numpy without running pickled code."""

import json
import os
import zipfile

import numpy as np

# Defined with the other error types; imported from here too.
from keras_segformer.errors import CheckpointError  # noqa: F401


def _to_numpy(tensor):
    if hasattr(tensor, "detach"):  # torch.Tensor
        tensor = tensor.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(tensor)


def _read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - safetensors is a dependency
        raise ImportError("Reading .safetensors needs `safetensors`.") from e
    try:
        return dict(load_file(path))
    except Exception as e:
        raise CheckpointError(
            f"Could not read safetensors file {path!r}: {e}"
        ) from e


def _read_torch(path):
    try:
        import torch
    except ImportError:
        # No PyTorch: the restricted numpy reader (same guarantee, no code
        # from the pickle ever runs).
        from keras_segformer.convert.pickle_reader import load_torch_file

        obj = load_torch_file(path)
    else:
        from keras_segformer.convert.pickle_reader import check_legacy_sizes

        check_legacy_sizes(path)
        with open(path, "rb") as f:
            head = f.read(1)
        if not zipfile.is_zipfile(path) and head != b"\x80":
            # torch.load would fail with e.g. "KeyError: 101".
            raise CheckpointError(
                f"{path!r} is not a PyTorch checkpoint (torch.save writes a "
                "zip archive or a pickle; this file is neither)."
            )
        try:
            # weights_only=True: tensors and plain containers only; a pickle
            # that carries code is rejected instead of executed.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"Could not read PyTorch checkpoint {path!r} safely "
                f"(weights_only=True): {type(e).__name__}: {e}"
            ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path!r} does not hold a state dict (found {type(obj).__name__})."
        )
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            continue  # e.g. metadata entries
        out[key] = _to_numpy(value)
    return out


def _shards(path):
    """The shard files a ``*.index.json`` names, each checked to be a
    weights file inside the index's folder."""
    with open(path, "rb") as f:
        try:
            index = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"Corrupt index {path!r}: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f'Index {path!r} has no "weight_map" object (tensor name -> '
            "shard file)."
        )
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    shards = {}
    for tensor, shard in weight_map.items():
        entry = f"Index {path!r}, entry {tensor!r}: {shard!r}"
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{entry} is not a file name.")
        if os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
            raise CheckpointError(
                f"{entry} points outside the index's folder; shards must be "
                "files next to the index."
            )
        full = os.path.realpath(os.path.join(folder, shard))
        if os.path.commonpath([full, folder]) != folder:
            raise CheckpointError(
                f"{entry} leads outside the index's folder (through a "
                "link); shards must be files next to the index."
            )
        if not shard.endswith((".safetensors", ".bin")):
            raise CheckpointError(
                f"{entry} is not a .safetensors or .bin shard."
            )
        if not os.path.isfile(full):
            raise CheckpointError(f"{entry}: no such shard file.")
        shards.setdefault(full, tensor)
    return sorted(shards)


def read_state_dict(path):
    """Read a checkpoint file into ``{name: numpy array}``.

    Supports ``.safetensors`` (no torch needed), ``.bin``/``.pth``/``.pt``
    (``torch.load(weights_only=True)``, never arbitrary unpickling; without
    torch, ``pickle_reader.load_torch_file``, which allows tensors and
    plain containers only) and a sharded ``*.index.json``.

    Args:
        path: str. The file.

    Returns:
        dict mapping tensor names to numpy arrays.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}")
    if path.endswith(".index.json"):
        out = {}
        for shard in _shards(path):
            out.update(read_state_dict(shard))
        return out
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith((".bin", ".pth", ".pt", ".ckpt")):
        return _read_torch(path)
    raise CheckpointError(
        f"Unknown checkpoint format {path!r}: expected .safetensors, .bin, "
        ".pth, .pt or a sharded *.index.json."
    )
