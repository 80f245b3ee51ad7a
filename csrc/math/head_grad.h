// head_grad (DESIGN.md §1): g_e = Σ_{i∈e} r_i z̃_iᵀ with the residual r_ic = c_i p_ic - t_ic.
// Backward with upstream Ḡ_e: dz̃_i = Ḡ_eᵀ r_i and, with u_i = Ḡ_e z̃_i,
// dl_i = c_i p_i ⊙ (u_i - p_i·u_i): the HVP's S row (head_hvp.h) with V = Ḡ_e.
#pragma once
#include "cross_entropy.h"
#include "tile.h"

namespace hessalign {

// out_ic = scale_i (c_i p_ic - t_ic); scale == nullptr means 1. With scale_i = upstream
// gradient of row i's domain loss this is domain_losses' logits gradient. The label's element,
// c p - a - b w_y, is written (c - a) p - a (1 - p) - b w_y with 1 - p from the tile (p̄ when the
// label dominates: a confident row's residual is -a p̄ there, which c p - a would round away).
template <class scalar_t, class acc_t>
struct ResidualOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  CeRows<acc_t> ce;
  ReadOnly<acc_t> scale;
  scalar_t* out;  // N×T
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t cls = lt.c0 + c;
    const acc_t p = lt.prob(i, c);
    acc_t r = ce.labels && ce.labels[i] == cls
                  ? (ce.c[i] - ce.a[i]) * p - ce.a[i] * lt.complement(i, p) -
                        ce.b[i] * (ce.class_weight ? ce.class_weight[cls] : acc_t(1))
                  : ce.c[i] * p - ce.target(i, cls);
    if (scale) r *= scale[i];
    out[i * lt.T + c] = scalar_t(r);
  }
};

}  // namespace hessalign
