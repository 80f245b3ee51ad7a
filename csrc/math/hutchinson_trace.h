// hutchinson_trace (DESIGN.md §1): for K Rademacher probes v_k,
//   tr_e ≈ (1/K) Σ_k v_kᵀ H_e v_k = Σ_{i∈e} (c_i/K) Σ_k var_ik,
//   var_ik = Σ_c p_ic (u_ikc - m_ik)²,  u_ik = V_k z̃_i,  m_ik = Σ_c p_ic u_ikc
// (m from HvpMeanOp; two passes, so a dominant class does not cancel as Σpu² - m² would).
// Backward with k_i = c_i T̄_e / K:
//   du_ik = 2 k_i p_i ⊙ (u_ik - m_ik),   dl_ic = k_i p_ic Σ_k ((u_ikc - m_ik)² - var_ik).
#pragma once
#include "head_hvp.h"

namespace hessalign {

// var_ib += Σ_{c in tile} p_ic (u_ibc - m_ib)²   (virtual rows r = i·B + b)
template <class scalar_t, class acc_t>
struct HutchinsonVarOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<scalar_t> U;
  ReadOnly<acc_t> m;
  acc_t* var;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    const index_t i = r / ch.B;
    const acc_t d = acc_t(U[r * ch.lt.T + c]) - m[ch.slot(i, r % ch.B)];
    s[0] += ch.lt.prob(i, c) * d * d;
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const { var[ch.slot(r / ch.B, r % ch.B)] += s[0]; }
};

// Per element (i, c) over the chunk's probes: du_b -> U, DL += k_i p Σ_b ((u_b - m_b)² - var_b).
template <class scalar_t, class acc_t>
struct HutchinsonTraceBackwardOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> k;
  ReadOnly<acc_t> m;
  ReadOnly<acc_t> var;
  scalar_t* U;
  acc_t* DL;  // N×T
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t T = ch.lt.T;
    const acc_t kp = k[i] * ch.lt.prob(i, c);
    acc_t dl = 0;
    for (index_t b = 0; b < ch.B; ++b) {
      const index_t e = (i * ch.B + b) * T + c, s = ch.slot(i, b);
      const acc_t d = acc_t(U[e]) - m[s];
      dl += d * d - var[s];
      U[e] = scalar_t(acc_t(2) * kp * d);
    }
    DL[i * T + c] += kp * dl;
  }
};

}  // namespace hessalign
