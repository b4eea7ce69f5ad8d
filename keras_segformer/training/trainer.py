"""``model.fit`` with the SegFormer recipe, logs, checkpoints and resume.

Everything here is stock Keras: ``compile_for_training``
(``SegFormerLoss``, the recipe optimizer, mIoU/mAcc/aAcc); ``fit`` with
``BackupAndRestore`` (resume after a kill), ``ModelCheckpoint`` (weights
every epoch), ``CSVLogger`` and ``TensorBoard``, the three that write
files made atomic in ``run_files`` (whose names are re-exported here).

``fit`` writes ``out_dir/run.json`` (the run's settings),
``out_dir/log.csv`` (one row per epoch), ``out_dir/tensorboard/``,
``out_dir/checkpoints/epoch-NNN.weights.h5`` after every epoch,
``out_dir/backup/`` (model and optimizer state at every epoch end, removed
when training completes) and finally ``out_dir/model.keras`` (with the
optimizer state). Every file but TensorBoard's event streams is written
under a temporary name and renamed into place; leftover temporaries of a
killed run are removed on the next start.

Training that diverges stops at once: the first NaN or infinite loss (or
weights or validation loss at an epoch end) raises ``NonFiniteError``
naming the epoch, step, learning rate and last good checkpoint, before
anything of that epoch is saved; ``model.keras`` is never written with
non-finite weights (``nonfinite.StopOnNonFinite``).

Started again with the same ``out_dir``:

- after a kill, training resumes from the backup: the weights, the
  optimizer state (and so the step count and learning-rate schedule) and
  the epoch counter come back, and the interrupted epoch runs again from
  its start (its log row and checkpoint are replaced). At most the steps
  of the interrupted epoch are redone, so keep epochs short for long runs
  (``steps_per_epoch``);
- on a finished run of ``epochs`` epochs, nothing is trained: the model
  gets the run's weights from ``model.keras`` and a message says so;
- with more ``epochs`` than a finished run had, training continues from
  ``model.keras`` (weights and optimizer state). The poly schedule is laid
  out anew over the new total of steps, so the learning rate resumes at
  the value the longer schedule has at the step reached;
- with fewer ``epochs`` than already trained, or a model or setting that
  differs from the recorded run, a ``ValueError`` names the difference;
  ``overwrite=True`` starts afresh;
- while another process trains in ``out_dir``: ``RunInUseError`` (an
  ``OSError``) names it, and nothing in the folder is touched.

Several devices: build the model and call ``fit`` inside
``distribution_scope()``. The training batch is global and must be
divisible by the number of devices; validation batches are padded to a
multiple of it with fully ignored samples, which change no score. Several
workers (``TF_CONFIG``, ``KERAS_DISTRIBUTION_*``: see ``cluster``): the
same, on every worker, each with its shard of the data (JAX: batches of
its part of the global batch). ``out_dir`` must be on a file system all
workers share: only the chief writes it; the others read the run and the
backup from it and save into a scratch folder of their own, deleted at
the end.
"""

import contextlib
import dataclasses
import os
import tempfile

import keras
from keras import tree

from keras_segformer.errors import data_errors
from keras_segformer.training import cluster as cluster_lib
from keras_segformer.training.distribute import (
    check_batch_size,
    num_replicas,
    pad_batches,
    strategy_scope,
)
from keras_segformer.training.evaluation import (  # noqa: F401 (re-exported)
    dump_scores,
    evaluate,
    metric_classes,
)
from keras_segformer.training.losses import check_label_dataset
from keras_segformer.training.metrics import (
    MeanAccuracy,
    MeanIoU,
    PixelAccuracy,
)
from keras_segformer.training.nonfinite import (
    NonFiniteError,
    nonfinite_weights,
)
from keras_segformer.training.optimizer import (
    compile_for_training,
    create_optimizer,
)
from keras_segformer.training.run_files import (  # noqa: F401 (re-exported)
    BACKUP,
    CHECKPOINTS,
    FINAL_MODEL,
    LOG_FILE,
    RUN_ENTRIES,
    RUN_FILE,
    TENSORBOARD,
    AtomicBackupAndRestore,
    AtomicModelCheckpoint,
    EpochLog,
    RunStatus,
    _check_writable,
    _json,
    _remove,
    _remove_leftovers,
    check_run,
    clear_run,
    read_backup_state,
    read_log,
    remove_backup,
    temporary_path,
    write_atomic,
    write_text,
)
from keras_segformer.training.run_lock import run_lock
from keras_segformer.training.run_setup import (
    _load_state,
    _model_settings,
    _prepare_run,
    _run_callbacks,
    _start_message,
    _stop_on_nonfinite,
    _write_run,
)


