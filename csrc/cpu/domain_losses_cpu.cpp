// domain_losses on the CPU: the device-generic driver of host/domain_losses.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/domain_losses.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("domain_losses", &hessalign::domain_losses_forward<hessalign::CpuKernels>);
  m.impl("_domain_losses_backward", &hessalign::domain_losses_backward<hessalign::CpuKernels>);
}
