// Row softmax statistics (math/softmax.h) over one class tile: a warp per row, each lane's
// running (max, Σexp) pair merged across lanes by shuffles, then into the row's state (from
// empty on the first tile); the last tile writes the log-sum-exp and p̄ instead of the pair, so one
// tile of all C classes is one launch, with no pair buffers to fill or finish.
#pragma once
#include "../math/softmax.h"
#include "common.cuh"

namespace hessalign {

// The (max, Σexp) pair of one row of n logits, by a warp: every lane gets the row's pair.
template <class scalar_t, class acc_t>
__device__ __forceinline__ SoftmaxPair<acc_t> warp_softmax_pair(const scalar_t* row, index_t n, int lane) {
  SoftmaxPair<acc_t> p = softmax_row_stats<scalar_t, acc_t>(row, n, lane, kWarp);
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const SoftmaxPair<acc_t> q{__shfl_xor_sync(kFullMask, p.m, o), __shfl_xor_sync(kFullMask, p.s, o)};
    p = softmax_merge(p, q);
  }
  return p;
}

template <class scalar_t, class acc_t>
__global__ void __launch_bounds__(kBlock) softmax_stats_kernel(const scalar_t* L, index_t N, index_t T, acc_t* M,
                                                               acc_t* S, bool first, acc_t* lse, acc_t* pbar) {
  const index_t r = index_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= N) return;
  const SoftmaxPair<acc_t> p = warp_softmax_pair<scalar_t, acc_t>(L + r * T, T, lane);
  if (lane == 0) softmax_store(first ? p : softmax_merge(SoftmaxPair<acc_t>{M[r], S[r]}, p), r, M, S, lse, pbar);
}

template <class scalar_t, class acc_t>
int launch_softmax_stats(const scalar_t* L, index_t N, index_t T, acc_t* M, acc_t* S, bool first, acc_t* lse,
                         acc_t* pbar, cudaStream_t stream) {
  CUDA_LAUNCH((softmax_stats_kernel<scalar_t, acc_t>), blocks_for_rows(N), kBlock, 0, stream, L, N, T, M, S, first,
              lse, pbar);
  return int(cudaGetLastError());
}

}  // namespace hessalign
