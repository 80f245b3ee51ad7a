// The padded GEMM width of a head's D-wide operands (Head::align_rows in head_problem.h): the
// width and the rule that turns it on.
#pragma once
#include <algorithm>
#include <cstdint>

#include "env_switch.h"

namespace hessalign {

// Padded GEMM width (Head::align_rows): with a bias, Z̃ and the (E, C, D) blocks have D = d + 1
// columns, and cuBLAS's vectorized kernels take neither rows of that many elements nor a GEMM
// extent of D. On an H100 (2026-11-26) the bf16 HVP's per-domain GEMMs at d = 4096 ran its
// `align1` kernels (~140 TFLOP/s, against 678 for an aligned mm) with row strides padded to 16
// bytes as well as without, since their extent stayed 4097; that padding cost 10 ms more than it
// saved (57.4 ms against 47.8). With align_rows every D-wide GEMM operand is a buffer of Dg = D
// rounded up to 16 bytes whose extra columns are zero, and the GEMMs run over all Dg columns
// (the zeros add nothing): aligned rows and an aligned extent. The caller's blocks and the
// results are staged through such buffers (Head::stage_rows). On an H100 (2026-11-27,
// scripts/gpu_check.sh's A/B, at 69fdef8) that bf16 HVP took 13.4 ms with it, 36.7 ms without.
inline int64_t padded_width(int64_t width, int64_t elem) {
  const int64_t per16 = std::max<int64_t>(1, 16 / elem);
  return (width + per16 - 1) / per16 * per16;
}

// The rule for align_rows where HESSALIGN_ALIGN_ROWS does not decide (1: always, 0: never; only
// where D is not aligned): 16-bit features on CUDA (the `align1` kernels are tensor-core ones;
// float32 GEMMs without TF32 run the same SIMT kernels at any alignment: within 1.07x of their
// floor at d + 1 = 4097 on the H100), where the padding pays for its copies. Per (E, C, D) block
// staged (~4 bytes of traffic an element, ~1.3 ps at 3 TB/s) the per-domain GEMMs over it do
// n_e multiply-adds an element, each ~11 fs faster padded (140 against 680 TFLOP/s): that wins
// from about 120 rows a domain, so 128; and the GEMMs must have 2^30 multiply-adds (a saving of
// ~12 µs, the host time of the copies' launches). Taken from those rates, not measured at the
// boundary.
constexpr int64_t kAlignRowsMinRowsPerDomain = 128;
constexpr int64_t kAlignRowsMinMacs = int64_t(1) << 30;

inline bool align_rows_for(int64_t N, int64_t E, int64_t C, int64_t D, int64_t elem, bool cuda) {
  if (padded_width(D, elem) == D) return false;
  if (const auto forced = env_switch("HESSALIGN_ALIGN_ROWS", "1 (on), 0 (off) or unset (the size rule)")) return *forced;
  return cuda && elem == 2 && N >= kAlignRowsMinRowsPerDomain * E && N * C * D >= kAlignRowsMinMacs;
}

}  // namespace hessalign
