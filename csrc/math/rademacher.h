// Counter-based Rademacher probes (DESIGN.md §3): the sign of probe k at flat element j of a
// (C, D) parameter block is a pure function of (seed, k, j), so no probe tensor is stored,
// a run is reproducible, and the CPU, the CUDA kernels and hessalign_ext/probes.py draw the
// same probes. j = class * D + column, D = d + 1 with a bias, d without.
//
// One hash gives the signs of 64 consecutive elements (a word w = j / 64): sign = -1 if bit
// j % 64 (from the least significant) of splitmix64(key_k ^ w) is set, else +1, with
// key_k = splitmix64(splitmix64(seed) ^ k). A hash per element used 1 of its 64 bits and cost
// 0.6 ns per element on the CPU (now 0.08), 12% of a K = 300 diagonal at C = 345.
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

// Signs of elements first .. first+width-1 of one probe, 32 at a time: a window of 32 bits
// takes one hash, or two across a word boundary, and then expands in a loop that vectorizes.
template <class T>
HE_INLINE void rademacher_signs(uint64_t probe_key, uint64_t first, index_t width, T* out) {
  for (index_t jj = 0; jj < width; jj += 32) {
    const uint64_t j = first + uint64_t(jj);
    const index_t n = width - jj < 32 ? width - jj : 32;
    const unsigned s = unsigned(j & 63);
    uint64_t bits = splitmix64(probe_key ^ (j >> 6)) >> s;
    if (s + unsigned(n) > 64) bits |= splitmix64(probe_key ^ ((j >> 6) + 1)) << (64 - s);
    const uint32_t window = uint32_t(bits);
    for (index_t t = 0; t < n; ++t) out[jj + t] = ((window >> t) & 1u) ? T(-1) : T(1);
  }
}

// Keys of probes k0 .. k0+B-1, hashed once per probe for all of its elements (idx over B).
struct ProbeKeysOp {
  uint64_t seed;
  index_t k0;
  uint64_t* keys;
  HE_INLINE void operator()(index_t b) const { keys[b] = rademacher_probe_key(seed, uint64_t(k0 + b)); }
};

// The chunk's probes as a (B, T, D) block, V[b, c, j] = v_{k0+b}[c0+c, j], or class-major as a
// (T, B, D) one, V[c, b, j], from the chunk's keys (idx over the ColumnRun<W> items of its B·T rows).
template <class scalar_t, int W>
struct RademacherFillOp {
  const uint64_t* keys;  // (B,) from ProbeKeysOp
  index_t c0, T, D;
  index_t ldv;  // V's row stride (padded with align_rows: the GEMMs read V in place)
  scalar_t* V;
  index_t class_major_B = 0;  // B for the class-major layout; 0: probe-major
  HE_INLINE static index_t items(index_t B, index_t T, index_t D) { return ColumnRun<W>::items(B * T, D); }
  HE_INLINE void operator()(index_t idx) const {
    const ColumnRun<W> run(idx, D);
    const index_t B = class_major_B;
    const index_t b = B ? run.row % B : run.row / T, c = B ? run.row / B : run.row - b * T;
    const uint64_t j = uint64_t((c0 + c) * D + run.j0);
    if constexpr (W == 1)  // a thread per element (CUDA): its bit of its word, without the window loop
      V[run.row * ldv + run.j0] = (splitmix64(keys[b] ^ (j >> 6)) >> (j & 63)) & 1u ? scalar_t(-1) : scalar_t(1);
    else
      rademacher_signs(keys[b], j, run.width, V + run.row * ldv + run.j0);
  }
};

}  // namespace hessalign
