// domain_losses on CUDA: the device-generic driver of host/domain_losses.h with the CUDA kernels
// (cuBLAS GEMMs through ATen, row kernels of math/domain_losses.h through cuda/row_kernels.cuh).
#include <torch/library.h>

#include "../host/domain_losses.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("domain_losses", &hessalign::domain_losses_forward<hessalign::CudaKernels>);
  m.impl("_domain_losses_backward", &hessalign::domain_losses_backward<hessalign::CudaKernels>);
}
