// One launch for what every op computes first, when the domains are small and one tile holds
// all C classes (CudaKernelsT::fuse_domain_stats): a block per domain writes its rows'
// cross-entropy coefficients (segment_kernels.cuh), then a warp per row the row's
// log-sum-exp and p̄ (softmax_kernels.cuh), and, when asked, sums the domain's loss
// (math/domain_losses.h). At DomainBed heads the separate kernels (ce_coeffs, softmax_stats,
// the loss rows, segment_sum) and the copy of the offsets each cost the GPU less than the
// host spends launching them.
#pragma once
#include "../math/domain_losses.h"
#include "segment_kernels.cuh"
#include "softmax_kernels.cuh"

namespace hessalign {

template <class scalar_t, class acc_t>
__global__ void __launch_bounds__(kBlock) domain_stats_kernel(CeParams<acc_t> p, DomainOffsets off, const scalar_t* L,
                                                              index_t C, acc_t* c, acc_t* a, acc_t* b, acc_t* lse,
                                                              acc_t* pbar, acc_t* loss) {
  const index_t e = blockIdx.x, begin = off(e), end = off(e + 1);
  domain_ce_coeffs(p, begin, end, c, a, b);
  __syncthreads();  // the loss of a row reads coefficients that other threads wrote
  const LossRowOp<scalar_t, acc_t> row{{}, {L, C, 0, lse, pbar}, {c, a, b, p.labels, p.class_weight}, nullptr, true};
  const int lane = threadIdx.x % kWarp;
  acc_t domain_loss = 0;  // lane 0 of each warp: its rows' losses
  for (index_t r = begin + threadIdx.x / kWarp; r < end; r += kWarpsPerBlock) {
    const SoftmaxPair<acc_t> pair = warp_softmax_pair<scalar_t, acc_t>(L + r * C, C, lane);
    if (lane == 0) softmax_store(pair, r, static_cast<acc_t*>(nullptr), static_cast<acc_t*>(nullptr), lse, pbar);
    if (!loss) continue;
    __syncwarp();  // every lane reads lse[r] and pbar[r]
    acc_t s[1] = {0};
    for (index_t col = lane; col < C; col += kWarp) row.partial(r, col, s);
    s[0] = warp_allreduce_sum(s[0]);
    if (lane == 0) domain_loss += row.total(r, s);
  }
  if (!loss) return;  // the same for every thread: the block reduction below sees them all
  domain_loss = block_reduce_sum(domain_loss);
  if (threadIdx.x == 0) loss[e] = domain_loss;
}

template <class scalar_t, class acc_t>
int launch_domain_stats(const CeParams<acc_t>& p, const DomainOffsets& off, const scalar_t* L, index_t C, acc_t* c,
                        acc_t* a, acc_t* b, acc_t* lse, acc_t* pbar, acc_t* loss, cudaStream_t stream) {
  CUDA_LAUNCH((domain_stats_kernel<scalar_t, acc_t>), unsigned(off.E), kBlock, 0, stream, p, off, L, C, c, a, b, lse,
              pbar, loss);
  return int(cudaGetLastError());
}

}  // namespace hessalign
