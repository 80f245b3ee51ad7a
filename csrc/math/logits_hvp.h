// logits_hvp: each row's cross-entropy Hessian in logit space applied to B vectors
// (DESIGN.md §1), H_i = c_i (diag p_i − p_i p_iᵀ):
//   m_ib = p_i · u_ib,  s_ib = H_i u_ib = c_i p_i ⊙ (u_ib − m_ib).
// U and S are N·B "virtual rows" r = i·B + b of C columns; M is N×B.
#pragma once
#include "tile.h"

namespace hessalign {

template <class scalar_t, class acc_t>
struct LogitsHvpOp : RowOpBase<acc_t> {
  static constexpr int kSums = 1;
  const scalar_t* P;     // N×C probabilities
  const scalar_t* coef;  // N
  const scalar_t* U;     // N·B × C
  index_t B, C;
  scalar_t* S;  // N·B × C
  scalar_t* M;  // N·B
  HE_INLINE index_t cols() const { return C; }
  HE_INLINE void partial(index_t r, index_t c, acc_t* s) const {
    s[0] += acc_t(P[(r / B) * C + c]) * acc_t(U[r * C + c]);
  }
  HE_INLINE void map(index_t r, index_t c, const acc_t* s) const {
    const index_t i = r / B;
    S[r * C + c] = scalar_t(acc_t(coef[i]) * acc_t(P[i * C + c]) * (acc_t(U[r * C + c]) - s[0]));
  }
  HE_INLINE void finish(index_t r, const acc_t* s) const { M[r] = scalar_t(s[0]); }
};

}  // namespace hessalign
