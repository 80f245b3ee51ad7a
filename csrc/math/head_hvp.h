// Hessian-vector products of the head, for B vectors at once (DESIGN.md §1):
//   u_ib = V_b z̃_i,  m_ib = Σ_c p_ic u_ibc,  S_ib = c_i p_i ⊙ (u_ib - m_ib),  H V_b = Σ_i S_ib z̃_iᵀ.
// head_hvp uses B = 1 (one vector per domain); hutchinson_diag a chunk of B probes.
// U is laid out as N·B "virtual rows" r = i·B + b of T columns; m, t, w are N×ldm with the
// chunk's vectors at columns k0 .. k0+B-1, summed over class tiles.
//
// Backward with upstream Ō_b (DESIGN.md §1), dS_ib = Ō_b z̃_i and q = c_i p ⊙ dS:
//   t_ib = Σ_c q,  w_ib = Σ_c q u,
//   dU_b = p ⊙ (c_i dS_b - t_b),  dP = Σ_b c_i dS_b ⊙ (u_b - m_b) - t_b u_b,
//   dl = p ⊙ (dP - ρ),  ρ_i = Σ_c p dP = Σ_b w_ib - 2 m_ib t_ib,
// then dZ̃ += S Ō + dU V, dV = dUᵀ Z̃, dZ̃ += dl W̃, dW̃ = dlᵀ Z̃ (GEMMs, host/).
#pragma once
#include "tile.h"

namespace hessalign {

template <class scalar_t, class acc_t>
struct HvpChunk {
  LogitsTile<scalar_t, acc_t> lt;
  index_t B;     // vectors in the chunk
  index_t k0;    // column of the chunk's first vector in m, t, w
  index_t ldm;   // row stride of m, t, w
  HE_INLINE index_t slot(index_t i, index_t b) const { return i * ldm + k0 + b; }
};

// m_ib += Σ_{c in tile} p_ic u_ibc   (virtual rows r = i·B + b)
template <class scalar_t, class acc_t>
struct HvpMeanOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<scalar_t> U;
  acc_t* m;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    s[0] += ch.lt.prob(r / ch.B, c) * acc_t(U[r * ch.lt.T + c]);
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const { m[ch.slot(r / ch.B, r % ch.B)] += s[0]; }
};

// S_ibc = c_i p_ic (u_ibc - m_ib), written over U   (virtual rows)
template <class scalar_t, class acc_t>
struct HvpSOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> coef;
  ReadOnly<acc_t> m;
  scalar_t* U;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void map(index_t r, index_t c, const acc_t*) const {
    const index_t i = r / ch.B;
    scalar_t& u = U[r * ch.lt.T + c];
    u = scalar_t(coef[i] * ch.lt.prob(i, c) * (acc_t(u) - m[ch.slot(i, r % ch.B)]));
  }
};

// t_ib += Σ_c c_i p dS,  w_ib += Σ_c c_i p dS u   (virtual rows)
template <class scalar_t, class acc_t>
struct HvpBackwardSumsOp : RowOpBase<acc_t> {
  static constexpr int kSums = 2;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> coef;
  ReadOnly<scalar_t> U;
  ReadOnly<scalar_t> dS;
  acc_t* t;
  acc_t* w;
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    const index_t i = r / ch.B, e = r * ch.lt.T + c;
    const acc_t q = coef[i] * ch.lt.prob(i, c) * acc_t(dS[e]);
    s[0] += q;
    s[1] += q * acc_t(U[e]);
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const {
    const index_t k = ch.slot(r / ch.B, r % ch.B);
    t[k] += s[0];
    w[k] += s[1];
  }
};

// Per element (i, c), over the chunk's B vectors: S_b -> U, dU_b -> dS, DP += dP.
// Rows are the N real rows; one thread owns an element for all b, so DP needs no atomics.
template <class scalar_t, class acc_t>
struct HvpBackwardMapOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  HvpChunk<scalar_t, acc_t> ch;
  ReadOnly<acc_t> coef;
  ReadOnly<acc_t> m;
  ReadOnly<acc_t> t;
  scalar_t* U;
  scalar_t* dS;
  acc_t* DP;  // N×T
  HE_INLINE index_t cols() const { return ch.lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t T = ch.lt.T;
    const acc_t p = ch.lt.prob(i, c), ci = coef[i];
    acc_t dp = 0;
    for (index_t b = 0; b < ch.B; ++b) {
      const index_t e = (i * ch.B + b) * T + c, k = ch.slot(i, b);
      const acc_t u = acc_t(U[e]), ds = acc_t(dS[e]), d = u - m[k];
      dp += ci * ds * d - t[k] * u;
      U[e] = scalar_t(ci * p * d);
      dS[e] = scalar_t(p * (ci * ds - t[k]));
    }
    DP[i * T + c] += dp;
  }
};

}  // namespace hessalign
