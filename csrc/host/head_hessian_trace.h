// head_hessian_trace: tr(H_e) = Σ_{i∈e} c_i q_i ‖z̃_i‖² (math/head_hessian_trace.h): one row
// pass over the class tiles and a per-domain sum; backward dl_ic = 2 k_i p (Σp² - p).
#pragma once
#include "../math/head_hessian_trace.h"
#include "head_gemms.h"

namespace hessalign {

// ‖z̃_i‖² for every row, acc dtype, from the features themselves.
template <class scalar_t, class acc_t, class K>
at::Tensor row_sq_norms(const Head& h, const K& k) {
  at::Tensor zz = at::empty({h.N}, h.z.options().dtype(h.acc_type));
  k.row_sq_norms(h.z.const_data_ptr<scalar_t>(), h.N, h.d, acc_t(h.has_bias ? 1 : 0), zz.mutable_data_ptr<acc_t>());
  return zz;
}

// q_i and (2, N) the sums of p_ic² over the classes that do not dominate and over the dominant
// one, for every row over the class tiles; with `rowval` (N, acc dtype), the last tile's pass also
// writes c_i q_i ‖z̃_i‖² there.
template <class scalar_t, class acc_t, class K>
std::pair<at::Tensor, at::Tensor> trace_rows(const Head& h, const K& k, const at::Tensor& zz, acc_t* rowval) {
  const auto acc = h.z.options().dtype(h.acc_type);
  at::Tensor q = at::empty({h.N}, acc), sq = at::empty({2, h.N}, acc);
  for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {
    const int64_t T = std::min(h.tile, h.C - c0);
    const at::Tensor L = h.logits(c0, T);
    k.rows(h.N, TraceRowOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), q.mutable_data_ptr<acc_t>(),
                                            sq.mutable_data_ptr<acc_t>(), sq.mutable_data_ptr<acc_t>() + h.N,
                                            h.c.const_data_ptr<acc_t>(),
                                            zz.const_data_ptr<acc_t>(), rowval, c0 == 0, c0 + T >= h.C});
  }
  return {q, sq};
}

template <class K>
at::Tensor head_hessian_trace_forward(HE_HEAD_PARAMS, const at::Tensor& offsets,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  // the features enter only through ‖z̃_i‖²: no augmented copy
  Head h = make_head<K>("head_hessian_trace", features, weight, bias, offsets, ce, false, class_tile, 1,
                        /*augment=*/false);
  prepare(h, k, ce);
  at::Tensor rowvals = at::empty({h.N}, h.z.options().dtype(h.acc_type));
  HE_DISPATCH(K, h.z.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    trace_rows<scalar_t, acc_t>(h, k, row_sq_norms<scalar_t, acc_t>(h, k), rowvals.mutable_data_ptr<acc_t>());
  });
  return segment_sum(h, k, rowvals).to(features.scalar_type());
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> head_hessian_trace_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& offsets, const std::optional<at::Tensor>& labels,
    HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hessian_trace_backward", features, weight, bias, offsets, ce, false, class_tile, 2);
  check_per_domain(h.op, "grad", grad, features, h.E);
  prepare(h, k, ce);
  HeadGrads g(h);
  if (h.N == 0) return g.finish(h);
  const at::Tensor tbar = h.per_row(grad);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor zz = row_sq_norms<scalar_t, acc_t>(h, k);
    at::Tensor q, sq;
    std::tie(q, sq) = trace_rows<scalar_t, acc_t>(h, k, zz, nullptr);
    const at::Tensor ct = h.c * tbar;
    const at::Tensor kk = ct * zz;
    g.dzt.add_(2 * (ct * q).unsqueeze(1) * h.zt);
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor dl = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, TraceBackwardOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), kk.const_data_ptr<acc_t>(),
                                                   sq.const_data_ptr<acc_t>(), sq.const_data_ptr<acc_t>() + h.N,
                                                   dl.mutable_data_ptr<scalar_t>()});
      g.add_logits_grad(h, dl, c0, T);
    }
  });
  return g.finish(h);
}

}  // namespace hessalign
