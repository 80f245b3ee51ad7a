// Stable row softmax statistics, streamed over class tiles (DESIGN.md §1, §4).
//
// A row's log-sum-exp is kept as a running pair (M, S) = (max so far, Σ exp(l - M)), so the
// class dimension can be visited one tile at a time and never held whole: merging a tile
// whose own pair is (m, s) gives (max(M, m), S·exp(M - max) + s·exp(m - max)). Every
// exponent is ≤ 0, so logits of ±1e4 neither overflow nor lose the dominant class.
#pragma once
#include "hostdevice.h"

namespace hessalign {

template <class acc_t>
struct SoftmaxPair {
  acc_t m;  // running max (-inf while empty)
  acc_t s;  // Σ exp(l - m)
};

// Merge two pairs; an empty pair (m = -inf) is the identity.
template <class acc_t>
HE_INLINE SoftmaxPair<acc_t> softmax_merge(SoftmaxPair<acc_t> a, SoftmaxPair<acc_t> b) {
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  const acc_t m = a.m > b.m ? a.m : b.m;
  return {m, a.s * he_exp(a.m - m) + b.s * he_exp(b.m - m)};
}

// Partial pair of the columns begin, begin+step, ... < n of one logits row: the CPU calls it
// with (0, 1), a CUDA warp with (lane, 32) before merging lanes.
template <class scalar_t, class acc_t>
HE_INLINE SoftmaxPair<acc_t> softmax_row_stats(const scalar_t* row, index_t n, index_t begin, index_t step) {
  SoftmaxPair<acc_t> p{-INFINITY, acc_t(0)};
  for (index_t c = begin; c < n; c += step) {
    const acc_t l = acc_t(row[c]);
    if (l > p.m) {  // rescale what was summed to the new max
      p.s = p.s * he_exp(p.m - l) + acc_t(1);
      p.m = l;
    } else {
      p.s += he_exp(l - p.m);
    }
  }
  return p;
}

// Row r's result of a tile pass: the running pair (M, S), or, after the last tile (lse
// given), the log-sum-exp M + log S (-inf for an all -inf row).
template <class acc_t>
HE_INLINE void softmax_store(SoftmaxPair<acc_t> p, index_t r, acc_t* M, acc_t* S, acc_t* lse) {
  if (lse) {
    lse[r] = p.m + he_log(p.s);
  } else {
    M[r] = p.m;
    S[r] = p.s;
  }
}

// Probability of logit l given the row's log-sum-exp.
template <class acc_t>
HE_INLINE acc_t softmax_prob(acc_t l, acc_t lse) { return he_exp(l - lse); }

}  // namespace hessalign
