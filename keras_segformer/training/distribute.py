"""Data-parallel training on the devices of one host, or of several
(``cluster``: TF_CONFIG / Keras' JAX launch variables).

``distribution_scope`` picks the backend's own mechanism:

- TensorFlow: ``tf.distribute.MirroredStrategy`` (GPUs, or CPUs).
- JAX: ``keras.distribution.DataParallel`` (GPUs, TPU cores, or CPUs).
- PyTorch: not supported. Keras 3 has no distribution API for PyTorch
  (no DDP integration in ``model.fit``), so a PyTorch run uses one device.

Build the model and train inside the scope. Batch sizes are global: each
step splits the batch evenly over the devices, so it must be divisible by
their number. With the recipe (``compile_for_training``), one step on N
devices computes what one step on one device computes with the same batch:

- the loss is the mean over the labelled pixels of the global batch (the
  gradients are averaged, not summed, and a device whose crops hold fewer
  labelled pixels weighs less, as on one device);
- the decode head's BatchNorm normalizes with statistics of the global
  batch (mmseg trains SegFormer with SyncBN);
- the mIoU metrics sum their confusion matrices over the devices.

JAX gets all three by construction: one program runs over the whole batch,
sharded along its first axis. Under ``tf.distribute`` every device runs
its own copy of the step, so ``SegFormerLoss`` all-reduces its pixel count
(``sum_over_replicas``) and ``compile_for_training`` synchronizes the
BatchNorm layers (``synchronize_batch_norm``).
"""

import collections
import contextlib

import keras

from keras_segformer.training import cluster as cluster_lib


class Replicas(
    collections.namedtuple(
        "Replicas", ["devices", "strategy", "cluster"], defaults=[None]
    )
):
    """What ``distribution_scope`` runs on.

    Attributes:
        devices: list of str. The devices, one replica each (in a
            TensorFlow cluster: this worker's).
        strategy: the ``tf.distribute.MirroredStrategy`` or
            ``MultiWorkerMirroredStrategy`` (TensorFlow),
            ``keras.distribution.DataParallel`` (JAX); None on PyTorch.
        cluster: ``cluster.Cluster`` or None (one host).
    """

    __slots__ = ()

    @property
    def num_replicas(self):
        """int. Number of devices, over all workers."""
        if self.cluster is not None and self.cluster.backend == "tensorflow":
            return int(self.strategy.num_replicas_in_sync)
        return len(self.devices)


# One MirroredStrategy per device set and process: every new strategy
# numbers its collective ops from the same keys, so a second one over the
# same devices collides with the first ("Shape mismatch in the collective
# instance ...").
_MIRRORED = {}


