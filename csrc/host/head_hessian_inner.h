// head_hessian_inner: the E×E matrix ⟨H_a, H_b⟩_F (math/head_hessian_inner.h). Forward: one
// pass over the class tiles accumulates S' = P'P'ᵀ and R' = P'(P'⊙P')ᵀ by GEMMs and gathers Y, then
// the pair kernel forms G and domain indicator GEMMs sum it into E×E. Backward: the pair kernel
// forms GZ, X, W, V; per tile, a row kernel writes r, diag(A) and the dominant one-hots, GEMMs give
// X Dg, X Rf, W Ek, V Rf, and a row kernel ĝ with its sums r·ĝ and ĝ[k]; with several tiles those
// sums need every tile first, so the tiles are visited twice.
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

// The class-tile pass both directions start with: S' = P'P'ᵀ, R' = P'(P'⊙P')ᵀ (acc dtype, N×N), each
// row's dominant class (-1 for none), p̄ (Head's, from the row statistics), and Y's source: with one
// class tile, P' itself (the pair functors read Y_ij = P'_j[k_i] there: no gather pass, no N×N Y),
// else Y gathered tile by tile.
struct InnerState {
  at::Tensor S, R, dominant, pbar, Y, P1;
};

template <class acc_t>
InnerGrams<acc_t> inner_grams(const InnerState& st) {
  const bool one_tile = st.P1.defined();
  return {st.S.size(0), st.S.const_data_ptr<acc_t>(), st.R.const_data_ptr<acc_t>(),
          one_tile ? nullptr : st.Y.const_data_ptr<acc_t>(), one_tile ? st.P1.const_data_ptr<acc_t>() : nullptr,
          one_tile ? st.P1.size(1) : 0, st.dominant.const_data_ptr<int64_t>(), st.pbar.const_data_ptr<acc_t>()};
}

template <class scalar_t, class acc_t, class K>
InnerState inner_prob_grams(const Head& h, const K& k) {
  const auto acc = h.zt.options().dtype(h.acc_type);
  const bool one_tile = h.num_tiles() <= 1;
  InnerState st{at::zeros({h.N, h.N}, acc), at::zeros({h.N, h.N}, acc),
                at::full({h.N}, -1, h.zt.options().dtype(at::kLong)), h.pbar,
                one_tile ? at::Tensor() : at::zeros({h.N, h.N}, acc), at::Tensor()};
  for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {
    const int64_t T = std::min(h.tile, h.C - c0);
    const at::Tensor L = h.logits(c0, T);
    at::Tensor P = at::empty({h.N, T}, acc), Q = at::empty({h.N, T}, acc);
    k.rows(h.N, ProbTileOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), P.mutable_data_ptr<acc_t>(),
                                            Q.mutable_data_ptr<acc_t>(), st.dominant.mutable_data_ptr<int64_t>()});
    gemm_add(st.S, P, P.t());
    gemm_add(st.R, P, Q.t());
    if (one_tile)
      st.P1 = P;
    else
      k.rows(h.N, InnerGatherOp<acc_t>{{}, h.N, T, c0, st.dominant.const_data_ptr<int64_t>(),
                                       P.const_data_ptr<acc_t>(), st.Y.mutable_data_ptr<acc_t>()});
  }
  if (one_tile && !st.P1.defined()) st.P1 = at::zeros({h.N, h.C}, acc);  // N = 0: nothing to read
  return st;
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
    const InnerState st = inner_prob_grams<scalar_t, acc_t>(h, k);
    const at::Tensor zt = h.zt.to(h.acc_type);
    const at::Tensor Kz = gemm(zt, zt.t());
    k.rows(h.N, InnerPairOp<acc_t>{{}, inner_grams<acc_t>(st), Kz.const_data_ptr<acc_t>(),
                                             h.c.const_data_ptr<acc_t>(), G.mutable_data_ptr<acc_t>()});
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
    const InnerState st = inner_prob_grams<scalar_t, acc_t>(h, k);
    const at::Tensor zt = h.zt.to(h.acc_type);
    const at::Tensor Kz = gemm(zt, zt.t());
    at::Tensor GZ = at::empty({h.N, h.N}, acc), X = at::empty({h.N, h.N}, acc), W = at::empty({h.N, h.N}, acc),
               V = at::empty({h.N, h.N}, acc);
    k.rows(h.N, InnerPairBackwardOp<acc_t>{{}, inner_grams<acc_t>(st), h.E, domain.const_data_ptr<int64_t>(),
                                                     Ubar.const_data_ptr<acc_t>(), Kz.const_data_ptr<acc_t>(),
                                                     h.c.const_data_ptr<acc_t>(), GZ.mutable_data_ptr<acc_t>(),
                                                     X.mutable_data_ptr<acc_t>(), W.mutable_data_ptr<acc_t>(),
                                                     V.mutable_data_ptr<acc_t>()});
    gemm_add(g.dzt, GZ, zt);
    const int64_t* dominant = st.dominant.const_data_ptr<int64_t>();
    at::Tensor rg = at::zeros({h.N}, acc), gk = at::zeros({h.N}, acc);
    // ĝ of one tile (returned, with the tile's r) and its shares of rg and gk.
    auto tile_ghat = [&](const LogitsTile<scalar_t, acc_t>& lt, int64_t T) {
      at::Tensor Rf = at::empty({h.N, T}, acc), Dg = at::empty({h.N, T}, acc), Ek = at::empty({h.N, T}, acc);
      k.rows(h.N, InnerTileOp<scalar_t, acc_t>{{}, lt, dominant, st.pbar.const_data_ptr<acc_t>(),
                                               Rf.mutable_data_ptr<acc_t>(), Dg.mutable_data_ptr<acc_t>(),
                                               Ek.mutable_data_ptr<acc_t>()});
      at::Tensor XD = gemm(X, Dg);
      const at::Tensor XR = gemm(X, Rf), WE = gemm(W, Ek), VR = gemm(V, Rf);
      k.rows(h.N, InnerGhatOp<scalar_t, acc_t>{{}, lt, dominant, Rf.const_data_ptr<acc_t>(),
                                               XD.mutable_data_ptr<acc_t>(), XR.const_data_ptr<acc_t>(),
                                               WE.const_data_ptr<acc_t>(), VR.const_data_ptr<acc_t>(),
                                               rg.mutable_data_ptr<acc_t>(), gk.mutable_data_ptr<acc_t>()});
      return std::make_pair(XD, Rf);
    };
    if (h.num_tiles() > 1)
      for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
        const int64_t T = std::min(h.tile, h.C - c0);
        const at::Tensor L = h.logits(c0, T);
        tile_ghat(h.view<scalar_t, acc_t>(L, c0, T), T);
      }
    const at::Tensor rg_all = rg.clone(), gk_all = gk.clone();
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor Ghat, Rf;
      std::tie(Ghat, Rf) = tile_ghat(h.view<scalar_t, acc_t>(L, c0, T), T);  // one tile: completes rg, gk
      const bool tiled = h.num_tiles() > 1;
      at::Tensor dl = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, InnerLogitsGradOp<scalar_t, acc_t>{{}, T, c0, dominant, Rf.const_data_ptr<acc_t>(),
                                                     Ghat.const_data_ptr<acc_t>(),
                                                     (tiled ? rg_all : rg).const_data_ptr<acc_t>(),
                                                     (tiled ? gk_all : gk).const_data_ptr<acc_t>(),
                                                     dl.mutable_data_ptr<scalar_t>()});
      g.add_logits_grad(h, dl, c0, T);
    }
  });
  return g.finish(h);
}

}  // namespace hessalign
