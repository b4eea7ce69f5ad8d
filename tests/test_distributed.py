"""Data-parallel training on two simulated CPU devices.

The devices must exist before the backend starts, so the two-device cases
run in fresh processes: this file is also their worker
(``python tests/test_distributed.py CASE OUT.json``), started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` on JAX and with two
logical CPU devices configured first thing on TensorFlow. The suite runs
once per backend and each leg runs its own backend's cases.
"""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

NUM_CLASSES = 4
SIZE = 64
BACKEND = keras.backend.backend()
TWO_DEVICE_BACKENDS = ("tensorflow", "jax")
# Faster XLA compiles (the tiny model runs in milliseconds either way).
FAST_XLA = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes"
)


def _data(n, seed):
    """Learnable images: 16x16 blocks of a class colour plus noise. The
    first two samples (the first device's half of a batch of 4) have
    ignored rows, so the devices see different labelled-pixel counts."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, NUM_CLASSES, (n, SIZE // 16, SIZE // 16))
    labels = blocks.repeat(16, axis=1).repeat(16, axis=2).astype("int32")
    colours = rng.normal(size=(NUM_CLASSES, 3))
    images = colours[labels] + 0.3 * rng.normal(size=labels.shape + (3,))
    labels[:2, :24] = 255
    return images.astype("float32"), labels


def _dataset(x, y, batch_size, repeat=False):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return (ds.repeat() if repeat else ds).batch(batch_size)


# ------------------------------------------------------ two-device worker


def _placement(model):
    """Number of devices holding a model and an optimizer variable."""
    counts = []
    for variable in (model.weights[0], model.optimizer.variables[-1]):
        value = variable.value
        if BACKEND == "tensorflow":
            counts.append(len(getattr(value, "values", [value])))
        else:
            counts.append(len(value.sharding.device_set))
    return counts


def _confusion(model):
    """The mIoU metric's confusion matrix (summed over the devices)."""
    variable = next(v for v in model.metrics_variables if "confusion" in v.path)
    return keras.ops.convert_to_numpy(variable.value).tolist()


def _one_step(x, y, weights, scope):
    """One ``fit`` step on a batch of 4 from ``weights``."""
    from conftest import tiny_segformer

    from keras_segformer.training import trainer

    with scope:
        model = tiny_segformer(NUM_CLASSES, dropout=0.0, drop_path_rate=0.0)
        model.set_weights(weights)
        # Adam's first step is lr * sign(gradient): blind to gradients
        # summed instead of averaged. A large epsilon makes the step
        # proportional to the gradient.
        trainer.compile_model(
            model,
            total_steps=10,
            learning_rate=0.1,
            warmup_steps=0,
            epsilon=1.0,
        )
        history = model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    return model, {k: v[0] for k, v in history.history.items()}


def _case_step():
    """One step on two devices vs one step on one device, same batch."""
    import contextlib

    from conftest import tiny_segformer

    from keras_segformer.training import distribution_scope

    x, y = _data(4, seed=0)
    keras.utils.set_random_seed(0)
    weights = tiny_segformer(
        NUM_CLASSES, dropout=0.0, drop_path_rate=0.0
    ).get_weights()
    start = time.perf_counter()
    single, single_logs = _one_step(x, y, weights, contextlib.nullcontext())
    one_device_s = time.perf_counter() - start
    with distribution_scope(devices=2) as replicas:
        start = time.perf_counter()
        model, logs = _one_step(x, y, weights, contextlib.nullcontext())
        two_devices_s = time.perf_counter() - start
        if BACKEND == "jax":
            layout = replicas.strategy.get_data_layout(x.shape)
            device_batch = layout.backend_layout.shard_shape(x.shape)[0]
        else:
            device_batch = None
    trainable = {id(v) for v in single.trainable_weights}
    diffs, steps = {}, {}
    for v, a, b, w in zip(
        single.weights, single.get_weights(), model.get_weights(), weights
    ):
        diffs[v.path] = float(np.max(np.abs(a - b)))
        if id(v) in trainable:
            steps[v.path] = float(np.max(np.abs(a - w)))
    return {
        "replicas": replicas.num_replicas,
        "placement": _placement(model),
        "device_batch": device_batch,
        "weight_diffs": diffs,
        "steps": steps,
        "logs": [single_logs, logs],
        "confusion": [_confusion(single), _confusion(model)],
        "labelled_pixels": int(np.sum(y != 255)),
        "seconds": [one_device_s, two_devices_s],
    }