def list_devices():
    """The devices ``distribution_scope`` uses by default: all the host's
    accelerators (GPUs; TPU cores on JAX), else its CPUs (one, unless
    several are simulated).

    Returns:
        list of str, in the backend's own device naming.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # MirroredStrategy does not drive TPUs (TPUStrategy does).
        for kind in ("GPU", "CPU"):
            found = tf.config.list_logical_devices(kind)
            if found:
                return [d.name for d in found]
        return []
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    return ["cpu"]


def _resolve_devices(devices):
    available = list_devices()
    if devices is None:
        return available
    if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
        raise TypeError(
            "`devices` must be None, an int or a list of device names. "
            f"Received: {devices!r}"
        )
    if isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"`devices` must be in [1, {len(available)}]: this host has "
                f"{len(available)} usable device(s), {available}. "
                f"Received: devices={devices}"
            )
        return available[:devices]
    devices = [str(d) for d in devices]
    if not devices:
        raise ValueError("`devices` is an empty list.")
    return devices


@contextlib.contextmanager
def distribution_scope(devices=None):
    """Train on several devices of this host: data parallelism.

    Inside the scope, build the model and train it (``trainer.fit``, or
    ``compile_for_training`` then ``model.fit``): the variables are
    replicated on every device and each batch is split evenly among them.
    TensorFlow uses ``tf.distribute.MirroredStrategy``, JAX
    ``keras.distribution.DataParallel``; PyTorch is not supported (Keras
    has no distribution API for it) and accepts only one device.

    Batch sizes stay global (a batch of 16 on 4 devices puts 4 samples on
    each) and must be divisible by the number of devices.

    When the environment describes several workers (``cluster.cluster``:
    ``TF_CONFIG``, Keras' ``KERAS_DISTRIBUTION_*`` variables, a SLURM
    job ...), the scope spans every device of every worker
    (``MultiWorkerMirroredStrategy`` / ``DataParallel`` over all
    processes) and prints one line naming the cluster. Enter it first,
    before any other TensorFlow op or JAX computation.

    Args:
        devices: None, int or list of str. None: all accelerators of the
            host (see ``list_devices``); an int: that many of them; a list:
            those devices (TensorFlow names such as ``"/gpu:0"``, JAX names
            such as ``"gpu:0"``). None in a cluster.

    Yields:
        ``Replicas``: ``devices``, ``num_replicas`` and the backend's
        ``strategy`` object.

    Raises:
        ValueError: more than one device on PyTorch (Keras has no
            distribution API for it), a count outside ``[1, devices on
            this host]``, or an empty list.
        TypeError: ``devices`` neither None, an int nor a list.

    Example:
    >>> with distribution_scope() as replicas:
    ...     model = keras_segformer.SegFormerB0(num_classes=150)
    ...     trainer.fit(model, train_ds, out_dir="runs/b0", epochs=160,
    ...                 steps_per_epoch=1000)
    """
    found = cluster_lib.cluster()
    if found is not None:
        with _cluster_scope(found, devices) as replicas:
            yield replicas
        return
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        if devices is None:
            requested = len(list_devices())
        elif isinstance(devices, int):
            requested = devices
        else:
            requested = len(devices)
        if requested > 1:
            raise ValueError(
                f"Multi-device training is not supported on the {backend} "
                "backend: Keras 3 has no distribution API for it. Use "
                "KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow, or one "
                f"device. Received: devices={devices!r}"
            )
    devices = _resolve_devices(devices)
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = _MIRRORED.get(tuple(devices))
        if strategy is None:
            strategy = tf.distribute.MirroredStrategy(devices)
            _MIRRORED[tuple(devices)] = strategy
        with strategy.scope():
            yield Replicas(devices, strategy)
    elif backend == "jax":
        distribution = keras.distribution.DataParallel(devices=devices)
        with distribution.scope():
            yield Replicas(devices, distribution)
    else:
        yield Replicas(devices, None)


@contextlib.contextmanager
def _cluster_scope(found, devices):
    strategy = cluster_lib.start(found, devices)
    if found.backend == "tensorflow":
        local = list(strategy.extended.worker_devices)
        replicas = Replicas(local, strategy, found)
        with strategy.scope():
            print(found.describe(replicas.num_replicas), flush=True)
            yield replicas
    else:
        replicas = Replicas(list_devices(), strategy, found)
        with strategy.scope():
            print(found.describe(replicas.num_replicas), flush=True)
            yield replicas


def num_replicas(model=None):
    """Number of devices a training step is split over (1 outside a
    ``distribution_scope``).

    Args:
        model: keras.Model or None. On TensorFlow, the strategy the model
            was built under; by default the current one.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = getattr(model, "distribute_strategy", None)
        strategy = strategy or tf.distribute.get_strategy()
        return int(strategy.num_replicas_in_sync)
    if backend == "jax":
        distribution = keras.distribution.distribution()
        if distribution is None:
            return 1
        mesh = distribution.device_mesh
        axis = list(mesh.axis_names).index(distribution.batch_dim_name)
        return int(mesh.shape[axis])
    return 1


