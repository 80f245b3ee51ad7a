// The hessalign_ext operator library: every op and its backward, one schema each. CPU and
// CUDA kernels register in cpu/<op>_cpu.cpp and cuda/<op>_cuda.cu; fake kernels and
// autograd in hessalign_ext/ops/<op>.py. The trailing arguments of every op are
// cross_entropy's options (labels, ignore_index, class_weight, label_smoothing, reduction)
// and class_tile (0: picked by the memory rule of host/head_problem.h).
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(hessalign_ext, m) { HE_DEFINE_SCHEMAS(m); }

// `import hessalign_ext._C` loads this library (and so the registrations above).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
