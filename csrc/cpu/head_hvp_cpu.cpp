// head_hvp on the CPU: the device-generic driver of host/head_hvp.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/head_hvp.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("head_hvp", &hessalign::head_hvp_forward<hessalign::CpuKernels>);
  m.impl("_head_hvp_backward", &hessalign::head_hvp_backward<hessalign::CpuKernels>);
}
