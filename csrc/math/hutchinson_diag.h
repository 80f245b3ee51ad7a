// hutchinson_diag (DESIGN.md §1): D_e ≈ (1/K) Σ_k v_k ⊙ (H_e v_k). Per chunk of B probes the
// HVPs come from head_hvp.h (S over U, then O_e = S_eᵀ Z̃_e per domain); this file folds them
// into the output without storing a K×C×(d+1) probe tensor. Backward: each probe is an HVP
// backward with upstream Ō_k = D̄_e ⊙ v_k / K and no gradient for the (constant) probes.
#pragma once
#include "rademacher.h"
#include "tile.h"

namespace hessalign {

// out[e, c0+c, j] += (1/K) Σ_b v_{k0+b}[c0+c, j] · O[e, b·T + c, j]. One item covers W
// consecutive columns j (idx over E·T·⌈D/W⌉): the CPU takes W = 64 so the loop over j, inside
// the loop over probes, is contiguous and vectorizes; CUDA takes W = 1 (a thread per element,
// neighbouring threads on neighbouring j).
template <class scalar_t, class acc_t, int W>
struct ProbeDiagAccumulateOp {
  index_t B, c0, T, D, C;
  acc_t inv_k;
  const scalar_t* V;  // (B·T, D) the chunk's probes (RademacherFillOp)
  const scalar_t* O;  // (E, B·T, D)
  scalar_t* out;      // (E, C, D)
  HE_INLINE static index_t items(index_t E, index_t T, index_t D) { return E * T * ((D + W - 1) / W); }
  HE_INLINE void operator()(index_t idx) const {
    const index_t blocks = (D + W - 1) / W, row = idx / blocks, j0 = (idx - row * blocks) * W;
    const index_t e = row / T, c = row - e * T, w = D - j0 < W ? D - j0 : W;
    acc_t s[W] = {};
    for (index_t b = 0; b < B; ++b) {
      const scalar_t* v = V + (b * T + c) * D + j0;
      const scalar_t* o = O + e * B * T * D + (b * T + c) * D + j0;
      for (index_t jj = 0; jj < w; ++jj) s[jj] += acc_t(v[jj]) * acc_t(o[jj]);
    }
    scalar_t* dst = out + (e * C + c0 + c) * D + j0;
    for (index_t jj = 0; jj < w; ++jj) dst[jj] = scalar_t(acc_t(dst[jj]) + inv_k * s[jj]);
  }
};

// Upstream of probe k's HVP: Ō[e, b·T + c, j] = D̄[e, c0+c, j] v_{k0+b}[c0+c, j] / K
// (idx over E·B·T·⌈D/W⌉, W columns per item as in ProbeDiagAccumulateOp)
template <class scalar_t, class acc_t, int W>
struct ProbeUpstreamOp {
  index_t B, c0, T, D, C;
  acc_t inv_k;
  const scalar_t* V;     // (B·T, D) the chunk's probes
  const scalar_t* grad;  // D̄ (E, C, D)
  scalar_t* Obar;        // (E, B·T, D)
  HE_INLINE static index_t items(index_t E, index_t B, index_t T, index_t D) { return E * B * T * ((D + W - 1) / W); }
  HE_INLINE void operator()(index_t idx) const {
    const index_t blocks = (D + W - 1) / W, row = idx / blocks, j0 = (idx - row * blocks) * W;
    const index_t e = row / (B * T), vrow = row - e * B * T, c = vrow % T, w = D - j0 < W ? D - j0 : W;
    const scalar_t* v = V + vrow * D + j0;
    const scalar_t* g = grad + (e * C + c0 + c) * D + j0;
    scalar_t* o = Obar + row * D + j0;
    for (index_t jj = 0; jj < w; ++jj) o[jj] = scalar_t(inv_k * acc_t(v[jj]) * acc_t(g[jj]));
  }
};

}  // namespace hessalign
