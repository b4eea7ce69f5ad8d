"""Multi-worker training: two local worker processes on free ports.

TensorFlow: ``TF_CONFIG`` (MultiWorkerMirroredStrategy); JAX: Keras'
``KERAS_DISTRIBUTION_*`` variables (gloo collectives on CPU). This file is
also the worker (``python tests/test_multiworker.py PHASE INDEX DIR``).
Two launches of both workers cover everything, to keep the cost low:

- phase ``a``: one training step on the two workers (each its half of a
  global batch of 4), then ``keras-segformer train`` in which worker 1
  dies at the start of epoch 2: worker 0 must stop with a clear message;
- phase ``b``: the same command again on both: it resumes from the
  chief's backup and finishes the run.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

NUM_CLASSES = 4
BACKEND = keras.backend.backend()
HERE = os.path.dirname(os.path.abspath(__file__))
FAST_XLA = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes"
)
# Seconds a phase may take: generous, the 2-core CI machine is shared.
PHASE_TIMEOUT = 1200
KILLED_AT_EPOCH = 1  # worker 1 dies when epoch 2 (index 1) begins


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _folders(root):
    """The synthetic data's folders (written by the ``cluster_run``
    fixture): ``{"train": [images, masks], "val": [...]}``."""
    with open(os.path.join(root, "folders.json")) as f:
        return json.load(f)


def _cli_args(root):
    folders = _folders(root)
    return [
        "train",
        "--num-classes",
        str(NUM_CLASSES),
        "--images",
        folders["train"][0],
        "--masks",
        folders["train"][1],
        "--val-images",
        folders["val"][0],
        "--val-masks",
        folders["val"][1],
        "--epochs",
        "2",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--crop-size",
        "32",
        "--base-size",
        "64",
        "32",
        "--warmup-steps",
        "0",
        "--lr",
        "0.003",
        "--out",
        os.path.join(root, "run"),
    ]


# ---------------------------------------------------------------- worker


def _step(root, found):
    """One fit step of a global batch of 4, this worker's half."""
    import tensorflow as tf
    from conftest import tiny_segformer

    from keras_segformer.training import cluster, trainer

    inputs = np.load(os.path.join(root, "step_in.npz"))
    weights = [inputs[f"w{i}"] for i in range(int(inputs["count"]))]
    model = tiny_segformer(NUM_CLASSES, dropout=0.0, drop_path_rate=0.0)
    model.set_weights(weights)
    # As tests/test_distributed.py: Adam's first step with a large
    # epsilon is proportional to the gradient.
    trainer.compile_model(
        model, total_steps=10, learning_rate=0.1, warmup_steps=0, epsilon=1.0
    )
    x = np.stack(cluster.shard(inputs["x"], found))
    y = np.stack(cluster.shard(inputs["y"], found))
    batch = cluster.input_batch_size(4, found)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    history = model.fit(cluster.worker_dataset(ds, 0, 0), verbose=0)
    if found.chief:
        out = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        np.savez(os.path.join(root, "step_out.npz"), **out)
    return {k: float(v[0]) for k, v in history.history.items()}


def _patch_worker(root, index, kill):
    """A tiny model for the CLI; record every file this worker renames
    into place; worker 1 dies when epoch ``KILLED_AT_EPOCH`` begins."""
    from conftest import TINY, TINY_DECODER

    import keras_segformer
    from keras_segformer.training import trainer

    build = keras_segformer.build_segformer

    def tiny(num_classes, variant, id2label=None):
        return build(
            num_classes,
            decoder_hidden_size=TINY_DECODER,
            id2label=id2label,
            **TINY,
        )

    keras_segformer.build_segformer = tiny
    # A line per file, written at once: a killed worker keeps its list.
    replaced = open(os.path.join(root, f"replaced_{index}.txt"), "a")
    os_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        replaced.write(os.path.abspath(os.fspath(dst)) + "\n")
        replaced.flush()
        return os_replace(src, dst, *args, **kwargs)

    os.replace = replace

    class Die(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == KILLED_AT_EPOCH:
                print("worker 1: exiting (simulated kill)", flush=True)
                os._exit(9)

    if kill and index == 1:
        callbacks = trainer._run_callbacks
        trainer._run_callbacks = lambda *a: [*callbacks(*a), Die()]
    return replaced


def _worker(phase, index, root):
    from keras_segformer.cli import main
    from keras_segformer.training import distribution_scope

    result = {}
    start = time.perf_counter()
    if phase == "a":
        with distribution_scope() as replicas:
            result["replicas"] = replicas.num_replicas
            result["chief"] = replicas.cluster.chief
            result["step_logs"] = _step(root, replicas.cluster)
        result["step_seconds"] = time.perf_counter() - start
    # Written now: the CLI may leave with os._exit (a lost JAX worker).
    with open(os.path.join(root, f"result_{phase}{index}.json"), "w") as f:
        json.dump(result, f)
    _patch_worker(root, index, kill=phase == "a")
    sys.exit(main(_cli_args(root)))


# ----------------------------------------------------------------- tests


def _environment(index, ports, root):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    hosts = [f"localhost:{p}" for p in ports]
    if BACKEND == "tensorflow":
        config = {"cluster": {"worker": hosts}, "task": {}}
        config["task"] = {"type": "worker", "index": index}
        env["TF_CONFIG"] = json.dumps(config)
    else:
        env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = ",".join(hosts)
        env["KERAS_DISTRIBUTION_NUM_PROCESSES"] = "2"
        env["KERAS_DISTRIBUTION_PROCESS_ID"] = str(index)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_XLA}".strip()
        env.setdefault(
            "JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache")
        )
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def _launch(phase, root):
    """Both workers of ``phase``; their outputs, exit codes and the
    seconds each took."""
    ports = _free_ports(2)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), phase, str(i), root],
            env=_environment(i, ports, root),
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs, codes, seconds = [], [], []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=PHASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
        codes.append(proc.returncode)
        seconds.append(time.perf_counter() - start)
    return outputs, codes, seconds


