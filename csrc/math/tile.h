// One class tile of the logits, as every row kernel reads it (DESIGN.md §4: the class
// dimension is visited in tiles so a 256k-class head never needs its N×C logits whole).
//
// Row kernels are functors run by a generic driver (cpu/cpu_kernels.h: a loop per row;
// cuda/row_kernels.cuh: a warp per row) over `rows` rows of `cols()` columns:
//   kSums sums are gathered with partial(r, c, sums) over the row's columns, then
//   map(r, c, sums) runs on every column, then finish(r, sums) runs once per row.
// An elementwise functor has operator()(idx) and is run over a flat range.
#pragma once
#include "hostdevice.h"
#include "softmax.h"

namespace hessalign {

template <class scalar_t, class acc_t>
struct LogitsTile {
  ReadOnly<scalar_t> L;  // N×T logits of classes c0 .. c0+T-1, row-major
  index_t T;             // columns in the tile
  index_t c0;            // global index of the tile's first class
  ReadOnly<acc_t> lse;   // N row log-sum-exps over all C classes
  ReadOnly<acc_t> pbar;  // N: 1 - p of each row's max class (softmax.h)
  ReadOnly<acc_t> P;     // N×T probabilities when the backend keeps them (K::kCacheProbs)
  HE_INLINE acc_t logit(index_t i, index_t c) const { return acc_t(L[i * T + c]); }
  HE_INLINE acc_t prob(index_t i, index_t c) const {
    return P ? P[i * T + c] : softmax_prob(logit(i, c), lse[i]);
  }
  // 1 - p of a class of probability p: p̄ for the row's dominant class, of which 1 - p keeps eps/p̄.
  HE_INLINE acc_t complement(index_t i, acc_t p) const { return dominates(p) ? pbar[i] : acc_t(1) - p; }
  // -log p_ic = lse_i - l_ic; for the dominant class (p > kDominantProb: -log p < 0.5108) -log1p(-p̄),
  // of which lse - l keeps eps·|lse|/p̄.
  HE_INLINE acc_t neg_log_prob(index_t i, index_t c) const {
    const acc_t nl = lse[i] - logit(i, c);
    return nl < acc_t(kDominantNegLog) ? -he_log1p(-pbar[i]) : nl;
  }
};

// The centered value x_c - Σ_c' p_c' x_c' of a row's classes (the softmax Jacobian's product:
// (diag(p) - p pᵀ) x = p ⊙ centered), from two sums over the row that add gathers: rest =
// Σ p x over the classes that do not dominate, xk = x of the dominant class (0 without one).
// For the dominant class it is p̄ x_k - rest, where x_k - Σ p x would cancel terms of size x to a
// result of size p̄ x.
template <class acc_t>
struct Centered {
  HE_INLINE static void add(acc_t p, acc_t x, acc_t& rest, acc_t& xk) {
    if (dominates(p)) xk += x;
    else rest += p * x;
  }
  HE_INLINE static acc_t value(acc_t p, acc_t x, acc_t pbar, acc_t rest, acc_t xk) {
    return dominates(p) ? pbar * xk - rest : x - (acc_t(1) - pbar) * xk - rest;
  }
  // Σ_c p_c x_c itself
  HE_INLINE static acc_t mean(acc_t pbar, acc_t rest, acc_t xk) { return rest + (acc_t(1) - pbar) * xk; }
};

// Base of row functors without a map or finish step.
template <class acc_t>
struct RowOpBase {
  using acc_type = acc_t;
  HE_INLINE void partial(index_t, index_t, acc_t*) const {}
  HE_INLINE void map(index_t, index_t, const acc_t*) const {}
  HE_INLINE void finish(index_t, const acc_t*) const {}
};

// ‖z̃_i‖² = Σ_j z_ij² (+ 1, the ones column, with a bias): no augmented copy of the features.
// The CUDA backend's row_sq_norms (the CPU backend's is vectorized).
template <class scalar_t, class acc_t>
struct RowSqNormOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  ReadOnly<scalar_t> Z;  // N×d
  index_t d;
  acc_t ones;  // 1 with a bias, else 0
  acc_t* out;
  HE_INLINE index_t cols() const { return d; }
  HE_INLINE void partial(index_t i, index_t j, acc_t* s) const {
    const acc_t z = acc_t(Z[i * d + j]);
    s[0] += z * z;
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const { out[i] = s[0] + ones; }
};

// Softmax backward of an accumulated dP: dl_ic = p_ic (DP_ic - Σ_c' p DP), from DP's Centered sums
// (rest: Σ p DP over the classes that do not dominate; dpk: DP of the dominant class).
template <class scalar_t, class acc_t>
struct SoftmaxBackwardOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> DP;
  ReadOnly<acc_t> rest;
  ReadOnly<acc_t> dpk;
  scalar_t* dl;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t e = i * lt.T + c;
    const acc_t p = lt.prob(i, c);
    dl[e] = scalar_t(p * Centered<acc_t>::value(p, DP[e], lt.pbar[i], rest[i], dpk[i]));
  }
};

}  // namespace hessalign
