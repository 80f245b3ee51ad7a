// CudaKernels: the backend the .cu entry points run, with every launcher's definition
// (so nvcc instantiates them here), the device guard of features and the current stream.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda_kernels.h"
#include "row_kernels.cuh"
#include "segment_kernels.cuh"
#include "softmax_kernels.cuh"

namespace hessalign {

struct CudaKernels : CudaKernelsT<true> {
  static c10::cuda::CUDAGuard guard(const at::Tensor& features) { return c10::cuda::CUDAGuard(features.device()); }
  static CudaKernels current() { return {{at::cuda::getCurrentCUDAStream().stream()}}; }
};

}  // namespace hessalign
