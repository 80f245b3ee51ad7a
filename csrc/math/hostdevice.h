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

// exp/log of the accumulation type (float or double) on host and device.
HE_INLINE float he_exp(float x) { return expf(x); }
HE_INLINE double he_exp(double x) { return exp(x); }
HE_INLINE float he_log(float x) { return logf(x); }
HE_INLINE double he_log(double x) { return log(x); }
}  // namespace hessalign
