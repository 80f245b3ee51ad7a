// hgp_fused: the HGP penalty step (DESIGN.md §2) in parameter space, forward and hand-written
// backward, each one op. At DomainBed heads a GPU step is bound by the host, not the device
// (benchmarks/results/2026-11-26_h100/profile.md: 213 µs of kernels in a 3.7 ms step); the
// same ATen calls issued here rather than from Python cost a fraction of the host time.
//
// With z̃_i = [z_i | 1], H_i = c_i (diag p_i − p_i p_iᵀ) and r_i = c_i p_i − t_i (loss_rows.h):
//
// forward (5 passes over the features)
//   logits Θ z̃_i; g_e = Σ_{i∈e} r_i z̃_iᵀ; ū_i = ḡ z̃_i and δu_i = (g_e − ḡ) z̃_i;
//   H_e ḡ and H_e (g_e − ḡ) in one 2C-wide pass, from H_i ū_i and H_i δu_i (logits_hvp);
//   P = (1/E) Σ_e α ‖H_e g_e − T‖² + β ‖g_e − ḡ‖², T = mean_e H_e ḡ (mean_loss) or
//   mean_e H_e g_e, both targets detached.
//
// backward (5 passes), with A_e = ∂P/∂(H_e g_e) and a_i = A_e z̃_i
//   ⟨A_e, H_e g_e⟩ = Σ_{i∈e} a_iᵀ H_i u_i (u_i = ū_i + δu_i), so ∂/∂g_e = Σ_{i∈e} (H_i a_i) z̃_iᵀ,
//   ∂/∂z̃_i = A_eᵀ s_i + g_eᵀ H_i a_i (s_i = H_i u_i) and ∂/∂p_i = c_i (a_i⊙u_i − a_i (p_i·u_i) −
//   u_i (p_i·a_i)); with G_e the whole gradient of g_e, q_i = G_e z̃_i gives ∂/∂p_i += c_i q_i
//   and ∂/∂z̃_i += G_eᵀ r_i; the logits' gradient dl then gives ∂Θ (one pass) and
//   ∂z̃_i += Θᵀ dl_i, all four feature terms in one 4C-wide pass.
//
// Everything runs in the features' dtype, yet near-aligned domains keep their accuracy:
// H_e g_e − T is formed as H_e (g_e − ḡ) plus the centred H_e ḡ, never as the difference of
// two separately rounded blocks, so the head's gradient, a sum over domains that nearly
// cancels there, stays within 1e-3 of float64 (tests/test_penalties.py,
// test_hgp_exact_when_domains_align). Confident rows keep theirs too: r_i and every H_i product
// take the dominant class's 1 − p_k as p̄_i = Σ' p (math/hgp_fused.h), never from p_k, which has
// rounded it away (tests/test_confident_rows.py, test_hgp_step_at_confident_rows).
#pragma once
#include "../math/hgp_fused.h"
#include "logits_hvp.h"
#include "loss_rows.h"

namespace hessalign {

// Products of per-domain (k, D) blocks with the rows of their domain: one batched GEMM when
// the domains hold equal rows, one GEMM per domain otherwise. Unlike head_gemms.h's seg_*, whose
// operands carry the ones column of z̃_i (Head::augment: an N×D copy of the features), a block's
// bias column here multiplies an implicit 1 (baddbmm, a column sum), and the GEMMs are ATen's,
// never oneDNN's: the near-aligned domains test (test_hgp_exact_when_domains_align) has not been
// run with oneDNN. The exception is apply's products with few rows per block, on the few-classes
// kernel where auto mode measured it faster (host/gemm.h), which that test covers (float32,
// C = 7 and 10).
struct DomainRows {
  at::Tensor X;  // (N, d), contiguous
  std::vector<int64_t> off;
  int64_t E, N, d, n;  // n: equal_domain_rows
  bool bias;

  DomainRows(at::Tensor features, std::vector<int64_t> offsets, bool has_bias)
      : X(std::move(features)), off(std::move(offsets)), bias(has_bias) {
    E = int64_t(off.size()) - 1;
    N = X.size(0);
    d = X.size(1);
    n = equal_domain_rows(off);
  }

  at::Tensor rows(const at::Tensor& t, int64_t e) const { return t.narrow(0, off[e], off[e + 1] - off[e]); }

