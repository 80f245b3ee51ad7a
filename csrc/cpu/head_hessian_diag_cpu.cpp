// head_hessian_diag on the CPU: the device-generic driver of host/head_hessian_diag.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/head_hessian_diag.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("head_hessian_diag", &hessalign::head_hessian_diag_forward<hessalign::CpuKernels>);
  m.impl("_head_hessian_diag_backward", &hessalign::head_hessian_diag_backward<hessalign::CpuKernels>);
}
