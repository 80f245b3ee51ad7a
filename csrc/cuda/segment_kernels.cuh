// Per-domain kernels, a block per domain: the segmented sum of a per-row vector, and the
// per-row cross-entropy coefficients (math/cross_entropy.h), whose denominator is a sum
// over the domain's rows.
#pragma once
#include "../math/cross_entropy.h"
#include "../math/domains.h"
#include "common.cuh"

namespace hessalign {

template <class acc_t>
__global__ void __launch_bounds__(kBlock) segment_sum_kernel(const acc_t* vals, DomainOffsets off, acc_t* out) {
  const index_t e = blockIdx.x;
  acc_t s = 0;
  for (index_t i = off(e) + threadIdx.x; i < off(e + 1); i += blockDim.x) s += vals[i];
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) out[e] = s;
}

template <class acc_t>
int launch_segment_sum(const acc_t* vals, const DomainOffsets& off, acc_t* out, cudaStream_t stream) {
  CUDA_LAUNCH((segment_sum_kernel<acc_t>), unsigned(off.E), kBlock, 0, stream, vals, off, out);
  return int(cudaGetLastError());
}

// The coefficients of rows begin .. end-1 (one domain), by the whole block: the domain's
// denominator, then each row. Every thread of the block must call it.
template <class acc_t>
__device__ __forceinline__ void domain_ce_coeffs(const CeParams<acc_t>& p, index_t begin, index_t end, acc_t* c,
                                                 acc_t* a, acc_t* b) {
  __shared__ acc_t denom;
  acc_t s = 0;
  if (!p.sum)
    for (index_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += ce_denominator_term(p, i);
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) denom = p.sum ? acc_t(1) : s;
  __syncthreads();
  for (index_t i = begin + threadIdx.x; i < end; i += blockDim.x) ce_row_coeffs(p, i, denom, c, a, b);
}

template <class acc_t>
__global__ void __launch_bounds__(kBlock) ce_coeffs_kernel(CeParams<acc_t> p, DomainOffsets off, acc_t* c, acc_t* a,
                                                           acc_t* b) {
  domain_ce_coeffs(p, off(blockIdx.x), off(blockIdx.x + 1), c, a, b);
}

template <class acc_t>
int launch_ce_coeffs(const CeParams<acc_t>& p, const DomainOffsets& off, acc_t* c, acc_t* a, acc_t* b,
                     cudaStream_t stream) {
  CUDA_LAUNCH((ce_coeffs_kernel<acc_t>), unsigned(off.E), kBlock, 0, stream, p, off, c, a, b);
  return int(cudaGetLastError());
}

}  // namespace hessalign
