"""Read PyTorch-style state dicts into numpy without running pickled code."""

import json
import os

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt or has an unexpected layout."""


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
        with open(path) as f:
            try:
                index = json.load(f)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"Corrupt index {path!r}: {e}") from e
        folder = os.path.dirname(path)
        out = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            out.update(read_state_dict(os.path.join(folder, shard)))
        return out
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith((".bin", ".pth", ".pt", ".ckpt")):
        return _read_torch(path)
    raise CheckpointError(
        f"Unknown checkpoint format {path!r}: expected .safetensors, .bin, "
        ".pth, .pt or a sharded *.index.json."
    )
