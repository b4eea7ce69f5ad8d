"""Multi-worker training: one command on every worker, the engines' own
cluster conventions.

- TensorFlow: a ``TF_CONFIG`` naming more than one worker (``chief`` and
  ``worker`` tasks) gives ``tf.distribute.MultiWorkerMirroredStrategy``.
- JAX: Keras' launch convention (``KERAS_DISTRIBUTION_JOB_ADDRESSES``,
  ``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``),
  or a SLURM, Open MPI or TPU-pod job of several processes that
  ``jax.distributed.initialize`` detects itself, gives
  ``keras.distribution.initialize`` and ``DataParallel`` over every
  process's devices (gloo collectives on CPU).
- PyTorch: not supported (Keras has no distribution API for it).

Each worker reads its own shard of the files (``shard``); the batch size
stays global. Worker 0 (TensorFlow: the ``chief`` task if there is one)
is the chief: only it writes the run folder, which every worker reads (a
shared file system). The other workers run the same saves, which are
collective on JAX, into a private scratch folder that is deleted.
"""

import collections
import contextlib
import json
import os

import keras

_KERAS_VARS = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)
# Process count and index of the jobs jax.distributed detects itself.
_DETECTED = (
    ("SLURM", "SLURM_NTASKS", "SLURM_PROCID"),
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("TPU pod", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID"),
)
# The strategy or distribution of this process's cluster, made once.
_STARTED = {}


class Cluster(
    collections.namedtuple("Cluster", ["backend", "workers", "index", "source"])
):
    """The workers that train one model together.

    Attributes:
        backend: str. ``"tensorflow"`` or ``"jax"``.
        workers: int. Number of workers (JAX: processes).
        index: int. This worker's index; 0 is the chief.
        source: str. What described the cluster (``TF_CONFIG`` ...).
    """

    __slots__ = ()

    @property
    def chief(self):
        """bool. This worker writes the run folder."""
        return self.index == 0

    def describe(self, replicas):
        """The line each worker's log starts with."""
        role = "the chief" if self.chief else "not the chief"
        return (
            f"multi-worker training ({self.source}): {self.workers} workers, "
            f"this is worker {self.index} ({role}), {replicas} replicas in "
            "sync"
        )


def _int(name, text):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an integer. Received: {text!r}"
        ) from None


def _tf_cluster():
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
        spec, task = config.get("cluster", {}), config.get("task", {})
        chiefs, workers = spec.get("chief", []), spec.get("worker", [])
    except (ValueError, AttributeError) as e:
        raise ValueError(
            "TF_CONFIG must be a JSON object with 'cluster' and 'task'. "
            f"Received: {text!r} ({e})"
        ) from None
    if len(chiefs) + len(workers) <= 1:
        return None
    kind = task.get("type")
    if kind not in ("chief", "worker"):
        raise ValueError(
            "TF_CONFIG: this task's type must be 'chief' or 'worker' "
            f"(MultiWorkerMirroredStrategy). Received: {kind!r}"
        )
    index = _int("TF_CONFIG task index", task.get("index", 0))
    if kind == "worker":
        index += len(chiefs)
    return Cluster("tensorflow", len(chiefs) + len(workers), index, "TF_CONFIG")


def _jax_cluster():
    addresses = os.environ.get(_KERAS_VARS[0], "")
    count = os.environ.get(_KERAS_VARS[1])
    if count is not None or "," in addresses:
        count = _int(_KERAS_VARS[1], count) if count else None
        count = count or len(addresses.split(","))
        index = _int(_KERAS_VARS[2], os.environ.get(_KERAS_VARS[2], 0))
        if count > 1:
            return Cluster("jax", count, index, "KERAS_DISTRIBUTION_*")
        return None
    for source, count_var, index_var in _DETECTED:
        value = os.environ.get(count_var)
        if value is None or index_var not in os.environ:
            continue
        count = (
            len(value.split(",")) if "," in value else _int(count_var, value)
        )
        if count > 1:
            index = _int(index_var, os.environ[index_var])
            return Cluster("jax", count, index, source)
    return None


def cluster():
    """The multi-worker cluster the environment describes, or None (one
    worker).

    Returns:
        ``Cluster`` or None.

    Raises:
        ValueError: on PyTorch when a cluster is described (no Keras
            distribution API), or for a malformed description.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_cluster()
    if backend == "jax":
        return _jax_cluster()
    described = [v for v in ("TF_CONFIG", *_KERAS_VARS) if v in os.environ]
    if described and (_tf_cluster_safe() or _jax_cluster()):
        raise ValueError(
            f"Multi-worker training is not supported on the {backend} "
            f"backend ({', '.join(described)} set): Keras 3 has no "
            "distribution API for it. Use KERAS_BACKEND=tensorflow or "
            "KERAS_BACKEND=jax, or unset those variables."
        )
    return None


def _tf_cluster_safe():
    try:
        return _tf_cluster()
    except ValueError:
        return None


def start(found, devices=None):
    """The strategy (TensorFlow) or distribution (JAX) spanning every
    worker of ``found``, made once per process.

    It must come first: before any other TensorFlow op, before anything
    touches a JAX device.

    Args:
        found: ``Cluster``.
        devices: must be None: each worker uses all its devices.
    """
    if devices is not None:
        raise ValueError(
            f"`devices` must be None in a cluster ({found.source}): each "
            "worker trains on all its devices. Received: "
            f"devices={devices!r}"
        )
    if found in _STARTED:
        return _STARTED[found]
    if found.backend == "tensorflow":
        strategy = _multi_worker_mirrored_strategy()
    else:
        import jax

        if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
            # Without gloo, CPU collectives across processes fail.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            keras.distribution.initialize()
        except RuntimeError as e:
            raise RuntimeError(
                f"Cannot join the JAX cluster ({found.source}): {e}. Start "
                "it before anything uses a JAX device (build no model "
                "before `distribution_scope()`)."
            ) from e
        # This process's batches are its own shard (see `shard`).
        strategy = keras.distribution.DataParallel(auto_shard_dataset=False)
    _STARTED[found] = strategy
    return strategy


def _multi_worker_mirrored_strategy():
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras
    3's TensorFlow trainer gives it there: the first ``(images, labels)``
    batch in one call (the base class refuses a nest: "Attempt to convert
    a value (PerReplica ...)"), and each step's scalar logs with
    ``axis=0`` ("Invalid reduction dimension 0"), averaged over the
    replicas here."""
    import tensorflow as tf

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            if isinstance(value, (tuple, list, dict)):
                return tf.nest.map_structure(
                    lambda v: self.reduce(reduce_op, v, axis), value
                )
            local = self.experimental_local_results(value)[0]
            if axis is not None and local.shape.rank == 0:
                axis = None
            return super().reduce(reduce_op, value, axis)

    return Strategy()


