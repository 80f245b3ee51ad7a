// domain_losses (DESIGN.md §1, "The loss options"):
//   loss_e = Σ_{i∈e} loss_i,  loss_i = Σ_c t_ic (lse_i - l_ic)
// with the targets t_ic of cross_entropy.h (they carry 1/D_e). Backward: the logits
// gradient of row i is g_e (c_i p_i - t_i), ResidualOp of head_grad.h with scale g_e.
#pragma once
#include "cross_entropy.h"
#include "tile.h"

namespace hessalign {

// Adds Σ_{c in tile} t_ic (lse_i - l_ic) to row_loss[i].
template <class scalar_t, class acc_t>
struct LossRowOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  LogitsTile<scalar_t, acc_t> lt;
  CeRows<acc_t> ce;
  acc_t* row_loss;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t t = ce.target(i, lt.c0 + c);
    if (t != acc_t(0)) s[0] += t * (lt.lse[i] - lt.logit(i, c));
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const { row_loss[i] += s[0]; }
};

}  // namespace hessalign
