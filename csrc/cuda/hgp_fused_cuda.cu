// hgp_fused on CUDA: the device-generic driver of host/hgp_fused.h with the row kernels of
// row_kernels.cuh; its GEMMs are cuBLAS's.
#include <torch/library.h>

#include "../host/hgp_fused.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("hgp_fused", &hessalign::hgp_fused_forward<hessalign::CudaKernels>);
  m.impl("_hgp_fused_backward", &hessalign::hgp_fused_backward<hessalign::CudaKernels>);
}
