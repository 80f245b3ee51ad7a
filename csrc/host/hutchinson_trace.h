// hutchinson_trace: (1/K) Σ_k v_kᵀ H_e v_k per domain (math/hutchinson_trace.h), probes in
// chunks; per chunk, pass A sums m, mk over the class tiles and pass B the variance.
#pragma once
#include "../math/hutchinson_trace.h"
#include "hutchinson.h"

namespace hessalign {

// m, mk (2×N×B: HvpMeanOp's sums) and var (N×B) of probes k0 .. k0+B-1. With one class tile, U
// is returned for reuse.
template <class scalar_t, class acc_t, class K>
at::Tensor hutchinson_moments(const Head& h, const K& k, uint64_t seed, int64_t k0, int64_t B, at::Tensor& m,
                              at::Tensor& var) {
  at::Tensor U1;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor U = U1.defined() ? U1 : probe_products(h, probe_block<scalar_t>(h, k, seed, k0, B, c0, T));
      const HvpChunk<scalar_t, acc_t> ch{h.view<scalar_t, acc_t>(L, c0, T), B, 0, B};
      acc_t* const mp = m.mutable_data_ptr<acc_t>();
      if (pass == 0)
        k.rows(h.N * B, HvpMeanOp<scalar_t, acc_t>{{}, ch, U.const_data_ptr<scalar_t>(), mp, mp + h.N * B});
      else
        k.rows(h.N * B, HutchinsonVarOp<scalar_t, acc_t>{{}, ch, U.const_data_ptr<scalar_t>(), mp, mp + h.N * B,
                                                         var.mutable_data_ptr<acc_t>()});
      if (T == h.C) U1 = U;
    }
  }
  return U1;
}

template <class K>
at::Tensor hutchinson_trace_forward(HE_HEAD_PARAMS, const at::Tensor& offsets, int64_t num_probes, int64_t seed,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("hutchinson_trace", features, weight, bias, offsets, ce, false, class_tile, 2);
  check_num_probes(h.op, num_probes);
  prepare(h, k, ce);
  const auto acc = h.zt.options().dtype(h.acc_type);
  at::Tensor varsum = at::zeros({h.N}, acc);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t chunk = choose_probe_chunk<K>(h, num_probes, 1, 1);
    for (int64_t k0 = 0; k0 < num_probes && h.N > 0; k0 += chunk) {
      const int64_t B = std::min(chunk, num_probes - k0);
      at::Tensor m = at::zeros({2, h.N, B}, acc), var = at::zeros({h.N, B}, acc);
      hutchinson_moments<scalar_t, acc_t>(h, k, uint64_t(seed), k0, B, m, var);
      varsum.add_(var.sum(1));
    }
  });
  return segment_sum(h, k, h.c * varsum / double(num_probes)).to(features.scalar_type());
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> hutchinson_trace_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& offsets, int64_t num_probes, int64_t seed,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("hutchinson_trace_backward", features, weight, bias, offsets, ce, false, class_tile, 3);
  check_num_probes(h.op, num_probes);
  check_per_domain(h.op, "grad", grad, features, h.E);
  prepare(h, k, ce);
  HeadGrads g(h);
  if (h.N == 0) return g.finish(h);
  const at::Tensor kk = h.c * h.per_row(grad) / double(num_probes);
  const auto acc = h.zt.options().dtype(h.acc_type);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t chunk = choose_probe_chunk<K>(h, num_probes, 1, 1);
    // With one tile the logits gradient sums over all chunks before its two GEMMs, not two GEMMs
    // per chunk (a chunk is one or two probes under the CPU's cap at C = 345).
    const bool one_tile = h.tile == h.C;
    const at::Tensor DL1 = one_tile ? at::zeros({h.N, h.C}, acc) : at::Tensor();
    for (int64_t k0 = 0; k0 < num_probes; k0 += chunk) {
      const int64_t B = std::min(chunk, num_probes - k0);
      at::Tensor m = at::zeros({2, h.N, B}, acc), var = at::zeros({h.N, B}, acc);
      const acc_t* const mp = m.const_data_ptr<acc_t>();
      at::Tensor U1 = hutchinson_moments<scalar_t, acc_t>(h, k, uint64_t(seed), k0, B, m, var);
      for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {
        const int64_t T = std::min(h.tile, h.C - c0);
        const at::Tensor L = h.logits(c0, T);
        const at::Tensor V = probe_block<scalar_t>(h, k, uint64_t(seed), k0, B, c0, T);
        at::Tensor U = U1.defined() ? U1 : probe_products(h, V);
        at::Tensor DL = one_tile ? DL1 : at::zeros({h.N, T}, acc);
        k.rows(h.N, HutchinsonTraceBackwardOp<scalar_t, acc_t>{{}, {h.view<scalar_t, acc_t>(L, c0, T), B, 0, B},
                                                              kk.const_data_ptr<acc_t>(), mp, mp + h.N * B,
                                                              var.const_data_ptr<acc_t>(),
                                                              U.mutable_data_ptr<scalar_t>(),
                                                              DL.mutable_data_ptr<acc_t>()});
        gemm_add(h.wide(g.dzt), U, h.wide(V));  // U holds du
        if (!one_tile) g.add_logits_grad(h, DL.to(h.zt.scalar_type()), c0, T);
      }
    }
    if (one_tile) g.add_logits_grad(h, DL1.to(h.zt.scalar_type()), 0, h.C);
  });
  return g.finish(h);
}

}  // namespace hessalign
