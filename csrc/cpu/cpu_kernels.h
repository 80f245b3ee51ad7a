// The CPU backend of the host drivers (host/*.h): runs the row functors of math/ one row at
// a time inside at::parallel_for, the same functors the CUDA kernels run a warp per row.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

#include <vector>

#include "../math/cross_entropy.h"
#include "../math/domains.h"
#include "../math/head_grad.h"
#include "../math/logits_hvp.h"
#include "../math/softmax.h"

namespace hessalign {

struct CpuKernels {
  static constexpr bool kReducedPrecision = false;  // float and double only on the CPU
  // The softmax probabilities of a one-tile head are computed once, vectorized, and read by
  // every later pass (a scalar exp per element and pass otherwise).
  static constexpr bool kCacheProbs = true;
  static constexpr int kStreamWidth = 64;  // columns per item of the streaming ops: SIMD-friendly loops
  static constexpr bool kFusedDomainStats = false;  // no launches to save: prepare() runs the separate passes
  // Hutchinson probe chunks of at most 8 MiB of buffers: a chunk's products stay in cache between
  // the GEMM that writes them and the pass that reads them. Measured 2026-11-26 (one thread, K = 30):
  // 2.0-2.2x faster than chunks filling the 256 MiB budget at C = 345 (d = 512, 2048) and at
  // C = 65, d = 2048; 1.07x at C = 65, d = 512; the same at C = 7.
  static constexpr int64_t kProbeChunkBytes = int64_t(8) << 20;
  // hutchinson_diag folds a domain at a time once a chunk's E per-domain products exceed this (the
  // per-core L2 of the CPU it was measured on). Measured 2026-11-26 (one thread, K = 1 and 10, the
  // by-domain fold): 1.03-1.34x faster than one batched GEMM at products of 2-14 MB; the same
  // (0.99-1.01x) at 0.4-0.7 MB.
  static constexpr int64_t kDomainFoldBytes = int64_t(1) << 20;
  static int guard(const at::Tensor&) { return 0; }
  static CpuKernels current() { return {}; }
  static int64_t default_tile_bytes(const at::Tensor&) { return int64_t(256) << 20; }

  // Row functor over `rows` rows: sums over columns, then map, then finish (math/tile.h).
  template <class Op>
  void rows(index_t rows, const Op& op) const {
    using acc_t = typename Op::acc_type;
    const index_t cols = op.cols();
    at::parallel_for(0, rows, std::max<index_t>(1, 4096 / std::max<index_t>(cols, 1)), [&](index_t b, index_t e) {
      for (index_t r = b; r < e; ++r) {
        acc_t s[Op::kSums > 0 ? Op::kSums : 1] = {};
        if constexpr (Op::kSums > 0) gather_sums(op, r, cols, s);
        for (index_t c = 0; c < cols; ++c) op.map(r, c, s);
        op.finish(r, s);
      }
    });
  }

  // The residuals r_ic = s_i (c_i p_ic − t_ic) of math/head_grad.h's ResidualOp, vectorized over a
  // row's classes: t_ic = b_i w_c off the label, and the label's own element by the functor itself.
  // In the scalar loop the per-element label test and nullable class weights kept the compiler from
  // vectorizing: the pass took 28% of head_grad's R_eᵀ Z̃_e products at 3x32, d = 512, C = 345 (perf).
  template <class scalar_t, class acc_t>
  void rows(index_t rows, const ResidualOp<scalar_t, acc_t>& op) const {
    static_assert(std::is_same_v<scalar_t, acc_t>, "the CPU kernels accumulate in their own dtype");
    using Vec = at::vec::Vectorized<acc_t>;
    const auto& lt = op.lt;
    const auto& ce = op.ce;
    const index_t T = lt.T;
    at::parallel_for(0, rows, std::max<index_t>(1, 4096 / std::max<index_t>(T, 1)), [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) {
        const Vec c(ce.c[i]), bi(ce.labels ? ce.b[i] : acc_t(0)), s(op.scale ? op.scale[i] : acc_t(1)), lse(lt.lse[i]);
        const acc_t* P = lt.P ? lt.P.p + i * T : nullptr;
        const scalar_t* L = lt.L.p + i * T;
        const acc_t* w = ce.class_weight ? ce.class_weight.p + lt.c0 : nullptr;
        scalar_t* out = op.out + i * T;
        for (index_t j = 0; j < T; j += Vec::size()) {
          const int n = int(std::min<index_t>(Vec::size(), T - j));
          const Vec p = P ? Vec::loadu(P + j, n) : (Vec::loadu(L + j, n) - lse).exp();
          const Vec t = w ? bi * Vec::loadu(w + j, n) : bi;
          ((c * p - t) * s).store(out + j, n);
        }
        if (ce.labels) {
          const index_t y = index_t(ce.labels[i]) - lt.c0;
          if (y >= 0 && y < T) op.map(i, y, nullptr);
        }
      }
    });
  }