def compile_model(model, *, total_steps, learning_rate=6e-5, **optimizer_kw):
    """``compile_for_training`` with the recipe optimizer at
    ``learning_rate`` and all three scores (mIoU, mAcc, aAcc) as metrics.

    Args:
        model: ``SegFormer``.
        total_steps: int. Length of the poly schedule.
        learning_rate: float. Peak (backbone) learning rate.
        **optimizer_kw: forwarded to ``create_optimizer``.
    """
    n = metric_classes(model.num_classes)
    optimizer = create_optimizer(
        model,
        total_steps=total_steps,
        learning_rate=learning_rate,
        **optimizer_kw,
    )
    return compile_for_training(
        model,
        total_steps,
        optimizer=optimizer,
        metrics=[MeanIoU(n), MeanAccuracy(n), PixelAccuracy(n)],
    )


@data_errors()  # a bad sample met in tf.data: its message, no traceback
def fit(
    model,
    train_data,
    *,
    out_dir,
    epochs,
    steps_per_epoch,
    validation_data=None,
    learning_rate=6e-5,
    verbose="auto",
    callbacks=(),
    overwrite=False,
    settings=None,
    **optimizer_kw,
):
    """Train ``model`` and keep everything in ``out_dir``.

    The files it writes, what a restart with the same ``out_dir`` does
    (resume, extend, nothing, or an error) and how to train on several
    devices or workers: see this module's docstring.

    Args:
        model: ``SegFormer``, built.
        train_data: ``tf.data.Dataset`` (repeated) of ``(images, labels)``.
        out_dir: str. Output folder.
        epochs: int. Epochs in all (a resumed run counts those done).
        steps_per_epoch: int. Steps per epoch.
        validation_data: dataset or None. Evaluated after each epoch.
        learning_rate: float. Peak learning rate of the backbone.
        verbose: Keras ``fit`` verbosity (progress bar by default); 0 also
            silences the resume messages.
        callbacks: extra Keras callbacks.
        overwrite: bool. Remove the run in ``out_dir`` first (the entries
            of ``RUN_ENTRIES`` only).
        settings: dict or None. More settings that define the run (JSON
            values, e.g. the command-line flags), recorded in ``run.json``
            with the model config, ``steps_per_epoch`` and
            ``learning_rate`` and compared on every restart.
        **optimizer_kw: forwarded to ``create_optimizer`` (may change
            between restarts, e.g. ``warmup_steps``).

    Returns:
        ``keras.callbacks.History`` (empty when there was nothing to do).

    Raises:
        ValueError: ``epochs`` or ``steps_per_epoch`` not a positive
            int, or ``out_dir`` holds a run of another model or settings
            (named), or fewer epochs than it has done.
        RunInUseError: another process trains in ``out_dir`` now.
        NonFiniteError: the loss or the weights became NaN or infinite
            (the last good checkpoint is named).
        DataError: a data file the pipeline could not use (named).

    Example:
    >>> model = keras_segformer.SegFormerB0(num_classes=6)
    >>> trainer.fit(model, train_ds, out_dir="runs/b0", epochs=8,
    ...             steps_per_epoch=50, validation_data=val_ds)
    """
    _check_counts(epochs, steps_per_epoch)  # before the folder is made
    out_dir = os.fspath(out_dir)
    found = cluster_lib.joined()
    with _lock_run(out_dir, found):  # one run at a time in out_dir
        run = _open_run(
            model,
            out_dir,
            settings,
            overwrite,
            found,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            learning_rate=learning_rate,
            verbose=verbose,
        )
        try:
            with strategy_scope(model):
                history = _train(
                    model,
                    run,
                    train_data,
                    validation_data,
                    callbacks,
                    optimizer_kw,
                )
        finally:
            if not run.chief:
                _remove(run.write_dir)
        if history is None:  # a finished run: nothing was trained
            return keras.callbacks.History()
        if run.chief:
            # model.keras now holds the newest state: the backup can go.
            done = history.epoch[-1] + 1 if history.epoch else epochs
            _write_run(run.out_dir, run.status, run.settings, model_epochs=done)
            remove_backup(run.out_dir)
    return history


@dataclasses.dataclass(frozen=True)
class _Run:
    """One ``fit`` call's run: its folder, where this worker writes (the
    folder on the chief, a scratch folder on the others), the state read
    from the folder, the settings recorded, the cluster joined (or None)
    and ``fit``'s arguments of the same names."""

    out_dir: str
    write_dir: str
    chief: bool
    status: RunStatus
    settings: dict
    found: object
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    verbose: object


