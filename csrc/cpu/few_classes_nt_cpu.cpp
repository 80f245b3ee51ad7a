// The CPU's products out = a bᵀ (+ bias) with few output columns (host/gemm.h's few_classes_nt):
// a head's logits Z Wᵀ, its tangent logits Z̃ Vᵀ, per domain or shared, and the fused HGP step's
// per-domain blocks applied to the features (host/hgp_fused.h), for C up to kMaxClasses.
// A register-blocked kernel on ATen's Vectorized, taken only in builds for AVX2 + FMA (setup.py's
// and CMake's ISA rule); elsewhere Vectorized is its generic form, never measured.
//
// Why: MKL's sgemm is slow when the output has few columns. Measured 2026-11-27 on this project's
// 2-core AMD EPYC (AVX2), one thread, torch.mm of (N, K) by (K, C) with the (K, C) operand a
// transposed row-major weight: N = 96, K = 512: 29 us at C = 2, 64 us at C = 7, 39 us at C = 16
// (5.7-35 GFLOP/s); N = 160, K = 2048: 120, 323 and 218 us. This kernel's loop (the same tiles in
// raw AVX2 intrinsics, a standalone C++ timing on the same machine and operands): 4.8, 13.2 and
// 21 us; 30, 74 and 152 us; at C = 32 41 against 64 us and 296 against 345 us; at C = 65 as fast
// as MKL or slower (124 against 95-131 us), so up to 32 classes.
//
// Each tile of kMR rows × kNC classes keeps its dot products as vectors along K in registers
// (kMR·kNC accumulators, kNC + 1 live operands: 16 ymm registers at 4 × 3), and reduces them
// once at the end of K.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "../host/gemm.h"

