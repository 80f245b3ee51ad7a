// hutchinson_diag (DESIGN.md §1): D_e ≈ (1/K) Σ_k v_k ⊙ (H_e v_k), with S_ick = c_i p_ic (u_ick − m_ik)
// the probes' logit-space products (head_hvp.h), D_e[c, j] = (1/K) Σ_k Σ_{i∈e} v_k[c, j] S_ick z̃_ij.
// That sum is folded into the output without storing a K×C×(d+1) probe tensor, one of two ways:
//  - by domain: O_e = S_eᵀ Z̃_e per probe (a GEMM over a domain's rows, E·B·C·D values written),
//    then Σ_b v_b ⊙ O_e (ProbeDiagAccumulateOp);
//  - by class: R_c = S_c V_c per class over the chunk's B probes (a GEMM over probes, N·C·D
//    values written), then Σ_{i∈e} z̃_i ⊙ R_c[i] (ProbeClassFoldOp). Fewer values and a deeper
//    GEMM when B exceeds a domain's rows, as with the paper's K = 300.
// Backward: each probe is an HVP backward with upstream Ō_k = D̄_e ⊙ v_k / K and no gradient for
// the (constant) probes.
#pragma once
#include "domains.h"
#include "rademacher.h"
#include "tile.h"

namespace hessalign {

// The folds' sum over rows on one run of columns: dst[j] += scale · Σ_{r<rows} a[r·lda + j] · b[r·ldb + j].
// One row (a chunk of one probe: the by-domain fold at the large heads on the CPU) needs no sums;
// zeroing W of them per run and storing them back took half of that fold.
template <int W, class scalar_t, class acc_t>
HE_INLINE void fold_rows(scalar_t* dst, const scalar_t* a, index_t lda, const scalar_t* b, index_t ldb, index_t rows,
                         acc_t scale, index_t width) {
  if (rows == 1) {
    for (index_t jj = 0; jj < width; ++jj) dst[jj] = scalar_t(acc_t(dst[jj]) + scale * (acc_t(a[jj]) * acc_t(b[jj])));
    return;
  }
  acc_t s[W] = {};
  for (index_t r = 0; r < rows; ++r)
    for (index_t jj = 0; jj < width; ++jj) s[jj] += acc_t(a[r * lda + jj]) * acc_t(b[r * ldb + jj]);
  for (index_t jj = 0; jj < width; ++jj) dst[jj] = scalar_t(acc_t(dst[jj]) + scale * s[jj]);
}

// out[e, c0+c, j] += (1/K) Σ_b v_{k0+b}[c0+c, j] · O[e, b·T + c, j]   (idx over the ColumnRun<W>
// items of the E·T output rows; the loop over a run sits inside the loop over probes)
template <class scalar_t, class acc_t, int W>
struct ProbeDiagAccumulateOp {
  index_t B, c0, T, D, C;
  index_t ldv;  // V's row stride
  acc_t inv_k;
  const scalar_t* V;  // (B·T, ldv) the chunk's probes (RademacherFillOp)
  const scalar_t* O;  // (E, B·T, D)
  scalar_t* out;      // (E, C, D)
  HE_INLINE static index_t items(index_t E, index_t T, index_t D) { return ColumnRun<W>::items(E * T, D); }
  HE_INLINE void operator()(index_t idx) const {
    const ColumnRun<W> run(idx, D);
    const index_t e = run.row / T, c = run.row - e * T;
    fold_rows<W>(out + (e * C + c0 + c) * D + run.j0, V + c * ldv + run.j0, T * ldv, O + (e * B * T + c) * D + run.j0,
                 T * D, B, inv_k, run.width);
  }
};

// Upstream of probe k's HVP: Ō[e, b·T + c, j] = D̄[e, c0+c, j] v_{k0+b}[c0+c, j] / K
// (idx over the ColumnRun<W> items of the E·B·T rows of Ō)
template <class scalar_t, class acc_t, int W>
struct ProbeUpstreamOp {
  index_t B, c0, T, D, C;
  index_t ldv, ldo;      // row strides of V and Ō (padded with align_rows)
  acc_t inv_k;
  const scalar_t* V;     // (B·T, ldv) the chunk's probes
  const scalar_t* grad;  // D̄ (E, C, D)
  scalar_t* Obar;        // (E, B·T, ldo)
  HE_INLINE static index_t items(index_t E, index_t B, index_t T, index_t D) {
    return ColumnRun<W>::items(E * B * T, D);
  }
  HE_INLINE void operator()(index_t idx) const {
    const ColumnRun<W> run(idx, D);
    const index_t e = run.row / (B * T), vrow = run.row - e * B * T, c = vrow % T;
    const scalar_t* v = V + vrow * ldv + run.j0;
    const scalar_t* g = grad + (e * C + c0 + c) * D + run.j0;
    scalar_t* o = Obar + run.row * ldo + run.j0;
    for (index_t jj = 0; jj < run.width; ++jj) o[jj] = scalar_t(inv_k * acc_t(v[jj]) * acc_t(g[jj]));
  }
};

// The by-class fold's products in place: U (N, C, B) holds u_ick = v_k[c]·z̃_i class-major; per
// row and run of probes the Centered sums of u (tile.h), then S_ick = c_i p_ic d_ick
// (idx over the ColumnRun<W> items of N rows of B probes).
template <class scalar_t, class acc_t, int W>
struct ClassMajorSOp {
  LogitsTile<scalar_t, acc_t> lt;  // all C classes
  ReadOnly<acc_t> coef;            // c_i (N,)
  index_t C, B;
  scalar_t* U;
  HE_INLINE static index_t items(index_t N, index_t B) { return ColumnRun<W>::items(N, B); }
  HE_INLINE void operator()(index_t idx) const {
    const ColumnRun<W> run(idx, B);
    const index_t i = run.row;
    scalar_t* u = U + i * C * B + run.j0;
    // Centered's sums and values, with the branch on the class outside the loops over probes
    acc_t m[W] = {}, mk[W] = {};
    for (index_t c = 0; c < C; ++c) {
      const acc_t p = lt.prob(i, c);
      const scalar_t* uc = u + c * B;
      if (dominates(p))
        for (index_t jj = 0; jj < run.width; ++jj) mk[jj] += acc_t(uc[jj]);
      else
        for (index_t jj = 0; jj < run.width; ++jj) m[jj] += p * acc_t(uc[jj]);
    }
    const acc_t pb = lt.pbar[i];
    acc_t mean[W], dk[W];  // Σ p u, and the dominant class's centered value
    for (index_t jj = 0; jj < run.width; ++jj) {
      mean[jj] = Centered<acc_t>::mean(pb, m[jj], mk[jj]);
      dk[jj] = pb * mk[jj] - m[jj];
    }
    for (index_t c = 0; c < C; ++c) {
      const acc_t p = lt.prob(i, c), q = coef[i] * p;
      scalar_t* uc = u + c * B;
      if (dominates(p))
        for (index_t jj = 0; jj < run.width; ++jj) uc[jj] = scalar_t(q * dk[jj]);
      else
        for (index_t jj = 0; jj < run.width; ++jj) uc[jj] = scalar_t(q * (acc_t(uc[jj]) - mean[jj]));
    }
  }
};

// out[e, c0+c, j] += (1/K) Σ_{i∈e} z̃_ij R[c, i, j], R_c = S_c V_c over the chunk's probes
// (idx over the ColumnRun<W> items of the E·T output rows)
template <class scalar_t, class acc_t, int W>
struct ProbeClassFoldOp {
  DomainOffsets domains;
  index_t c0, T, N, D, C;
  index_t ldz, ldr;  // row strides of Z̃ and R (padded with align_rows)
  acc_t inv_k;
  const scalar_t* Z;  // z̃ (N, ldz)
  const scalar_t* R;  // (T, N, ldr)
  scalar_t* out;      // (E, C, D)
  HE_INLINE static index_t items(index_t E, index_t T, index_t D) { return ColumnRun<W>::items(E * T, D); }
  HE_INLINE void operator()(index_t idx) const {
    const ColumnRun<W> run(idx, D);
    const index_t e = run.row / T, c = run.row - e * T;
    const index_t i0 = domains(e);
    fold_rows<W>(out + (e * C + c0 + c) * D + run.j0, Z + i0 * ldz + run.j0, ldz, R + (c * N + i0) * ldr + run.j0,
                 ldr, domains(e + 1) - i0, inv_k, run.width);
  }
};

}  // namespace hessalign
