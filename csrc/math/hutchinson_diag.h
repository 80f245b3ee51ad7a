// hutchinson_diag (DESIGN.md §1): D_e ≈ (1/K) Σ_k v_k ⊙ (H_e v_k). Per chunk of B probes the
// HVPs come from head_hvp.h (S over U, then O_e = S_eᵀ Z̃_e per domain); this file folds them
// into the output without storing a K×C×(d+1) probe tensor. Backward: each probe is an HVP
// backward with upstream Ō_k = D̄_e ⊙ v_k / K and no gradient for the (constant) probes.
#pragma once
#include "rademacher.h"
#include "tile.h"

namespace hessalign {

// out[e, c0+c, j] += (1/K) Σ_b v_{k0+b}[c0+c, j] · O[e, b·T + c, j]   (idx over E·T·D)
template <class scalar_t, class acc_t>
struct ProbeDiagAccumulateOp {
  uint64_t seed;
  index_t k0, B, c0, T, D, C;
  acc_t inv_k;
  const scalar_t* O;  // (E, B·T, D)
  scalar_t* out;      // (E, C, D)
  HE_INLINE void operator()(index_t idx) const {
    const index_t j = idx % D, c = idx / D % T, e = idx / (D * T);
    acc_t s = 0;
    for (index_t b = 0; b < B; ++b) {
      const acc_t v = rademacher_sign<acc_t>(rademacher_probe_key(seed, uint64_t(k0 + b)), uint64_t((c0 + c) * D + j));
      s += v * acc_t(O[(e * B * T + b * T + c) * D + j]);
    }
    scalar_t& o = out[(e * C + c0 + c) * D + j];
    o = scalar_t(acc_t(o) + inv_k * s);
  }
};

// Upstream of probe k's HVP: Ō[e, b·T + c, j] = D̄[e, c0+c, j] v_{k0+b}[c0+c, j] / K   (idx over E·B·T·D)
template <class scalar_t, class acc_t>
struct ProbeUpstreamOp {
  uint64_t seed;
  index_t k0, B, c0, T, D, C;
  acc_t inv_k;
  const scalar_t* grad;  // D̄ (E, C, D)
  scalar_t* Obar;        // (E, B·T, D)
  HE_INLINE void operator()(index_t idx) const {
    const index_t j = idx % D, c = idx / D % T, b = idx / (D * T) % B, e = idx / (D * T * B);
    const acc_t v = rademacher_sign<acc_t>(rademacher_probe_key(seed, uint64_t(k0 + b)), uint64_t((c0 + c) * D + j));
    Obar[idx] = scalar_t(inv_k * v * acc_t(grad[(e * C + c0 + c) * D + j]));
  }
};

}  // namespace hessalign
