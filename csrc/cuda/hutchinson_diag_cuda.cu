// hutchinson_diag on CUDA: the device-generic driver of host/hutchinson_diag.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/hutchinson_diag.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/hutchinson_diag.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("hutchinson_diag", &hessalign::hutchinson_diag_forward<hessalign::CudaKernels>);
  m.impl("_hutchinson_diag_backward", &hessalign::hutchinson_diag_backward<hessalign::CudaKernels>);
}
