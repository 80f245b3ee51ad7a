// logits_hvp on the CPU: the device-generic driver of host/logits_hvp.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/logits_hvp.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("logits_hvp", &hessalign::logits_hvp<hessalign::CpuKernels>);
  m.impl("_logits_hvp_backward", &hessalign::logits_hvp_backward<hessalign::CpuKernels>);
}