def strategy_scope(model):
    """The scope of the ``tf.distribute`` strategy ``model`` was built
    under (a no-op context elsewhere): its optimizer and metrics must be
    created there too.

    Raises:
        ValueError: when a multi-device scope is active but ``model`` was
            built outside it (its variables live on one device).
    """
    replicas = num_replicas()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = getattr(model, "_distribute_strategy", None)
        if strategy is None:
            if replicas > 1:
                raise ValueError(_BUILT_OUTSIDE.format(replicas=replicas))
            return contextlib.nullcontext()
        return strategy.scope()
    if backend == "jax" and replicas > 1 and model.weights:
        sharding = getattr(model.weights[0].value, "sharding", None)
        placed = len(getattr(sharding, "device_set", ()))
        if placed != replicas:
            raise ValueError(_BUILT_OUTSIDE.format(replicas=replicas))
    return contextlib.nullcontext()


_BUILT_OUTSIDE = (
    "The model was built outside the distribution scope ({replicas} "
    "devices): its variables are not replicated. Build it inside "
    "`distribution_scope()`."
)


def check_batch_size(batch_size, replicas, what="batch size"):
    """Raise ``ValueError`` unless the global batch splits evenly.

    Args:
        batch_size: int. Global batch size.
        replicas: int. Number of devices.
        what: str. Name of the batch size in the message.
    """
    if replicas > 1 and int(batch_size) % replicas:
        raise ValueError(
            f"The {what} ({batch_size}) must be divisible by the number of "
            f"devices ({replicas}): the batch is global and each step "
            "splits it evenly over the devices. Use a multiple of "
            f"{replicas}, or fewer devices."
        )


def sum_over_replicas(value):
    """Sum of ``value`` over the replicas of a ``tf.distribute`` step.

    TensorFlow only: each device runs its own copy of the step, so a
    quantity of the global batch (the number of labelled pixels) needs an
    all-reduce. Elsewhere, and outside a multi-replica step, returns
    ``value`` unchanged: JAX runs one program over the global batch.

    Returns:
        ``(value, summed)``: the (summed) value and whether it was summed.
    """
    if keras.backend.backend() != "tensorflow":
        return value, False
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value, False
    summed = context.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.stop_gradient(value)
    )
    return summed, True


def synchronize_batch_norm(model):
    """Make the BatchNorm layers of ``model`` use global batch statistics
    under ``tf.distribute`` (mmseg's SyncBN). No-op on other backends,
    where data parallelism already normalizes over the global batch.

    The flag is not part of any layer config, so saved models load on
    every backend.

    Returns:
        int. Number of layers switched.
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def pad_batches(dataset, multiple, ignore_index=255):
    """Pad every batch of ``dataset`` to a multiple of ``multiple`` samples
    with blank samples whose labels are all ``ignore_index``.

    The loss and the metrics leave those pixels out, so evaluation scores
    are unchanged, while every device gets the same number of samples (JAX
    cannot shard a batch of 1 over 2 devices).

    Args:
        dataset: ``tf.data.Dataset`` of ``(images, labels)`` or ``(images,
            labels, sample_weight)`` batches.
        multiple: int. Number of devices.
        ignore_index: int. Label of the padding pixels.

    Returns:
        ``tf.data.Dataset``.
    """
    import tensorflow as tf

    if multiple <= 1:
        return dataset

    def pad(tensor, value):
        extra = (-tf.shape(tensor)[0]) % multiple
        rank = len(tensor.shape)
        paddings = tf.concat(
            [[[0, extra]], tf.zeros([rank - 1, 2], tf.int32)], axis=0
        )
        return tf.pad(tensor, paddings, constant_values=value)

    def pad_batch(images, labels, *weights):
        padded = (pad(images, 0), pad(labels, ignore_index))
        return padded + tuple(pad(w, 0) for w in weights)

    return dataset.map(pad_batch, num_parallel_calls=tf.data.AUTOTUNE)
