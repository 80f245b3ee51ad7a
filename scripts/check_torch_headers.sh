#!/usr/bin/env bash
# Compiles the extension's C++ sources (and with --cuda its CUDA sources) against the headers of
# another torch release, by default 2.11.0: the GPU machines' (the device tool's KINDS.md), while
# this machine and CI build against 2.14. An API that differs between the two then fails here, not
# in a GPU lease: the 2026-11-27 lease's first build failed because torch 2.11 holds autograd
# nodes by std::shared_ptr and 2.14 by c10::intrusive_ptr (csrc/autograd.cpp).
#   C++: one unit of every csrc/*.cpp and csrc/cpu/*.cpp, g++ -fsyntax-only (about 12 s).
#   --cuda: one unit of every csrc/cuda/*.cu, nvcc for sm_90a at -O0 (about 1 min).
# The headers come from the release's wheel (pip download, no dependencies), kept under
# build/torch_headers/<version>/. Exit status: 1 on a compile error; 0 with a notice when the wheel
# cannot be downloaded (no network), since that says nothing about the sources.
# Usage: bash scripts/check_torch_headers.sh [--cuda] [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=0
[ "${1:-}" = "--cuda" ] && { CUDA=1; shift; }
VERSION=${1:-2.11.0}
PY=${PYTHON:-.venv/bin/python}
DIR=build/torch_headers/$VERSION
if [ ! -d "$DIR/torch/include" ]; then
  tmp=$(mktemp -d)
  if ! $PY -m pip download -q --no-deps --no-cache-dir "torch==$VERSION" -d "$tmp" >"$tmp/pip.log" 2>&1; then
    echo "check_torch_headers: NOT CHECKED, torch==$VERSION could not be downloaded:"; tail -3 "$tmp/pip.log"
    rm -rf "$tmp"; exit 0
  fi
  mkdir -p "$DIR"
  unzip -q -o "$tmp"/torch-*.whl 'torch/include/*' -d "$DIR"
  rm -rf "$tmp"
fi
INC=$DIR/torch/include
PYINC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
# torch's extension flags, with the C++ standard the old release's build takes
FLAGS=(-std=c++17 -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -I "$INC" -I "$INC/torch/csrc/api/include"
       -I "$PYINC")
# setup.py's own (compile_args, cuda_include_dirs) and torch's nvcc flags, less optimization and
# debug levels: a line each for g++, nvcc and the CUDA libraries' headers
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
mapfile -t BUILD < <($PY - <<'PY'
import runpy
from torch.utils import cpp_extension
s = runpy.run_path("setup.py")
args = s["compile_args"](True)
keep = lambda flags: " ".join(dict.fromkeys(f for f in flags if not f.startswith(("-O", "-g"))))
print(keep(args["cxx"]))
print(keep(args["nvcc"] + cpp_extension.COMMON_NVCC_FLAGS))
print(" ".join("-I" + d for d in s["cuda_include_dirs"]()))
PY
)
read -r -a CXX_FLAGS <<< "${BUILD[0]}"
read -r -a NVCC_FLAGS <<< "${BUILD[1]}"
read -r -a CUDA_INC <<< "${BUILD[2]:-}"
unit=$(mktemp -d)
for f in csrc/*.cpp csrc/cpu/*.cpp; do echo "#include \"$PWD/$f\""; done > "$unit/all.cpp"
g++ -fsyntax-only "${CXX_FLAGS[@]}" "${FLAGS[@]}" "$unit/all.cpp"
echo "check_torch_headers: the C++ sources compile against torch $VERSION's headers (${CXX_FLAGS[*]})"
if [ "$CUDA" = 1 ]; then
  for f in csrc/cuda/*.cu; do echo "#include \"$PWD/$f\""; done > "$unit/all.cu"
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" -O0 -gencode=arch=compute_90a,code=sm_90a "${NVCC_FLAGS[@]}" \
    "${CUDA_INC[@]}" "${FLAGS[@]}" -c "$unit/all.cu" -o "$unit/all.o"
  echo "check_torch_headers: the CUDA sources compile against torch $VERSION's headers (sm_90a)"
fi
rm -rf "$unit"
