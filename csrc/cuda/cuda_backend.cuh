// CudaKernels: the backend the .cu entry points run, with every launcher's definition
// (so nvcc instantiates them here), the device guard of features and the current stream.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda_kernels.h"
#include "domain_stats_kernels.cuh"
#include "logits_kernels.cuh"
#include "row_kernels.cuh"
#include "segment_kernels.cuh"
#include "softmax_kernels.cuh"

namespace hessalign {

struct CudaKernels : CudaKernelsT<true> {
  static c10::cuda::CUDAGuard guard(const at::Tensor& features) { return c10::cuda::CUDAGuard(features.device()); }
  static CudaKernels current() { return {{at::cuda::getCurrentCUDAStream().stream()}}; }
  // 1/16 of the GPU's memory (5 GB on an 80 GB H100): the H100 run of 2026-11-25 spent 2× the
  // closed form's time at N=8192, C=32768 under 256 MiB, recomputing the logits tile by tile.
  static int64_t default_tile_bytes(const at::Tensor& features) {
    return int64_t(at::cuda::getDeviceProperties(features.get_device())->totalGlobalMem / 16);
  }
};

}  // namespace hessalign
