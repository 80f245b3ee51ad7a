// head_hessian_inner (DESIGN.md §1): Frobenius inner products of the domains' head Hessians
// without forming any Hessian. With row Hessians H_i = c_i A_i ⊗ z̃_i z̃_iᵀ, A_i = diag(p_i) - p_i p_iᵀ:
//   ⟨H_a, H_b⟩_F = Σ_{i∈a, j∈b} G_ij,   G_ij = c_i c_j T_ij K_ij²,   K = Z̃ Z̃ᵀ,   T_ij = tr(A_i A_j).
//
// Confident rows. Written as S - R_ij - R_ji + S² (S = P Pᵀ, R = P (P⊙P)ᵀ), T cancels terms of
// size 1 when rows put most of their mass on one class, where T is as small as the rest of the
// mass: in float32, 1e-3 of it left a wrong sign. So a row whose class k holds p_k > kDominantProb
// is written relative to it, r_i = p_i - e_k (r_ik = -p̄_i, p̄_i the sum of the other classes'
// probabilities, every entry small), and A_i = diag(r) - e rᵀ - r eᵀ - r rᵀ (e = e_k, or 0 and
// r = p for a row without such a class). Every term of T below is then a product of small
// entries, so T keeps its relative precision whatever the confidence:
//   T = (1 + 2 e_i·e_j) σ + 2 (b p̄_j + a p̄_i + a b) - ρ_ij - ρ_ji + 2 (a + b) σ + σ²,
//   σ = r_i·r_j,  a = r_j[k_i],  b = r_i[k_j],  ρ_ij = Σ_c r_ic r_jc²  (p̄ = 0 without a class k).
// The GEMMs run on P' (p with the dominant class zeroed): S' = P'P'ᵀ, R' = P'(P'⊙P')ᵀ, and
// Y_ij = P'_j[k_i] (read from P' itself when one tile holds every class, else gathered tile by tile
// into an N×N matrix); σ, a, b, ρ follow from them and p̄ (inner_pair).
//
// Backward with upstream Ū (E×E) and m_ij = c_i c_j (Ū_{e(i)e(j)} + Ū_{e(j)e(i)}) / 2 (symmetric):
//   dZ̃ += 4 (m⊙T⊙K) Z̃;  with X = 2 m⊙K², dl_i = A_i ĝ_i, ĝ_i = Σ_j X_ij ∂T_ij/∂p_i, where
//   ∂T_ij/∂p_i = diag(A_j) - 2 A_j p_i = diag(A_j) - 2 r_j⊙p_i + 2 e_j (r_j·p_i) + 2 r_j (p_i[k_j] + r_j·p_i):
//   ĝ = X Dg - 2 P⊙(X Rf) + 2 (X⊙(σ+a)) Ek + 2 (X⊙(p_i[k_j]+σ+a)) Rf   (Dg: rows diag(A_j), Rf: rows r_j,
//   Ek: one-hot rows e_j), and A_i ĝ = r⊙ĝ - e (r·ĝ) - r ĝ[k] - r (r·ĝ), again with a small factor in every term.
// S', R', K (and Y with several tiles) are N×N (N rows of the whole batch): the op holds O(N²) memory.
#pragma once
#include "tile.h"

namespace hessalign {

// P' = p without the row's dominant class, Q' = P'⊙P' (acc dtype, N×T), the operands of the S' and
// R' GEMMs; records the dominant class (dominant starts at -1). p̄ is the row statistics' (softmax.h).
template <class scalar_t, class acc_t>
struct ProbTileOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  acc_t* P;
  acc_t* Q;
  int64_t* dominant;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const acc_t p = lt.prob(i, c);
    const bool dom = dominates(p);
    if (dom) dominant[i] = lt.c0 + c;
    const acc_t q = dom ? acc_t(0) : p;
    P[i * lt.T + c] = q;
    Q[i * lt.T + c] = q * q;
  }
};

