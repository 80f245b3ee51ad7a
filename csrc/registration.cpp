// The hessalign_ext operator library: every op and its backward, one schema each. CPU and
// CUDA kernels register in cpu/<op>_cpu.cpp and cuda/<op>_cuda.cu; fake kernels and
// autograd in hessalign_ext/ops/<op>.py. The trailing arguments of every op are
// cross_entropy's options (labels, ignore_index, class_weight, label_smoothing, reduction)
// and class_tile (0: picked by the memory rule of host/class_tile.h).
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(hessalign_ext, m) { HE_DEFINE_SCHEMAS(m); }