def _check_counts(epochs, steps_per_epoch):
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            "`epochs` and `steps_per_epoch` must be >= 1. Received "
            f"epochs={epochs}, steps_per_epoch={steps_per_epoch}."
        )


def _lock_run(out_dir, found):
    """The run lock of ``out_dir`` (created and checked writable if
    needed); none on a worker other than the chief (it does not write
    there)."""
    if found is not None and not found.chief:
        return contextlib.nullcontext()
    os.makedirs(out_dir, exist_ok=True)
    _check_writable(out_dir)
    return run_lock(out_dir)


def _open_run(model, out_dir, settings, overwrite, found, **arguments):
    """Check and read the run in ``out_dir`` (``_prepare_run``), choose
    where this worker writes. ``arguments``: ``fit``'s ``epochs``,
    ``steps_per_epoch``, ``learning_rate`` and ``verbose``."""
    steps_per_epoch = arguments["steps_per_epoch"]
    settings = {
        **(settings or {}),
        "steps_per_epoch": int(steps_per_epoch),
        "learning_rate": float(arguments["learning_rate"]),
        **_model_settings(model),
    }
    status = _prepare_run(
        out_dir,
        arguments["epochs"],
        steps_per_epoch,
        settings,
        overwrite,
        found,
    )
    # Other workers than the chief write into a scratch folder of theirs.
    chief = found is None or found.chief
    write_dir = out_dir if chief else tempfile.mkdtemp(prefix="segformer-")
    return _Run(out_dir, write_dir, chief, status, settings, found, **arguments)


def _train(model, run, train_data, validation_data, callbacks, optimizer_kw):
    """``fit`` under the strategy scope: check the data, compile, restore
    the state the run names, announce, train and save ``model.keras``.

    Returns:
        ``keras.callbacks.History``, or None where the run was finished
        already (nothing trained).
    """
    train_data, validation_data = _check_data(
        model, train_data, validation_data, run.found
    )
    compile_model(
        model,
        total_steps=run.epochs * run.steps_per_epoch,
        learning_rate=run.learning_rate,
        **optimizer_kw,
    )
    say = print if run.verbose != 0 else _silent
    status = run.status
    if status.source == "model":
        _load_state(model, os.path.join(run.out_dir, FINAL_MODEL))
    if status.finished:
        say(status.message())
        return None
    if run.chief:
        _write_run(
            run.out_dir, status, run.settings, model_epochs=status.model_epochs
        )
    message = _start_message(status, run.steps_per_epoch)
    if message:
        say(message)
    model._initial_epoch = None  # set by a backup restored earlier
    with cluster_lib.lost_worker_errors(run.found, run.out_dir):
        history = model.fit(
            train_data,
            epochs=run.epochs,
            initial_epoch=status.done if status.source == "model" else 0,
            steps_per_epoch=run.steps_per_epoch,
            validation_data=validation_data,
            verbose=run.verbose,
            callbacks=[
                _stop_on_nonfinite(run.write_dir),  # before any save
                *_run_callbacks(run.write_dir, run.out_dir),
                *callbacks,
            ],
        )
    final = os.path.join(run.write_dir, FINAL_MODEL)
    bad = nonfinite_weights(model)  # e.g. from a callback of the caller's
    if bad:
        raise NonFiniteError(
            f"Training ended with NaN or infinite weights ({bad[0]} ...): "
            f"{final} not written."
        )
    write_atomic(final, model.save)
    return history


def _check_data(model, train_data, validation_data, found):
    """Check float labels for a fractional part (``check_label_dataset``);
    refuse a training batch that does not split over the devices; pad the
    validation batches to a multiple of them. A JAX process's batches are
    their part of the global batch."""
    train_data = check_label_dataset(train_data)  # float labels: checked
    validation_data = check_label_dataset(validation_data)
    replicas = num_replicas(model)
    processes = found.workers if found and found.backend == "jax" else 1
    if replicas > 1:
        batch = _batch_size(train_data)
        if batch is not None:
            batch *= processes
            check_batch_size(batch, replicas, "training batch size")
        if hasattr(validation_data, "element_spec"):
            local = replicas // processes
            validation_data = pad_batches(validation_data, local)
    return train_data, validation_data


def _silent(*args, **kwargs):
    pass


def _batch_size(dataset):
    """Batch size of a ``tf.data`` dataset (from its first batch when the
    spec leaves it open); None for other inputs."""
    spec = getattr(dataset, "element_spec", None)
    if spec is None:
        return None
    size = tree.flatten(spec)[0].shape[0]
    if size is None:
        first = next(iter(dataset.take(1)))
        size = tree.flatten(first)[0].shape[0]
    return int(size)
