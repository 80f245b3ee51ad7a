// head_hessian_diag: diag(H_e) = Q_eᵀ (Z̃ ⊙ Z̃)_e per class tile (math/head_hessian_diag.h),
// and its closed-form backward (pass 2: the softmax backward's sums; pass 3: Q and dl;
// dZ̃ = 2 Z̃ ⊙ Σ_tiles Q D̄).
#pragma once
#include "../math/head_hessian_diag.h"
#include "head_gemms.h"

namespace hessalign {

// Z̃ ⊙ Z̃, a GEMM operand (rows aligned like Z̃'s).
inline at::Tensor squared_features(const Head& h) {
  at::Tensor z2 = h.rows_buffer({h.N, h.D}, h.zt.options());
  return at::mul_out(z2, h.zt, h.zt);
}

template <class K>
at::Tensor head_hessian_diag_forward(HE_HEAD_PARAMS, const at::Tensor& offsets,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hessian_diag", features, weight, bias, offsets, ce, false, class_tile, 2);
  prepare(h, k, ce);
  const at::Tensor z2 = squared_features(h);
  at::Tensor out = at::empty({h.E, h.C, h.D}, h.zt.options());
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      at::Tensor Q = at::empty({h.N, T}, h.zt.options());
      if (h.N > 0) {
        const at::Tensor L = h.logits(c0, T);
        k.rows(h.N, DiagQOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), h.c.const_data_ptr<acc_t>(),
                                             Q.mutable_data_ptr<scalar_t>()});
      }
      seg_tn(h, Q, z2, out.narrow(1, c0, T));
    }
  });
  return out;
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> head_hessian_diag_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& offsets, const std::optional<at::Tensor>& labels,
    HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hessian_diag_backward", features, weight, bias, offsets, ce, false, class_tile, 3);
  check_param_block(h.op, "grad", grad, features, h.E, h.C, h.D, false);
  prepare(h, k, ce);
  const at::Tensor G = grad.contiguous(), z2 = squared_features(h);
  HeadGrads g(h);
  if (h.N == 0) return g.finish(h);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = h.zt.options().dtype(h.acc_type);
    // the Centered sums of the softmax backward (math/tile.h): rest, then the dominant class's input
    at::Tensor sums = at::zeros({2, h.N}, acc), Y = h.rows_buffer({h.N, h.D}, acc, /*zero=*/true);
    at::Tensor dQ1;
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {  // pass 2: the sums
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor dQ = seg_nt(h, z2, G.narrow(1, c0, T));
      k.rows(h.N, DiagBackwardSumsOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T),
                                                      h.c.const_data_ptr<acc_t>(), dQ.const_data_ptr<scalar_t>(),
                                                      sums.mutable_data_ptr<acc_t>(),
                                                      sums.mutable_data_ptr<acc_t>() + h.N});
      if (T == h.C) dQ1 = dQ;
    }
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {  // pass 3: Q, dl
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T), Gt = G.narrow(1, c0, T);
      at::Tensor dQ = dQ1.defined() ? dQ1 : seg_nt(h, z2, Gt);
      at::Tensor Q = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, DiagBackwardMapOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T),
                                                     h.c.const_data_ptr<acc_t>(), sums.const_data_ptr<acc_t>(),
                                                     sums.const_data_ptr<acc_t>() + h.N,
                                                     dQ.mutable_data_ptr<scalar_t>(), Q.mutable_data_ptr<scalar_t>()});
      seg_nn_add(h, Q, Gt, Y);
      g.add_logits_grad(h, dQ, c0, T);
    }
    g.dzt.add_(2 * h.zt * Y);
  });
  return g.finish(h);
}

}  // namespace hessalign
