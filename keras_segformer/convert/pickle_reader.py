"""Read ``torch.save`` files with numpy only, never running pickled code.

For users without PyTorch (TensorFlow- or JAX-only installs). The pickle is
read by an ``Unpickler`` whose ``find_class`` answers only a short allow
list: the tensor rebuild functions (``torch._utils._rebuild_tensor_v2``,
``_rebuild_parameter``), ``collections.OrderedDict`` and the typed storage
classes (``torch.FloatStorage`` ...). Those names resolve to functions of
this module, not to torch's. Any other global (``os.system``,
``builtins.eval``, a model class ...) stops the read with a
``CheckpointError``. Tensor bytes come from the archive's ``data/<key>``
entries (zip format, torch >= 1.6) or from after the pickle (the legacy
format), are bounds-checked and copied into numpy arrays.
"""

import collections
import contextlib
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from keras_segformer.errors import CheckpointError

# torch typed storage class -> numpy dtype ("bfloat16" is widened later).
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Largest rank a tensor may claim (torch allows 64).
_MAX_RANK = 64


class _StorageType:
    """Stands for ``torch.<X>Storage``: carries the dtype, nothing else."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage named by the pickle; its bytes are read on demand."""

    __slots__ = ("key", "dtype", "numel", "view")

    def __init__(self, key, dtype, numel, view=None):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.view = view  # (offset, size) in elements, legacy views only


class _LazyTensor:
    """Placeholder returned while unpickling; filled in after the load."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_RANK:
        raise CheckpointError(f"Bad tensor {what} in the pickle: {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"Bad tensor {what} in the pickle: {value!r}")
        out.append(v)
    return tuple(out)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *args):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the
    tensor's numbers are (the trailing requires_grad, hooks and metadata
    arguments are ignored)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(
            "The pickle rebuilds a tensor from something that is not a "
            f"storage ({type(storage).__name__})."
        )
    if isinstance(storage_offset, bool) or not isinstance(storage_offset, int):
        raise CheckpointError(f"Bad tensor offset {storage_offset!r}.")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(
            f"Tensor size {size} and stride {stride} differ in rank."
        )
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Stand-in for ``torch._utils._rebuild_parameter``: the data only."""
    if not isinstance(data, _LazyTensor):
        raise CheckpointError("A parameter in the pickle wraps no tensor.")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
