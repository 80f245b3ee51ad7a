// loss_rows: the dense targets of the loss options (cross_entropy.h), t_ic = a_i [c = y_i] +
// b_i w_c over all C classes, for the penalties' plain-torch forms (hessalign_ext/penalties).
#pragma once
#include "cross_entropy.h"
#include "tile.h"

namespace hessalign {

template <class acc_t>
struct TargetsRowOp : RowOpBase<acc_t> {
  static constexpr int kSums = 0;
  CeRows<acc_t> ce;
  index_t C;
  acc_t* t;  // N×C
  HE_INLINE index_t cols() const { return C; }
  HE_INLINE void map(index_t i, index_t c, const acc_t*) const { t[i * C + c] = ce.target(i, c); }
};

}  // namespace hessalign
