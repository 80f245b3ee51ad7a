// Stable row softmax statistics, streamed over class tiles (DESIGN.md §1, §4).
//
// A row's log-sum-exp is kept as a running pair (M, S): the max so far and the off-max mass
// S = Σ exp(l - M) over every logit but one that attains M. Merging a tile whose own pair is
// (m, s) gives (max(M, m), S + (s + 1) exp(m - M)) when M ≥ m. Every exponent is ≤ 0, so
// logits of ±1e4 neither overflow nor lose the dominant class.
//
// S is kept apart from the max's own 1 because a confident row's quantities are of the size of
// p̄ = 1 - p_max = S / (1 + S): as 1 + S rounded to the dtype, p̄ keeps only eps/p̄ of its
// relative precision (1-7% in float32 at p̄ ≈ 5e-6). The last tile writes the log-sum-exp
// M + log1p(S) and p̄, and the ops read 1 - p of the dominant class as p̄ (tile.h).
#pragma once
#include "hostdevice.h"

namespace hessalign {

// At most one class of a row can hold more than this, even after rounding.
constexpr double kDominantProb = 0.6;
constexpr double kDominantNegLog = 0.51082562376599068;  // -log(kDominantProb)

template <class acc_t>
struct SoftmaxPair {
  acc_t m;  // running max (-inf while empty)
  acc_t s;  // off-max mass: Σ exp(l - m) over all logits but one at m
};

// Merge two pairs; an empty pair (m = -inf) is the identity.
template <class acc_t>
HE_INLINE SoftmaxPair<acc_t> softmax_merge(SoftmaxPair<acc_t> a, SoftmaxPair<acc_t> b) {
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  if (a.m < b.m) {
    const SoftmaxPair<acc_t> t = a;
    a = b;
    b = t;
  }
  return {a.m, a.s + (b.s + acc_t(1)) * he_exp(b.m - a.m)};
}

// Partial pair of the columns begin, begin+step, ... < n of one logits row: the CPU calls it
// with (0, 1), a CUDA warp with (lane, 32) before merging lanes. -inf logits add nothing.
template <class scalar_t, class acc_t>
HE_INLINE SoftmaxPair<acc_t> softmax_row_stats(const scalar_t* row, index_t n, index_t begin, index_t step) {
  SoftmaxPair<acc_t> p{-INFINITY, acc_t(0)};
  for (index_t c = begin; c < n; c += step) {
    const acc_t l = acc_t(row[c]);
    if (l > p.m) {  // the old max joins the off-max mass, rescaled to the new one
      p.s = (p.s + acc_t(1)) * he_exp(p.m - l);  // 0 from the empty pair
      p.m = l;
    } else if (l != -INFINITY) {
      p.s += he_exp(l - p.m);
    }
  }
  return p;
}

// Row r's result of a tile pass: the running pair (M, S), or, after the last tile (lse
// given), the log-sum-exp M + log1p(S) and the off-max probability p̄ = S / (1 + S)
// (-inf and 0 for an all -inf row).
template <class acc_t>
HE_INLINE void softmax_store(SoftmaxPair<acc_t> p, index_t r, acc_t* M, acc_t* S, acc_t* lse, acc_t* pbar) {
  if (lse) {
    lse[r] = p.m + he_log1p(p.s);
    pbar[r] = p.s / (acc_t(1) + p.s);
  } else {
    M[r] = p.m;
    S[r] = p.s;
  }
}

// Probability of logit l given the row's log-sum-exp.
template <class acc_t>
HE_INLINE acc_t softmax_prob(acc_t l, acc_t lse) { return he_exp(l - lse); }

// Whether a class of probability p is its row's dominant one (the max, with 1 - p = p̄).
template <class acc_t>
HE_INLINE bool dominates(acc_t p) { return p > acc_t(kDominantProb); }

}  // namespace hessalign