for _name in STORAGE_DTYPES:
    _ALLOWED[("torch", _name)] = _StorageType(_name)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a tensor state dict needs.

    Args:
        file: binary file object positioned at the pickle.
        storage_key: callable ``(key, dtype, numel, view) -> _Storage``
            called for every persistent storage id.
    """

    def __init__(self, file, storage_key):
        super().__init__(file)
        self._storage_key = storage_key

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"Refusing to load the global {module}.{name}: the "
                "checkpoint's pickle refers to code, not only to tensors. "
                "Only state dicts of tensors are read (as "
                "torch.load(weights_only=True) does)."
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"Unknown persistent id {pid!r}.")
        kind = pid[0]
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if kind != "storage" or len(pid) not in (5, 6):
            raise CheckpointError(f"Unknown persistent id {pid[:1]!r}.")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(
                f"Unknown storage type {storage_type!r} in the pickle."
            )
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"Bad storage size {numel!r}.")
        if view is not None:
            _view_key, offset, view_size = view
            view = (int(offset), int(view_size))
        return self._storage_key(str(key), storage_type.dtype, numel, view)


def _decode(buffer, dtype, numel, byteorder, what):
    np_dtype = np.dtype("uint16" if dtype == "bfloat16" else dtype)
    if byteorder == "big":
        np_dtype = np_dtype.newbyteorder(">")
    expected = numel * np_dtype.itemsize
    if len(buffer) < expected:
        raise CheckpointError(
            f"Storage {what} holds {len(buffer)} bytes, {expected} expected: "
            "the file is truncated or corrupt."
        )
    array = np.frombuffer(buffer, np_dtype, count=numel)
    if dtype == "bfloat16":  # the high half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _itemsize(dtype):
    return np.dtype("uint16" if dtype == "bfloat16" else dtype).itemsize


def _children(obj, name):
    """``(key, value, name)`` of each item of a dict, list or tuple."""
    if isinstance(obj, dict):
        return [
            (k, v, f"{name}.{k}" if name else str(k)) for k, v in obj.items()
        ]
    return [(i, v, f"{name}[{i}]") for i, v in enumerate(obj)]


def tensor_names(obj, depth=0, name=""):
    """``{storage key: name of the first tensor using it}`` in ``obj``."""
    names = {}
    if depth > 100:
        return names
    if isinstance(obj, _LazyTensor):
        names[obj.storage.key] = name or "<tensor>"
    elif isinstance(obj, (dict, list, tuple)):
        for _, value, inner in _children(obj, name):
            for k, v in tensor_names(value, depth + 1, inner).items():
                names.setdefault(k, v)
    return names


class StorageSizeError(CheckpointError):
    """A storage claims more bytes than the file holds."""


def _check_claim(path, key, dtype, numel, available, names):
    """Refuse a storage larger than the bytes left for it, before any
    allocation (a corrupt size would otherwise ask for terabytes)."""
    claimed = numel * _itemsize(dtype)
    if claimed > available:
        tensor = names.get(key, "?")
        raise StorageSizeError(
            f"Checkpoint {path!r}: tensor {tensor!r} (storage {key}) claims "
            f"{numel} {dtype} elements ({claimed} bytes) but the file holds "
            f"only {available} bytes for it: the file is truncated or corrupt."
        )


def _materialize(tensor, storages, name="<tensor>"):
    storage = tensor.storage
    flat = storages[storage.key]
    if storage.view is not None:
        offset, size = storage.view
        if offset + size > flat.size:
            raise CheckpointError(f"Storage view {storage.key} out of range.")
        flat = flat[offset : offset + size]
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if 0 in size:
        return np.zeros(size, flat.dtype)
    if int(np.prod(size, dtype=np.float64)) > flat.size:
        # Only zero or overlapping strides fit more elements than their
        # storage; a state dict has none, and the copy could be huge.
        raise CheckpointError(
            f"Tensor {name!r} of size {size} (stride {stride}) has more "
            f"elements than its storage of {flat.size}: corrupt checkpoint."
        )
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= flat.size:
        raise CheckpointError(
            f"Tensor of size {size} (offset {offset}, stride {stride}) "
            f"reads past its storage of {flat.size} elements."
        )
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # own, contiguous copy


def _resolve(obj, storages, depth=0, name=""):
    """Replace every ``_LazyTensor`` inside containers by a numpy array."""
    if depth > 100:
        raise CheckpointError("The pickle nests containers too deeply.")
    if isinstance(obj, _LazyTensor):
        return _materialize(obj, storages, name or "<tensor>")
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for key, value, inner in _children(obj, name):
            out[key] = _resolve(value, storages, depth + 1, inner)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(
            _resolve(v, storages, depth + 1, inner)
            for _, v, inner in _children(obj, name)
        )
    if isinstance(obj, (_Storage, _StorageType)):
        raise CheckpointError("The pickle holds a bare storage.")
    return obj


class _StorageIndex(dict):
    """The storages a pickle names, ``key -> (dtype, numel)``; called as
    ``RestrictedUnpickler``'s ``storage_key``. A storage read with two
    dtypes is refused."""

    def __call__(self, key, dtype, numel, view):
        known = self.setdefault(key, (dtype, numel))
        if known[0] != dtype:
            raise CheckpointError(
                f"Storage {key} is read with two dtypes ({known[0]}, {dtype})."
            )
        return _Storage(key, dtype, numel, view)


@contextlib.contextmanager
def _reading(path):
    """Turn what a damaged file makes the readers raise into one
    ``CheckpointError`` naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as e:
        raise CheckpointError(
            f"{path!r} is truncated or corrupt: {type(e).__name__}: {e}"
        ) from e
    except (pickle.UnpicklingError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"Could not unpickle {path!r}: {type(e).__name__}: {e}"
        ) from e


