// The per-domain products out[e] = X_eᵀ Y_e of the CPU (host/gemm.h's segment_tn) for domains of
// few rows: a register-blocked kernel on ATen's Vectorized, taken only in builds for AVX2 + FMA
// (setup.py's and CMake's ISA rule); elsewhere Vectorized is its generic form, never measured.
//
// Why: with few rows per domain (DomainBed: 32) the product has a short inner dimension, and
// BLAS spends a large part of its time packing panels; MKL's sgemm also slows by half when the
// output rows are not 64-byte aligned, and the ops' (E, C, D) blocks have rows of D = d + 1
// elements. Measured 2026-11-27 on this project's 2-core AMD EPYC (AVX2), one thread, 3 domains
// of 32 rows, C = 345, d = 2048: MKL's bmm 2.2 ms into aligned rows, 3.3 ms into rows of 2049.
// Here each output tile of MR classes × NV vectors of columns sums the k rows in registers and is
// stored once, at any alignment. Same machine and day, each op against HESSALIGN_CPU_GEMM=aten in
// one process, rounds alternating: at 3×32, d = 2048, C = 345, head_grad 1.18x, head_hvp
// 1.07-1.13x, head_hessian_diag 1.51x faster (medians of 80 rounds); 1.0-1.15x at the other
// DomainBed heads. The products take the time of MKL's logits GEMM of as many multiply-adds (perf).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "../host/gemm.h"

namespace hessalign {
namespace {

// Rows per domain up to which the kernel takes a product. Measured as the file's header says
// (the kernel before its class chunks): 1.03-1.29x faster at 32 and 64 rows, even at 128
// (0.96-1.11x), BLAS faster at 256 (0.93-1.02x), whose blocking over the inner dimension wins.
constexpr int64_t kMaxRows = 64;
constexpr int kMR = 4;  // classes (rows of out) per tile
constexpr int kNV = 3;  // vectors of columns per tile: kMR × kNV accumulators, kNV loads, kMR broadcasts

using Vec = at::vec::Vectorized<float>;
constexpr int64_t V = Vec::size();  // floats per vector
constexpr int64_t JB = kNV * V;     // columns per panel

// out[r, q·V ..] = Σ_i X[i, r] Y[i, q·V ..] for r < MR, q < NV: one tile, in registers.
template <int MR, int NV>
C10_ALWAYS_INLINE void tile(const float* X, int64_t ldx, const float* Y, int64_t ldy, float* out, int64_t ldo,
                            int64_t k) {
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = Vec(0.f);
  for (int64_t i = 0; i < k; ++i) {
    Vec y[NV];
    for (int q = 0; q < NV; ++q) y[q] = Vec::loadu(Y + i * ldy + q * V);
    for (int r = 0; r < MR; ++r) {
      const Vec x(X[i * ldx + r]);
      for (int q = 0; q < NV; ++q) acc[r][q] = at::vec::fmadd(x, y[q], acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q].store(out + r * ldo + q * V);
}

// Columns past the last full vector: a scalar sum per element.
inline void tail_columns(const float* X, int64_t ldx, const float* Y, int64_t ldy, float* out, int64_t ldo, int64_t k,
                         int64_t M, int64_t cols) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      float s = 0;
      for (int64_t i = 0; i < k; ++i) s += X[i * ldx + r] * Y[i * ldy + j];
      out[r * ldo + j] = s;
    }
}

// All M classes of one column panel of NV vectors: tiles of kMR classes, then the last M % kMR.
template <int NV>
void panel(const float* X, int64_t ldx, const float* Y, int64_t ldy, float* out, int64_t ldo, int64_t k, int64_t M) {
  int64_t c = 0;
  for (; c + kMR <= M; c += kMR) tile<kMR, NV>(X + c, ldx, Y, ldy, out + c * ldo, ldo, k);
  switch (M - c) {
    case 3: tile<3, NV>(X + c, ldx, Y, ldy, out + c * ldo, ldo, k); break;
    case 2: tile<2, NV>(X + c, ldx, Y, ldy, out + c * ldo, ldo, k); break;
    case 1: tile<1, NV>(X + c, ldx, Y, ldy, out + c * ldo, ldo, k); break;
    default: break;
  }
}

// Classes per task: the output's rows are written a tile of kMR at a time, each along its whole
// width, so the stores run through memory in order.
constexpr int64_t kClassChunk = 16;
// Classes from which Y's panels are packed (segment_tn_typed). Measured 2026-11-27, head_grad at
// 3x32 rows, one process, alternating rounds: reading in place 1.07-1.10x faster at 16 classes,
// even at 24 and 32, packing 1.03-1.05x faster at 48 and 1.05-1.11x at 65 (d = 512, 2048).
constexpr int64_t kPackClasses = 48;

void segment_tn_kernel(const at::Tensor& X, const at::Tensor& Y, const std::vector<int64_t>& off,
                       const at::Tensor& out) {
  const int64_t E = int64_t(off.size()) - 1, N = X.size(0), M = X.size(1), W = Y.size(1);
  const int64_t ldx = X.stride(0), ldy = Y.stride(0), ldo = out.stride(1), lde = out.stride(0);
  const float* x = X.const_data_ptr<float>();
  const float* y = Y.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  // Y's full column panels, packed: domain e's panel p is its k_e rows of JB contiguous columns,
  // at packed[off[e]·WF + p·k_e·JB]. The tiles of a class chunk read their panel in order from
  // L1; in place its rows lie ldy apart, and at row strides of a multiple of 4 KiB (d = 1024,
  // 2048) all in one L1 set. With fewer than kPackClasses classes a panel is read by a few tiles
  // only, and the copy costs more than it saves (packing at C = 2 and 7, d = 2048: 0.74-0.95x of BLAS).
  const int64_t panels = W / JB, WF = panels * JB;
  const bool pack = M >= kPackClasses;
  const at::Tensor packed_buf = at::empty({pack ? N * WF : 0}, X.options());
  float* packed = packed_buf.mutable_data_ptr<float>();
  if (pack)
    at::parallel_for(0, E * panels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t e = t / panels, p = t % panels, k = off[e + 1] - off[e];
        float* dst = packed + off[e] * WF + p * k * JB;
        for (int64_t i = 0; i < k; ++i)
          for (int64_t q = 0; q < JB; q += V) Vec::loadu(y + (off[e] + i) * ldy + p * JB + q).store(dst + i * JB + q);
      }
    });
  const int64_t chunks = (M + kClassChunk - 1) / kClassChunk;
  at::parallel_for(0, E * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t e = t / chunks, c0 = (t % chunks) * kClassChunk, k = off[e + 1] - off[e];
      const int64_t m = std::min(kClassChunk, M - c0);
      const float* xe = x + off[e] * ldx + c0;
      const float* ye = y + off[e] * ldy;
      float* oe = o + e * lde + c0 * ldo;
      for (int64_t p = 0; p < panels; ++p) {
        const float* yp = pack ? packed + off[e] * WF + p * k * JB : ye + p * JB;
        panel<kNV>(xe, ldx, yp, pack ? JB : ldy, oe + p * JB, ldo, k, m);
      }
      int64_t j = WF;
      for (; j + V <= W; j += V) panel<1>(xe, ldx, ye + j, ldy, oe + j, ldo, k, m);
      if (j < W) tail_columns(xe, ldx, ye + j, ldy, oe + j, ldo, k, m, W - j);
    }
  });
}

