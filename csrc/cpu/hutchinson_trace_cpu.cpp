// hutchinson_trace on the CPU: the device-generic driver of host/hutchinson_trace.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/hutchinson_trace.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) {
  m.impl("hutchinson_trace", &hessalign::hutchinson_trace_forward<hessalign::CpuKernels>);
  m.impl("_hutchinson_trace_backward", &hessalign::hutchinson_trace_backward<hessalign::CpuKernels>);
}
