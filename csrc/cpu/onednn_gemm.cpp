// The CPU's float32 GEMMs on oneDNN (host/gemm.h). libtorch carries oneDNN and exports an entry
// to its matmul, at::native::mkldnn_matmul (declared in ATen/native/mkldnn/Matmul.h, a header
// the wheels do not ship). It is looked up at run time, not linked, and tried once on a small
// product: a libtorch without it, or whose mkldnn_matmul refuses float32 or this CPU (it wants
// AVX-512 BW/VL/DQ or AVX-NE-CONVERT), leaves every GEMM on ATen.
//
// Why: on the AMD EPYC (Zen 5) this was first measured on, 2026-11-26, one thread, torch 2.14.1,
// MKL's sgemm runs its 256-bit kernel (`sgemm_kernel_0_zen`) and OpenBLAS picks its Haswell
// kernels, at 105-113 GFLOP/s; 512-bit FMAs peak at 265 GFLOP/s there; oneDNN reached 230-244
// GFLOP/s on 2048³ and on the head's logits GEMM (160 x 2049 x 345), 150-165 GFLOP/s on its
// batched per-domain GEMMs. It is not faster everywhere (cpu/gemm_tuner.cpp): auto mode times it
// against the other ways.
//
// HESSALIGN_CPU_GEMM: "aten" keeps every GEMM on ATen; "onednn" sends every float32 CPU GEMM to
// oneDNN (an error where it cannot run them); "own" every float32 one that this project's kernels
// compute to them; unset or anything else, auto mode (host/gemm.h). The tests use the forced
// modes to cover every GEMM on each way.
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

#include "../host/gemm.h"

namespace hessalign {
namespace {

// at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result = beta·result + alpha·mat1 @ mat2
using MatmulFn = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

MatmulFn find_matmul() {
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);  // the copy torch loaded
  if (!lib) return nullptr;
  // the name mangles the parameter types: found means this signature
  auto fn = reinterpret_cast<MatmulFn>(dlsym(lib, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
  dlclose(lib);  // drops the reference RTLD_NOLOAD took; the library stays loaded
  return fn;
}

// mkldnn_matmul where it computes a float32 product on this CPU, checked once against ATen on
// small integers (exact in any summation order); nullptr otherwise.
MatmulFn usable_matmul() {
  static const MatmulFn usable = []() -> MatmulFn {
    const MatmulFn fn = find_matmul();
    if (!fn) return nullptr;
    try {
      const at::Tensor a = at::arange(12, at::kFloat).view({3, 4}), b = at::arange(20, at::kFloat).view({4, 5});
      at::Tensor out = at::empty({3, 5}, at::kFloat);
      fn(a, b, out, 0.f, 1.f);
      return at::equal(out, at::mm(a, b)) ? fn : nullptr;
    } catch (const c10::Error&) {
      return nullptr;
    }
  }();
  return usable;
}

// A layout mkldnn_matmul reads without a copy: contiguous, or the transpose of a contiguous
// matrix (of each matrix of a batch).
bool in_place(const at::Tensor& t) {
  if (t.is_contiguous()) return true;
  const auto n = t.sizes(), s = t.strides();
  if (t.dim() == 2) return s[0] == 1 && s[1] == n[0];
  return s[0] == n[1] * n[2] && s[1] == 1 && s[2] == n[1];
}

}  // namespace

// Read at every GEMM, not once: the benchmarks' ours_blas provider sets it between calls of one process.
CpuGemm cpu_gemm_mode() {
  const char* env = std::getenv("HESSALIGN_CPU_GEMM");
  if (!env || env[0] == '\0' || std::strcmp(env, "auto") == 0) return CpuGemm::kAuto;
  if (std::strcmp(env, "aten") == 0) return CpuGemm::kAten;
  if (std::strcmp(env, "onednn") == 0) return CpuGemm::kOneDnn;
  TORCH_CHECK_VALUE(std::strcmp(env, "own") == 0,
                    "HESSALIGN_CPU_GEMM must be auto, aten, onednn or own (or unset); got '", env, "'");
  return CpuGemm::kOwn;
}

bool onednn_usable() { return usable_matmul() != nullptr; }

bool own_cpu_kernels_apply(const at::Tensor& t) {
#if defined(CPU_CAPABILITY_AVX2)
  constexpr bool built_for_avx2 = true;
#else
  constexpr bool built_for_avx2 = false;
#endif
  if (!built_for_avx2 || !t.is_cpu()) return false;
  const CpuGemm mode = cpu_gemm_mode();
  return mode == CpuGemm::kAuto || mode == CpuGemm::kOwn;
}

bool onednn_layout(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return in_place(a) && in_place(b) && out.stride(-1) == 1;
}

void onednn_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  TORCH_CHECK(usable_matmul(), "HESSALIGN_CPU_GEMM=onednn: oneDNN's float32 matmul cannot run here (libtorch lacks "
              "at::native::mkldnn_matmul, or it refuses float32 or this CPU); unset it or set it to aten");
  usable_matmul()(a, b, out, accumulate ? 1.f : 0.f, 1.f);
}

}  // namespace hessalign
