// head_hessian_trace (DESIGN.md §1): tr(H_e) = Σ_{i∈e} c_i q_i ‖z̃_i‖², q_i = Σ_c p_ic (1 - p_ic).
// Backward with upstream T̄_e and k_i = c_i ‖z̃_i‖² T̄_e: dz̃_i = 2 c_i q_i T̄_e z̃_i and
// dP = k_i (1 - 2p), ρ = k_i (1 - 2 Σp²), so dl_ic = 2 k_i p_ic (Σ_c' p_ic'² - p_ic).
// 1 - p of the dominant class is p̄ (tile.h), and Σp² - p_k = Σ'p² - p_k p̄ (Σ' over the other
// classes): a confident row's q and dl are of size p̄ and keep their relative precision.
#pragma once
#include "tile.h"

namespace hessalign {

// q_i (+)= Σ_{c in tile} p (1 - p), sq_i (+)= Σ p² over the classes that do not dominate and
// sqk_i (+)= p² of the dominant one (the first tile writes, later ones add: no zero fill); with
// `rowval`, the last tile also writes c_i q_i ‖z̃_i‖² there.
template <class scalar_t, class acc_t>
struct TraceRowOp : RowOpBase<acc_t> {
  static constexpr int kSums = 3;
  LogitsTile<scalar_t, acc_t> lt;
  acc_t* q;
  acc_t* sq;
  acc_t* sqk;
  ReadOnly<acc_t> coef;  // c_i
  ReadOnly<acc_t> zz;    // ‖z̃_i‖²
  acc_t* rowval;         // or nullptr
  bool first, last;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t p = lt.prob(i, c);
    s[0] += p * lt.complement(i, p);
    s[dominates(p) ? 2 : 1] += p * p;
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const {
    const acc_t qi = first ? s[0] : q[i] + s[0];
    q[i] = qi;
    sq[i] = first ? s[1] : sq[i] + s[1];
    sqk[i] = first ? s[2] : sqk[i] + s[2];
    if (last && rowval) rowval[i] = coef[i] * qi * zz[i];
  }
};

// dl_ic = 2 k_i p_ic (Σp² - p_ic)
template <class scalar_t, class acc_t>
struct TraceBackwardOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<acc_t> k;
  ReadOnly<acc_t> sq;
  ReadOnly<acc_t> sqk;
  scalar_t* dl;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const acc_t p = lt.prob(i, c);
    const acc_t gap = dominates(p) ? sq[i] - p * lt.pbar[i] : sq[i] + sqk[i] - p;
    dl[i * lt.T + c] = scalar_t(acc_t(2) * k[i] * p * gap);
  }
};

}  // namespace hessalign