  // logits_hvp's products (math/logits_hvp.h), vectorized over a row's classes: the tests for
  // the dominant class in their Centered sums and values kept the scalar loops from vectorizing.
  // At 8192 rows, C = 65, B = 2 (one thread, Zen 4): those took 1.4-1.9x the uncentered form's
  // time, these 0.5-1.0x.
  template <class scalar_t, class acc_t>
  void rows(index_t rows, const LogitsHvpOp<scalar_t, acc_t>& op) const {
    centered_products<acc_t>(rows, op.B, op.C, op.P.p, op.coef.p, op.U.p, op.pbar.p, nullptr, op.S, op.M);
  }

  template <class scalar_t, class acc_t>
  void rows(index_t rows, const LogitsHvpBackwardUOp<scalar_t, acc_t>& op) const {
    centered_products<acc_t>(rows, op.B, op.C, op.P.p, op.coef.p, op.dS.p, nullptr, op.dM.p, op.dU, op.Nds);
  }

  // Virtual rows r = i·B + b of out = c_i p_i ⊙ Centered(x_r) + dm_r p_i and mean_r = p_i · x_r,
  // with p̄ from pbar or 1 − p_k (LogitsHvpOp, LogitsHvpBackwardUOp; X or dM may be null: zero).
  template <class acc_t>
  static void centered_products(index_t rows, index_t B, index_t C, const acc_t* P, const acc_t* coef,
                                const acc_t* X, const acc_t* pbar, const acc_t* dM, acc_t* out, acc_t* mean) {
    using Vec = at::vec::Vectorized<acc_t>;
    constexpr int kWidth = Vec::size();
    const Vec dominant_prob{acc_t(kDominantProb)}, zero{acc_t(0)};
    at::parallel_for(0, rows, std::max<index_t>(1, 4096 / std::max<index_t>(C, 1)), [&](index_t b, index_t e) {
      for (index_t r = b; r < e; ++r) {
        const index_t i = r / B;
        const acc_t* p_row = P + i * C;
        const acc_t* x_row = X ? X + r * C : nullptr;
        acc_t rest = 0, xk = 0, pk = 0;
        if (x_row) {
          Vec rest_v(0), xk_v(0), pk_v(0);
          for (index_t j = 0; j < C; j += kWidth) {
            const int n = int(std::min<index_t>(kWidth, C - j));
            const Vec p = Vec::loadu(p_row + j, n), x = Vec::loadu(x_row + j, n);
            const Vec dominant = p > dominant_prob;
            rest_v += Vec::blendv(p * x, zero, dominant);
            xk_v += Vec::blendv(zero, x, dominant);
            pk_v += Vec::blendv(zero, p, dominant);
          }
          rest = lane_sum(rest_v), xk = lane_sum(xk_v), pk = lane_sum(pk_v);
        }
        const acc_t complement = pbar ? pbar[i] : acc_t(1) - pk;
        const acc_t m = Centered<acc_t>::mean(complement, rest, xk);
        mean[r] = m;
        const Vec c(x_row ? coef[i] : acc_t(0)), dm(dM ? dM[r] : acc_t(0));
        // Centered::value: p̄ x_k − rest for the dominant class, x − (1 − p̄) x_k − rest otherwise
        const Vec dominant_value(complement * xk - rest), base((acc_t(1) - complement) * xk + rest);
        acc_t* out_row = out + r * C;
        for (index_t j = 0; j < C; j += kWidth) {
          const int n = int(std::min<index_t>(kWidth, C - j));
          const Vec p = Vec::loadu(p_row + j, n), x = x_row ? Vec::loadu(x_row + j, n) : zero;
          const Vec centered = Vec::blendv(x - base, dominant_value, p > dominant_prob);
          (p * (c * centered + dm)).store(out_row + j, n);
        }
      }
    });
  }

  template <class Vec>
  static typename Vec::value_type lane_sum(const Vec& v) {
    typename Vec::value_type lanes[Vec::size()], sum = 0;
    v.store(lanes);
    for (auto lane : lanes) sum += lane;
    return sum;
  }

  // A row's sums over its columns in kLanes independent accumulators, added at the end: one
  // accumulator waits on each add's latency (11% of hutchinson_diag at C = 345 went to one such
  // dot product); the sums are additive (the CUDA driver combines them across a warp the same way).
  template <class Op, class acc_t>
  static void gather_sums(const Op& op, index_t r, index_t cols, acc_t* s) {
    constexpr int kLanes = 8;
    acc_t lane[kLanes][Op::kSums] = {};
    index_t c = 0;
    for (; c + kLanes <= cols; c += kLanes)
      for (int l = 0; l < kLanes; ++l) op.partial(r, c + l, lane[l]);
    for (; c < cols; ++c) op.partial(r, c, lane[0]);
    for (int l = 0; l < kLanes; ++l)
      for (int k = 0; k < Op::kSums; ++k) s[k] += lane[l][k];
  }