// The layout the kernel indexes by: float32, unit column strides, a 3-D output.
bool kernel_layout(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out) {
  return X.scalar_type() == at::kFloat && Y.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat &&
         X.dim() == 2 && Y.dim() == 2 && out.dim() == 3 && X.stride(1) == 1 && Y.stride(1) == 1 &&
         out.stride(2) == 1;
}

}  // namespace

// float32 only: in float64 (4 lanes) BLAS was as fast or faster at C = 345 (0.88-0.95x). Where
// the project's CPU kernels run at all: host/gemm.h's own_cpu_kernels_apply.
bool segment_tn_applies(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out, int64_t max_rows) {
  return max_rows <= kMaxRows && kernel_layout(X, Y, out) && own_cpu_kernels_apply(X);  // layout first: no getenv
}

void segment_tn(const at::Tensor& X, const at::Tensor& Y, const std::vector<int64_t>& off, const at::Tensor& out) {
  TORCH_CHECK(kernel_layout(X, Y, out) && Y.size(0) == X.size(0) && int64_t(off.size()) == out.size(0) + 1 &&
                  X.size(1) == out.size(1) && Y.size(1) == out.size(2),
              "segment_tn: float32 operands with unit column strides and matching sizes");
  TORCH_CHECK(off.front() == 0 && off.back() == X.size(0) && std::is_sorted(off.begin(), off.end()),
              "segment_tn: offsets must rise from 0 to the rows of X");
  // the tasks write disjoint rows of out: rows no closer than their width, domains after each other
  TORCH_CHECK((out.size(1) < 2 || out.stride(1) >= out.size(2)) &&
                  (out.size(0) < 2 || out.stride(0) >= out.size(1) * out.stride(1)),
              "segment_tn: out's rows overlap");
  if (X.size(0) == 0) {  // no rows (and no data pointers): every product is zero
    out.zero_();
    return;
  }
  segment_tn_kernel(X, Y, off, out);
}

}  // namespace hessalign
