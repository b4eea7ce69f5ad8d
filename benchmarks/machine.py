"""The machine a run measured: CPU, bfloat16 matrix units, memory, load
and library versions, read without importing any framework."""

import importlib.metadata
import os
import platform
import re

# CPU flags (/proc/cpuinfo) of bfloat16 matrix instructions: x86 AVX-512
# BF16 and AMX-BF16 (``flags``), Arm BF16 (BFMMLA, ``Features``).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# int8 dot-product instructions (x86 VNNI, AMX-INT8; Arm SDOT / I8MM),
# which int8 artifacts run on.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
NO_BF16_UNITS = "no bf16 units on this CPU"
VERSIONED = (
    "keras-segformer",
    "keras",
    "tensorflow",
    "jax",
    "jaxlib",
    "torch",
    "transformers",
    "keras-hub",
    "onnxruntime",
    "onnx",
    "tf2onnx",
    "ai-edge-litert",
    "numpy",
    "matplotlib",
)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_flags(cpuinfo):
    """The first CPU's flags (x86 ``flags``, Arm ``Features``), a set."""
    found = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo or "", re.M)
    return set(found[1].split()) if found else set()


def bf16_units(cpuinfo=None):
    """Whether the CPU has bfloat16 matrix units.

    Args:
        cpuinfo: str or None. Text of ``/proc/cpuinfo`` (default: read it).

    Returns:
        dict. ``has``: True, False, or None when it cannot be told (no
        ``/proc/cpuinfo``); ``flags``: the bf16 flags found; ``text``: a
        short phrase for the table.
    """
    if cpuinfo is None:
        cpuinfo = _read("/proc/cpuinfo")
    if not cpuinfo:
        return {"has": None, "flags": [], "text": "bf16 units unknown"}
    flags = [f for f in BF16_FLAGS if f in cpu_flags(cpuinfo)]
    if not flags:
        return {"has": False, "flags": [], "text": NO_BF16_UNITS}
    return {
        "has": True,
        "flags": flags,
        "text": f"bf16 units: {' '.join(flags)}",
    }


def machine_info():
    """CPU, cores, memory, bf16 units and library versions."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    cpuinfo = _read("/proc/cpuinfo")
    if cpuinfo:
        models = re.findall(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        if models:
            info["cpu_model"] = models[0].strip()
        wanted = ("avx2", "fma", "avx512f") + BF16_FLAGS + INT8_FLAGS
        present = cpu_flags(cpuinfo)
        info["cpu_flags"] = [f for f in wanted if f in present]
    info["bf16_units"] = bf16_units(cpuinfo)
    total = re.search(r"MemTotal:\s*(\d+)", _read("/proc/meminfo") or "")
    if total:
        info["memory_gb"] = round(int(total[1]) / 2**20, 1)
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    info["versions"] = versions
    info["thread_env"] = {k: os.environ.get(k) for k in THREAD_ENV}
    return info


def load_average():
    """The 1, 5 and 15 minute load averages, or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