def _case_fit(out_dir):
    """trainer.fit on two devices: killed after two epochs, resumed by a
    new model; validation batches of 1 padded; odd batches refused."""
    from conftest import tiny_segformer

    from keras_segformer.cli import main
    from keras_segformer.training import distribution_scope, trainer

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt("simulated kill")

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            iterations = self.model.optimizer.iterations
            self.start = int(keras.ops.convert_to_numpy(iterations))
            self.weights = self.model.get_weights()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    x, y = _data(11, seed=1)
    train = _dataset(x[:8], y[:8], 4, repeat=True)
    kwargs = dict(
        out_dir=out_dir,
        epochs=3,
        steps_per_epoch=3,
        learning_rate=3e-3,
        warmup_steps=1,
        verbose=0,
    )
    result = {}
    outside = tiny_segformer(NUM_CLASSES)
    keras.utils.set_random_seed(0)
    with distribution_scope(2):
        model = tiny_segformer(NUM_CLASSES)
        try:
            trainer.fit(model, train, callbacks=[Kill()], **kwargs)
        except KeyboardInterrupt:
            result["killed"] = True
        saved = model.get_weights()
    with distribution_scope(2) as replicas:
        fresh = tiny_segformer(NUM_CLASSES)
        record = Record()
        history = trainer.fit(
            fresh,
            train,
            callbacks=[record],
            validation_data=_dataset(x[8:], y[8:], 1),  # padded to 2
            **kwargs,
        )
        result["placement"] = _placement(fresh)
        try:
            trainer.fit(
                tiny_segformer(NUM_CLASSES),
                _dataset(x, y, 3, repeat=True),
                **dict(kwargs, out_dir=os.path.join(out_dir, "odd")),
            )
        except ValueError as e:
            result["odd_batch_error"] = str(e)
        try:
            trainer.fit(
                outside,
                train,
                **dict(kwargs, out_dir=os.path.join(out_dir, "outside")),
            )
        except ValueError as e:
            result["built_outside_error"] = str(e)
    result["replicas"] = replicas.num_replicas
    result["resumed_at_step"] = record.start
    result["resumed_epochs"] = record.epochs
    result["resumed_from_backup"] = all(
        np.array_equal(a, b) for a, b in zip(record.weights, saved)
    )
    result["history"] = history.history
    with open(os.path.join(out_dir, "log.csv")) as f:
        header, *rows = f.read().strip().splitlines()
    column = header.split(",").index("loss")
    result["epoch_losses"] = [float(r.split(",")[column]) for r in rows]
    result["checkpoints"] = sorted(
        os.listdir(os.path.join(out_dir, "checkpoints"))
    )
    result["saved_model"] = os.path.isfile(os.path.join(out_dir, "model.keras"))
    result["cli_rc"] = main(
        ["train", "--num-classes", "4", "--images", "i", "--masks", "m"]
        + ["--devices", "2", "--batch-size", "3", "--out", out_dir]
    )
    return result


def _worker(case, out_path):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    start = time.perf_counter()
    if case == "step":
        result = _case_step()
    else:
        result = _case_fit(os.path.dirname(out_path))
    result["total_seconds"] = time.perf_counter() - start
    with open(out_path, "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """One persistent compilation cache for both worker processes (unless
    the caller set one): the second model of a case reuses the first's
    compiled steps."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        tmp_path_factory.mktemp("jax_cache")
    )


def _run_two_devices(case, tmp_path, jax_cache):
    if BACKEND not in TWO_DEVICE_BACKENDS:
        pytest.skip(f"no multi-device training on {BACKEND}")
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    if BACKEND == "jax":
        flags = "--xla_force_host_platform_device_count=2 " + FAST_XLA
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
        env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), case, str(out)],
        env=env,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(out.read_text())
    print(json.dumps(result.get("seconds")), result["total_seconds"])
    return result


@pytest.fixture(scope="module")
def one_step(tmp_path_factory, jax_cache):
    return _run_two_devices("step", tmp_path_factory.mktemp("step"), jax_cache)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, jax_cache):
    return _run_two_devices("fit", tmp_path_factory.mktemp("fit"), jax_cache)


