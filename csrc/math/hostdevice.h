// HE_HOST_DEVICE / HE_INLINE: one spelling for functions that nvcc compiles for host and
// device and g++ (CPU kernels, CUDA emulation) compiles as plain inline functions.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HE_HOST_DEVICE __host__ __device__
#define HE_INLINE __host__ __device__ __forceinline__
#else
#define HE_HOST_DEVICE
#define HE_INLINE inline
#endif

namespace hessalign {
using index_t = int64_t;

// Streaming element ops split each row of D columns into runs of W columns, one run per item
// (idx over rows·⌈D/W⌉): the backend picks W (K::kStreamWidth: 64 on the CPU, so the loop over
// a run is contiguous, free of integer division and vectorizes; 1 on CUDA, a thread per element).
template <int W>
struct ColumnRun {
  index_t row, j0, width;  // the run covers columns j0 .. j0+width-1 of row `row`
  HE_INLINE static index_t items(index_t rows, index_t D) { return rows * ((D + W - 1) / W); }
  HE_INLINE ColumnRun(index_t idx, index_t D) {
    const index_t runs = (D + W - 1) / W;
    row = idx / runs;
    j0 = (idx - row * runs) * W;
    width = D - j0 < W ? D - j0 : W;
  }
};

// exp/log of the accumulation type (float or double) on host and device.
HE_INLINE float he_exp(float x) { return expf(x); }
HE_INLINE double he_exp(double x) { return exp(x); }
HE_INLINE float he_log(float x) { return logf(x); }
HE_INLINE double he_log(double x) { return log(x); }
}  // namespace hessalign
