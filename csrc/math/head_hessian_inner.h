// head_hessian_inner (DESIGN.md §1): Frobenius inner products of the domains' head Hessians
// without forming any Hessian. With row Hessians H_i = c_i A_i ⊗ z̃_i z̃_iᵀ, A_i = diag(p_i) - p_i p_iᵀ:
//   ⟨H_a, H_b⟩_F = Σ_{i∈a, j∈b} G_ij,   G_ij = c_i c_j T_ij K_ij²,   K = Z̃ Z̃ᵀ,
//   T_ij = tr(A_i A_j) = S_ij - R_ij - R_ji + S_ij²,   S = P Pᵀ,  R = P (P⊙P)ᵀ.
// Backward with upstream Ū (E×E) and m_ij = c_i c_j (Ū_{e(i)e(j)} + Ū_{e(j)e(i)}) / 2 (symmetric):
//   dZ̃ += 4 (m⊙T⊙K) Z̃,   with X = 2 m⊙K²:  dP = X(1 + 2S) P - X (P⊙P) - 2 P ⊙ (X P),
//   dl = p ⊙ (dP - ρ),  ρ_i = Σ_c p_ic dP_ic (summed over all class tiles).
// S, R and K are N×N (N rows of the whole batch): the op holds O(N²) memory.
#pragma once
#include "tile.h"

namespace hessalign {

// P = p, Q = p² of one class tile (acc dtype, N×T), the operands of the S and R GEMMs.
template <class scalar_t, class acc_t>
struct ProbTileOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  acc_t* P;
  acc_t* Q;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const acc_t p = lt.prob(i, c);
    P[i * lt.T + c] = p;
    Q[i * lt.T + c] = p * p;
  }
};

// G_ij = c_i c_j T_ij K_ij² over the N×N pairs.
template <class acc_t>
struct InnerPairOp {
  index_t N;
  ReadOnly<acc_t> S;
  ReadOnly<acc_t> R;
  ReadOnly<acc_t> K;
  ReadOnly<acc_t> c;
  acc_t* G;
  HE_INLINE void operator()(index_t idx) const {
    const index_t i = idx / N, j = idx - i * N;
    const acc_t s = S[idx], k = K[idx];
    G[idx] = c[i] * c[j] * (s - R[idx] - R[j * N + i] + s * s) * k * k;
  }
};

// Per pair: GZ = 4 m T K (the Z̃ Gram gradient), X = 2 m K², A = X (1 + 2S).
template <class acc_t>
struct InnerPairBackwardOp {
  index_t N;
  index_t E;
  ReadOnly<int64_t> domain;  // N: domain of each row
  ReadOnly<acc_t> Ubar;      // E×E upstream
  ReadOnly<acc_t> S;
  ReadOnly<acc_t> R;
  ReadOnly<acc_t> K;
  ReadOnly<acc_t> c;
  acc_t* GZ;
  acc_t* X;
  acc_t* A;
  HE_INLINE void operator()(index_t idx) const {
    const index_t i = idx / N, j = idx - i * N;
    const int64_t ei = domain[i], ej = domain[j];
    const acc_t m = acc_t(0.5) * c[i] * c[j] * (Ubar[ei * E + ej] + Ubar[ej * E + ei]);
    const acc_t s = S[idx], k = K[idx];
    const acc_t t = s - R[idx] - R[j * N + i] + s * s;
    GZ[idx] = acc_t(4) * m * t * k;
    X[idx] = acc_t(2) * m * k * k;
    A[idx] = X[idx] * (acc_t(1) + acc_t(2) * s);
  }
};

// dP_ic = AP_ic - XQ_ic - 2 p_ic XP_ic, written over AP; ρ_i += Σ_{c in tile} p_ic dP_ic.
template <class scalar_t, class acc_t>
struct InnerDpOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  LogitsTile<scalar_t, acc_t> lt;
  acc_t* AP;
  ReadOnly<acc_t> XQ;
  ReadOnly<acc_t> XP;
  acc_t* rho;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE acc_t dp(index_t i, index_t c, acc_t p) const {
    const index_t e = i * lt.T + c;
    return AP[e] - XQ[e] - acc_t(2) * p * XP[e];
  }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t p = lt.prob(i, c);
    s[0] += p * dp(i, c, p);
  }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    AP[i * lt.T + c] = dp(i, c, lt.prob(i, c));
  }
  HE_INLINE void finish(index_t i, const acc_t* s) const { rho[i] += s[0]; }
};

}  // namespace hessalign