def _load_zip(path):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path!r} is not a readable zip: {e}") from e
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        pickles = [n for n in pickles if n.count("/") <= 1]
        if len(pickles) != 1:
            hint = ""
            if any(n.split("/", 1)[-1].startswith("code/") for n in names):
                hint = " It looks like a TorchScript archive (torch.jit.save)."
            raise CheckpointError(
                f"{path!r} is a zip archive without exactly one data.pkl "
                f"({len(pickles)} found): not a torch.save file.{hint}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"Unknown byte order {byteorder!r}.")
        wanted = _StorageIndex()
        with _reading(path):
            data = archive.read(pickles[0])
            obj = RestrictedUnpickler(io.BytesIO(data), wanted).load()
            storages = {}
            tensors = tensor_names(obj)
            for key, (dtype, numel) in wanted.items():
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise CheckpointError(f"Storage {entry!r} is missing.")
                size = archive.getinfo(entry).file_size
                _check_claim(path, key, dtype, numel, size, tensors)
                storages[key] = _decode(
                    archive.read(entry), dtype, numel, byteorder, entry
                )
        return _resolve(obj, storages)


def _plain_load(f):
    """Load a header pickle (magic number, protocol, sys info, keys):
    plain values only, no globals at all."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise CheckpointError(
                f"Refusing to load the global {module}.{name} from the "
                "checkpoint header."
            )

    return _NoGlobals(f).load()


def _load_legacy(path, read_data=True):
    """The pre-1.6 format: header pickles, the object pickle, the list of
    storage keys, then each storage as an int64 element count + bytes.

    With ``read_data=False`` only the sizes are checked (nothing returned).
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f, _reading(path):
        magic = _plain_load(f)
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(
                f"{path!r} is neither a zip nor a legacy torch.save "
                "file (bad magic number)."
            )
        protocol = _plain_load(f)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(
                f"Unknown legacy torch.save protocol {protocol!r}."
            )
        _plain_load(f)  # sys info; legacy data is always little-endian
        roots = _StorageIndex()
        obj = RestrictedUnpickler(f, roots).load()
        keys = _plain_load(f)
        if not isinstance(keys, list):
            raise CheckpointError("Bad storage key list.")
        storages = {}
        tensors = tensor_names(obj)
        for key, (dtype, numel) in roots.items():
            # torch allocates these sizes while unpickling.
            _check_claim(path, key, dtype, numel, file_size - f.tell(), tensors)
        for key in keys:
            key = str(key)
            if key not in roots:
                raise CheckpointError(f"Unknown storage key {key!r}.")
            dtype, _ = roots[key]
            header = f.read(8)
            if len(header) != 8:
                raise EOFError("storage header")
            (numel,) = struct.unpack("<q", header)
            if numel < 0:
                raise CheckpointError(f"Bad storage size {numel}.")
            available = file_size - f.tell()
            _check_claim(path, key, dtype, numel, available, tensors)
            if not read_data:
                f.seek(numel * _itemsize(dtype), os.SEEK_CUR)
                continue
            buffer = f.read(numel * _itemsize(dtype))
            storages[key] = _decode(buffer, dtype, numel, "little", f"{key!r}")
        if not read_data:
            return None
        missing = sorted(set(roots) - set(storages))
        if missing:
            raise CheckpointError(f"Storages {missing} are missing.")
    return _resolve(obj, storages)


def check_legacy_sizes(path):
    """Refuse a legacy ``torch.save`` file whose storages claim more bytes
    than it holds (``torch.load`` would try to allocate them first).

    Only size claims are judged here; anything else this reader refuses is
    left to ``torch.load``. Zip-format and non-pickle files pass.

    Args:
        path: str. A ``.pth`` / ``.bin`` file.

    Raises:
        StorageSizeError: naming the file, the tensor and its claimed size.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":
            return
    try:
        _load_legacy(path, read_data=False)
    except StorageSizeError:
        raise
    except CheckpointError:
        pass


def load_torch_file(path):
    """Read a ``torch.save`` file into numpy without importing torch.

    Tensors become numpy arrays (bfloat16 widened to float32); dicts,
    lists, tuples, strings and numbers stay as they are. A pickle that
    names any other global (code) raises ``CheckpointError`` before
    anything runs.

    Args:
        path: str. A ``.pth`` / ``.bin`` / ``.pt`` file written by
            ``torch.save`` (zip format, or the legacy format of
            torch < 1.6).

    Returns:
        The saved object with numpy arrays in place of tensors.

    Example:
    >>> state = load_torch_file("mit_b0.pth")
    >>> state["patch_embed1.proj.weight"].shape
    (32, 3, 7, 7)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        raise CheckpointError(
            f"{path!r} is a truncated or corrupt zip archive (no central "
            "directory)."
        )
    if head[:1] != b"\x80":  # every torch.save pickle starts with PROTO
        raise CheckpointError(
            f"{path!r} is not a torch.save file (neither a zip archive nor "
            "a pickle)."
        )
    return _load_legacy(path)
