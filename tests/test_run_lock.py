"""One training run at a time in a run folder (training/run_lock.py)."""

import os
import subprocess
import sys

import pytest

from keras_segformer.training import trainer
from keras_segformer.training.run_lock import LOCK_FILE, RunInUseError, run_lock

HOLD = """
import sys, time
from keras_segformer.training.run_lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_is_refused_and_touches_nothing(tmp_path):
    """While another process trains in the folder, ``fit`` names the
    folder and that process and leaves the folder's files as they are
    (the start of a run removes temporaries: not the other run's)."""
    temporary = tmp_path / ".epoch-001.tmp-1.weights.h5"  # the other's
    temporary.write_bytes(b"being written")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError) as e:
            # Refused before the model or the data are looked at.
            trainer.fit(
                None,
                None,
                out_dir=tmp_path,
                epochs=1,
                steps_per_epoch=1,
                overwrite=True,
            )
        assert isinstance(e.value, OSError)  # the CLI's one-line error
        assert str(tmp_path) in str(e.value)
        assert f"process {child.pid}" in str(e.value)
        assert temporary.read_bytes() == b"being written"
    finally:
        child.kill()
        child.wait()
    # A killed holder leaves no lock behind.
    with run_lock(tmp_path):
        assert os.path.isfile(tmp_path / LOCK_FILE)


def test_the_lock_is_released_after_the_run_and_after_an_error(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunInUseError):
            with run_lock(tmp_path):  # another open file: refused too
                pass
    with pytest.raises(KeyError):
        with run_lock(tmp_path):
            raise KeyError("boom")
    with run_lock(tmp_path):
        pass
