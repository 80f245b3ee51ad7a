// domain_losses: forward (per-row losses over class tiles, then a per-domain sum) and
// closed-form backward (logits gradient g_e (c_i p_i - t_i), then the head's chain rule).
#pragma once
#include "../math/domain_losses.h"
#include "../math/head_grad.h"
#include "head_gemms.h"

namespace hessalign {

template <class K>
at::Tensor domain_losses_forward(HE_HEAD_PARAMS, const at::Tensor& labels, const at::Tensor& offsets,
    HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("domain_losses", features, weight, bias, offsets, ce, true, class_tile, 1,
                        /*augment=*/false);
  prepare(h, k, ce, /*keep_probs=*/false, /*want_domain_loss=*/true);  // the loss reads logits, not probabilities
  if (h.domain_loss.defined()) return h.domain_loss.to(features.scalar_type());
  at::Tensor row_loss = at::empty({h.N}, h.zt.options().dtype(h.acc_type));
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      k.rows(h.N, LossRowOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), h.ce_rows<acc_t>(),
                                             row_loss.mutable_data_ptr<acc_t>(), /*first_tile=*/c0 == 0});
    }
  });
  return segment_sum(h, k, row_loss).to(features.scalar_type());
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_losses_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& labels, const at::Tensor& offsets, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("domain_losses_backward", features, weight, bias, offsets, ce, true, class_tile, 2);
  check_per_domain(h.op, "grad", grad, features, h.E);
  prepare(h, k, ce);
  HeadGrads g(h);
  const at::Tensor scale = h.per_row(grad);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor dl = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, ResidualOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), h.ce_rows<acc_t>(),
                                              scale.const_data_ptr<acc_t>(), dl.mutable_data_ptr<scalar_t>()});
      g.add_logits_grad(h, dl, c0, T);
    }
  });
  return g.finish(h);
}

}  // namespace hessalign
