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

// out[e] = X_eᵀ Y_e for every domain (rows of e); Y is a D-wide GEMM operand (Head::wide), out
// (E, M, D) or a view with contiguous rows. An empty domain gives zeros.
inline void seg_tn(const Head& h, const at::Tensor& X, const at::Tensor& Y_in, const at::Tensor& out) {
  if (!h.align_rows && segment_tn_applies(X, Y_in, out, h.max_rows)) return segment_tn(X, Y_in, h.off, out);
  // with align_rows the GEMMs write a padded buffer over its whole width, then one copy
  const at::Tensor tmp = h.align_rows ? h.rows_buffer(out.sizes().vec(), out.options()) : out;
  at::Tensor o = h.wide(tmp);
  const at::Tensor Y = h.wide(Y_in);
  if (const int64_t n = h.equal_rows()) {
    gemm_out(o, X.view({h.E, n, X.size(1)}).transpose(1, 2), Y.view({h.E, n, Y.size(1)}));
  } else {
    for (int64_t e = 0; e < h.E; ++e) {
      at::Tensor oe = o.select(0, e);
      if (h.rows(e) == 0) { oe.zero_(); continue; }
      domain_tn(h, e, X, Y, oe);
    }
  }
  if (h.align_rows) out.copy_(tmp);
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

// U_e = Y_e V_eᵀ for every domain: V is (E, M, D) per domain, or (M, D) shared by all; Y and V
// are D-wide GEMM operands (Head::wide).
inline at::Tensor seg_nt(const Head& h, const at::Tensor& Y_in, const at::Tensor& V_in) {
  const at::Tensor Y = h.wide(Y_in), V = h.wide(V_in);
  if (V.dim() == 2) return gemm(Y, V.t());
  at::Tensor U = at::empty({h.N, V.size(1)}, Y.options());
  if (const int64_t n = h.equal_rows()) {
    at::Tensor u = U.view({h.E, n, V.size(1)});
    gemm_out(u, Y.view({h.E, n, Y.size(1)}), V.transpose(1, 2));
    return U;
  }
  for (int64_t e = 0; e < h.E; ++e) {
    if (h.rows(e) == 0) continue;
    at::Tensor u = U.narrow(0, h.off[e], h.rows(e));
    gemm_out(u, Y.narrow(0, h.off[e], h.rows(e)), V[e].t());
  }
  return U;
}

// acc_e += X_e V_e for every domain: V is (E, M, D) per domain, or (M, D) shared; V and acc
// are D-wide GEMM operands (Head::wide).
inline void seg_nn_add(const Head& h, const at::Tensor& X, const at::Tensor& V_in, const at::Tensor& acc_in) {
  const at::Tensor V = h.wide(V_in), acc = h.wide(acc_in);
  if (V.dim() == 2) { gemm_add(acc, X, V); return; }
  if (const int64_t n = h.equal_rows()) {
    gemm_add(acc.view({h.E, n, acc.size(1)}), X.view({h.E, n, X.size(1)}), V);
    return;
  }
  for (int64_t e = 0; e < h.E; ++e)
    if (h.rows(e) > 0) gemm_add(acc.narrow(0, h.off[e], h.rows(e)), X.narrow(0, h.off[e], h.rows(e)), V[e]);
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