def _results(phase, root):
    """Each worker's result file and the files it renamed into place
    (then the list starts afresh for the next phase)."""
    results = []
    for i in range(2):
        with open(os.path.join(root, f"result_{phase}{i}.json")) as f:
            result = json.load(f)
        path = os.path.join(root, f"replaced_{i}.txt")
        if os.path.exists(path):
            with open(path) as f:
                result["replaced"] = f.read().split()
            os.remove(path)
        else:
            result["replaced"] = []
        results.append(result)
    return results


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """Data, the one-process reference step, then phases a and b."""
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip(f"no multi-worker training on {BACKEND}")
    from conftest import tiny_segformer
    from test_distributed import _data

    from keras_segformer.data import synthetic

    root = str(tmp_path_factory.mktemp("multiworker"))
    files = synthetic.generate(
        os.path.join(root, "data"),
        8,
        3,
        size=(32, 32),
        num_classes=NUM_CLASSES,
        seed=1,
    )
    folders = {
        split: [os.path.dirname(f.images[0]), os.path.dirname(f.masks[0])]
        for split, f in files.items()
    }
    with open(os.path.join(root, "folders.json"), "w") as f:
        json.dump(folders, f)
    x, y = _data(4, seed=0)
    keras.utils.set_random_seed(0)
    model = tiny_segformer(NUM_CLASSES, dropout=0.0, drop_path_rate=0.0)
    weights = model.get_weights()
    np.savez(
        os.path.join(root, "step_in.npz"),
        x=x,
        y=y,
        count=len(weights),
        **{f"w{i}": w for i, w in enumerate(weights)},
    )
    run = {"root": root, "x": x, "y": y, "weights": weights}
    for phase in "ab":
        outputs, codes, seconds = _launch(phase, root)
        run[phase] = {
            "outputs": outputs,
            "codes": codes,
            "seconds": seconds,
            "results": _results(phase, root),
        }
        # The backup (removed once the run is finished) after phase a.
        state = os.path.join(root, "run", "backup", "state.json")
        if os.path.exists(state):
            with open(state) as f:
                run[phase]["backup"] = json.load(f)
        print(f"phase {phase}: {[round(s) for s in seconds]} s")
    return run


def _explain(run, phase):
    return "\n".join(o[-4000:] for o in run[phase]["outputs"])


def test_two_worker_step_equals_one_process_step(cluster_run):
    from test_distributed import _one_step

    run = cluster_run
    result = run["a"]["results"][0]
    assert result is not None, _explain(run, "a")
    assert result["replicas"] == 2 and result["chief"]
    assert run["a"]["results"][1]["chief"] is False
    single, logs = _one_step(
        run["x"], run["y"], run["weights"], contextlib.nullcontext()
    )
    saved = np.load(os.path.join(run["root"], "step_out.npz"))
    worst = 0.0
    for i, a in enumerate(single.get_weights()):
        worst = max(worst, float(np.max(np.abs(a - saved[f"w{i}"]))))
    assert worst < 1e-5, worst
    # ... and the step moved the weights far more than that.
    moved = max(
        float(np.max(np.abs(a - w)))
        for a, w in zip(single.get_weights(), run["weights"])
    )
    assert moved > 1e-3
    assert result["step_logs"]["loss"] == pytest.approx(logs["loss"], abs=1e-5)


def test_each_log_starts_with_the_cluster_line(cluster_run):
    for index, output in enumerate(cluster_run["a"]["outputs"]):
        lines = [line for line in output.splitlines() if "workers" in line]
        role = "the chief" if index == 0 else "not the chief"
        assert lines, output[-3000:]
        assert (
            f"2 workers, this is worker {index} ({role}), 2 replicas in sync"
            in lines[0]
        )


def test_a_killed_worker_stops_the_other_with_a_clear_message(cluster_run):
    phase = cluster_run["a"]
    codes, outputs = phase["codes"], phase["outputs"]
    assert codes[1] == 9, outputs[1][-3000:]  # the simulated kill
    assert codes[0] == 3, outputs[0][-3000:]  # WorkerLostError
    assert "another worker stopped or cannot be reached" in outputs[0]
    assert "Restart every worker with the same command" in outputs[0]
    # The chief committed epoch 1 before the kill.
    assert phase["backup"]["epoch"] == 1


