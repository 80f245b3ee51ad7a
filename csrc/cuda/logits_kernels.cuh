// The logits L = Z Wᵀ + b of a small head in one launch (CudaKernelsT::logits_kernel_fits). At
// DomainBed heads a GPU call is bound by its host work, and cuBLAS ran this GEMM as three kernels
// (split-K, scaling, epilogue: the H100 profile of 2026-11-27 at 3×32 rows, d = 512, C = 7), each
// a launch the host pays for. Here a warp computes one row's logits for kLogitsClasses classes:
// its lanes stride over the d columns (coalesced loads of the row and of the classes' weights,
// independent from one column to the next, so a warp keeps many in flight), each lane keeping one
// partial sum per class, then shuffles reduce them. A small head's output has too few tiles to fill
// the GPU, so a GEMM's tiling would leave it waiting on one stage's loads after another. No
// atomics: every run gives the same bits.
#pragma once
#include "common.cuh"

namespace hessalign {

constexpr int kLogitsClasses = 8;  // classes per warp

template <class scalar_t, class acc_t>
__global__ void __launch_bounds__(kBlock) logits_kernel(ReadOnly<scalar_t> Z, ReadOnly<scalar_t> W,
                                                        ReadOnly<scalar_t> bias, index_t N, index_t C, index_t d,
                                                        scalar_t* L) {
  const index_t groups = (C + kLogitsClasses - 1) / kLogitsClasses;
  const index_t item = index_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;  // (row, group of classes)
  if (item >= N * groups) return;  // the same for a whole warp: the shuffles below see 32 live lanes
  const int lane = threadIdx.x % kWarp;
  const index_t row = item / groups, c0 = (item - row * groups) * kLogitsClasses;
  const int classes = int(C - c0 < kLogitsClasses ? C - c0 : kLogitsClasses);
  acc_t s[kLogitsClasses] = {};
  for (index_t k = lane; k < d; k += kWarp) {
    const acc_t zk = acc_t(Z[row * d + k]);
#pragma unroll
    for (int c = 0; c < kLogitsClasses; ++c)
      if (c < classes) s[c] += zk * acc_t(W[(c0 + c) * d + k]);
  }
#pragma unroll
  for (int c = 0; c < kLogitsClasses; ++c) s[c] = warp_allreduce_sum(s[c]);
  if (lane != 0) return;
#pragma unroll  // s stays in registers: a loop to `classes` would index it at run time, from the stack
  for (int c = 0; c < kLogitsClasses; ++c)
    if (c < classes) L[row * C + c0 + c] = scalar_t(s[c] + (bias.p ? acc_t(bias[c0 + c]) : acc_t(0)));
}

// Z (N, d), W (C, d) and L (N, C) contiguous; bias (C,) or nullptr.
template <class scalar_t, class acc_t>
int launch_logits(const scalar_t* Z, const scalar_t* W, const scalar_t* bias, index_t N, index_t C, index_t d,
                  scalar_t* L, cudaStream_t stream) {
  const index_t warps = N * ((C + kLogitsClasses - 1) / kLogitsClasses);
  CUDA_LAUNCH((logits_kernel<scalar_t, acc_t>), blocks_for_rows(warps), kBlock, 0, stream, ReadOnly<scalar_t>(Z),
              ReadOnly<scalar_t>(W), ReadOnly<scalar_t>(bias), N, C, d, L);
  return int(cudaGetLastError());
}

}  // namespace hessalign
