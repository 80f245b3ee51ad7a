// Counter-based Rademacher probes (DESIGN.md §3): the sign of probe k at flat element j of a
// (C, D) parameter block is a pure function of (seed, k, j), so no probe tensor is stored,
// a run is reproducible, and the CPU, the CUDA kernels and hessalign_ext/probes.py draw the
// same probes. j = class * D + column, D = d + 1 with a bias, d without.
//
// sign = +1 if the top bit of splitmix64(splitmix64(splitmix64(seed) ^ k) ^ j) is 0, else -1.
#pragma once
#include "hostdevice.h"

namespace hessalign {

HE_INLINE uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Key of one probe: hashes (seed, probe) once, shared by all its elements.
HE_INLINE uint64_t rademacher_probe_key(uint64_t seed, uint64_t probe) {
  return splitmix64(splitmix64(seed) ^ probe);
}

template <class T>
HE_INLINE T rademacher_sign(uint64_t probe_key, uint64_t element) {
  return (splitmix64(probe_key ^ element) >> 63) ? T(-1) : T(1);
}

// The chunk's probes as a (B, T, D) block: V[b, c, j] = v_{k0+b}[c0+c, j].
template <class scalar_t>
struct RademacherFillOp {
  uint64_t seed;
  index_t k0, c0, T, D;
  scalar_t* V;
  HE_INLINE void operator()(index_t idx) const {
    const index_t j = idx % D, c = idx / D % T, b = idx / (D * T);
    V[idx] = rademacher_sign<scalar_t>(rademacher_probe_key(seed, uint64_t(k0 + b)), uint64_t((c0 + c) * D + j));
  }
};

}  // namespace hessalign