def test_the_restart_resumes_and_the_chief_writes_one_run(cluster_run):
    phase = cluster_run["b"]
    assert phase["codes"] == [0, 0], _explain(cluster_run, "b")
    assert "resuming" in phase["outputs"][0]
    run_dir = os.path.join(cluster_run["root"], "run")
    assert sorted(os.listdir(run_dir)) == [
        ".lock",  # the chief's run lock; the other worker writes nothing
        "checkpoints",
        "log.csv",
        "model.keras",
        "run.json",
        "tensorboard",
    ]
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == [
        "epoch-001.weights.h5",
        "epoch-002.weights.h5",
    ]
    record = json.load(open(os.path.join(run_dir, "run.json")))
    assert record["model_epochs"] == 2
    for phase_name in "ab":
        chief, other = cluster_run[phase_name]["results"]
        assert any(p.startswith(run_dir) for p in chief["replaced"])
        # Worker 1 wrote nothing in the run folder (its own scratch).
        assert other["replaced"]
        assert not [p for p in other["replaced"] if p.startswith(run_dir)]


def test_validation_is_scored_once_over_both_workers(cluster_run):
    """The last epoch's val_mean_iou is the one-process score of the
    final model on the whole validation set (not one worker's half)."""
    from keras_segformer.data import make_dataset
    from keras_segformer.training import trainer

    run_dir = os.path.join(cluster_run["root"], "run")
    _, rows = trainer.read_log(os.path.join(run_dir, "log.csv"))
    assert sorted(rows) == [0, 1]
    logged = float(rows[1]["val_mean_iou"])
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    images, masks = _folders(cluster_run["root"])["val"]
    ds = make_dataset(
        images,
        masks,
        batch_size=1,
        training=False,
        num_classes=NUM_CLASSES,
    )
    scores = trainer.evaluate(model, ds, verbose=False)
    assert logged == pytest.approx(scores["mIoU"], abs=1e-5)


# ------------------------------------------- in-process: parsing, shards


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch refusal")
def test_torch_refuses_a_cluster(monkeypatch, tmp_path, capsys):
    from keras_segformer.cli import main
    from keras_segformer.training import distribution_scope

    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="not supported on the torch"):
        with distribution_scope():
            pass
    rc = main(
        ["train", "--num-classes", "2", "--images", str(tmp_path)]
        + ["--masks", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "not supported on the torch backend" in capsys.readouterr().err


@pytest.mark.skipif(BACKEND == "torch", reason="no cluster on PyTorch")
def test_the_environment_describes_the_cluster(monkeypatch):
    from keras_segformer.training.cluster import cluster

    for name in ("TF_CONFIG", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"KERAS_DISTRIBUTION_{name}", raising=False)
    assert cluster() is None
    if BACKEND == "tensorflow":
        spec = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
        task = {"type": "worker", "index": 1}
        monkeypatch.setenv(
            "TF_CONFIG", json.dumps({"cluster": spec, "task": task})
        )
        found = cluster()
        assert (found.workers, found.index, found.chief) == (3, 2, False)
        one = {"cluster": {"worker": ["a:1"]}, "task": task}
        monkeypatch.setenv("TF_CONFIG", json.dumps(one))
        assert cluster() is None  # one worker: no cluster
        monkeypatch.setenv("TF_CONFIG", "{not json")
        with pytest.raises(ValueError, match="TF_CONFIG must be a JSON"):
            cluster()
    else:
        monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "a:1,b:1")
        monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
        found = cluster()
        assert (found.workers, found.index, found.chief) == (2, 1, False)
        monkeypatch.delenv("KERAS_DISTRIBUTION_JOB_ADDRESSES")
        monkeypatch.setenv("SLURM_NTASKS", "4")
        monkeypatch.setenv("SLURM_PROCID", "0")
        found = cluster()
        assert (found.workers, found.source, found.chief) == (4, "SLURM", True)


def test_shards_split_the_files_once():
    from keras_segformer.training.cluster import Cluster, shard

    files = [f"f{i}" for i in range(7)]
    shards = [shard(files, Cluster("jax", 3, i, "test")) for i in range(3)]
    assert sorted(sum(shards, [])) == files  # each file once
    assert [len(s) for s in shards] == [3, 2, 2]
    assert shard(files, None) == files
    with pytest.raises(ValueError, match="2 files cannot be shared by 3"):
        shard(files[:2], Cluster("jax", 3, 0, "test"))


def test_worker_dataset_pads_a_shorter_shard_with_blank_samples():
    import tensorflow as tf

    from keras_segformer.training.cluster import worker_dataset

    x = np.ones((3, 8, 8, 3), "float32")
    y = np.ones((3, 8, 8), "int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    padded = list(worker_dataset(ds, 3, 4).as_numpy_iterator())
    images = np.concatenate([b[0] for b in padded])
    labels = np.concatenate([b[1] for b in padded])
    assert len(labels) == 4 and (labels[3] == 255).all()
    assert (images[3] == 0).all() and (labels[:3] == 1).all()
    options = worker_dataset(ds, 3, 3).options().experimental_distribute
    assert options.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
