#!/usr/bin/env bash
# The README's test command: sets up a fresh machine (scripts/setup.sh: .venv, torch, the
# extension with its CUDA sources compiled when nvcc is present), then runs
#   1. every test except the emulated-CUDA ones (CUDA tests skip, with a reason, without a GPU);
#   2. the emulated-CUDA kernel tests under CUDAEMU_ORDER=scrambled, then every kernel once more
#      (float64) under forward and reverse;
#   3. every kernel (float64) once more under AddressSanitizer + UndefinedBehaviorSanitizer;
#   4. the CMake/libtorch build of the CPU library, one unit per source file (setup.py's build
#      is one unity unit), and of the C++ kernel test, run by ctest;
#   5. the C++ sources against torch 2.11's headers, the GPU machines' torch
#      (scripts/check_torch_headers.sh; skipped with a notice if the wheel cannot be downloaded).
# Every step has a timeout; the first failure fails the command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
step() { echo; echo "== $1 ($(date +%T))"; }

step "pytest: CPU ops, reference, peers, trainer (CUDA tests skip without a GPU)"
timeout 1500 $PY -m pytest -q -m "not cuda_emulated" -p no:cacheprovider

step "pytest: emulated CUDA kernels, CUDAEMU_ORDER=scrambled"
CUDAEMU_ORDER=scrambled timeout 600 $PY -m pytest -q -m cuda_emulated -p no:cacheprovider

# Every kernel again in two fixed thread orders and under the sanitizers, on a subset that runs each
# of them (float64: every op with the plain options, the probe folds, logits_hvp, the probes); the
# whole matrix in three orders took 6 of CI's 20 minutes on a slow machine.
EVERY_KERNEL="f64 and (plain or fold or logits_hvp) or probes"  # scripts/mutation_check.py reads this line
for order in forward reverse; do
  step "pytest: emulated CUDA kernels, CUDAEMU_ORDER=$order (every kernel, float64)"
  CUDAEMU_ORDER=$order timeout 600 $PY -m pytest -q -m cuda_emulated -p no:cacheprovider -k "$EVERY_KERNEL"
done

step "pytest: emulated CUDA kernels under ASan + UBSan"
# libstdc++ is preloaded after libasan so that ASan's __cxa_throw interceptor finds the real one
# (python itself does not link libstdc++): without it the first C++ exception aborts the process,
# e.g. oneDNN's matmul refusing a CPU without AVX-512 while a test module probes it.
HESSALIGN_EMU_SANITIZE=1 CUDAEMU_ORDER=scrambled ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  timeout 900 $PY -m pytest -q -m cuda_emulated -p no:cacheprovider -k "$EVERY_KERNEL"

step "CMake against libtorch: the CPU library one unit per file (each with its own project includes), ctest"
TORCH_DIR=$($PY -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'share/cmake/Torch'))")
CUDA_ARGS=()
if [ -d /usr/local/cuda/include ]; then
  # A CUDA build of torch wants the CUDA runtime and nvrtc even for CPU-only targets; this
  # toolkit keeps them in lib/ (not lib64/) and nvrtc comes from pip's nvidia wheel.
  NV=$($PY -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
  CUDA_ARGS=(-DCUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda -DCUDA_INCLUDE_DIRS=/usr/local/cuda/include
             -DCUDA_CUDART_LIBRARY=/usr/local/cuda/lib/libcudart.so)
  [ -e "$NV/libnvrtc.so.13" ] && CUDA_ARGS+=(-DCUDA_nvrtc_LIBRARY="$NV/libnvrtc.so.13")
fi
TORCH_CUDA_ARCH_LIST="8.0;9.0" cmake -S . -B build/cmake -DTorch_DIR="$TORCH_DIR" -DHESSALIGN_CUDA=OFF -DCMAKE_BUILD_TYPE=Release "${CUDA_ARGS[@]}" >build/cmake.log 2>&1 \
  || { tail -30 build/cmake.log; exit 1; }
timeout 900 cmake --build build/cmake -j "$(nproc)"
(cd build/cmake && timeout 300 ctest --output-on-failure)
step "C++ sources against torch 2.11's headers (the GPU machines' torch)"
timeout 300 bash scripts/check_torch_headers.sh 2.11.0

echo; echo "== all tests passed ($(date +%T))"
