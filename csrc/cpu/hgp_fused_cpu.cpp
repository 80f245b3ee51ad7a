// hgp_fused on the CPU: the device-generic driver of host/hgp_fused.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/hgp_fused.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("hgp_fused", &hessalign::hgp_fused_forward<hessalign::CpuKernels>);
  m.impl("_hgp_fused_backward", &hessalign::hgp_fused_backward<hessalign::CpuKernels>);
}
