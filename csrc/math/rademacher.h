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

// Keys of probes k0 .. k0+B-1, hashed once per probe for all of its elements (idx over B).
struct ProbeKeysOp {
  uint64_t seed;
  index_t k0;
  uint64_t* keys;
  HE_INLINE void operator()(index_t b) const { keys[b] = rademacher_probe_key(seed, uint64_t(k0 + b)); }
};

// The chunk's probes as a (B, T, D) block: V[b, c, j] = v_{k0+b}[c0+c, j], from the chunk's keys
// (idx over the ColumnRun<W> items of its B·T rows).
template <class scalar_t, int W>
struct RademacherFillOp {
  const uint64_t* keys;  // (B,) from ProbeKeysOp
  index_t c0, T, D;
  scalar_t* V;
  HE_INLINE static index_t items(index_t B, index_t T, index_t D) { return ColumnRun<W>::items(B * T, D); }
  HE_INLINE void operator()(index_t idx) const {
    const ColumnRun<W> run(idx, D);
    const index_t b = run.row / T, c = run.row - b * T;
    const uint64_t key = keys[b], base = uint64_t((c0 + c) * D + run.j0);
    scalar_t* v = V + run.row * D + run.j0;
    for (index_t jj = 0; jj < run.width; ++jj) v[jj] = rademacher_sign<scalar_t>(key, base + uint64_t(jj));
  }
};

}  // namespace hessalign
