// head_hessian_diag (DESIGN.md §1): diag(H_e) = Σ_{i∈e} q_i ⊗ (z̃_i ⊙ z̃_i), q_ic = c_i p_ic (1 - p_ic).
// Backward with upstream D̄_e: dQ_i = D̄_e (z̃_i ⊙ z̃_i), dz̃_i = 2 z̃_i ⊙ (D̄_eᵀ q_i),
// x = c_i dQ ⊙ (1 - 2p), dl = p ⊙ (x - Σ_c p x), centered on the dominant class (tile.h's
// Centered) and with 1 - p of it as p̄, so a confident row keeps its relative precision.
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
    Q[i * lt.T + c] = scalar_t(coef[i] * p * lt.complement(i, p));
  }
};

// x_ic = c_i dQ_ic (1 - 2 p_ic)
template <class acc_t>
HE_INLINE acc_t diag_softmax_input(acc_t ci, acc_t dq, acc_t p) {
  return ci * dq * (acc_t(1) - acc_t(2) * p);
}

// The row's Centered sums of x over the tile: rest[i] += Σ p x (classes that do not dominate),
// xk[i] += x of the dominant class.
template <class scalar_t, class acc_t>
struct DiagBackwardSumsOp : RowOpBase<acc_t> {
  static constexpr int kSums = 2;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> coef;
  ReadOnly<scalar_t> dQ;
  acc_t* rest;
  acc_t* xk;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t p = lt.prob(i, c);
    Centered<acc_t>::add(p, diag_softmax_input(coef[i], acc_t(dQ[i * lt.T + c]), p), s[0], s[1]);
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const {
    rest[i] += s[0];
    xk[i] += s[1];
  }
};

// Q -> Q (for dz̃), dl = p ⊙ centered(x) written over dQ
template <class scalar_t, class acc_t>
struct DiagBackwardMapOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> coef;
  ReadOnly<acc_t> rest;
  ReadOnly<acc_t> xk;
  scalar_t* dQ;
  scalar_t* Q;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t e = i * lt.T + c;
    const acc_t p = lt.prob(i, c), ci = coef[i];
    Q[e] = scalar_t(ci * p * lt.complement(i, p));
    const acc_t x = diag_softmax_input(ci, acc_t(dQ[e]), p);
    dQ[e] = scalar_t(p * Centered<acc_t>::value(p, x, lt.pbar[i], rest[i], xk[i]));
  }
};

}  // namespace hessalign