  template <class Op>
  void elements(index_t n, const Op& op) const {
    at::parallel_for(0, n, 4096, [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) op(i);
    });
  }

  // out_i = Σ_j Z_ij² + ones for every row, vectorized (math/tile.h's RowSqNormOp in a scalar loop
  // would wait on the previous add at every element: 3x slower than torch at d = 2048).
  template <class scalar_t, class acc_t>
  void row_sq_norms(const scalar_t* Z, index_t N, index_t d, acc_t ones, acc_t* out) const {
    static_assert(std::is_same_v<scalar_t, acc_t>, "the CPU kernels accumulate in their own dtype");
    using Vec = at::vec::Vectorized<acc_t>;
    at::parallel_for(0, N, std::max<index_t>(1, 16384 / std::max<index_t>(d, 1)), [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i)
        out[i] = at::vec::map_reduce_all<acc_t>([](Vec x) { return x * x; }, [](Vec x, Vec y) { return x + y; },
                                                Z + i * d, d) + ones;
    });
  }

  // Merges each row of an N×T logits tile into the running (M, S) pairs (math/softmax.h): the
  // row's max, then its off-max mass, Σ exp(l - max) over the logits below the max plus one per
  // tie beyond the first, each a vectorized pass (ATen's Vectorized: AVX2 + Sleef's exp when built
  // for x86-64-v3), where the streaming form of softmax.h branches per element. The mass's two sums
  // in one pass: as two map_reduce_all passes, domain_losses took 66 µs against 60 before the
  // off-max mass at 3×32, d = 2048, C = 7 (one thread, alternating processes); in one, 59.
  template <class scalar_t, class acc_t>
  void softmax_stats(const scalar_t* L, index_t N, index_t T, acc_t* M, acc_t* S, bool first, acc_t* lse,
                     acc_t* pbar) const {
    static_assert(std::is_same_v<scalar_t, acc_t>, "the CPU kernels accumulate in their own dtype");
    using Vec = at::vec::Vectorized<acc_t>;
    const auto add = [](Vec x, Vec y) { return x + y; };
    at::parallel_for(0, N, std::max<index_t>(1, 16384 / std::max<index_t>(T, 1)), [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i) {
        const acc_t* row = L + i * T;
        const acc_t m = at::vec::reduce_all<acc_t>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, row, T);
        // An all -inf row is an empty pair (softmax_merge's identity); a NaN max gives NaN sums.
        acc_t s = 0;
        if (m != -INFINITY) {
          // one pass: Σ exp(l - m) below the max, and the logits at it
          const Vec vm(m);
          Vec below(0), at_max(0);
          index_t j = 0;
          for (; j + Vec::size() <= T; j += Vec::size()) {
            const Vec x = Vec::loadu(row + j);
            below += Vec::blendv((x - vm).exp(), Vec(0), x == vm);
            at_max += x.eq(vm);
          }
          if (j < T) {  // the tail's unloaded lanes keep the sums as they were
            const int n = int(T - j);
            const Vec x = Vec::loadu(row + j, n);
            below = Vec::set(below, below + Vec::blendv((x - vm).exp(), Vec(0), x == vm), n);
            at_max = Vec::set(at_max, at_max + x.eq(vm), n);
          }
          // the ties beyond the first (0 but for ties) added as a whole: 1 + s would round s away
          s = at::vec::vec_reduce_all<acc_t>(add, below) + (at::vec::vec_reduce_all<acc_t>(add, at_max) - acc_t(1));
        }
        const SoftmaxPair<acc_t> p{m, s};
        softmax_store(first ? p : softmax_merge(SoftmaxPair<acc_t>{M[i], S[i]}, p), i, M, S, lse, pbar);
      }
    });
  }

  // out[e] = Σ_{i in domain e} vals[i]
  template <class acc_t>
  void segment_sum(const acc_t* vals, const DomainOffsets& off, acc_t* out) const {
    for (index_t e = 0; e < off.E; ++e) {
      acc_t s = 0;
      for (index_t i = off(e); i < off(e + 1); ++i) s += vals[i];
      out[e] = s;
    }
  }

  // (c, a, b) of every row: the domain's denominator, then each row (math/cross_entropy.h).
  template <class acc_t>
  void ce_coeffs(const CeParams<acc_t>& p, const DomainOffsets& off, acc_t* c, acc_t* a, acc_t* b) const {
    for (index_t e = 0; e < off.E; ++e) {
      acc_t denom = 1;
      if (!p.sum) {
        denom = 0;
        for (index_t i = off(e); i < off(e + 1); ++i) denom += ce_denominator_term(p, i);
      }
      for (index_t i = off(e); i < off(e + 1); ++i) ce_row_coeffs(p, i, denom, c, a, b);
    }
  }

};

}  // namespace hessalign
