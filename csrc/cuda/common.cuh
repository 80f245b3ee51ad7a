// Launch macro and warp/block reductions shared by the kernels. Device syntax only: nvcc
// compiles it for the GPU, and tests/emu compiles it with g++ over the CPU emulation header
// (which defines CUDA_LAUNCH itself), so the same launches run in both.
#pragma once
#include "../math/hostdevice.h"

#if defined(__CUDACC__)
// Template kernels go in parentheses: CUDA_LAUNCH((k<T>), grid, block, smem, stream, args...).
#define CUDA_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace hessalign {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;
constexpr int kBlock = 256;               // threads per block of every kernel here
constexpr int kWarpsPerBlock = kBlock / kWarp;

// Sum over the 32 lanes of a warp; every lane gets the total.
template <class T>
__device__ __forceinline__ T warp_allreduce_sum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Sum over a block of kBlock threads; thread 0 gets the total. Two barriers: partial sums
// are published before warp 0 reads them, and read before the next call overwrites them.
template <class T>
__device__ __forceinline__ T block_reduce_sum(T v) {
  __shared__ T partial[kWarpsPerBlock];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_allreduce_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = 0;
  if (warp == 0) {
    total = lane < kWarpsPerBlock ? partial[lane] : T(0);
    total = warp_allreduce_sum(total);
  }
  __syncthreads();
  return total;
}

inline unsigned blocks_for_rows(index_t rows) { return unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

}  // namespace hessalign
