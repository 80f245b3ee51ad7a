// head_hessian_inner on CUDA: the device-generic driver of host/head_hessian_inner.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/head_hessian_inner.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/head_hessian_inner.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("head_hessian_inner", &hessalign::head_hessian_inner_forward<hessalign::CudaKernels>);
  m.impl("_head_hessian_inner_backward", &hessalign::head_hessian_inner_backward<hessalign::CudaKernels>);
}
