#!/usr/bin/env bash
# GPU check: parity (TF32 off) and speed against transformers on the first
# NVIDIA GPU, in a few minutes from a fresh copy of the tree.
#
#   bash tools/gpu_check.sh [OUT_DIR]        (default: $OUT or gpu_check_out)
#
# It uses the machine's python3 with its torch (CUDA), jax (CUDA) and
# transformers, and installs what else it needs (Keras and its two pure
# helpers) into /tmp/gpu_check_site: from wheels in .whl/ when the machine
# is offline (put them there with `pip download --no-deps keras==3.15.1
# optree namex`), else from the package index. TensorFlow is not needed:
# the check covers the JAX and PyTorch backends. Writes gpu_check.json and
# gpu_check.md (see tools/gpu_check.py) and exits 1 if parity fails.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check_out}}
py=${PYTHON:-python3}
site=/tmp/gpu_check_site
mkdir -p "$out" "$site"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
if ! $py -c "import keras" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" .whl/*.whl || exit 2
  else
    $py -m pip install -q --target "$site" keras || exit 2
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
$py -c "import keras, torch, jax, transformers; print('keras', \
keras.__version__, 'torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), 'jax', jax.__version__, jax.devices(), \
'transformers', transformers.__version__)" || exit 2
PYTHONUNBUFFERED=1 exec $py tools/gpu_check.py --out "$out" \
  ${GPU_CHECK_ARGS:-}
