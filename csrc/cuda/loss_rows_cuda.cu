// loss_rows on CUDA: the device-generic driver of host/loss_rows.h with the CUDA kernels
// (segment_kernels.cuh for the coefficients, row_kernels.cuh for the targets).
#include <torch/library.h>

#include "../host/loss_rows.h"
#include "cuda_backend.cuh"

TORCH_LIBRARY_IMPL(hessalign_ext, CUDA, m) { m.impl("loss_rows", &hessalign::loss_rows<hessalign::CudaKernels>); }
