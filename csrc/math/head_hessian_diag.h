// head_hessian_diag (DESIGN.md §1): diag(H_e) = Σ_{i∈e} q_i ⊗ (z̃_i ⊙ z̃_i), q_ic = c_i p_ic (1 - p_ic).
// Backward with upstream D̄_e: dQ_i = D̄_e (z̃_i ⊙ z̃_i), dz̃_i = 2 z̃_i ⊙ (D̄_eᵀ q_i),
// dP = c_i dQ ⊙ (1 - 2p), dl = p ⊙ (dP - ρ), ρ_i = Σ_c p dP.
#pragma once
#include "tile.h"

namespace hessalign {

// Q_ic = c_i p_ic (1 - p_ic)
template <class scalar_t, class acc_t>
struct DiagQOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> coef;
  scalar_t* Q;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const acc_t p = lt.prob(i, c);
    Q[i * lt.T + c] = scalar_t(coef[i] * p * (acc_t(1) - p));
  }
};

// ρ_i += Σ_{c in tile} p c_i dQ (1 - 2p)
template <class scalar_t, class acc_t>
struct DiagBackwardSumsOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> coef;
  ReadOnly<scalar_t> dQ;
  acc_t* rho;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t p = lt.prob(i, c);
    s[0] += p * coef[i] * acc_t(dQ[i * lt.T + c]) * (acc_t(1) - acc_t(2) * p);
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const { rho[i] += s[0]; }
};

// Q -> Q (for dz̃), dl = p (c dQ (1 - 2p) - ρ) written over dQ
template <class scalar_t, class acc_t>
struct DiagBackwardMapOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> coef;
  ReadOnly<acc_t> rho;
  scalar_t* dQ;
  scalar_t* Q;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t e = i * lt.T + c;
    const acc_t p = lt.prob(i, c), ci = coef[i];
    Q[e] = scalar_t(ci * p * (acc_t(1) - p));
    dQ[e] = scalar_t(p * (ci * acc_t(dQ[e]) * (acc_t(1) - acc_t(2) * p) - rho[i]));
  }
};

}  // namespace hessalign
