// head_hessian_inner on the CPU: the device-generic driver of host/head_hessian_inner.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/head_hessian_inner.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("head_hessian_inner", &hessalign::head_hessian_inner_forward<hessalign::CpuKernels>);
  m.impl("_head_hessian_inner_backward", &hessalign::head_hessian_inner_backward<hessalign::CpuKernels>);
}
