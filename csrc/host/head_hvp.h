// head_hvp: H_e v_e for every domain (math/head_hvp.h with B = 1); vectors (E, C, D) per
// domain or (C, D) shared. Forward: pass 2 sums m_i, mk_i over class tiles, pass 3 forms S and
// the per-domain GEMM. Backward: pass 2 sums m, mk, t, tk, w, then dP's Centered sums; pass 3
// forms S, dU, dP, then dl.
#pragma once
#include "../math/head_hvp.h"
#include "head_gemms.h"

namespace hessalign {

template <class K>
at::Tensor head_hvp_forward(HE_HEAD_PARAMS, const at::Tensor& vectors, const at::Tensor& offsets,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hvp", features, weight, bias, offsets, ce, false, class_tile, 2);
  check_param_block(h.op, "vectors", vectors, features, h.E, h.C, h.D, true);
  prepare(h, k, ce);
  const at::Tensor V = vectors.contiguous();  // the padded width stages it in the GEMMs (seg_nt)
  at::Tensor out = at::empty({h.E, h.C, h.D}, h.zt.options());
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor m = at::zeros({2, h.N}, h.zt.options().dtype(h.acc_type));  // HvpMeanOp's m, then mk
    acc_t* const mp = m.mutable_data_ptr<acc_t>();
    at::Tensor U1;
    for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor U = seg_nt(h, h.zt, V.narrow(-2, c0, T));
      k.rows(h.N, HvpMeanOp<scalar_t, acc_t>{{}, {h.view<scalar_t, acc_t>(L, c0, T), 1, 0, 1},
                                             U.const_data_ptr<scalar_t>(), mp, mp + h.N});
      if (T == h.C) U1 = U;
    }
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      at::Tensor U = U1.defined() ? U1 : seg_nt(h, h.zt, V.narrow(-2, c0, T));
      if (h.N > 0) {
        const at::Tensor L = h.logits(c0, T);
        k.rows(h.N, HvpSOp<scalar_t, acc_t>{{}, {h.view<scalar_t, acc_t>(L, c0, T), 1, 0, 1},
                                            h.c.const_data_ptr<acc_t>(), mp, mp + h.N,
                                            U.mutable_data_ptr<scalar_t>()});
      }
      seg_tn(h, U, h.zt, out.narrow(1, c0, T));
    }
  });
  return out;
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> head_hvp_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& vectors, const at::Tensor& offsets,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("head_hvp_backward", features, weight, bias, offsets, ce, false, class_tile, 4);
  check_param_block(h.op, "vectors", vectors, features, h.E, h.C, h.D, true);
  check_param_block(h.op, "grad", grad, features, h.E, h.C, h.D, false);
  prepare(h, k, ce);
  const at::Tensor V = vectors.contiguous(), G = grad.contiguous();
  HeadGrads g(h);
  // Each class tile writes its own rows of dV: per domain dS_eᵀ Z̃_e in the features' dtype, or
  // for shared vectors their sum over the domains, dSᵀ Z̃: one GEMM over all rows into an
  // accumulator (no per-domain block).
  const bool shared = vectors.dim() == 2;
  at::Tensor dV = shared ? h.rows_buffer({h.C, h.D}, h.zt.options().dtype(h.acc_type), /*zero=*/true)
                         : at::empty({h.E, h.C, h.D}, h.zt.options());
  if (h.N == 0 && !shared) dV.zero_();  // no class tile runs
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = h.zt.options().dtype(h.acc_type);
    // per row (math/head_hvp.h): m, mk, t, tk, w, then dP's Centered sums rest, dpk
    at::Tensor sums = at::zeros({7, h.N}, acc);
    acc_t* const s = sums.mutable_data_ptr<acc_t>();
    const HvpBackwardSums<acc_t> rs{s, s + h.N, s + 2 * h.N, s + 3 * h.N, s + 4 * h.N};
    at::Tensor U1, dS1;
    for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {  // pass 2: the sums
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      const HvpChunk<scalar_t, acc_t> ch{h.view<scalar_t, acc_t>(L, c0, T), 1, 0, 1};
      at::Tensor U = seg_nt(h, h.zt, V.narrow(-2, c0, T));
      at::Tensor dS = seg_nt(h, h.zt, G.narrow(1, c0, T));
      k.rows(h.N, HvpMeanOp<scalar_t, acc_t>{{}, ch, U.const_data_ptr<scalar_t>(), s, s + h.N});
      k.rows(h.N, HvpBackwardSumsOp<scalar_t, acc_t>{{}, ch, U.const_data_ptr<scalar_t>(), dS.const_data_ptr<scalar_t>(),
                                                     s + 2 * h.N, s + 3 * h.N, s + 4 * h.N});
      if (T == h.C) U1 = U, dS1 = dS;
    }
    if (h.N > 0)
      k.elements(h.N, HvpSoftmaxSumsOp<acc_t>{1, h.pbar.const_data_ptr<acc_t>(), h.c.const_data_ptr<acc_t>(), rs,
                                              s + 5 * h.N, s + 6 * h.N});
    for (int64_t c0 = 0; c0 < h.C && h.N > 0; c0 += h.tile) {  // pass 3
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      const auto lt = h.view<scalar_t, acc_t>(L, c0, T);
      const at::Tensor Vt = V.narrow(-2, c0, T), Gt = G.narrow(1, c0, T);
      at::Tensor U = U1.defined() ? U1 : seg_nt(h, h.zt, Vt);
      at::Tensor dS = dS1.defined() ? dS1 : seg_nt(h, h.zt, Gt);
      at::Tensor DP = at::zeros({h.N, T}, acc);
      k.rows(h.N, HvpBackwardMapOp<scalar_t, acc_t>{{}, {lt, 1, 0, 1}, h.c.const_data_ptr<acc_t>(), rs,
                                                    U.mutable_data_ptr<scalar_t>(), dS.mutable_data_ptr<scalar_t>(),
                                                    DP.mutable_data_ptr<acc_t>()});
      // U holds S, dS holds dU now
      seg_nn_add(h, U, Gt, g.dzt);
      seg_nn_add(h, dS, Vt, g.dzt);
      if (shared)
        gemm_add(h.wide(dV).narrow(0, c0, T), dS.t(), h.wide(h.zt));
      else
        seg_tn(h, dS, h.zt, dV.narrow(1, c0, T));
      at::Tensor dl = at::empty({h.N, T}, h.zt.options());
      k.rows(h.N, SoftmaxBackwardOp<scalar_t, acc_t>{{}, lt, DP.const_data_ptr<acc_t>(), s + 5 * h.N, s + 6 * h.N,
                                                     dl.mutable_data_ptr<scalar_t>()});
      g.add_logits_grad(h, dl, c0, T);
    }
  });
  auto [gz, gw, gb] = g.finish(h);
  at::Tensor gv = shared ? dV.to(features.scalar_type()).contiguous() : dV;
  return {gz, gw, gb, gv};
}

}  // namespace hessalign