// Y_ij = P'_j[k_i] for the rows i whose dominant class k_i lies in this tile (Y starts at zero).
// The pair functors are row functors over the N×N pairs (row i, column j): no index division.
template <class acc_t>
struct InnerGatherOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  index_t N;
  index_t T;
  index_t c0;
  ReadOnly<int64_t> dominant;
  ReadOnly<acc_t> P;  // P' of the tile, N×T
  acc_t* Y;
  HE_INLINE index_t cols() const { return N; }
  HE_INLINE void map(index_t i, index_t j, const acc_t*) const {
    const index_t k = index_t(dominant[i]) - c0;
    if (k >= 0 && k < T) Y[i * N + j] = P[j * T + k];
  }
};

// The per-row state and the N×N GEMM results every pair reads.
template <class acc_t>
struct InnerGrams {
  index_t N;
  ReadOnly<acc_t> S;  // P'P'ᵀ
  ReadOnly<acc_t> R;  // P'(P'⊙P')ᵀ
  ReadOnly<acc_t> Y;   // Y_ij = P'_j[k_i], N×N, with several class tiles
  ReadOnly<acc_t> P1;  // else P' itself, N×C
  index_t C;
  ReadOnly<int64_t> dominant;
  ReadOnly<acc_t> pbar;
  HE_INLINE acc_t mass_off(index_t i) const { return dominant[i] >= 0 ? pbar[i] : acc_t(0); }
  HE_INLINE acc_t y(index_t i, index_t j) const {
    if (!P1) return Y[i * N + j];
    const int64_t k = dominant[i];
    return k >= 0 ? P1[j * C + index_t(k)] : acc_t(0);
  }
};

template <class acc_t>
struct InnerPair {
  acc_t t, sigma, a, b;
  bool same;  // both rows have the same dominant class
};

// T_ij and the pieces the backward reuses (the header's formula).
template <class acc_t>
HE_INLINE InnerPair<acc_t> inner_pair(const InnerGrams<acc_t>& g, index_t i, index_t j) {
  const index_t ij = i * g.N + j, ji = j * g.N + i;
  const acc_t pi = g.mass_off(i), pj = g.mass_off(j);
  const bool same = g.dominant[i] >= 0 && g.dominant[i] == g.dominant[j];
  const acc_t e = same ? acc_t(1) : acc_t(0);
  const acc_t y_ij = g.y(i, j), y_ji = g.y(j, i);
  const acc_t sigma = g.S[ij] - pj * y_ji - pi * y_ij + e * pi * pj;
  const acc_t a = y_ij - e * pj, b = y_ji - e * pi;
  const acc_t rho_ij = g.R[ij] - pi * a * a + (acc_t(1) - e) * b * pj * pj;
  const acc_t rho_ji = g.R[ji] - pj * b * b + (acc_t(1) - e) * a * pi * pi;
  const acc_t t = (acc_t(1) + acc_t(2) * e) * sigma + acc_t(2) * (b * pj + a * pi + a * b) - rho_ij - rho_ji +
                  acc_t(2) * (a + b) * sigma + sigma * sigma;
  return {t, sigma, a, b, same};
}

// G_ij = c_i c_j T_ij K_ij² over the N×N pairs.
template <class acc_t>
struct InnerPairOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  InnerGrams<acc_t> g;
  ReadOnly<acc_t> K;
  ReadOnly<acc_t> c;
  acc_t* G;
  HE_INLINE index_t cols() const { return g.N; }
  HE_INLINE void map(index_t i, index_t j, const acc_t*) const {
    const index_t idx = i * g.N + j;
    const acc_t k = K[idx];
    G[idx] = c[i] * c[j] * inner_pair(g, i, j).t * k * k;
  }
};

