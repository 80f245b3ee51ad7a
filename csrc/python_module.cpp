// `import hessalign_ext._C` loads the operator library (registration.cpp and the kernels).
// Only the Python build has this file; the CMake/libtorch build links the same library without it.
#include <Python.h>

#include <cmath>

#include "host/gemm.h"

namespace {

// A new tuple of item(i) for i < n (new references), or NULL with the error set.
template <class Item>
PyObject* tuple_of(size_t n, Item item) {
  PyObject* t = PyTuple_New(Py_ssize_t(n));
  for (size_t i = 0; t && i < n; ++i) {
    PyObject* x = item(i);
    if (!x) Py_CLEAR(t);
    else PyTuple_SET_ITEM(t, Py_ssize_t(i), x);
  }
  return t;
}

// One choice as a dict, or NULL with the error set.
PyObject* choice_dict(const hessalign::GemmChoice& c) {
  PyObject* key = tuple_of(c.key.size(), [&](size_t i) { return PyLong_FromLongLong(c.key[i]); });
  PyObject* ways = tuple_of(c.ways.size(), [&](size_t i) { return PyUnicode_FromString(c.ways[i]); });
  PyObject* seconds = tuple_of(c.ways.size(), [&](size_t i) {
    return std::isnan(c.seconds[i]) ? Py_NewRef(Py_None) : PyFloat_FromDouble(c.seconds[i]);
  });
  if (!key || !ways || !seconds) {
    Py_XDECREF(key);
    Py_XDECREF(ways);
    Py_XDECREF(seconds);
    return nullptr;
  }
  // key[0] is the kind (gemm 0, segment 1), key[1] the thread count, key[2] whether timing was on
  // (cpu/gemm_tuner.cpp). "N" hands Py_BuildValue the three tuples, which it releases if it fails.
  return Py_BuildValue("{s:s,s:L,s:O,s:N,s:N,s:N,s:s,s:L}", "kind", c.key[0] == 0 ? "gemm" : "segment", "threads",
                       static_cast<long long>(c.key[1]), "timed", c.key[2] ? Py_True : Py_False, "key", key, "ways",
                       ways, "seconds", seconds, "chosen", c.ways[c.chosen], "calls", static_cast<long long>(c.calls));
}

// _C.cpu_gemm_choices(): auto mode's CPU GEMM choices (host/gemm.h's GemmChoice), as dicts
// {"kind": "gemm" or "segment" (the per-domain products of segment_tn_faster), "threads", "timed"
// (timing was on), "key", "ways", "seconds" (None: not timed), "chosen", "calls"}.
PyObject* cpu_gemm_choices(PyObject*, PyObject*) {
  const auto choices = hessalign::cpu_gemm_choices();
  PyObject* list = PyList_New(0);
  for (size_t i = 0; list && i < choices.size(); ++i) {
    PyObject* d = choice_dict(choices[i]);
    if (!d || PyList_Append(list, d) < 0) Py_CLEAR(list);
    Py_XDECREF(d);
  }
  return list;
}

PyObject* clear_cpu_gemm_choices(PyObject*, PyObject*) {
  hessalign::clear_cpu_gemm_choices();
  Py_RETURN_NONE;
}

PyObject* set_cpu_gemm_timing(PyObject*, PyObject* on) {
  const int flag = PyObject_IsTrue(on);
  if (flag < 0) return nullptr;
  return PyBool_FromLong(hessalign::set_cpu_gemm_timing(flag != 0));
}

PyMethodDef methods[] = {
    {"cpu_gemm_choices", cpu_gemm_choices, METH_NOARGS, "Auto mode's measured CPU GEMM choices so far."},
    {"clear_cpu_gemm_choices", clear_cpu_gemm_choices, METH_NOARGS, "Forget them: measure each product again."},
    {"set_cpu_gemm_timing", set_cpu_gemm_timing, METH_O,
     "Time each new product's ways (True, the default) or take its untimed way (False: the same in every process); "
     "returns the previous setting."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// _C.cpu_isa: the instruction set the CPU kernels were built for (setup.py's cpu_isa_flags):
// "avx2" (AVX2 + FMA), or "baseline" for a portable build, where the few-rows and few-classes
// kernels are not taken.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
