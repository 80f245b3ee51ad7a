// The generic kernels that run the row and elementwise functors of math/ (math/tile.h):
// a warp per row, lanes striding over the row's columns, sums reduced by warp shuffles.
// One launcher each; tests/emu instantiates the same launchers under CPU emulation.
#pragma once
#include "common.cuh"

namespace hessalign {

// Row r = blockIdx.x·8 + warp: the warp gathers op's kSums sums over the row's columns,
// shares them by shuffles, maps every column, and lane 0 finishes the row. A whole warp
// leaves together when r >= rows, so the shuffles always see 32 live lanes.
template <class Op>
__global__ void __launch_bounds__(kBlock) rows_kernel(index_t rows, Op op) {
  using acc_t = typename Op::acc_type;
  const index_t r = index_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= rows) return;
  const index_t cols = op.cols();
  acc_t s[Op::kSums > 0 ? Op::kSums : 1] = {};
  if constexpr (Op::kSums > 0) {
    for (index_t c = lane; c < cols; c += kWarp) op.partial(r, c, s);
    for (int j = 0; j < Op::kSums; ++j) s[j] = warp_allreduce_sum(s[j]);
  }
  for (index_t c = lane; c < cols; c += kWarp) op.map(r, c, s);
  if (lane == 0) op.finish(r, s);
}

template <class Op>
int launch_rows(index_t rows, const Op& op, cudaStream_t stream) {
  CUDA_LAUNCH((rows_kernel<Op>), blocks_for_rows(rows), kBlock, 0, stream, rows, op);
  return int(cudaGetLastError());
}

// Grid-stride loop of an elementwise functor over [0, n).
template <class Op>
__global__ void __launch_bounds__(kBlock) elements_kernel(index_t n, Op op) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) op(i);
}

template <class Op>
int launch_elements(index_t n, const Op& op, cudaStream_t stream) {
  const index_t blocks = std::min<index_t>((n + kBlock - 1) / kBlock, 4096);
  CUDA_LAUNCH((elements_kernel<Op>), unsigned(blocks), kBlock, 0, stream, n, op);
  return int(cudaGetLastError());
}

}  // namespace hessalign
