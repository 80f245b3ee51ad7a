// hutchinson_trace on CUDA: the device-generic driver of host/hutchinson_trace.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/hutchinson_trace.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/hutchinson_trace.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("hutchinson_trace", &hessalign::hutchinson_trace_forward<hessalign::CudaKernels>);
  m.impl("_hutchinson_trace_backward", &hessalign::hutchinson_trace_backward<hessalign::CudaKernels>);
}
