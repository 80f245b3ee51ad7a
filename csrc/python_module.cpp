// `import hessalign_ext._C` loads the operator library (registration.cpp and the kernels).
// Only the Python build has this file; the CMake/libtorch build links the same library without it.
#include <Python.h>

// _C.cpu_isa: the instruction set the CPU kernels were built for (setup.py's cpu_isa_flags):
// "avx2" (AVX2 + FMA), or "baseline" for a portable build, where the few-rows GEMM kernel of
// cpu/segment_tn_cpu.cpp is not taken.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
#if defined(CPU_CAPABILITY_AVX2)
  const char* isa = "avx2";
#else
  const char* isa = "baseline";
#endif
  if (m && PyModule_AddStringConstant(m, "cpu_isa", isa) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