def test_the_step_runs_on_two_devices(one_step):
    assert one_step["replicas"] == 2
    assert one_step["placement"] == [2, 2]  # model and optimizer variables
    if BACKEND == "jax":
        assert one_step["device_batch"] == 2  # a batch of 4 split in two


def test_two_device_step_equals_one_device_step(one_step):
    # Gradients averaged over the global batch (not summed, not per
    # device), BatchNorm statistics of the global batch, GroupedAdamW's
    # per-variable rates: the weights after one step agree, moving
    # BatchNorm statistics included.
    diffs = one_step["weight_diffs"]
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, (worst, diffs[worst])
    # ... and the step moved them far more than that, the head most (x10).
    steps = one_step["steps"]
    assert max(steps.values()) > 1e-3
    head = max(v for k, v in steps.items() if k.startswith("decode_head/"))
    assert head == max(steps.values())
    single, double = one_step["logs"]
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-5)


def test_metrics_sum_over_devices(one_step):
    single, double = one_step["confusion"]
    assert np.sum(double) == one_step["labelled_pixels"]
    np.testing.assert_array_equal(double, single)
    logs_single, logs_double = one_step["logs"]
    for name in ("mean_iou", "mean_accuracy", "pixel_accuracy"):
        assert logs_double[name] == pytest.approx(logs_single[name], abs=1e-6)


def test_fit_resumes_and_lowers_the_loss(fitted):
    assert fitted["replicas"] == 2 and fitted["placement"] == [2, 2]
    assert fitted["killed"]
    assert fitted["resumed_epochs"] == [2]  # only the missing epoch ran
    assert fitted["resumed_at_step"] == 6
    assert fitted["resumed_from_backup"]
    assert fitted["checkpoints"] == [
        "epoch-001.weights.h5",
        "epoch-002.weights.h5",
        "epoch-003.weights.h5",
    ]
    assert fitted["saved_model"]
    losses = fitted["epoch_losses"]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], losses
    # Validation batches of 1 were padded for the two devices.
    assert 0.0 < fitted["history"]["val_mean_iou"][0] <= 1.0


def test_fit_refuses_a_batch_that_does_not_split(fitted):
    assert (
        "batch size (3) must be divisible by the number of devices (2)"
        in (fitted["odd_batch_error"])
    )
    assert fitted["cli_rc"] == 2


def test_fit_refuses_a_model_built_outside_the_scope(fitted):
    assert (
        "built outside the distribution scope"
        in (fitted["built_outside_error"])
    )


def test_padding_changes_no_score():
    """Blank samples labelled 255 change neither the loss nor the metric."""
    from keras_segformer.training import MeanIoU, SegFormerLoss
    from keras_segformer.training.distribute import pad_batches

    x, y = _data(3, seed=2)
    logits = np.random.default_rng(3).normal(size=(3, SIZE, SIZE, NUM_CLASSES))
    ds = _dataset(logits.astype("float32"), y, 3)
    padded = list(pad_batches(ds, 4).as_numpy_iterator())
    ((p_logits, p_labels),) = padded
    assert p_logits.shape[0] == 4 and (p_labels[3] == 255).all()
    loss = SegFormerLoss()
    assert float(loss(p_labels, p_logits)) == pytest.approx(
        float(loss(y, logits)), rel=1e-6
    )
    metric, reference = MeanIoU(NUM_CLASSES), MeanIoU(NUM_CLASSES)
    metric.update_state(p_labels, p_logits)
    reference.update_state(y, logits)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(metric.confusion.value),
        keras.ops.convert_to_numpy(reference.confusion.value),
    )


def test_more_devices_than_the_host_has_are_refused():
    from keras_segformer.training import distribution_scope, list_devices

    with pytest.raises(ValueError, match="devices"):
        with distribution_scope(devices=len(list_devices()) + 1):
            pass


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch refusal")
def test_torch_refuses_several_devices():
    from keras_segformer.training import distribution_scope

    with pytest.raises(ValueError, match="not supported on the torch"):
        with distribution_scope(devices=2):
            pass
    with distribution_scope(devices=1) as replicas:  # one device is fine
        assert replicas.num_replicas == 1


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
