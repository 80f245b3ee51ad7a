// hgp_fused's row kernel (host/hgp_fused.h): the logits' gradient rows r_i = c_i p_i − t_i from the
// softmax's probabilities and the loss coefficients (t read through CeRows, never stored), and
// each row's p̄ = Σ' p, the mass of the classes that do not dominate. A confident row's p_k has
// rounded p̄ away, but its other probabilities keep their relative precision, and so does their
// sum: the dominant class's r = (c − t) − c p̄, where c p − t would keep eps/p̄, and p̄ goes on to
// logits_hvp.
#pragma once
#include "cross_entropy.h"
#include "tile.h"

namespace hessalign {

template <class scalar_t, class acc_t>
struct ProbResidualOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;  // p̄; without a dominant class Σ p ≈ 1, which only a zero x_k multiplies
  ReadOnly<scalar_t> P;  // N×C probabilities
  CeRows<acc_t> ce;
  index_t C;
  scalar_t* R;     // N×C
  scalar_t* pbar;  // N
  HE_INLINE index_t cols() const { return C; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t p = acc_t(P[i * C + c]);
    if (!dominates(p)) s[0] += p;
  }
  HE_INLINE void map(index_t i, index_t c, const acc_t* s) const {
    const index_t e = i * C + c;
    const acc_t p = acc_t(P[e]), ci = ce.c[i], t = ce.target(i, c);
    R[e] = scalar_t(dominates(p) ? (ci - t) - ci * s[0] : ci * p - t);
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const { pbar[i] = scalar_t(s[0]); }
};

}  // namespace hessalign
