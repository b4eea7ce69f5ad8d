"""Interleaved timing: the columns of a case take turns on the machine.

On a shared machine the speed of the CPU drifts by +-30% over seconds
(other tenants, clock changes), so columns timed one after the other in
separate processes compare different moments. For the overhead case,
where the figures are a few milliseconds, the runner starts every column's
worker at once and they pass a baton: only the holder runs (setup, warm-up
and a block of ~0.2 s of timed calls), then hands it to the next worker
in the rotation. The others sleep, polling the baton file. So each
column's calls are spread over the same minutes as its peers'.

The baton is a small JSON file ``{"turn": i, "active": [...]}`` changed
under an exclusive ``flock``. A worker leaves the rotation when it ends;
the runner makes any worker that exits (or is killed) leave too, so that
a failing column never stops the others.
"""

import contextlib
import fcntl
import json
import os
import time

# Seconds between two looks at the baton while waiting (a few syscalls and a
# tiny read: ~50 us of CPU per look, 0.5% of a core).
POLL_S = 0.01
# Timed calls run in blocks of about this many seconds per turn.
BLOCK_S = 0.2


@contextlib.contextmanager
def _locked(path):
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            state = json.load(f)
            yield state
            f.seek(0)
            f.truncate()
            json.dump(state, f)
            f.flush()  # on disk before the lock goes: readers see it all
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def create(path, count):
    """A baton file for ``count`` workers (0 .. count - 1), 0's turn."""
    with open(path + ".tmp", "w") as f:
        json.dump({"turn": 0, "active": list(range(count))}, f)
    os.replace(path + ".tmp", path)


def _next(state, index):
    active = state["active"]
    if not active:
        return None
    later = [i for i in active if i > index]
    return later[0] if later else active[0]


def leave(path, index):
    """Take worker ``index`` out of the rotation (idempotent); if it held
    the baton, the next one gets it."""
    with _locked(path) as state:
        if index in state["active"]:
            state["active"].remove(index)
        if state["turn"] == index:
            state["turn"] = _next(state, index)


class Turns:
    """One worker's side of the baton (``spec["turns"]``: path, index).

    The worker holds the baton from ``wait()`` until ``pass_on()``;
    ``time_calls`` passes it after each block and waits to get it back.
    """

    def __init__(self, path, index):
        self.path = path
        self.index = index

    @classmethod
    def from_spec(cls, spec):
        turns = spec.get("turns")
        return None if turns is None else cls(turns["path"], turns["index"])

    def wait(self):
        """Block until it is this worker's turn."""
        while True:
            with open(self.path) as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                state = json.load(f)
                fcntl.flock(f, fcntl.LOCK_UN)
            if state["turn"] == self.index:
                return
            time.sleep(POLL_S)

    def pass_on(self):
        """Hand the baton to the next worker (kept if it is alone)."""
        with _locked(self.path) as state:
            if state["turn"] == self.index:
                state["turn"] = _next(state, self.index)

    def leave(self):
        leave(self.path, self.index)
