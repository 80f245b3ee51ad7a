#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with the pinned requirements,
# then builds hessalign_ext (CPU kernels always; CUDA kernels whenever nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -m pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
# The build is skipped when csrc/, setup.py and torch are those of the last successful build.
stamp=$({ find csrc -type f | sort | xargs cat; cat setup.py; echo "${CUDA_HOME:-} ${TORCH_CUDA_ARCH_LIST:-}"; .venv/bin/python -c "import torch; print(torch.__version__)"; } | sha256sum | cut -c1-16)
if [ -f .venv/hessalign_build.stamp ] && [ "$(cat .venv/hessalign_build.stamp)" = "$stamp" ] \
   && .venv/bin/python -c "import hessalign_ext" 2>/dev/null; then
  echo "hessalign_ext is up to date (build stamp $stamp)"
  exit 0
fi
start=$(date +%s)
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install -q --no-build-isolation -e . >build.log 2>&1; then
  grep -v "^WARNING: Location" build.log | tail -40
  echo "setup: building hessalign_ext failed (full log: build.log)" >&2
  exit 1
fi
.venv/bin/python -c "import hessalign_ext, torch; print('hessalign_ext built and importable (torch', torch.__version__ + ')')"
echo "$stamp" > .venv/hessalign_build.stamp
echo "build: $(( $(date +%s) - start )) s"
