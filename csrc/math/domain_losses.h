// domain_losses (DESIGN.md §1, "The loss options"):
//   loss_e = Σ_{i∈e} loss_i,  loss_i = Σ_c t_ic (lse_i - l_ic)
// with the targets t_ic of cross_entropy.h (they carry 1/D_e); lse - l of the dominant class is
// -log1p(-p̄) (tile.h's neg_log_prob), a confident row's loss to its relative precision. Backward: the logits
// gradient of row i is g_e (c_i p_i - t_i), ResidualOp of head_grad.h with scale g_e.
#pragma once
#include "cross_entropy.h"
#include "tile.h"

namespace hessalign {

// Adds Σ_{c in tile} t_ic (lse_i - l_ic) to row_loss[i] (writes it on the first tile, so the
// buffer needs no zeroing launch): the label's term a_i (lse_i - l_iy)
// once, in finish (when y_i is in the tile), and the smoothing terms b_i w_c (lse_i - l_ic)
// over the columns only when b_i ≠ 0, so an unsmoothed loss reads one logit per row.
template <class scalar_t, class acc_t>
struct LossRowOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  LogitsTile<scalar_t, acc_t> lt;
  CeRows<acc_t> ce;
  acc_t* row_loss;
  bool first_tile;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t b = ce.b[i];
    if (b == acc_t(0)) return;
    const acc_t w = ce.class_weight ? ce.class_weight[lt.c0 + c] : acc_t(1);
    s[0] += b * w * lt.neg_log_prob(i, c);
  }
  // The tile's share of loss_i, given the smoothing terms s[0] that partial summed.
  HE_INLINE acc_t total(index_t i, const acc_t* s) const {
    acc_t loss = s[0];
    if (ce.labels && ce.a[i] != acc_t(0)) {
      const index_t c = index_t(ce.labels[i]) - lt.c0;
      if (c >= 0 && c < lt.T) loss += ce.a[i] * lt.neg_log_prob(i, c);
    }
    return loss;
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const {
    const acc_t loss = total(i, s);
    row_loss[i] = first_tile ? loss : row_loss[i] + loss;
  }
};

}  // namespace hessalign
