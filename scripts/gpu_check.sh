#!/usr/bin/env bash
# The GPU check, run from the repository root on the GPU machine (torch preinstalled, no
# network): builds the extension against the installed torch, runs every CUDA test (pytest
# -m cuda: CUDA == CPU for every op, dtype and loss option, same probes per seed, fp16/bf16
# bounds, and the cuda cases of the op tests) and the short kernel benchmark, and writes
# the results to $OUT (device tool) or benchmarks/results/gpu_<date>/:
#   gpu_check.md (device, versions, date, build time, test counts), cuda_tests.xml, cuda_tests.log,
#   benchmark output (JSON + markdown table) from benchmarks/run.py --quick.
# Usage: bash scripts/gpu_check.sh   (TORCH_CUDA_ARCH_LIST defaults to this GPU's arch)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results/gpu_$(date +%Y-%m-%d)}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
SUMMARY="$RESULTS/gpu_check.md"
arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
  echo "- nvcc: $($CUDA_HOME/bin/nvcc --version | tail -2 | head -1)"
  echo "- TORCH_CUDA_ARCH_LIST: $TORCH_CUDA_ARCH_LIST"
} > "$SUMMARY"

start=$(date +%s)
if ! MAX_JOBS=$(nproc) $PY -m pip install --no-build-isolation --no-deps --no-index -e . > "$RESULTS/build.log" 2>&1; then
  echo "- build: FAILED (build.log)" >> "$SUMMARY"; tail -40 "$RESULTS/build.log"; cat "$SUMMARY"; exit 1
fi
echo "- build: $(( $(date +%s) - start )) s" >> "$SUMMARY"

start=$(date +%s)
$PY -m pytest -q -m cuda -p no:cacheprovider -rs tests/test_cuda.py tests/test_domain_losses.py tests/test_head_*.py tests/test_hutchinson_*.py --junitxml="$RESULTS/cuda_tests.xml" 2>&1 | tee "$RESULTS/cuda_tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
echo "- CUDA tests (pytest -m cuda): $(tail -1 "$RESULTS/cuda_tests.log") [exit $tests_rc, $(( $(date +%s) - start )) s]" >> "$SUMMARY"

start=$(date +%s)
$PY benchmarks/run.py --device cuda --quick --out "$RESULTS" 2>&1 | tee "$RESULTS/benchmark.log" | tail -40
bench_rc=${PIPESTATUS[0]}
echo "- benchmark (benchmarks/run.py --device cuda --quick): exit $bench_rc, $(( $(date +%s) - start )) s" >> "$SUMMARY"
cat "$SUMMARY"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
