// Every GEMM of the host drivers goes through these calls. On CUDA they are ATen's
// (cuBLAS). On the CPU a float32 GEMM runs on oneDNN, the copy inside libtorch, where that is
// faster than ATen's BLAS (cpu/onednn_gemm.cpp): MKL's and OpenBLAS's sgemm run 256-bit kernels
// on AMD CPUs, oneDNN runs 512-bit FMAs on any CPU with AVX-512. Where oneDNN does not run, two
// shapes BLAS handles poorly run on this project's kernels: products with few output columns
// (cpu/few_classes_nt_cpu.cpp) and per-domain products of few rows (cpu/segment_tn_cpu.cpp).
// Operands are 2-D, or 3-D for a batch of GEMMs.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace hessalign {

// HESSALIGN_CPU_GEMM (cpu/onednn_gemm.cpp): "aten" keeps every CPU GEMM on ATen's BLAS, "onednn"
// sends every float32 one to oneDNN; unset, each takes the path measured fastest for it.
enum class CpuGemm { kAuto, kAten, kOneDnn };
CpuGemm cpu_gemm_mode();
// Whether oneDNN's float32 matmul runs on this CPU (it wants AVX-512).
bool onednn_usable();
// Whether this project's CPU kernels (few rows, few classes) may take products on t's device: a
// build for AVX2 + FMA, auto mode, and a CPU where oneDNN does not run (its rule was measured on
// AVX-512; these kernels on AVX2 only).
bool own_cpu_kernels_apply(const at::Tensor& t);

// Whether out = a @ b runs on oneDNN (cpu/onednn_gemm.cpp); an undefined out stands for a new
// contiguous tensor.
bool onednn_gemm_applies(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// out = a @ b, or out += a @ b with accumulate, on oneDNN
void onednn_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

// Whether out = a @ b runs on the CPU's few-classes kernel (cpu/few_classes_nt_cpu.cpp): float32,
// b the transpose of a row-major block of few rows (a head's weight or tangent, transposed), 2-D
// or batched; an undefined out stands for a new contiguous tensor.
bool few_classes_applies(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b);
// out = a @ b (+ bias broadcast over the rows: (b.size(-1),), or for batched operands one row per
// product) on that kernel
void few_classes_nt(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias);

// out = a @ b
inline void gemm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  if (few_classes_applies(out, a, b)) return few_classes_nt(out, a, b, nullptr);
  if (onednn_gemm_applies(out, a, b)) return onednn_gemm(out, a, b, false);
  if (a.dim() == 3) at::bmm_out(out, a, b);
  else at::mm_out(out, a, b);
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
  if (onednn_gemm_applies(acc, a, b)) return onednn_gemm(acc, a, b, true);
  if (a.dim() == 3) acc.baddbmm_(a, b);
  else acc.addmm_(a, b);
}

// Whether out[e] = X_eᵀ Y_e for every domain e runs on the CPU's few-rows kernel
// (cpu/segment_tn_cpu.cpp): X (N, M) and Y (N, W) with unit column stride, out (E, M, W) with
// unit column stride and any row stride, domains of at most max_rows rows.
bool segment_tn_applies(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out, int64_t max_rows);
// out[e] = X_eᵀ Y_e, X_e and Y_e the rows off[e] .. off[e+1]-1 (an empty domain gives zeros)
void segment_tn(const at::Tensor& X, const at::Tensor& Y, const std::vector<int64_t>& off, const at::Tensor& out);

// bias + a @ b for 2-D a and b, the bias (b.size(1),) broadcast over the rows
inline at::Tensor gemm_bias(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  const bool few = few_classes_applies({}, a, b) && bias.scalar_type() == at::kFloat;
  if (!few && !onednn_gemm_applies({}, a, b)) return at::addmm(bias, a, b);
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  if (few) {
    few_classes_nt(out, a, b, &bias);
    return out;
  }
  out.copy_(bias.expand_as(out));  // not expand().contiguous(): with one row that is bias itself
  onednn_gemm(out, a, b, true);
  return out;
}

}  // namespace hessalign