  // (E, k, D) blocks -> (N, k) rows M_{e(i)} z̃_i. With few rows k per block, on the CPU's
  // few-classes kernel where it was measured faster (host/gemm.h): BLAS is slow there.
  at::Tensor apply(const at::Tensor& M) const {
    const int64_t k = M.size(1);
    at::Tensor out = at::empty({N, k}, X.options());
    if (n) {
      const at::Tensor Mb = bias ? M.select(2, d) : at::Tensor();
      product(out.view({E, n, k}), X.view({E, n, d}), M.narrow(2, 0, d).transpose(1, 2), bias ? &Mb : nullptr);
      return out;
    }
    for (int64_t e = 0; e < E; ++e) {
      const at::Tensor Me = M.select(0, e);
      const at::Tensor Mbe = bias ? Me.select(1, d) : at::Tensor();
      product(rows(out, e), rows(X, e), Me.narrow(1, 0, d).t(), bias ? &Mbe : nullptr);
    }
    return out;
  }

  // out = a @ b + bias on ATen or the few-classes kernel, never oneDNN (see above)
  static void product(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor* bias) {
    run_gemm(gemm_way(out, a, b, bias, false, /*with_onednn=*/false), out, a, b, bias, false);
  }

  // (N, k) rows -> (E, k, D) blocks Σ_{i∈e} r_i z̃_iᵀ, the bias column written in place
  at::Tensor outer(const at::Tensor& R) const {
    const int64_t k = R.size(1);
    at::Tensor out = at::empty({E, k, d + bias}, X.options());
    if (n) {
      const at::Tensor Rt = R.view({E, n, k}).transpose(1, 2);
      at::Tensor ow = out.narrow(2, 0, d);
      at::bmm_out(ow, Rt, X.view({E, n, d}));
      if (bias) {
        at::Tensor ob = out.select(2, d);
        at::sum_out(ob, Rt, 2);
      }
      return out;
    }
    for (int64_t e = 0; e < E; ++e) {
      at::Tensor oe = out.select(0, e), ow = oe.narrow(1, 0, d);
      at::mm_out(ow, rows(R, e).t(), rows(X, e));
      if (bias) {
        at::Tensor ob = oe.select(1, d);
        at::sum_out(ob, rows(R, e), 0);
      }
    }
    return out;
  }

