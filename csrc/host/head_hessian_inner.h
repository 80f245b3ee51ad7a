// head_hessian_inner: the E×E matrix ⟨H_a, H_b⟩_F (math/head_hessian_inner.h). Forward: one
// pass over the class tiles accumulates S = P Pᵀ and R = P (P⊙P)ᵀ by GEMMs, then the pair
// kernel forms G and domain indicator GEMMs sum it into E×E. Backward: the pair kernel forms
// GZ, X, A; per tile, GEMMs give AP, XQ, XP and a row kernel dP and ρ; with several tiles ρ
// needs every tile first, so the tiles are visited twice.
#pragma once
#include "../math/head_hessian_inner.h"
#include "head_gemms.h"

namespace hessalign {

// One-hot (N, E) domain indicator in dtype `opts`.
inline at::Tensor domain_indicator(const Head& h, const at::TensorOptions& opts) {
  at::Tensor ind = at::zeros({h.N, h.E}, opts);
  if (h.N > 0) ind.scatter_(1, h.row_domains(ind).unsqueeze(1), 1.0);
  return ind;
}

// S = P Pᵀ and R = P (P⊙P)ᵀ summed over the class tiles (acc dtype, N×N).
template <class scalar_t, class acc_t, class K>
std::pair<at::Tensor, at::Tensor> inner_prob_grams(const Head& h, const K& k) {
  const auto acc = h.zt.options().dtype(h.acc_type);
  at::Tensor S = at::zeros({h.N, h.N}, acc), R = at::zeros({h.N, h.N}, acc);
  for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {
    const int64_t T = std::min(h.tile, h.C - c0);
    const at::Tensor L = h.logits(c0, T);
    at::Tensor P = at::empty({h.N, T}, acc), Q = at::empty({h.N, T}, acc);
    k.rows(h.N, ProbTileOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), P.mutable_data_ptr<acc_t>(),
                                            Q.mutable_data_ptr<acc_t>()});
    gemm_add(S, P, P.t());
    gemm_add(R, P, Q.t());
  }
  return {S, R};
}

template <class K>
at::Tensor head_hessian_inner_forward(HE_HEAD_PARAMS, const at::Tensor& offsets,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hessian_inner", features, weight, bias, offsets, ce, false, class_tile, 3);
  prepare(h, k, ce);
  const auto acc = h.zt.options().dtype(h.acc_type);
  at::Tensor G = at::empty({h.N, h.N}, acc);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor S, R;
    std::tie(S, R) = inner_prob_grams<scalar_t, acc_t>(h, k);
    const at::Tensor zt = h.zt.to(h.acc_type);
    const at::Tensor Kz = gemm(zt, zt.t());
    k.elements(h.N * h.N, InnerPairOp<acc_t>{h.N, S.const_data_ptr<acc_t>(), R.const_data_ptr<acc_t>(),
                                             Kz.const_data_ptr<acc_t>(), h.c.const_data_ptr<acc_t>(),
                                             G.mutable_data_ptr<acc_t>()});
  });
  const at::Tensor ind = domain_indicator(h, acc);
  return gemm(ind.t(), gemm(G, ind)).to(features.scalar_type());
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> head_hessian_inner_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& offsets, const std::optional<at::Tensor>& labels,
    HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hessian_inner_backward", features, weight, bias, offsets, ce, false, class_tile, 6);
  check_domain_matrix(h.op, "grad", grad, features, h.E);
  prepare(h, k, ce);
  HeadGrads g(h);
  if (h.N == 0) return g.finish(h);
  const auto acc = h.zt.options().dtype(h.acc_type);
  const at::Tensor domain = h.row_domains(h.zt);
  const at::Tensor Ubar = grad.to(h.acc_type).contiguous();
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor S, R;
    std::tie(S, R) = inner_prob_grams<scalar_t, acc_t>(h, k);
    const at::Tensor zt = h.zt.to(h.acc_type);
    const at::Tensor Kz = gemm(zt, zt.t());
    at::Tensor GZ = at::empty({h.N, h.N}, acc), X = at::empty({h.N, h.N}, acc), A = at::empty({h.N, h.N}, acc);
    k.elements(h.N * h.N, InnerPairBackwardOp<acc_t>{h.N, h.E, domain.const_data_ptr<int64_t>(),
                                                     Ubar.const_data_ptr<acc_t>(), S.const_data_ptr<acc_t>(),
                                                     R.const_data_ptr<acc_t>(), Kz.const_data_ptr<acc_t>(),
                                                     h.c.const_data_ptr<acc_t>(), GZ.mutable_data_ptr<acc_t>(),
                                                     X.mutable_data_ptr<acc_t>(), A.mutable_data_ptr<acc_t>()});
    gemm_add(g.dzt, GZ, zt);
    at::Tensor rho = at::zeros({h.N}, acc);
    // dP of one tile (over AP) and its share of ρ.
    auto tile_dp = [&](const LogitsTile<scalar_t, acc_t>& lt, int64_t T) {
      at::Tensor P = at::empty({h.N, T}, acc), Q = at::empty({h.N, T}, acc);
      k.rows(h.N, ProbTileOp<scalar_t, acc_t>{{}, lt, P.mutable_data_ptr<acc_t>(), Q.mutable_data_ptr<acc_t>()});
      at::Tensor AP = gemm(A, P), XQ = gemm(X, Q), XP = gemm(X, P);
      k.rows(h.N, InnerDpOp<scalar_t, acc_t>{{}, lt, AP.mutable_data_ptr<acc_t>(), XQ.const_data_ptr<acc_t>(),
                                             XP.const_data_ptr<acc_t>(), rho.mutable_data_ptr<acc_t>()});
      return AP;
    };
    if (h.num_tiles() > 1)
      for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
        const int64_t T = std::min(h.tile, h.C - c0);
        const at::Tensor L = h.logits(c0, T);
        tile_dp(h.view<scalar_t, acc_t>(L, c0, T), T);
      }
    const at::Tensor rho_all = rho.clone();
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      const auto lt = h.view<scalar_t, acc_t>(L, c0, T);
      const at::Tensor DP = tile_dp(lt, T);  // with one tile this pass also completes ρ
      const at::Tensor& r = h.num_tiles() > 1 ? rho_all : rho;
      at::Tensor dl = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, SoftmaxBackwardOp<scalar_t, acc_t>{{}, lt, DP.const_data_ptr<acc_t>(), r.const_data_ptr<acc_t>(),
                                                     dl.mutable_data_ptr<scalar_t>()});
      g.add_logits_grad(h, dl, c0, T);
    }
  });
  return g.finish(h);
}

}  // namespace hessalign
