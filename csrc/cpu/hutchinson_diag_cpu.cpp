// hutchinson_diag on the CPU: the device-generic driver of host/hutchinson_diag.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/hutchinson_diag.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("hutchinson_diag", &hessalign::hutchinson_diag_forward<hessalign::CpuKernels>);
  m.impl("_hutchinson_diag_backward", &hessalign::hutchinson_diag_backward<hessalign::CpuKernels>);
}