def barrier(found, name):
    """Wait until every worker of ``found`` gets here."""
    if found.backend == "tensorflow":
        import tensorflow as tf

        strategy = _STARTED[found]
        # An all-reduce needs every worker: it is the barrier.
        strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            strategy.run(lambda: tf.ones(())),
            axis=None,
        )
    else:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def shard(items, found):
    """This worker's share of ``items``: every ``workers``-th one from its
    index (no item goes to two workers); all of them without a cluster."""
    items = list(items)
    if found is None:
        return items
    if len(items) < found.workers:
        raise ValueError(
            f"{len(items)} files cannot be shared by {found.workers} "
            "workers: each needs at least one."
        )
    return items[found.index :: found.workers]


def input_batch_size(batch_size, found):
    """The batch size of one worker's dataset for a global ``batch_size``:
    TensorFlow takes the global batch and splits it itself; Keras' JAX
    trainer takes each process's part of it."""
    if found is None or found.backend == "tensorflow":
        return batch_size
    if batch_size % found.workers:
        raise ValueError(
            f"The batch size ({batch_size}) must be divisible by the number "
            f"of workers ({found.workers}): it is global."
        )
    return batch_size // found.workers


def worker_dataset(dataset, samples, most, ignore_index=255):
    """A worker's own shard as the engine should read it: never sharded
    again (the files are split already), and ``most - samples`` blank
    samples (labels all ``ignore_index``, which change no score) added so
    that every worker runs the same number of steps over a finite set.

    Args:
        dataset: batched ``tf.data.Dataset`` of ``(images, labels)``.
        samples: int. Samples in it.
        most: int. Samples in the largest worker's shard.
    """
    import tensorflow as tf

    missing = int(most) - int(samples)
    if missing > 0:

        def blank(images, labels):
            return tf.zeros_like(images), tf.fill(
                tf.shape(labels), tf.cast(ignore_index, labels.dtype)
            )

        first = dataset.take(1).unbatch().take(1).map(blank)
        dataset = dataset.concatenate(first.repeat(missing).batch(missing))
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy.OFF
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def joined():
    """The cluster this process trains in, once ``distribution_scope``
    has started it; None on one worker.

    Raises:
        ValueError: the environment describes a cluster that
            ``distribution_scope`` has not started.
    """
    found = cluster()
    if found is None:
        return None
    if found not in _STARTED:
        raise ValueError(
            f"{found.source} describes {found.workers} workers: build the "
            "model and train inside `distribution_scope()`, entered first "
            "on every worker."
        )
    return found


class WorkerLostError(ConnectionError):
    """A worker of the cluster stopped or cannot be reached: not the
    user's error, and the same command again resumes, so the command line
    exits with its own status (``exit_status``, 3) rather than 2."""

    exit_status = 3


# What the engines raise when a peer is gone: TensorFlow's collectives
# (heartbeat timeout, closed connections), JAX's runtime (gloo).
_LOST = frozenset(
    {
        "UnavailableError",
        "DeadlineExceededError",
        "AbortedError",
        "CancelledError",
        "XlaRuntimeError",
        "JaxRuntimeError",
    }
)


# ... and words of their messages (JAX's gloo raises a ValueError).
_HINTS = ("Gloo", "Connection closed by peer", "unhealthy", "heartbeat")


@contextlib.contextmanager
def lost_worker_errors(found, run_dir):
    """Turn the engine's error about a worker gone into one clear
    ``WorkerLostError`` (no-op without a cluster)."""
    try:
        yield
    except Exception as e:
        text = str(e)
        lost = type(e).__name__ in _LOST or any(h in text for h in _HINTS)
        if found is None or not lost:
            raise
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        hints = ("unhealthy", "heartbeat", "task", "peer", "connect")
        detail = next(
            (line for line in lines if any(h in line for h in hints)),
            lines[0] if lines else "",
        )
        raise WorkerLostError(
            f"worker {found.index} of {found.workers}: another worker "
            f"stopped or cannot be reached ({type(e).__name__}: "
            f"{detail[:200]}). Restart every worker with the same command: "
            f"training resumes from the chief's backup in {run_dir}."
        ) from e
