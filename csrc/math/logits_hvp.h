// logits_hvp: each row's cross-entropy Hessian in logit space applied to B vectors
// (DESIGN.md §1), H_i = c_i (diag p_i − p_i p_iᵀ):
//   m_ib = p_i · u_ib,  s_ib = H_i u_ib = c_i p_i ⊙ (u_ib − m_ib).
// U and S are N·B "virtual rows" r = i·B + b of C columns; M is N×B.
//
// u_ib − m_ib is formed Centered (tile.h): for a row's dominant class k, p̄ u_k − Σ' p u, where
// u_k − m would keep only eps/p̄ of its precision. p̄ = 1 − p_k from the probabilities as given
// (exact: the op's value as a function of free p), or the caller's p̄ (pbar) when p came from
// a softmax whose p_k has rounded p̄ away (hgp_fused: p̄ = Σ' p, host/hgp_fused.h).
//
// Backward with upstream ds_ib, dm_ib (either may be absent: zero), n_ib = p_i · ds_ib:
//   du_ib = H_i ds_ib + dm_ib p_i,
//   dc_i  = Σ_b ds_ib · p_i ⊙ (u_ib − m_ib),
//   dp_i  = Σ_b c_i ds_ib ⊙ (u_ib − m_ib) + (dm_ib − c_i n_ib) u_ib.
#pragma once
#include "tile.h"

namespace hessalign {

// The row's Centered sums (rest, x_k) and p_k of its dominant class (0 without one), the three
// sums of a Centered product over a virtual row.
enum CenteredSum { kRest, kXk, kPk };

// p̄ of row i's dominant class: the caller's, else 1 − p_k (exact) from the row's sums s.
template <class scalar_t, class acc_t>
HE_INLINE acc_t row_pbar(ReadOnly<scalar_t> pbar, index_t i, const acc_t* s) {
  return pbar ? acc_t(pbar[i]) : acc_t(1) - s[kPk];
}

template <class acc_t>
HE_INLINE void centered_add(acc_t p, acc_t x, acc_t* s) {
  Centered<acc_t>::add(p, x, s[kRest], s[kXk]);
  if (dominates(p)) s[kPk] += p;
}

template <class scalar_t, class acc_t>
struct LogitsHvpOp : RowOpBase<acc_t> {
  static constexpr int kSums = 3;  // CenteredSum of u
  ReadOnly<scalar_t> P;     // N×C probabilities
  ReadOnly<scalar_t> coef;  // N
  ReadOnly<scalar_t> U;     // N·B × C
  ReadOnly<scalar_t> pbar;  // N, or nullptr: 1 − p_k
  index_t B, C;
  scalar_t* S;  // N·B × C
  scalar_t* M;  // N·B
  HE_INLINE index_t cols() const { return C; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    centered_add(acc_t(P[(r / B) * C + c]), acc_t(U[r * C + c]), s);
  }
  HE_INLINE void map(index_t r, index_t c, const acc_t* s) const {
    const index_t i = r / B;
    const acc_t p = acc_t(P[i * C + c]);
    const acc_t centered = Centered<acc_t>::value(p, acc_t(U[r * C + c]), row_pbar(pbar, i, s), s[kRest], s[kXk]);
    S[r * C + c] = scalar_t(acc_t(coef[i]) * p * centered);
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const {
    M[r] = scalar_t(Centered<acc_t>::mean(row_pbar(pbar, r / B, s), s[kRest], s[kXk]));
  }
};

// Backward pass 1, virtual rows: n_ib (into Nds, acc dtype) and du_ib, H_i ds_ib Centered as in
// the forward (p̄ = 1 − p_k: the backward of the op as given).
template <class scalar_t, class acc_t>
struct LogitsHvpBackwardUOp : RowOpBase<acc_t> {
  static constexpr int kSums = 3;  // CenteredSum of ds
  ReadOnly<scalar_t> P;
  ReadOnly<scalar_t> coef;
  ReadOnly<scalar_t> dS;  // N·B × C, or nullptr (zero)
  ReadOnly<scalar_t> dM;  // N·B, or nullptr (zero)
  index_t B, C;
  scalar_t* dU;  // N·B × C
  acc_t* Nds;    // N·B
  HE_INLINE index_t cols() const { return C; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    if (dS) centered_add(acc_t(P[(r / B) * C + c]), acc_t(dS[r * C + c]), s);
  }
  HE_INLINE void map(index_t r, index_t c, const acc_t* s) const {
    const index_t i = r / B;
    const acc_t p = acc_t(P[i * C + c]);
    const acc_t hs = dS ? acc_t(coef[i]) * p *
                              Centered<acc_t>::value(p, acc_t(dS[r * C + c]), acc_t(1) - s[kPk], s[kRest], s[kXk])
                        : acc_t(0);
    dU[r * C + c] = scalar_t(hs + (dM ? acc_t(dM[r]) * p : acc_t(0)));
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const {
    Nds[r] = Centered<acc_t>::mean(acc_t(1) - s[kPk], s[kRest], s[kXk]);
  }
};

// Backward pass 2, real rows: dc_i (a row sum) and dp_i, over the row's B vectors.
template <class scalar_t, class acc_t>
struct LogitsHvpBackwardPOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  ReadOnly<scalar_t> P;
  ReadOnly<scalar_t> coef;
  ReadOnly<scalar_t> U;
  ReadOnly<scalar_t> M;
  ReadOnly<scalar_t> dS;
  ReadOnly<scalar_t> dM;
  ReadOnly<acc_t> Nds;
  index_t B, C;
  scalar_t* dP;  // N×C
  scalar_t* dc;  // N
  HE_INLINE index_t cols() const { return C; }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    if (!dS) return;
    acc_t t = 0;
    for (index_t b = 0; b < B; ++b) {
      const index_t r = i * B + b;
      t += acc_t(dS[r * C + c]) * (acc_t(U[r * C + c]) - acc_t(M[r]));
    }
    s[0] += acc_t(P[i * C + c]) * t;
  }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const acc_t ci = acc_t(coef[i]);
    acc_t g = 0;
    for (index_t b = 0; b < B; ++b) {
      const index_t r = i * B + b;
      const acc_t u = acc_t(U[r * C + c]);
      if (dS) g += ci * (acc_t(dS[r * C + c]) * (u - acc_t(M[r])) - Nds[r] * u);
      if (dM) g += acc_t(dM[r]) * u;
    }
    dP[i * C + c] = scalar_t(g);
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const { dc[i] = scalar_t(s[0]); }
};

}  // namespace hessalign