  // (N, k_j) rows and (E, k_j, d) blocks -> (N, d) rows Σ_j M_{j,e(i)}ᵀ l_{j,i}: one GEMM over
  // the concatenated blocks where copying them costs less than a pass over the (N, d) output
  // per extra term, else one GEMM per term accumulating into the output.
  at::Tensor weighted_sum(std::vector<at::Tensor> L, std::vector<at::Tensor> M) const {
    int64_t width = 0;
    for (const auto& m : M) width += m.size(1);
    if (width * E <= int64_t(M.size() - 1) * N) L = {at::cat(L, 1)}, M = {at::cat(M, 1)};
    at::Tensor out = at::empty({N, d}, X.options());
    if (n) {
      at::Tensor out3 = out.view({E, n, d});
      at::bmm_out(out3, L[0].view({E, n, -1}), M[0]);
      for (size_t j = 1; j < L.size(); ++j) out3.baddbmm_(L[j].view({E, n, -1}), M[j]);
      return out;
    }
    for (int64_t e = 0; e < E; ++e) {
      at::Tensor oe = rows(out, e);
      at::mm_out(oe, rows(L[0], e), M[0].select(0, e));
      for (size_t j = 1; j < L.size(); ++j) oe.addmm_(rows(L[j], e), M[j].select(0, e));
    }
    return out;
  }
};

// x_e − mean_e x, the mean attached and subtracted twice, so that the deviations sum over e to
// their own rounding (penalties/common.py, centred). `mean`: x.mean(0) when the caller has it.
inline at::Tensor centred(const at::Tensor& x, const std::optional<at::Tensor>& mean = std::nullopt) {
  at::Tensor dev = x - (mean ? *mean : x.mean(0));
  return dev.sub_(dev.mean(0));
}

inline at::Tensor squared_norms(const at::Tensor& blocks) {
  return at::linalg_vector_norm(blocks, 2, at::IntArrayRef{1, 2}).square();
}

// The tensors the backward reads, in the order of the `saved` list.
enum HgpSaved { kCoef, kProbs, kResidual, kU, kS, kPu, kPbar, kGrads, kHessDiff, kGradDiff, kNumSaved };

// (penalty, per-domain Hessian terms (E,), per-domain gradient terms (E,), saved) in the
// features' dtype (loss coefficients in float32 for float16/bfloat16).
template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> hgp_fused_forward(
    HE_HEAD_PARAMS, const at::Tensor& labels, at::IntArrayRef offsets, double alpha, double beta, bool mean_loss,
    int64_t ignore_index, const std::optional<at::Tensor>& class_weight, double label_smoothing,
    c10::string_view reduction) {
  const char* op = "hgp";
  check_head(op, features, weight, bias, K::kReducedPrecision);
  check_offset_values(op, offsets, features.size(0));
  [[maybe_unused]] auto he_guard = K::guard(features);
  const K k = K::current();
  const CeOptions ce = make_ce(labels, ignore_index, class_weight, label_smoothing, reduction);
  const int64_t C = weight.size(0);
  LabelCheck label_check = check_ce(op, features, C, ce, /*labels_required=*/true);
  const auto dt = features.scalar_type();
  const DomainRows rows(features.contiguous(), offsets.vec(), bias.has_value());
  const int64_t E = rows.E, d = rows.d;

  // The probabilities are queued before the labels are read: they overlap the labels' read-back.
  const at::Tensor p = at::softmax(at::linear(rows.X, weight, bias), 1);
  label_check.finish();
  const LossCoeffs coeffs = loss_coeffs_of(k, ce, rows.off, C, at::toOpMathType(dt));
  const at::Tensor c = coeffs.c.to(dt);
  // r_i and p̄_i (math/hgp_fused.h): exact at confident rows, as H_i u_i is with p̄ (logits_hvp)
  const int64_t N = rows.N;
  at::Tensor R = at::empty({N, C}, p.options()), pbar = at::empty({N}, p.options());
  HE_DISPATCH(K, dt, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (N == 0) return;
    k.rows(N, ProbResidualOp<scalar_t, acc_t>{{}, p.const_data_ptr<scalar_t>(), coeffs.rows<acc_t>(ce, C), C,
                                               R.mutable_data_ptr<scalar_t>(), pbar.mutable_data_ptr<scalar_t>()});
  });
  const at::Tensor g = rows.outer(R);  // g_e
  const at::Tensor g_bar = g.mean(0);
  const at::Tensor g_diff = centred(g, g_bar);  // g_e − ḡ
  // u_i = ū_i + (g_e − ḡ) z̃_i: one rounding of ū_i shared by H_e g_e and the target, whose
  // difference is then formed from small terms
  const std::optional<at::Tensor> g_bar_b = bias ? std::optional<at::Tensor>(g_bar.select(1, d)) : std::nullopt;
  const at::Tensor U_bar = at::linear(rows.X, g_bar.narrow(1, 0, d), g_bar_b);
  const at::Tensor U_diff = rows.apply(g_diff);
  const auto [S_pair, m_pair] = logits_hvp_of(k, p, c, at::cat({U_bar, U_diff}, 1), pbar);
  const at::Tensor U = U_bar + U_diff;
  const at::Tensor S = S_pair.narrow(1, 0, C) + S_pair.narrow(1, C, C);
  const at::Tensor pu = m_pair.sum(1, /*keepdim=*/true);  // p_i · u_i
  const at::Tensor h_pair = rows.outer(S_pair);             // [H_e ḡ | H_e (g_e − ḡ)]
  const at::Tensor h_bar = h_pair.narrow(1, 0, C), h_gap = h_pair.narrow(1, C, C);
  // H_e g_e − T
  const at::Tensor h_diff = centred(h_bar).add_(mean_loss ? h_gap : centred(h_gap));
  const at::Tensor hess_terms = squared_norms(h_diff), grad_terms = squared_norms(g_diff);
  const at::Tensor penalty = (hess_terms * (alpha / E)).add_(grad_terms, beta / E).sum();
  std::vector<at::Tensor> saved(kNumSaved);
  saved[kCoef] = c, saved[kProbs] = p, saved[kResidual] = R, saved[kU] = U, saved[kS] = S, saved[kPu] = pu;
  saved[kPbar] = pbar, saved[kGrads] = g, saved[kHessDiff] = h_diff, saved[kGradDiff] = g_diff;
  return {penalty, hess_terms, grad_terms, saved};
}

