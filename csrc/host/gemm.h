// Every GEMM of the host drivers goes through these calls. On CUDA they are ATen's (cuBLAS). On
// the CPU a float32 product has up to three ways to run: ATen's BLAS (MKL); oneDNN, the copy
// inside libtorch, where its float32 matmul runs (cpu/onednn_gemm.cpp: CPUs with AVX-512); and,
// in builds for AVX2 + FMA, one of this project's kernels for two shapes BLAS handles poorly,
// products with few output columns (cpu/few_classes_nt_cpu.cpp) and per-domain products of few
// rows (cpu/segment_tn_cpu.cpp). Which is fastest depends on the CPU and the shape, so in auto mode
// each product takes the way measured fastest for its shape on this CPU (cpu/gemm_tuner.cpp).
// Operands are 2-D, or 3-D for a batch of GEMMs.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>
#include <vector>

namespace hessalign {

// HESSALIGN_CPU_GEMM (cpu/onednn_gemm.cpp): "aten" keeps every CPU GEMM on ATen's BLAS, "onednn"
// sends every float32 one to oneDNN, "own" every float32 one this project's kernels compute to
// them (the rest to ATen); unset (or "auto"), each takes the way measured fastest for it. Any
// other value raises ValueError at the first GEMM.
enum class CpuGemm { kAuto, kAten, kOneDnn, kOwn };
CpuGemm cpu_gemm_mode();
// Whether oneDNN's float32 matmul runs on this CPU (it wants AVX-512).
bool onednn_usable();
// Whether this project's CPU kernels (few rows, few classes) are among the ways for products on
// t's device: a build for AVX2 + FMA (elsewhere their vectors are a generic form, never
// measured), in auto or own mode.
bool own_cpu_kernels_apply(const at::Tensor& t);
// Whether oneDNN reads a and b in place (contiguous, or the transpose of contiguous) and writes
// out as it is; it would copy them otherwise.
bool onednn_layout(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// out = a @ b, or out += a @ b with accumulate, on oneDNN
void onednn_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

// Whether the few-classes kernel (cpu/few_classes_nt_cpu.cpp) computes out = a @ b: float32, b the
// transpose of a row-major block of few rows (a head's weight or tangent, transposed), 2-D or
// batched.
bool few_classes_applies(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// out = a @ b (+ bias broadcast over the rows: (b.size(-1),), or for batched operands one row per
// product) on that kernel
void few_classes_nt(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias);

enum class GemmWay { kAten, kOneDnn, kFewClasses };

// out = a @ b + bias (as few_classes_nt's; none: nullptr), or with accumulate out += a @ b, on way.
void run_gemm(GemmWay way, at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias,
              bool accumulate);

// The way that product runs: ATen's off the CPU and outside float32; HESSALIGN_CPU_GEMM=aten,
// onednn or own forces one; in auto mode, of the ways that apply (oneDNN where with_onednn), the
// one measured fastest for such a product on this CPU (cpu/gemm_tuner.cpp).
GemmWay gemm_way(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias,
                 bool accumulate, bool with_onednn = true);

// out = a @ b
inline void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  run_gemm(gemm_way(out, a, b, nullptr, false), out, a, b, nullptr, false);
}

// a @ b, a new tensor
inline at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = a.dim() == 3 ? at::empty({a.size(0), a.size(1), b.size(2)}, a.options())
                                : at::empty({a.size(0), b.size(1)}, a.options());
  gemm_out(out, a, b);
  return out;
}

// acc += a @ b; acc may be of a wider dtype than a and b (float32 for bf16 inputs)
inline void gemm_add(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (acc.scalar_type() != a.scalar_type()) { acc.add_(gemm(a, b)); return; }
  run_gemm(gemm_way(acc, a, b, nullptr, true), acc, a, b, nullptr, true);
}

// bias + a @ b for 2-D a and b, the bias (b.size(1),) broadcast over the rows
inline at::Tensor gemm_bias(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  run_gemm(gemm_way(out, a, b, &bias, false), out, a, b, &bias, false);
  return out;
}

// Whether the few-rows kernel (cpu/segment_tn_cpu.cpp) computes out[e] = X_eᵀ Y_e for every
// domain e: X (N, M) and Y (N, W) with unit column stride, out (E, M, W) with unit column stride
// and any row stride, domains of at most max_rows rows.
bool segment_tn_applies(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out, int64_t max_rows);
// out[e] = X_eᵀ Y_e, X_e and Y_e the rows off[e] .. off[e+1]-1 (an empty domain gives zeros)
void segment_tn(const at::Tensor& X, const at::Tensor& Y, const std::vector<int64_t>& off, const at::Tensor& out);
// Whether segment_tn is faster for that product than gemms (which computes it into the tensor it
// is given on the other ways), measured once per such product on this CPU (cpu/gemm_tuner.cpp);
// where segment_tn_applies. Always in own mode.
bool segment_tn_faster(const at::Tensor& X, const at::Tensor& Y, const std::vector<int64_t>& off,
                       const at::Tensor& out, c10::function_ref<void(const at::Tensor&)> gemms);

// Auto mode's choices so far (Python: hessalign_ext._C.cpu_gemm_choices): per kind of product,
// its description, its ways and their best times (NaN: untimed, one way or too large to time),
// the way taken and how often it was looked up (the timed runs of an enclosing product count).
struct GemmChoice {
  std::vector<int64_t> key;
  std::vector<const char*> ways;
  std::vector<double> seconds;
  int64_t chosen, calls;
};
std::vector<GemmChoice> cpu_gemm_choices();
// Forgets them: each product is measured again at its next call.
void clear_cpu_gemm_choices();
// Timing on (the default) or off: off, each product takes its untimed way (cpu/gemm_tuner.cpp), the
// same in every process on this CPU and build. The choice is recorded apart from timed ones.
// Returns the previous setting.
bool set_cpu_gemm_timing(bool on);

}  // namespace hessalign
