// hutchinson_diag: (1/K) Σ_k v_k ⊙ (H_e v_k) per domain: per chunk of probes the HVPs of
// head_hvp.h folded into the output by domain or by class (math/hutchinson_diag.h). Backward:
// each probe's HVP backward with upstream D̄_e ⊙ v_k / K.
#pragma once
#include "../math/head_hvp.h"
#include "../math/hutchinson_diag.h"
#include "hutchinson.h"

namespace hessalign {

// Probes per chunk of the by-class fold (math/hutchinson_diag.h), whose class-major U (N, C, B)
// stays within the memory rule; 0, fold by domain, unless one tile holds all classes and the
// chunk holds at least as many probes as the largest domain has rows.
inline int64_t class_fold_chunk(const Head& h, int64_t num_probes) {
  if (h.tile != h.C || h.N == 0) return 0;
  const int64_t B = std::min(num_probes, h.budget / std::max<int64_t>(1, h.N * h.C * h.zt.element_size()));
  return B >= h.max_rows ? B : 0;
}

// By domain, chunks of B probes: m over the class tiles, then per tile S, O_e = S_eᵀ Z̃_e, fold.
// The E products are one batched GEMM unless they exceed the backend's K::kDomainFoldBytes or the
// chunk size (on the CPU a chunk of one probe at 5×32 rows, d = 512, C = 345 writes 3.5 MB of
// them); then a domain at a time, each folded while it is in cache.
template <class scalar_t, class K>
void fold_by_domain(const Head& h, const K& k, uint64_t seed, int64_t num_probes, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc = h.zt.options().dtype(h.acc_type);
  const int64_t chunk = choose_probe_chunk<K>(h, num_probes, 1, 1 + h.E);
  const int64_t per_domain_above = std::min(probe_chunk_bytes<K>(h), K::kDomainFoldBytes);
  using Accumulate = ProbeDiagAccumulateOp<scalar_t, acc_t, K::kStreamWidth>;
  const acc_t inv_k = acc_t(1) / acc_t(num_probes);
  for (int64_t k0 = 0; k0 < num_probes; k0 += chunk) {
    const int64_t B = std::min(chunk, num_probes - k0);
    at::Tensor m = at::zeros({2, h.N, B}, acc), V1, U1;  // HvpMeanOp's m, then mk
    acc_t* const mp = m.mutable_data_ptr<acc_t>();
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {  // m, mk over all classes
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor V = probe_block<scalar_t>(h, k, seed, k0, B, c0, T);
      at::Tensor U = probe_products(h, V);
      k.rows(h.N * B, HvpMeanOp<scalar_t, acc_t>{{}, {h.view<scalar_t, acc_t>(L, c0, T), B, 0, B},
                                                 U.const_data_ptr<scalar_t>(), mp, mp + h.N * B});
      if (T == h.C) V1 = V, U1 = U;
    }
    for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {  // S, O_e, fold into out
      const int64_t T = std::min(h.tile, h.C - c0);
      const at::Tensor L = h.logits(c0, T);
      at::Tensor V = V1.defined() ? V1 : probe_block<scalar_t>(h, k, seed, k0, B, c0, T);
      at::Tensor U = U1.defined() ? U1 : probe_products(h, V);
      k.rows(h.N * B, HvpSOp<scalar_t, acc_t>{{}, {h.view<scalar_t, acc_t>(L, c0, T), B, 0, B},
                                              h.c.const_data_ptr<acc_t>(), mp, mp + h.N * B,
                                              U.mutable_data_ptr<scalar_t>()});
      // fold Σ_b v_b ⊙ O_e / K of `domains` domains from e0 into out
      auto accumulate = [&](const at::Tensor& O, int64_t domains, int64_t e0) {
        k.elements(Accumulate::items(domains, T, h.D),
                   Accumulate{B, c0, T, h.D, h.C, V.stride(0), inv_k, V.const_data_ptr<scalar_t>(),
                              O.const_data_ptr<scalar_t>(),
                              out.mutable_data_ptr<scalar_t>() + e0 * h.C * h.D});
      };
      if (h.E * B * T * h.D * h.zt.element_size() <= per_domain_above) {  // all domains, one batched GEMM
        at::Tensor O = at::empty({h.E, B * T, h.D}, h.zt.options());
        seg_tn(h, U, h.zt, O);
        accumulate(O, h.E, 0);
      } else {  // a domain at a time, each folded while its O_e is in cache
        at::Tensor O = at::empty({B * T, h.D}, h.zt.options());
        for (int64_t e = 0; e < h.E; ++e) {
          if (h.rows(e) == 0) continue;
          domain_tn(h, e, U, h.zt, O);
          accumulate(O, 1, e);
        }
      }
    }
  }
}

// By class, chunks of B = class_fold_chunk probes: U (N, C, B) by blocks of classes, S in place,
// then per block R_c = S_c V_c (one batched GEMM) and the fold. A block's probes (T·B, D) and R
// (T, N, D) stay within the backend's chunk size; its probes are drawn again for the second GEMM.
template <class scalar_t, class K>
void fold_by_class(const Head& h, const K& k, uint64_t seed, int64_t num_probes, int64_t chunk, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t block_bytes = (chunk + h.N) * h.D * h.zt.element_size();
  const int64_t Tb = std::max<int64_t>(1, std::min(h.C, probe_chunk_bytes<K>(h) / block_bytes));
  const auto lt = h.view<scalar_t, acc_t>(h.logits(0, h.C), 0, h.C);
  const at::Tensor Zw = h.wide(h.zt);
  for (int64_t k0 = 0; k0 < num_probes; k0 += chunk) {
    const int64_t B = std::min(chunk, num_probes - k0);
    auto probes = [&](int64_t c0, int64_t T) {  // (T·B, D) class-major, as a GEMM operand
      return h.wide(probe_block<scalar_t>(h, k, seed, k0, B, c0, T, /*class_major=*/true));
    };
    at::Tensor U = at::empty({h.N, h.C, B}, h.zt.options());
    for (int64_t c0 = 0; c0 < h.C; c0 += Tb) {
      const int64_t T = std::min(Tb, h.C - c0);
      at::Tensor Ut = U.narrow(1, c0, T).view({h.N, T * B});
      gemm_out(Ut, Zw, probes(c0, T).t());
    }
    using SOp = ClassMajorSOp<scalar_t, acc_t, K::kStreamWidth>;
    k.elements(SOp::items(h.N, B), SOp{lt, h.c.const_data_ptr<acc_t>(), h.C, B, U.mutable_data_ptr<scalar_t>()});
    for (int64_t c0 = 0; c0 < h.C; c0 += Tb) {
      const int64_t T = std::min(Tb, h.C - c0);
      const at::Tensor V = probes(c0, T);
      const at::Tensor R = gemm(U.narrow(1, c0, T).permute({1, 0, 2}), V.view({T, B, V.size(1)}));
      using Fold = ProbeClassFoldOp<scalar_t, acc_t, K::kStreamWidth>;
      k.elements(Fold::items(h.E, T, h.D),
                 Fold{h.domains, c0, T, h.N, h.D, h.C, Zw.stride(0), R.stride(1), acc_t(1) / acc_t(num_probes),
                      Zw.const_data_ptr<scalar_t>(), R.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>()});
    }
  }
}

template <class K>
at::Tensor hutchinson_diag_forward(HE_HEAD_PARAMS, const at::Tensor& offsets, int64_t num_probes, int64_t seed,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("hutchinson_diag", features, weight, bias, offsets, ce, false, class_tile, 2);
  check_num_probes(h.op, num_probes);
  prepare(h, k, ce);
  at::Tensor out = at::zeros({h.E, h.C, h.D}, h.zt.options());
  if (h.N == 0) return out;
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    if (const int64_t chunk = class_fold_chunk(h, num_probes))
      fold_by_class<scalar_t>(h, k, uint64_t(seed), num_probes, chunk, out);
    else
      fold_by_domain<scalar_t>(h, k, uint64_t(seed), num_probes, out);
  });
  return out;
}

