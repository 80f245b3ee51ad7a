// logits_hvp: each row's cross-entropy Hessian in logit space applied to B vectors, one row
// pass (math/logits_hvp.h). What the penalties' plain-torch forms build on: it replaces the
// four elementwise launches of the torch expression c p ⊙ (u − p·u) with one.
#pragma once
#include "../math/logits_hvp.h"
#include "head_problem.h"

namespace hessalign {

// (S, M) for contiguous probs, coef and vectors already checked, on the backend's device; pbar:
// each row's p̄ (N, contiguous, probs' dtype) when p_k has rounded it away (math/logits_hvp.h).
template <class K>
std::tuple<at::Tensor, at::Tensor> logits_hvp_of(const K& k, const at::Tensor& P, const at::Tensor& c,
                                                 const at::Tensor& U, const at::Tensor& pbar = at::Tensor()) {
  const int64_t N = P.size(0), C = P.size(1), B = U.size(1) / C;
  at::Tensor S = at::empty({N, B * C}, U.options()), M = at::empty({N, B}, U.options());
  if (N * B == 0) return {S, M};
  HE_DISPATCH(K, P.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    k.rows(N * B, LogitsHvpOp<scalar_t, acc_t>{{}, P.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                                U.const_data_ptr<scalar_t>(),
                                                pbar.defined() ? pbar.const_data_ptr<scalar_t>() : nullptr, B, C,
                                                S.mutable_data_ptr<scalar_t>(),
                                                M.mutable_data_ptr<scalar_t>()});
  });
  return {S, M};
}

template <class K>
std::tuple<at::Tensor, at::Tensor> logits_hvp(const at::Tensor& probs, const at::Tensor& coef,
                                              const at::Tensor& vectors) {
  check_logits_rows("logits_hvp", probs, coef, vectors, K::kReducedPrecision);
  [[maybe_unused]] auto he_guard = K::guard(probs);
  return logits_hvp_of(K::current(), probs.contiguous(), coef.contiguous(), vectors.contiguous());
}

// (d probs, d coef, d vectors) from the upstream gradients of s and m (either may be None:
// zero), two row passes (math/logits_hvp.h).
template <class K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> logits_hvp_backward(
    const std::optional<at::Tensor>& grad_s, const std::optional<at::Tensor>& grad_m, const at::Tensor& probs,
    const at::Tensor& coef, const at::Tensor& vectors, const at::Tensor& means) {
  const char* op = "logits_hvp_backward";
  check_logits_rows(op, probs, coef, vectors, K::kReducedPrecision);
  const int64_t N = probs.size(0), C = probs.size(1), B = vectors.size(1) / C;
  check_shaped_like(op, "means", means, {N, B}, probs);
  if (grad_s) check_shaped_like(op, "grad_s", *grad_s, {N, B * C}, probs);
  if (grad_m) check_shaped_like(op, "grad_m", *grad_m, {N, B}, probs);
  [[maybe_unused]] auto he_guard = K::guard(probs);
  const K k = K::current();
  at::Tensor dP = at::empty({N, C}, probs.options()), dc = at::empty({N}, probs.options());
  at::Tensor dU = at::empty({N, B * C}, probs.options());
  if (N == 0) return {dP, dc, dU};
  const at::Tensor P = probs.contiguous(), c = coef.contiguous(), U = vectors.contiguous(), M = means.contiguous();
  const at::Tensor dS = grad_s ? grad_s->contiguous() : at::Tensor(), dM = grad_m ? grad_m->contiguous() : at::Tensor();
  at::Tensor Nds = at::empty({N * B}, probs.options().dtype(at::toOpMathType(probs.scalar_type())));
  HE_DISPATCH(K, P.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ds = dS.defined() ? dS.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* dm = dM.defined() ? dM.const_data_ptr<scalar_t>() : nullptr;
    k.rows(N * B, LogitsHvpBackwardUOp<scalar_t, acc_t>{{}, P.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                                         ds, dm, B, C, dU.mutable_data_ptr<scalar_t>(),
                                                         Nds.mutable_data_ptr<acc_t>()});
    k.rows(N, LogitsHvpBackwardPOp<scalar_t, acc_t>{{}, P.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                                     U.const_data_ptr<scalar_t>(), M.const_data_ptr<scalar_t>(), ds,
                                                     dm, Nds.const_data_ptr<acc_t>(), B, C,
                                                     dP.mutable_data_ptr<scalar_t>(), dc.mutable_data_ptr<scalar_t>()});
  });
  return {dP, dc, dU};
}

}  // namespace hessalign
