// Per-row coefficients of torch's cross-entropy options, applied to each domain's rows
// (DESIGN.md §1, "The loss options"). With D_e the domain's denominator,
//   a_i = (1-ε) w_{y_i} / D_e      weight of the one-hot target
//   b_i = ε / (C D_e)              weight of the uniform (class-weighted) target
//   c_i = a_i + b_i Σ_c w_c        the row's Hessian scale: H_i = c_i A_i
// target t_ic = a_i [c = y_i] + b_i w_c, residual r_ic = c_i p_ic - t_ic,
// loss_i = Σ_c t_ic (lse_i - l_ic). Ignored rows, and every row of a domain whose
// denominator is 0 (empty, or all rows ignored), get a = b = c = 0: such a domain
// contributes zeros, where torch's mean would give NaN.
// Without labels every row is kept with weight 1 and only c_i = 1/D_e is used.
#pragma once
#include "hostdevice.h"

namespace hessalign {

template <class acc_t>
struct CeParams {
  const int64_t* labels;      // N, or nullptr: the plain (unweighted, unsmoothed) loss
  const acc_t* class_weight;  // C, or nullptr: all ones
  const acc_t* weight_sum;    // Σ_c w_c (one element, on the device of class_weight), or nullptr: C
  acc_t smoothing;            // ε
  int64_t ignore_index;
  index_t num_classes;
  bool sum;                   // reduction="sum": D_e = 1
};

// Row i's share of its domain's denominator under reduction="mean".
template <class acc_t>
HE_INLINE acc_t ce_denominator_term(const CeParams<acc_t>& p, index_t i) {
  if (!p.labels) return acc_t(1);
  const int64_t y = p.labels[i];
  if (y == p.ignore_index) return acc_t(0);
  return p.class_weight ? p.class_weight[y] : acc_t(1);
}

// Writes (c_i, a_i, b_i) of row i given its domain's denominator.
template <class acc_t>
HE_INLINE void ce_row_coeffs(const CeParams<acc_t>& p, index_t i, acc_t denom, acc_t* c, acc_t* a, acc_t* b) {
  c[i] = a[i] = b[i] = acc_t(0);
  if (denom == acc_t(0)) return;
  if (!p.labels) { c[i] = acc_t(1) / denom; return; }
  const int64_t y = p.labels[i];
  if (y == p.ignore_index) return;
  const acc_t wy = p.class_weight ? p.class_weight[y] : acc_t(1);
  a[i] = (acc_t(1) - p.smoothing) * wy / denom;
  b[i] = p.smoothing / (acc_t(p.num_classes) * denom);
  c[i] = a[i] + b[i] * (p.weight_sum ? *p.weight_sum : acc_t(p.num_classes));
}

// The per-row coefficients as a kernel reads them.
template <class acc_t>
struct CeRows {
  ReadOnly<acc_t> c;
  ReadOnly<acc_t> a;
  ReadOnly<acc_t> b;
  ReadOnly<int64_t> labels;      // nullptr when a = b = 0
  ReadOnly<acc_t> class_weight;  // nullptr: all ones
  // t_ic for the global class index cls
  HE_INLINE acc_t target(index_t i, index_t cls) const {
    if (!labels) return acc_t(0);
    const acc_t w = class_weight ? class_weight[cls] : acc_t(1);
    return (labels[i] == cls ? a[i] : acc_t(0)) + b[i] * w;
  }
};

}  // namespace hessalign
