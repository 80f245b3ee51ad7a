// The CUDA backend of the host drivers (host/*.h), as plain C++: it forwards to the
// launchers of cuda/*.cuh, which nvcc compiles into the .cu files and tests/emu compiles
// under CPU emulation. CudaKernels (cuda_backend.cuh) and the emulated backend (tests/emu)
// derive from it, adding the device guard and the stream.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../host/env_switch.h"
#include "../math/cross_entropy.h"
#include "../math/domains.h"
#include "../math/tile.h"

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace hessalign {

template <class Op> int launch_rows(index_t rows, const Op& op, cudaStream_t stream);
template <class Op> int launch_elements(index_t n, const Op& op, cudaStream_t stream);
template <class scalar_t, class acc_t>
int launch_softmax_stats(const scalar_t* L, index_t N, index_t T, acc_t* M, acc_t* S, bool first, acc_t* lse,
                         acc_t* pbar, cudaStream_t stream);
template <class acc_t>
int launch_segment_sum(const acc_t* vals, const DomainOffsets& off, acc_t* out, cudaStream_t stream);
template <class acc_t>
int launch_ce_coeffs(const CeParams<acc_t>& p, const DomainOffsets& off, acc_t* c, acc_t* a, acc_t* b,
                     cudaStream_t stream);
template <class scalar_t, class acc_t>
int launch_logits(const scalar_t* Z, const scalar_t* W, const scalar_t* bias, index_t N, index_t C, index_t d,
                  scalar_t* L, cudaStream_t stream);
template <class scalar_t, class acc_t>
int launch_domain_stats(const CeParams<acc_t>& p, const DomainOffsets& off, const scalar_t* L, index_t C, acc_t* c,
                        acc_t* a, acc_t* b, acc_t* lse, acc_t* pbar, acc_t* loss, cudaStream_t stream);

template <bool kReduced>
struct CudaKernelsT {
  static constexpr bool kReducedPrecision = kReduced;  // float16/bfloat16 where the GPU runs them
  static constexpr bool kCacheProbs = false;  // the GPU's exp is cheaper than a pass over N×C
  static constexpr int kStreamWidth = 1;  // columns per thread of the streaming ops: coalesced loads
  // One launch for the coefficients, log-sum-exps and domain losses (domain_stats_kernels.cuh)
  // where the largest domain holds at most 512 rows and 2^16 logits: its block's threads then
  // run at most 256 exps and its warps at most 64 rows each (a row's warp reductions cost
  // about as much as a few hundred exps), while larger domains need the row-parallel kernels'
  // whole grid.
  static constexpr bool kFusedDomainStats = true;
  // Hutchinson probe chunks as large as the memory rule allows: fewer launches (not measured smaller)
  static constexpr int64_t kProbeChunkBytes = INT64_MAX;
  static constexpr int64_t kDomainFoldBytes = INT64_MAX;  // hutchinson_diag: one batched GEMM, one launch
  static bool fuse_domain_stats(index_t max_rows, index_t C) {
    return max_rows <= 512 && max_rows * C <= (index_t(1) << 16);
  }
  // The logits of a head of at most 2^23 multiply-adds by logits_kernels.cuh's one launch instead of
  // cuBLAS's (three kernels at DomainBed heads): every row reads the weight, so up to 2^23
  // multiply-adds its warps read at most 32 MB of float32 weights from L2 in all. Not measured on a
  // GPU yet; HESSALIGN_LOGITS_KERNEL=0 keeps cuBLAS, for the A/B.
  static bool logits_kernel_fits(index_t N, index_t C, index_t d) {
    const auto forced = env_switch("HESSALIGN_LOGITS_KERNEL", "0 (cuBLAS), 1 or unset (the size rule)");
    return forced.value_or(true) && N * C * d <= (index_t(1) << 23);  // 1 means the rule, as unset
  }
  // The memory rule's default budget (host/class_tile.h); CudaKernels takes its GPU's share.
  static int64_t default_tile_bytes(const at::Tensor&) { return int64_t(256) << 20; }
  cudaStream_t stream;

  template <class Op>
  void rows(index_t n, const Op& op) const {
    if (n > 0) check(launch_rows(n, op, stream), "rows_kernel");
  }
  template <class Op>
  void elements(index_t n, const Op& op) const {
    if (n > 0) check(launch_elements(n, op, stream), "elements_kernel");
  }
  // Σ_j Z_ij² + ones per row: a warp per row (math/tile.h's RowSqNormOp).
  template <class scalar_t, class acc_t>
  void row_sq_norms(const scalar_t* Z, index_t N, index_t d, acc_t ones, acc_t* out) const {
    rows(N, RowSqNormOp<scalar_t, acc_t>{{}, Z, d, ones, out});
  }
  template <class scalar_t, class acc_t>
  void softmax_stats(const scalar_t* L, index_t N, index_t T, acc_t* M, acc_t* S, bool first, acc_t* lse,
                     acc_t* pbar) const {
    if (N > 0) check(launch_softmax_stats(L, N, T, M, S, first, lse, pbar, stream), "softmax_stats_kernel");
  }
  template <class acc_t>
  void segment_sum(const acc_t* vals, const DomainOffsets& off, acc_t* out) const {
    check(launch_segment_sum(vals, off, out, stream), "segment_sum_kernel");
  }
  template <class acc_t>
  void ce_coeffs(const CeParams<acc_t>& p, const DomainOffsets& off, acc_t* c, acc_t* a, acc_t* b) const {
    check(launch_ce_coeffs(p, off, c, a, b, stream), "ce_coeffs_kernel");
  }
  template <class scalar_t, class acc_t>
  void logits(const scalar_t* Z, const scalar_t* W, const scalar_t* bias, index_t N, index_t C, index_t d,
              scalar_t* L) const {
    if (N > 0) check(launch_logits<scalar_t, acc_t>(Z, W, bias, N, C, d, L, stream), "logits_kernel");
  }
  template <class scalar_t, class acc_t>
  void domain_stats(const CeParams<acc_t>& p, const DomainOffsets& off, const scalar_t* L, index_t C, acc_t* c,
                    acc_t* a, acc_t* b, acc_t* lse, acc_t* pbar, acc_t* loss) const {
    check(launch_domain_stats(p, off, L, C, c, a, b, lse, pbar, loss, stream), "domain_stats_kernel");
  }

 private:
  static void check(int err, const char* kernel) {
    TORCH_CHECK(err == 0, "hessalign_ext: launching ", kernel, " failed with CUDA error ", err);
  }
};

}  // namespace hessalign