// Per pair: GZ = 4 m T K (the Z̃ Gram gradient), X = 2 m K², W = X (σ + a) and V = X (p_i[k_j] + σ + a).
template <class acc_t>
struct InnerPairBackwardOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  InnerGrams<acc_t> g;
  index_t E;
  ReadOnly<int64_t> domain;  // N: domain of each row
  ReadOnly<acc_t> Ubar;      // E×E upstream
  ReadOnly<acc_t> K;
  ReadOnly<acc_t> c;
  acc_t* GZ;
  acc_t* X;
  acc_t* W;
  acc_t* V;
  HE_INLINE index_t cols() const { return g.N; }
  HE_INLINE void map(index_t i, index_t j, const acc_t*) const {
    const index_t idx = i * g.N + j;
    const int64_t ei = domain[i], ej = domain[j];
    const acc_t m = acc_t(0.5) * c[i] * c[j] * (Ubar[ei * E + ej] + Ubar[ej * E + ei]);
    const acc_t k = K[idx];
    const InnerPair<acc_t> pr = inner_pair(g, i, j);
    const acc_t x = acc_t(2) * m * k * k;
    const acc_t pi_kj = g.dominant[j] >= 0 ? pr.b + (pr.same ? acc_t(1) : acc_t(0)) : acc_t(0);  // p_i[k_j]
    GZ[idx] = acc_t(4) * m * pr.t * k;
    X[idx] = x;
    W[idx] = x * (pr.sigma + pr.a);
    V[idx] = x * (pi_kj + pr.sigma + pr.a);
  }
};

// One tile of the backward's row operands: Rf = r (p, or -p̄ at the dominant class), Dg = diag(A) =
// p (1 - p) (p̄ (1 - p̄) at the dominant class) and Ek = the one-hot dominant class.
template <class scalar_t, class acc_t>
struct InnerTileOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<int64_t> dominant;
  ReadOnly<acc_t> pbar;
  acc_t* Rf;
  acc_t* Dg;
  acc_t* Ek;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t e = i * lt.T + c;
    if (lt.c0 + c == dominant[i]) {
      const acc_t pb = pbar[i];
      Rf[e] = -pb;
      Dg[e] = pb * (acc_t(1) - pb);
      Ek[e] = acc_t(1);
    } else {
      const acc_t p = lt.prob(i, c);
      Rf[e] = p;
      Dg[e] = p * (acc_t(1) - p);
      Ek[e] = acc_t(0);
    }
  }
};

// ĝ = XD - 2 p XR + 2 (WE + VR) of one tile, written over XD; rg_i += Σ_c r_ic ĝ_ic and gk_i += ĝ at
// the dominant class (summed over all class tiles).
template <class scalar_t, class acc_t>
struct InnerGhatOp : RowOpBase<acc_t> {
  static constexpr int kSums = 2;
  LogitsTile<scalar_t, acc_t> lt;
  ReadOnly<int64_t> dominant;
  ReadOnly<acc_t> Rf;
  acc_t* XD;
  ReadOnly<acc_t> XR;
  ReadOnly<acc_t> WE;
  ReadOnly<acc_t> VR;
  acc_t* rg;
  acc_t* gk;
  HE_INLINE index_t cols() const { return lt.T; }
  HE_INLINE acc_t ghat(index_t i, index_t c) const {
    const index_t e = i * lt.T + c;
    return XD[e] - acc_t(2) * lt.prob(i, c) * XR[e] + acc_t(2) * (WE[e] + VR[e]);
  }
  HE_INLINE void partial(index_t i, index_t c, acc_t* s) const {
    const acc_t g = ghat(i, c);
    s[0] += Rf[i * lt.T + c] * g;
    if (lt.c0 + c == dominant[i]) s[1] += g;
  }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const { XD[i * lt.T + c] = ghat(i, c); }
  HE_INLINE void finish(index_t i, const acc_t* s) const {
    rg[i] += s[0];
    gk[i] += s[1];
  }
};

// dl = A ĝ = r⊙ĝ - e (r·ĝ) - r ĝ[k] - r (r·ĝ), from the complete rg = r·ĝ and gk = ĝ[k].
template <class scalar_t, class acc_t>
struct InnerLogitsGradOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  index_t T;
  index_t c0;
  ReadOnly<int64_t> dominant;
  ReadOnly<acc_t> Rf;
  ReadOnly<acc_t> Ghat;
  ReadOnly<acc_t> rg;
  ReadOnly<acc_t> gk;
  scalar_t* dl;
  HE_INLINE index_t cols() const { return T; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const {
    const index_t e = i * T + c;
    const acc_t r = Rf[e];
    const acc_t own = c0 + c == dominant[i] ? rg[i] : acc_t(0);
    dl[e] = scalar_t(r * Ghat[e] - own - r * (gk[i] + rg[i]));
  }
};

}  // namespace hessalign