template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> hutchinson_diag_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, const at::Tensor& offsets, int64_t num_probes, int64_t seed,
    const std::optional<at::Tensor>& labels, HE_CE_PARAMS) {
  HE_ENTRY(K, labels);
  Head h = make_head<K>("hutchinson_diag_backward", features, weight, bias, offsets, ce, false, class_tile, 3);
  check_num_probes(h.op, num_probes);
  check_param_block(h.op, "grad", grad, features, h.E, h.C, h.D, false);
  prepare(h, k, ce);
  HeadGrads g(h);
  if (h.N == 0) return g.finish(h);
  const at::Tensor G = grad.contiguous();
  const auto acc = h.zt.options().dtype(h.acc_type);
  HE_DISPATCH(K, h.zt.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t chunk = choose_probe_chunk<K>(h, num_probes, 2, 1 + h.E);
    // With one tile, dl = p ⊙ centered(DP) sums over all chunks (DP and its Centered sums rho
    // are sums over probes) before its two GEMMs, not two GEMMs per chunk.
    const bool one_tile = h.tile == h.C;
    const at::Tensor DP1 = one_tile ? at::zeros({h.N, h.C}, acc) : at::Tensor();
    const at::Tensor rho1 = one_tile ? at::zeros({2, h.N}, acc) : at::Tensor();
    auto add_logits_grad = [&](const LogitsTile<scalar_t, acc_t>& lt, const at::Tensor& DP, const at::Tensor& rho) {
      at::Tensor dl = at::empty({h.N, lt.T}, h.zt.options());
      const acc_t* r = rho.const_data_ptr<acc_t>();
      k.rows(h.N, SoftmaxBackwardOp<scalar_t, acc_t>{{}, lt, DP.const_data_ptr<acc_t>(), r, r + h.N,
                                                     dl.mutable_data_ptr<scalar_t>()});
      g.add_logits_grad(h, dl, lt.c0, lt.T);
    };
    // The chunk's tile: probes V (B·T, D), U = Z̃ Vᵀ, upstream Ō (E, B·T, D), dS_e = Z̃_e Ō_eᵀ.
    auto tile_inputs = [&](int64_t k0, int64_t B, int64_t c0, int64_t T) -> std::array<at::Tensor, 4> {
      at::Tensor V = probe_block<scalar_t>(h, k, uint64_t(seed), k0, B, c0, T);
      at::Tensor Obar = h.rows_buffer({h.E, B * T, h.D}, h.zt.options());
      using Upstream = ProbeUpstreamOp<scalar_t, acc_t, K::kStreamWidth>;
      k.elements(Upstream::items(h.E, B, T, h.D),
                 Upstream{B, c0, T, h.D, h.C, V.stride(0), Obar.stride(1), acc_t(1) / acc_t(num_probes),
                          V.const_data_ptr<scalar_t>(), G.const_data_ptr<scalar_t>(),
                          Obar.mutable_data_ptr<scalar_t>()});
      return {V, Obar, probe_products(h, V), seg_nt(h, h.zt, Obar)};
    };
    for (int64_t k0 = 0; k0 < num_probes; k0 += chunk) {
      const int64_t B = std::min(chunk, num_probes - k0);
      // per row and probe (math/head_hvp.h): m, mk, t, tk, w
      at::Tensor sums = at::zeros({5, h.N, B}, acc);
      acc_t* const s = sums.mutable_data_ptr<acc_t>();
      const int64_t NB = h.N * B;
      const HvpBackwardSums<acc_t> rs{s, s + NB, s + 2 * NB, s + 3 * NB, s + 4 * NB};
      std::array<at::Tensor, 4> cached;
      for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {  // pass 2: the sums
        const int64_t T = std::min(h.tile, h.C - c0);
        const at::Tensor L = h.logits(c0, T);
        std::array<at::Tensor, 4> in = tile_inputs(k0, B, c0, T);
        const HvpChunk<scalar_t, acc_t> ch{h.view<scalar_t, acc_t>(L, c0, T), B, 0, B};
        k.rows(NB, HvpMeanOp<scalar_t, acc_t>{{}, ch, in[2].const_data_ptr<scalar_t>(), s, s + NB});
        k.rows(NB, HvpBackwardSumsOp<scalar_t, acc_t>{{}, ch, in[2].const_data_ptr<scalar_t>(),
                                                      in[3].const_data_ptr<scalar_t>(), s + 2 * NB, s + 3 * NB,
                                                      s + 4 * NB});
        if (T == h.C) cached = in;
      }
      const at::Tensor rho = one_tile ? rho1 : at::zeros({2, h.N}, acc);  // dP's Centered sums
      acc_t* const r = rho.mutable_data_ptr<acc_t>();
      k.elements(h.N, HvpSoftmaxSumsOp<acc_t>{B, h.pbar.const_data_ptr<acc_t>(), h.c.const_data_ptr<acc_t>(), rs, r,
                                              r + h.N});
      for (int64_t c0 = 0; c0 < h.C; c0 += h.tile) {  // pass 3: S, dU, dP, dl
        const int64_t T = std::min(h.tile, h.C - c0);
        const at::Tensor L = h.logits(c0, T);
        std::array<at::Tensor, 4> in = cached[0].defined() ? cached : tile_inputs(k0, B, c0, T);
        const auto lt = h.view<scalar_t, acc_t>(L, c0, T);
        const at::Tensor DP = one_tile ? DP1 : at::zeros({h.N, T}, acc);
        k.rows(h.N, HvpBackwardMapOp<scalar_t, acc_t>{{}, {lt, B, 0, B}, h.c.const_data_ptr<acc_t>(), rs,
                                                      in[2].mutable_data_ptr<scalar_t>(),
                                                      in[3].mutable_data_ptr<scalar_t>(),
                                                      DP.mutable_data_ptr<acc_t>()});
        seg_nn_add(h, in[2], in[1], g.dzt);  // S Ō
        gemm_add(h.wide(g.dzt), in[3], h.wide(in[0]));  // dU V
        if (!one_tile) add_logits_grad(lt, DP, rho);
      }
    }
    if (one_tile) add_logits_grad(h.view<scalar_t, acc_t>(h.logits(0, h.C), 0, h.C), DP1, rho1);
  });
  return g.finish(h);
}

}  // namespace hessalign
