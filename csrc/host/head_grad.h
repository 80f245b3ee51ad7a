// head_grad: forward g_e = R_eᵀ Z̃_e per class tile; closed-form backward (math/head_grad.h):
// dZ̃_e += R_e Ḡ_e and, through the softmax, the HVP's S with V = Ḡ_e as logits gradient.
#pragma once
#include "../math/head_grad.h"
#include "../math/head_hvp.h"
#include "head_gemms.h"

namespace hessalign {

template <class K>
at::Tensor head_grad_forward(HE_HEAD_PARAMS, const at::Tensor& labels, const at::Tensor& offsets, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_grad", features, weight, bias, offsets, ce, true, class_tile, 2, /*augment=*/false);
  // g_e's bias column is the column sums of R_e, so the GEMM reads Z itself and the N×D copy
  // Z̃ = [Z | 1] is never made (its allocation and copy were ~10% of a DomainBed-sized call
  // on the CPU); with a padded GEMM width the GEMM takes the padded Z̃ as before.
  const bool bias_sums = h.has_bias && !h.align_rows;
  if (!bias_sums) h.augment();
  prepare(h, k, ce, /*keep_probs=*/false);  // the residual pass, their one reader, makes its own
  at::Tensor out = at::empty({h.E, h.C, h.D}, h.zt.options());
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      at::Tensor R = at::empty({h.N, T}, h.zt.options());
      if (h.N > 0) {
        const at::Tensor L = h.logits(c0, T);
        k.rows(h.N, ResidualOp<scalar_t, acc_t>{{}, h.view<scalar_t, acc_t>(L, c0, T), h.ce_rows<acc_t>(), nullptr,
                                                R.mutable_data_ptr<scalar_t>()});
      }
      const at::Tensor o = out.narrow(1, c0, T);
      if (bias_sums) {
        seg_tn(h, R, h.z, o.narrow(2, 0, h.d));
        seg_sum(h, R, o.select(2, h.d));
      } else {
        seg_tn(h, R, h.zt, o);
      }
    }
  });
  return out;
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> head_grad_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& labels, const at::Tensor& offsets, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_grad_backward", features, weight, bias, offsets, ce, true, class_tile, 3);
  check_param_block(h.op, "grad", grad, features, h.E, h.C, h.D, false);
  prepare(h, k, ce);
  HeadGrads g(h);
  const at::Tensor G = grad.contiguous();  // the padded width stages it in the GEMMs (seg_nt)
  if (h.N == 0) return g.finish(h);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // pass 2: u_i = Ḡ_e z̃_i's Centered sums m_i, mk_i (math/head_hvp.h), over all classes
    at::Tensor m = at::zeros({2, h.N}, h.zt.options().dtype(h.acc_type));
    acc_t* const mp = m.mutable_data_ptr<acc_t>();
    at::Tensor U1;
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor U = seg_nt(h, h.zt, G.narrow(1, c0, T));
      k.rows(h.N, HvpMeanOp<scalar_t, acc_t>{{}, {h.view<scalar_t, acc_t>(L, c0, T), 1, 0, 1},
                                             U.const_data_ptr<scalar_t>(), mp, mp + h.N});
      if (T == h.C) U1 = U;
    }
    // pass 3: dl = c p d over U (d: u centered); R for dZ̃_e += R_e Ḡ_e
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      const at::Tensor Gt = G.narrow(1, c0, T);
      at::Tensor U = U1.defined() ? U1 : seg_nt(h, h.zt, Gt);
      const auto lt = h.view<scalar_t, acc_t>(L, c0, T);
      k.rows(h.N, HvpSOp<scalar_t, acc_t>{{}, {lt, 1, 0, 1}, h.c.const_data_ptr<acc_t>(), mp, mp + h.N,
                                          U.mutable_data_ptr<scalar_t>()});
      at::Tensor R = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, ResidualOp<scalar_t, acc_t>{{}, lt, h.ce_rows<acc_t>(), nullptr, R.mutable_data_ptr<scalar_t>()});
      seg_nn_add(h, R, Gt, g.dzt);
      g.add_logits_grad(h, U, c0, T);
    }
  });
  return g.finish(h);
}

}  // namespace hessalign
