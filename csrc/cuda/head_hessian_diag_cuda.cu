// head_hessian_diag on CUDA: the device-generic driver of host/head_hessian_diag.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/head_hessian_diag.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/head_hessian_diag.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("head_hessian_diag", &hessalign::head_hessian_diag_forward<hessalign::CudaKernels>);
  m.impl("_head_hessian_diag_backward", &hessalign::head_hessian_diag_backward<hessalign::CudaKernels>);
}
