// Per-domain kernels, a block per domain: the segmented sum of a per-row vector, and the
// per-row cross-entropy coefficients (math/cross_entropy.h), whose denominator is a sum
// over the domain's rows.
#pragma once
#include "../math/cross_entropy.h"
#include "common.cuh"

namespace hessalign {

template <class acc_t>
__global__ void __launch_bounds__(kBlock) segment_sum_kernel(const acc_t* vals, const int64_t* offsets, acc_t* out) {
  const index_t e = blockIdx.x;
  acc_t s = 0;
  for (index_t i = offsets[e] + threadIdx.x; i < offsets[e + 1]; i += blockDim.x) s += vals[i];
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) out[e] = s;
}

template <class acc_t>
int launch_segment_sum(const acc_t* vals, const int64_t* offsets, index_t E, acc_t* out, cudaStream_t stream) {
  CUDA_LAUNCH((segment_sum_kernel<acc_t>), unsigned(E), kBlock, 0, stream, vals, offsets, out);
  return int(cudaGetLastError());
}

template <class acc_t>
__global__ void __launch_bounds__(kBlock) ce_coeffs_kernel(CeParams<acc_t> p, const int64_t* offsets, acc_t* c, acc_t* a,
                                                           acc_t* b) {
  __shared__ acc_t denom;
  const index_t e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  acc_t s = 0;
  if (!p.sum)
    for (index_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += ce_denominator_term(p, i);
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) denom = p.sum ? acc_t(1) : s;
  __syncthreads();
  for (index_t i = begin + threadIdx.x; i < end; i += blockDim.x) ce_row_coeffs(p, i, denom, c, a, b);
}

template <class acc_t>
int launch_ce_coeffs(const CeParams<acc_t>& p, const int64_t* offsets, index_t E, acc_t* c, acc_t* a, acc_t* b,
                     cudaStream_t stream) {
  CUDA_LAUNCH((ce_coeffs_kernel<acc_t>), unsigned(E), kBlock, 0, stream, p, offsets, c, a, b);
  return int(cudaGetLastError());
}

}  // namespace hessalign
