"""Worker processes: one job each, run one at a time or, for the overhead
case, all at once taking turns (``benchmarks/turns.py``). A worker that
fails or hangs becomes a result dict, never an exception here."""

import json
import os
import re
import subprocess
import sys
import time

from benchmarks import turns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The worker's command: the checkout first on sys.path, then the job.
_WORKER_BOOT = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); "
    "from benchmarks.workers import worker_main; "
    "sys.exit(worker_main(json.loads(sys.argv[2])))"
)


class WorkerRunner:
    """Runs jobs in fresh processes, one at a time, and reports progress."""

    def __init__(self, out_dir, *, total, timeout_s, threads, device="cpu"):
        self.device = device
        self.log_dir = os.path.join(out_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.total = total
        self.done = 0
        self.timeout_s = timeout_s
        self.threads = threads

    def _env(self, backend):
        env = dict(os.environ)
        env["KERAS_BACKEND"] = backend
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # CPU benchmark, every column
            env["JAX_PLATFORMS"] = "cpu"
        else:
            if env.get("JAX_PLATFORMS") == "cpu":
                del env["JAX_PLATFORMS"]
            # Allocate on demand, so that peak memory means something.
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        # keras_segformer from this checkout, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (ROOT, env.get("PYTHONPATH")) if p
        )
        if self.threads:
            for key in (
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS",
            ):
                env[key] = str(self.threads)
        return env

    def _streams(self, backend, log):
        """A worker's environment, output to ``log``, no input."""
        return {
            "env": self._env(backend),
            "stdout": log,
            "stderr": subprocess.STDOUT,
            "stdin": subprocess.DEVNULL,
        }

    def _result(self, code, spec, log_path):
        if code is None:
            return {
                "status": "timeout",
                "error": f"no result within --timeout {self.timeout_s} s",
            }
        if os.path.exists(spec["result"]):
            with open(spec["result"]) as f:
                return json.load(f)
        return {
            "status": "error",
            "error": f"worker exited with code {code} and no result; "
            f"log tail: {_tail(log_path)}",
        }

    def _prepare(self, spec, label):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        spec = {
            **spec,
            "device": self.device,
            "threads": self.threads,
            "result": os.path.abspath(
                os.path.join(self.log_dir, stem + ".json")
            ),
        }
        if os.path.exists(spec["result"]):
            os.remove(spec["result"])
        log_path = os.path.join(self.log_dir, stem + ".log")
        command = [sys.executable, "-c", _WORKER_BOOT, ROOT, json.dumps(spec)]
        return spec, log_path, command

    def _finish(self, code, spec, log_path, start):
        result = self._result(code, spec, log_path)
        result["wall_s"] = round(time.monotonic() - start, 1)
        result["log"] = os.path.relpath(log_path, os.path.dirname(self.log_dir))
        self.done += 1
        return result

    def run(self, spec, label, backend="torch"):
        """Run ``spec`` in a worker; return its result dict (never raises
        for a failing worker)."""
        spec, log_path, command = self._prepare(spec, label)
        start = time.monotonic()
        with open(log_path, "w") as log:
            try:
                code = subprocess.run(
                    command,
                    **self._streams(backend, log),
                    timeout=self.timeout_s,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        return self._finish(code, spec, log_path, start)

    def run_together(self, jobs):
        """Run ``jobs`` (``(spec, label, backend)`` each) in workers started
        at once that take turns on the machine (``benchmarks/turns.py``);
        return their results in order. The time limit is ``--timeout``
        per worker, for all of them together."""
        baton = os.path.join(self.log_dir, "turns.json")
        turns.create(baton, len(jobs))
        running = []
        start = time.monotonic()
        for index, (spec, label, backend) in enumerate(jobs):
            spec = {**spec, "turns": {"path": baton, "index": index}}
            spec, log_path, command = self._prepare(spec, label)
            log = open(log_path, "w")
            process = subprocess.Popen(command, **self._streams(backend, log))
            running.append((index, process, log, spec, log_path))
        deadline = start + self.timeout_s * len(jobs)
        codes = {}
        while len(codes) < len(running):
            for index, process, log, _, _ in running:
                if index in codes:
                    continue
                code = process.poll()
                if code is None and time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                elif code is None:
                    continue
                log.close()
                codes[index] = code
                turns.leave(baton, index)  # a dead worker gives up its turn
            time.sleep(0.05)
        return [
            self._finish(codes[index], spec, log_path, start)
            for index, _, _, spec, log_path in running
        ]

    def progress(self, text):
        print(f"[{self.done:>2}/{self.total}] {text}", flush=True)


def _tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
