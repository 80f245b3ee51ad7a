// hutchinson_trace (DESIGN.md §1): for K Rademacher probes v_k,
//   tr_e ≈ (1/K) Σ_k v_kᵀ H_e v_k = Σ_{i∈e} (c_i/K) Σ_k var_ik,
//   var_ik = Σ_c p_ic d_ikc²,  d_ik = u_ik - Σ_c p_ic u_ikc,  u_ik = V_k z̃_i
// (d from HvpMeanOp's sums, centered on the dominant class (head_hvp.h); two passes, so a
// dominant class does not cancel as Σpu² - m² would).
// Backward with k_i = c_i T̄_e / K:
//   du_ik = 2 k_i p_i ⊙ d_ik,   dl_ic = k_i p_ic Σ_k (d_ikc² - var_ik).
#pragma once
#include "head_hvp.h"

namespace hessalign {

// var_ib += Σ_{c in tile} p_ic d_ibc²   (virtual rows r = i·B + b)
template <class scalar_t, class acc_t>
struct HutchinsonVarOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<scalar_t> U;
  ReadOnly<acc_t> m;
  ReadOnly<acc_t> mk;
  acc_t* var;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    const index_t i = r / ch.B, k = ch.slot(i, r % ch.B);
    const acc_t p = ch.lt.prob(i, c);
    const acc_t d = Centered<acc_t>::value(p, acc_t(U[r * ch.lt.T + c]), ch.lt.pbar[i], m[k], mk[k]);
    s[0] += p * d * d;
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const { var[ch.slot(r / ch.B, r % ch.B)] += s[0]; }
};

// Per element (i, c) over the chunk's probes: du_b -> U, DL += k_i p Σ_b (d_b² - var_b).
template <class scalar_t, class acc_t>
struct HutchinsonTraceBackwardOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> k;
  ReadOnly<acc_t> m;
  ReadOnly<acc_t> mk;
  ReadOnly<acc_t> var;
  scalar_t* U;
  acc_t* DL;  // N×T
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t T = ch.lt.T;
    const acc_t p = ch.lt.prob(i, c), kp = k[i] * p, pb = ch.lt.pbar[i];
    acc_t dl = 0;
    for (index_t b = 0; b < ch.B; ++b) {
      const index_t e = (i * ch.B + b) * T + c, s = ch.slot(i, b);
      const acc_t d = Centered<acc_t>::value(p, acc_t(U[e]), pb, m[s], mk[s]);
      dl += d * d - var[s];
      U[e] = scalar_t(acc_t(2) * kp * d);
    }
    DL[i * T + c] += kp * dl;
  }
};

}  // namespace hessalign