// (d features, d weight, d bias) from the penalty's upstream gradient (a scalar tensor); an
// output whose output_mask entry is false (and d bias without a bias) is an empty tensor.
template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> hgp_fused_backward(
    const at::Tensor& grad, HE_HEAD_PARAMS, at::IntArrayRef offsets, double alpha, double beta,
    at::TensorList saved, std::array<bool, 3> output_mask) {
  const char* op = "hgp_backward";
  check_head(op, features, weight, bias, K::kReducedPrecision);
  check_offset_values(op, offsets, features.size(0));
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == features.device(), op,
                    ": grad must be a scalar on the device of features (", features.device(), "); got shape ",
                    shape_str(grad), " on ", grad.device());
  TORCH_CHECK_VALUE(saved.size() == kNumSaved, op, ": saved must hold the ", int(kNumSaved),
                    " tensors hgp_fused returned; got ", saved.size());
  const int64_t N = features.size(0), E = int64_t(offsets.size()) - 1, C = weight.size(0), d = features.size(1);
  const int64_t D = d + bias.has_value();
  // the row kernels read these unchecked: each must have the shape the forward gave it (no
  // allocation per step: the names are literals, the shapes brace lists)
  static constexpr const char* kName[kNumSaved] = {"saved[0]", "saved[1]", "saved[2]", "saved[3]", "saved[4]",
                                                   "saved[5]", "saved[6]", "saved[7]", "saved[8]", "saved[9]"};
  for (int i : {kCoef, kPbar}) check_shaped_like(op, kName[i], saved[i], {N}, features);
  for (int i : {kProbs, kResidual, kU, kS}) check_shaped_like(op, kName[i], saved[i], {N, C}, features);
  check_shaped_like(op, kName[kPu], saved[kPu], {N, 1}, features);
  for (int i : {kGrads, kHessDiff, kGradDiff}) check_shaped_like(op, kName[i], saved[i], {E, C, D}, features);
  [[maybe_unused]] auto he_guard = K::guard(features);
  const K k = K::current();
  const DomainRows rows(features.contiguous(), offsets.vec(), bias.has_value());
  const at::Tensor c = saved[kCoef].contiguous(), p = saved[kProbs].contiguous(), pbar = saved[kPbar].contiguous();
  const at::Tensor &U = saved[kU], &g = saved[kGrads];
  const at::Tensor scale = grad.reshape({}).to(features.scalar_type());

  const at::Tensor A = saved[kHessDiff] * (scale * (2.0 * alpha / E));  // ∂P/∂(H_e g_e)
  const at::Tensor a = rows.apply(A);
  const auto [h, pa] = logits_hvp_of(k, p, c, a, pbar);  // H_i a_i, p_i · a_i
  const at::Tensor G = rows.outer(h).addcmul_(saved[kGradDiff], scale * (2.0 * beta / E));  // ∂P/∂g_e
  // ∂P/∂p_i = c_i (a_i ⊙ (u_i − p_i·u_i) − u_i (p_i·a_i) + q_i), and the softmax's Jacobian
  // times c_i is H_i: ∂P/∂logits_i = H_i (∂P/∂p_i / c_i)
  const at::Tensor dp = at::addcmul(rows.apply(G), a, U - saved[kPu]).addcmul_(U, pa, -1);
  const at::Tensor dl = std::get<0>(logits_hvp_of(k, p, c, dp, pbar));
  // distinct empty tensors: outputs of an op must not alias each other
  at::Tensor d_features = features.new_empty({0}), d_weight = features.new_empty({0});
  at::Tensor d_bias = features.new_empty({0});
  if (output_mask[0])
    d_features = rows.weighted_sum({saved[kS], h, saved[kResidual], dl},
                                   {A.narrow(2, 0, d), g.narrow(2, 0, d), G.narrow(2, 0, d), weight.expand({E, C, d})});
  if (output_mask[1]) d_weight = dl.t().mm(rows.X);
  if (bias && output_mask[2]) d_bias = dl.sum(0);
  return {d_features, d_weight, d_bias};
}

}  // namespace hessalign
