// head_grad on the CPU: the device-generic driver of host/head_grad.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/head_grad.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("head_grad", &hessalign::head_grad_forward<hessalign::CpuKernels>);
  m.impl("_head_grad_backward", &hessalign::head_grad_backward<hessalign::CpuKernels>);
}
