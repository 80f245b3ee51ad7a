// loss_rows on the CPU: the device-generic driver of host/loss_rows.h with the CPU row kernels.
#include <torch/library.h>

#include "../host/loss_rows.h"
#include "cpu_kernels.h"

TORCH_LIBRARY_IMPL(hessalign_ext, CPU, m) { m.impl("loss_rows", &hessalign::loss_rows<hessalign::CpuKernels>); }
