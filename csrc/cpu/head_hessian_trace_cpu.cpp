// head_hessian_trace on the CPU: the device-generic driver of host/head_hessian_trace.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/head_hessian_trace.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("head_hessian_trace", &hessalign::head_hessian_trace_forward<hessalign::CpuKernels>);
  m.impl("_head_hessian_trace_backward", &hessalign::head_hessian_trace_backward<hessalign::CpuKernels>);
}
