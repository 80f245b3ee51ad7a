// logits_hvp on CUDA: the device-generic driver of host/logits_hvp.h with the row kernels of
// row_kernels.cuh (a warp per virtual row).
#include <torch/library.h>

#include "../host/logits_hvp.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) {
  m.impl("logits_hvp", &hessalign::logits_hvp<hessalign::CudaKernels>);
  m.impl("_logits_hvp_backward", &hessalign::logits_hvp_backward<hessalign::CudaKernels>);
}
