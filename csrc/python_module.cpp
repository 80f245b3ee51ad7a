// `import hessalign_ext._C` loads the operator library (registration.cpp and the kernels).
// Only the Python build has this file; the CMake/libtorch build links the same library without it.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
