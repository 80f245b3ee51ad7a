// head_grad on CUDA: the device-generic driver of host/head_grad.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/head_grad.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/head_grad.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("head_grad", &hessalign::head_grad_forward<hessalign::CudaKernels>);
  m.impl("_head_grad_backward", &hessalign::head_grad_backward<hessalign::CudaKernels>);
}
