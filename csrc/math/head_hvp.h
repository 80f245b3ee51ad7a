// Hessian-vector products of the head, for B vectors at once (DESIGN.md §1):
//   u_ib = V_b z̃_i,  d_ib = u_ib - Σ_c p_ic u_ibc,  S_ib = c_i p_i ⊙ d_ib,  H V_b = Σ_i S_ib z̃_iᵀ.
// head_hvp uses B = 1 (one vector per domain); hutchinson_diag a chunk of B probes.
// Every centering (d, and the softmax Jacobian's products below) is tile.h's Centered: on the
// dominant class it is p̄ x_k - Σ' p x, so a confident row keeps its relative precision.
// U is laid out as N·B "virtual rows" r = i·B + b of T columns; the per-row sums are N×ldm with
// the chunk's vectors at columns k0 .. k0+B-1, summed over class tiles:
//   m, mk: u's Centered sums (Σ' p u, u_k);  t, tk: dS's (Σ' p dS, dS_k);  w = Σ' p dS u
// (Σ' over the classes that do not dominate, x_k the dominant class's x, 0 without one).
//
// Backward with upstream Ō_b (DESIGN.md §1), dS_ib = Ō_b z̃_i, τ_ib = c_i Σ_c p dS:
//   dU_b = c_i p ⊙ centered(dS_b),  dP = Σ_b c_i dS_b ⊙ d_b - τ_b u_b,  dl = p ⊙ centered(dP),
// where dP's Centered sums follow from the rows' sums (HvpSoftmaxSumsOp):
//   Σ' p dP = Σ_b c_i (w_b - m̄_b t_b) - τ_b m_b   (m̄ = Σ p u),   dP_k = Σ_b c_i dS_kb d_kb - τ_b u_kb,
// then dZ̃ += S Ō + dU V, dV = dUᵀ Z̃, dZ̃ += dl W̃, dW̃ = dlᵀ Z̃ (GEMMs, host/).
#pragma once
#include "tile.h"

namespace hessalign {

template <class scalar_t, class acc_t>
struct HvpChunk {
  LogitsTile<scalar_t, acc_t> lt;
  index_t B;     // vectors in the chunk
  index_t k0;    // column of the chunk's first vector in the per-row sums
  index_t ldm;   // row stride of the per-row sums
  HE_INLINE index_t slot(index_t i, index_t b) const { return i * ldm + k0 + b; }
};

// m_ib += Σ'_{c in tile} p_ic u_ibc, mk_ib += u_ibk   (virtual rows r = i·B + b)
template <class scalar_t, class acc_t>
struct HvpMeanOp : RowOpBase<acc_t> {
  static constexpr int kSums = 2;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<scalar_t> U;
  acc_t* m;
  acc_t* mk;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    Centered<acc_t>::add(ch.lt.prob(r / ch.B, c), acc_t(U[r * ch.lt.T + c]), s[0], s[1]);
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const {
    const index_t k = ch.slot(r / ch.B, r % ch.B);
    m[k] += s[0];
    mk[k] += s[1];
  }
};

// S_ibc = c_i p_ic d_ibc, written over U   (virtual rows)
template <class scalar_t, class acc_t>
struct HvpSOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> coef;
  ReadOnly<acc_t> m;
  ReadOnly<acc_t> mk;
  scalar_t* U;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void map(index_t r, index_t c, const acc_t*) const {
    const index_t i = r / ch.B, k = ch.slot(i, r % ch.B);
    const acc_t p = ch.lt.prob(i, c);
    scalar_t& u = U[r * ch.lt.T + c];
    u = scalar_t(coef[i] * p * Centered<acc_t>::value(p, acc_t(u), ch.lt.pbar[i], m[k], mk[k]));
  }
};

// t_ib += Σ' p dS, tk_ib += dS_k, w_ib += Σ' p dS u   (virtual rows)
template <class scalar_t, class acc_t>
struct HvpBackwardSumsOp : RowOpBase<acc_t> {
  static constexpr int kSums = 3;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<scalar_t> U;
  ReadOnly<scalar_t> dS;
  acc_t* t;
  acc_t* tk;
  acc_t* w;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    const index_t e = r * ch.lt.T + c;
    const acc_t p = ch.lt.prob(r / ch.B, c), ds = acc_t(dS[e]);
    Centered<acc_t>::add(p, ds, s[0], s[1]);
    if (!dominates(p)) s[2] += p * ds * acc_t(U[e]);
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const {
    const index_t k = ch.slot(r / ch.B, r % ch.B);
    t[k] += s[0];
    tk[k] += s[1];
    w[k] += s[2];
  }
};

// The per-row sums of a chunk (each N×ldm), read by the backward's per-element and per-row steps.
template <class acc_t>
struct HvpBackwardSums {
  ReadOnly<acc_t> m, mk, t, tk, w;
};

// dP's Centered sums over a chunk of B vectors (sums N×B), per row: rest_i += Σ_b Σ' p dP_b,
// dpk_i += Σ_b dP_kb (elementwise over the N rows).
template <class acc_t>
struct HvpSoftmaxSumsOp {
  index_t B;
  ReadOnly<acc_t> pbar;
  ReadOnly<acc_t> coef;
  HvpBackwardSums<acc_t> s;
  acc_t* rest;
  acc_t* dpk;
  HE_INLINE void operator()(index_t i) const {
    const acc_t ci = coef[i], pb = pbar[i];
    acc_t r = 0, x = 0;
    for (index_t b = 0; b < B; ++b) {
      const index_t k = i * B + b;
      const acc_t mbar = Centered<acc_t>::mean(pb, s.m[k], s.mk[k]);
      const acc_t tau = ci * Centered<acc_t>::mean(pb, s.t[k], s.tk[k]);
      r += ci * (s.w[k] - mbar * s.t[k]) - tau * s.m[k];
      x += ci * s.tk[k] * (pb * s.mk[k] - s.m[k]) - tau * s.mk[k];
    }
    rest[i] += r;
    dpk[i] += x;
  }
};

// Per element (i, c), over the chunk's B vectors: S_b -> U, dU_b -> dS, DP += dP.
// Rows are the N real rows; one thread owns an element for all b, so DP needs no atomics.
template <class scalar_t, class acc_t>
struct HvpBackwardMapOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> coef;
  HvpBackwardSums<acc_t> s;
  scalar_t* U;
  scalar_t* dS;
  acc_t* DP;  // N×T
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t T = ch.lt.T;
    const acc_t p = ch.lt.prob(i, c), ci = coef[i], pb = ch.lt.pbar[i];
    acc_t dp = 0;
    for (index_t b = 0; b < ch.B; ++b) {
      const index_t e = (i * ch.B + b) * T + c, k = ch.slot(i, b);
      const acc_t u = acc_t(U[e]), ds = acc_t(dS[e]);
      const acc_t d = Centered<acc_t>::value(p, u, pb, s.m[k], s.mk[k]);
      const acc_t tau = ci * Centered<acc_t>::mean(pb, s.t[k], s.tk[k]);
      dp += ci * ds * d - tau * u;
      U[e] = scalar_t(ci * p * d);
      dS[e] = scalar_t(ci * p * Centered<acc_t>::value(p, ds, pb, s.t[k], s.tk[k]));
    }
    DP[i * T + c] += dp;
  }
};

}  // namespace hessalign
