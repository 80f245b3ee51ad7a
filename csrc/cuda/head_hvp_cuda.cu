// head_hvp on CUDA: the device-generic driver of host/head_hvp.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/head_hvp.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/head_hvp.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("head_hvp", &hessalign::head_hvp_forward<hessalign::CudaKernels>);
  m.impl("_head_hvp_backward", &hessalign::head_hvp_backward<hessalign::CudaKernels>);
}
