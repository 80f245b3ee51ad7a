// The per-domain GEMMs of every op (host/gemm.h: oneDNN, ATen's BLAS or the few-rows kernel on
// the CPU, cuBLAS on CUDA): products of the rows of each domain with its (E, C, D) block, one
// batched GEMM when the domains hold equal rows, and the accumulation of an op's gradients to Z̃
// and W̃.
#pragma once
#include "head_problem.h"

namespace hessalign {

// out = X_eᵀ Y_e for domain e alone (its rows of X and Y; no empty domain).
inline void domain_tn(const Head& h, int64_t e, const at::Tensor& X, const at::Tensor& Y, at::Tensor out) {
  gemm_out(out, X.narrow(0, h.off[e], h.rows(e)).t(), Y.narrow(0, h.off[e], h.rows(e)));
}

// t.narrow(dim, r0, m), or t itself when that is all of it (a view is a dispatch on the host).
inline at::Tensor part(const at::Tensor& t, int64_t dim, int64_t r0, int64_t m) {
  return r0 == 0 && m == t.size(dim) ? t : t.narrow(dim, r0, m);
}

// f(r0, m) over the chunks of rows (dimension -2) of t, an (E, M, W) or (M, W) operand or result
// staged in padded buffers (Head::stage_rows); one chunk of all M rows when it is not staged.
template <class F>
void for_stage_chunks(const Head& h, const at::Tensor& t, bool staged, F&& f) {
  const int64_t M = t.size(-2);
  const int64_t row_bytes = (t.dim() == 3 ? t.size(0) : 1) * h.padded(t.size(-1)) * t.element_size();
  const int64_t step = staged ? h.stage_rows(M, row_bytes) : M;
  for (int64_t r0 = 0; r0 < M; r0 += step) f(r0, std::min(step, M - r0));
}

// out[e] = X_eᵀ Y_e for every domain (rows of e) on GEMMs (host/gemm.h); Y is a D-wide GEMM
// operand (Head::wide), out (E, M, D) or a view with contiguous rows. An empty domain gives zeros.
// With align_rows the GEMMs write padded buffers over their whole width, a chunk of out's rows at
// a time, each then copied into out.
inline void seg_tn_gemms(const Head& h, const at::Tensor& X, const at::Tensor& Y_in, const at::Tensor& out) {
  const at::Tensor Y = h.wide(Y_in);
  for_stage_chunks(h, out, h.align_rows, [&](int64_t r0, int64_t m) {
    const at::Tensor Xc = part(X, 1, r0, m), oc = part(out, -2, r0, m);
    const at::Tensor tmp = h.align_rows ? h.rows_buffer(oc.sizes().vec(), oc.options()) : oc;
    at::Tensor o = h.wide(tmp);
    if (const int64_t n = h.equal_rows()) {
      gemm_out(o, Xc.view({h.E, n, m}).transpose(1, 2), Y.view({h.E, n, Y.size(1)}));
    } else {
      for (int64_t e = 0; e < h.E; ++e) {
        at::Tensor oe = o.select(0, e);
        if (h.rows(e) == 0) { oe.zero_(); continue; }
        domain_tn(h, e, Xc, Y, oe);
      }
    }
    if (h.align_rows) oc.copy_(tmp);
  });
}

// out[e] = X_eᵀ Y_e as seg_tn_gemms, or on the CPU's few-rows kernel where it applies and was
// measured faster for this product.
inline void seg_tn(const Head& h, const at::Tensor& X, const at::Tensor& Y, const at::Tensor& out) {
  if (!h.align_rows && segment_tn_applies(X, Y, out, h.max_rows) &&
      segment_tn_faster(X, Y, h.off, out, [&](const at::Tensor& o) { seg_tn_gemms(h, X, Y, o); }))
    return segment_tn(X, Y, h.off, out);
  seg_tn_gemms(h, X, Y, out);
}

// out[e] = Σ_i X_e[i] (the column sums of each domain's rows of X); out (E, M) or a view.
inline void seg_sum(const Head& h, const at::Tensor& X, at::Tensor out) {
  if (const int64_t n = h.equal_rows()) {
    at::sum_out(out, X.view({h.E, n, X.size(1)}), 1);
    return;
  }
  for (int64_t e = 0; e < h.E; ++e) {
    at::Tensor oe = out.select(0, e);
    at::sum_out(oe, X.narrow(0, h.off[e], h.rows(e)), 0);  // an empty domain sums to zeros
  }
}

// U_e = Y_e V_eᵀ for every domain: V is (E, M, D) per domain, or (M, D) shared by all; Y is a
// D-wide GEMM operand (Head::wide), V one too or a block the caller passed, which align_rows
// stages in padded buffers a chunk of its rows (U's columns) at a time.
inline at::Tensor seg_nt(const Head& h, const at::Tensor& Y_in, const at::Tensor& V_in) {
  const at::Tensor Y = h.wide(Y_in);
  const bool staged = h.needs_staging(V_in);
  at::Tensor U = at::empty({h.N, V_in.size(-2)}, Y.options());
  for_stage_chunks(h, V_in, staged, [&](int64_t r0, int64_t m) {
    const at::Tensor Vc = part(V_in, -2, r0, m);
    const at::Tensor V = h.wide(staged ? h.aligned(Vc) : Vc);
    at::Tensor Uc = part(U, 1, r0, m);
    if (V.dim() == 2) return gemm_out(Uc, Y, V.t());
    if (const int64_t n = h.equal_rows()) {
      at::Tensor u = Uc.view({h.E, n, m});
      return gemm_out(u, Y.view({h.E, n, Y.size(1)}), V.transpose(1, 2));
    }
    for (int64_t e = 0; e < h.E; ++e) {
      if (h.rows(e) == 0) continue;
      at::Tensor u = Uc.narrow(0, h.off[e], h.rows(e));
      gemm_out(u, Y.narrow(0, h.off[e], h.rows(e)), V[e].t());
    }
  });
  return U;
}

// acc_e += X_e V_e for every domain: V is (E, M, D) per domain, or (M, D) shared; acc is a D-wide
// GEMM operand (Head::wide), V one too or a block the caller passed, which align_rows stages in
// padded buffers a chunk of its rows (the product's inner dimension) at a time.
inline void seg_nn_add(const Head& h, const at::Tensor& X, const at::Tensor& V_in, const at::Tensor& acc_in) {
  const at::Tensor acc = h.wide(acc_in);
  const bool staged = h.needs_staging(V_in);
  for_stage_chunks(h, V_in, staged, [&](int64_t r0, int64_t m) {
    const at::Tensor Vc = part(V_in, -2, r0, m), Xc = part(X, 1, r0, m);
    const at::Tensor V = h.wide(staged ? h.aligned(Vc) : Vc);
    if (V.dim() == 2) return gemm_add(acc, Xc, V);
    if (const int64_t n = h.equal_rows())
      return gemm_add(acc.view({h.E, n, acc.size(1)}), Xc.view({h.E, n, m}), V);
    for (int64_t e = 0; e < h.E; ++e)
      if (h.rows(e) > 0) gemm_add(acc.narrow(0, h.off[e], h.rows(e)), Xc.narrow(0, h.off[e], h.rows(e)), V[e]);
  });
}

// The gradients of an op with respect to Z̃ and W̃, accumulated over class tiles in the
// accumulation dtype, then split into (features, weight, bias).
struct HeadGrads {
  at::Tensor dzt, dwt;
  explicit HeadGrads(const Head& h)
      : dzt(h.rows_buffer({h.N, h.D}, h.zt.options().dtype(h.acc_type), /*zero=*/true)),
        dwt(h.rows_buffer({h.C, h.D}, h.zt.options().dtype(h.acc_type), /*zero=*/true)) {}

  // Chain rule through logits = Z Wᵀ + b = Z̃ W̃ᵀ for the logits gradient dl of classes c0 .. c0+T-1.
  void add_logits_grad(const Head& h, const at::Tensor& dl, int64_t c0, int64_t T) {
    gemm_add(dzt.narrow(1, 0, h.d), dl, h.w.narrow(0, c0, T));  // the ones column's gradient is dropped
    gemm_add(h.wide(dwt).narrow(0, c0, T), dl.t(), h.wide(h.zt));
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const Head& h) const {
    const auto dt = h.zt.scalar_type();
    at::Tensor gb = h.has_bias ? dwt.select(1, h.d).to(dt) : at::empty({0}, h.zt.options());
    return {dzt.narrow(1, 0, h.d).to(dt).contiguous(), dwt.narrow(1, 0, h.d).to(dt).contiguous(), gb.contiguous()};
  }
};

}  // namespace hessalign