namespace hessalign {
namespace few_classes {  // named: the unity build puts every CPU file in one translation unit
namespace {

constexpr int64_t kMaxClasses = 32;
constexpr int kMR = 4;  // rows of a per tile
constexpr int kNC = 3;  // classes (rows of b's transpose) per tile

using Vec = at::vec::Vectorized<float>;
constexpr int64_t V = Vec::size();

// out[r, c] = bias[c] + Σ_k a[r, k] bt[c, k] for r < MR, c < NC (bt: the row-major (C, K) block
// whose transpose is b).
template <int MR, int NC>
C10_ALWAYS_INLINE void tile(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t K, const float* bias,
                            int64_t bias_stride, float* out, int64_t ldo) {
  Vec acc[MR][NC];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = Vec(0.f);
  int64_t k = 0;
  for (; k + V <= K; k += V) {
    Vec b[NC];
    for (int c = 0; c < NC; ++c) b[c] = Vec::loadu(bt + c * ldb + k);
    for (int r = 0; r < MR; ++r) {
      const Vec x = Vec::loadu(a + r * lda + k);
      for (int c = 0; c < NC; ++c) acc[r][c] = at::vec::fmadd(x, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NC; ++c) {
      float s = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc[r][c]);
      for (int64_t j = k; j < K; ++j) s += a[r * lda + j] * bt[c * ldb + j];
      out[r * ldo + c] = bias ? s + bias[c * bias_stride] : s;
    }
}

// MR rows against every class: tiles of kNC classes, then the last C % kNC.
template <int MR>
void rows(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t K, int64_t C, const float* bias,
          int64_t bias_stride, float* out, int64_t ldo) {
  int64_t c = 0;
  for (; c + kNC <= C; c += kNC)
    tile<MR, kNC>(a, lda, bt + c * ldb, ldb, K, bias ? bias + c * bias_stride : nullptr, bias_stride, out + c, ldo);
  const float* bc = bias ? bias + c * bias_stride : nullptr;
  switch (C - c) {
    case 2: tile<MR, 2>(a, lda, bt + c * ldb, ldb, K, bc, bias_stride, out + c, ldo); break;
    case 1: tile<MR, 1>(a, lda, bt + c * ldb, ldb, K, bc, bias_stride, out + c, ldo); break;
    default: break;
  }
}

// Every product of the batch (one for 2-D operands), rows in blocks of kMR, the last N % kMR one
// at a time; the tasks are (product, block) pairs, so a batch of short domains fills the threads.
// The bias of product p starts at bias + p · bias_batch (0: one bias for all).
void products(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const float* bias,
              int64_t bias_stride, int64_t bias_batch) {
  const bool batched = a.dim() == 3;
  const int64_t P = batched ? a.size(0) : 1, N = a.size(-2), K = a.size(-1), C = b.size(-1);
  const int64_t lda = a.stride(-2), ldb = b.stride(-1), ldo = out.stride(-2);  // bᵀ's rows lie ldb apart
  const int64_t sa = batched ? a.stride(0) : 0, sb = batched ? b.stride(0) : 0, so = batched ? out.stride(0) : 0;
  const float* pa = a.const_data_ptr<float>();
  const float* pb = b.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const int64_t blocks = (N + kMR - 1) / kMR;
  at::parallel_for(0, P * blocks, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = t / blocks, i0 = (t % blocks) * kMR;
      const float* ap = pa + p * sa;
      const float* bp = pb + p * sb;
      float* op = po + p * so;
      const float* bias_p = bias ? bias + p * bias_batch : nullptr;
      if (i0 + kMR <= N) {
        rows<kMR>(ap + i0 * lda, lda, bp, ldb, K, C, bias_p, bias_stride, op + i0 * ldo, ldo);
      } else {
        for (int64_t i = i0; i < N; ++i)
          rows<1>(ap + i * lda, lda, bp, ldb, K, C, bias_p, bias_stride, op + i * ldo, ldo);
      }
    }
  });
}

// The layout the kernel indexes by: float32, 2-D or a batch of 3-D, a with unit column stride, b
// the transpose of a row-major block (unit row stride), of at most kMaxClasses columns.
bool operands_layout(const at::Tensor& a, const at::Tensor& b) {
  const int64_t dims = a.dim();
  return (dims == 2 || dims == 3) && b.dim() == dims && a.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kFloat && (dims == 2 || b.size(0) == a.size(0)) && a.size(-1) == b.size(-2) &&
         b.size(-1) <= kMaxClasses && a.stride(-1) == 1 && b.stride(-2) == 1;
}

// out: the product's sizes, unit column stride, rows (and batch entries) that do not overlap.
bool out_layout(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t C = b.size(-1);
  if (out.scalar_type() != at::kFloat || out.dim() != a.dim() || out.size(-2) != a.size(-2) || out.size(-1) != C ||
      out.stride(-1) != 1 || (out.size(-2) > 1 && out.stride(-2) < C))
    return false;
  return a.dim() == 2 || (out.size(0) == a.size(0) && (out.size(0) < 2 || out.stride(0) >= out.size(1) * out.stride(1)));
}

}  // namespace
}  // namespace few_classes

// float32 only; where the project's CPU kernels run at all: host/gemm.h's own_cpu_kernels_apply.
bool few_classes_applies(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return few_classes::operands_layout(a, b) && (!out.defined() || few_classes::out_layout(out, a, b)) &&
         own_cpu_kernels_apply(a);  // layout first: most GEMMs fail it without a getenv
}

void few_classes_nt(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias) {
  TORCH_CHECK(few_classes::operands_layout(a, b) && few_classes::out_layout(out, a, b),
              "few_classes_nt: float32 operands of matching sizes, a and out with unit column stride, b the ",
              "transpose of a row-major block of at most ", few_classes::kMaxClasses, " rows, out's rows apart");
  // a bias shared by the batch (C,), or one per product (P, C)
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->size(-1) == b.size(-1) &&
                        (bias->dim() == 1 || (bias->dim() == 2 && a.dim() == 3 && bias->size(0) == a.size(0)))),
              "few_classes_nt: bias must be float32, (", b.size(-1), ",) or one row per product");
  if (out.numel() == 0) return;
  if (a.size(-1) == 0) {  // no inner dimension (and perhaps no data pointers): the bias alone
    bias ? out.copy_(bias->dim() == 2 ? bias->unsqueeze(1).expand_as(out) : bias->expand_as(out)) : out.zero_();
    return;
  }
  few_classes::products(out, a, b, bias ? bias->const_data_ptr<float>() : nullptr, bias ? bias->stride(-1) : 0,
                        bias && bias->dim() == 2 ? bias->stride(0) : 0);
}

}  // namespace hessalign
