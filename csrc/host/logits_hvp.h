// logits_hvp: each row's cross-entropy Hessian in logit space applied to B vectors, one row
// pass (math/logits_hvp.h). What the penalties' plain-torch forms build on: it replaces the
// four elementwise launches of the torch expression c p ⊙ (u − p·u) with one.
#pragma once
#include "../math/logits_hvp.h"
#include "head_problem.h"

namespace hessalign {

template <class K>
std::tuple<at::Tensor, at::Tensor> logits_hvp(const at::Tensor& probs, const at::Tensor& coef,
                                              const at::Tensor& vectors) {
  check_logits_rows("logits_hvp", probs, coef, vectors, K::kReducedPrecision);
  auto he_guard = K::guard(probs);
  const K k = K::current();
  const int64_t N = probs.size(0), C = probs.size(1), B = vectors.size(1) / C;
  at::Tensor S = at::empty({N, B * C}, vectors.options()), M = at::empty({N, B}, vectors.options());
  if (N * B == 0) return {S, M};
  const at::Tensor P = probs.contiguous(), c = coef.contiguous(), U = vectors.contiguous();
  HE_DISPATCH(K, P.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    k.rows(N * B, LogitsHvpOp<scalar_t, acc_t>{{}, P.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                                                U.const_data_ptr<scalar_t>(), B, C, S.mutable_data_ptr<scalar_t>(),
                                                M.mutable_data_ptr<scalar_t>()});
  });
  return {S, M};
}

}  // namespace hessalign
