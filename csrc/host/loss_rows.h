// loss_rows: each row's Hessian scale c_i and its targets t_i (N×C) under the loss options,
// every domain's denominator D_e included (math/cross_entropy.h): the coefficients kernel
// (a block per domain on CUDA) and one row pass for the targets. What the penalties' plain-torch
// forms build on; it replaces about a dozen elementwise launches with two.
#pragma once
#include "../math/loss_rows.h"
#include "head_problem.h"

namespace hessalign {

// The rows' loss coefficients (c, a, b) in `dtype` (float32 or float64) for labels, offsets and
// options already checked, with the tensors CeRows points into: t_ic = a_i [c = y_i] + b_i w_c
// is read from them (CeRows::target) where a kernel needs the targets only once.
struct LossCoeffs {
  at::Tensor c, a, b, labels;
  ClassWeights w;

  template <class acc_t>
  CeRows<acc_t> rows(const CeOptions& ce, int64_t C) const {
    const CeParams<acc_t> p = ce_params<acc_t>(labels, w, ce, C);
    return {c.const_data_ptr<acc_t>(), a.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(), p.labels,
            p.class_weight};
  }
};

template <class K>
LossCoeffs loss_coeffs_of(const K& k, const CeOptions& ce, const std::vector<int64_t>& off, int64_t C,
                          at::ScalarType dtype) {
  LossCoeffs lc;
  lc.labels = ce.labels->contiguous();
  at::Tensor off_storage;
  const DomainOffsets domains = domain_offsets(off, lc.labels, off_storage);
  const int64_t N = lc.labels.size(0);
  const auto opts = lc.labels.options().dtype(dtype);
  lc.c = at::empty({N}, opts), lc.a = at::empty({N}, opts), lc.b = at::empty({N}, opts);
  if (N == 0) return lc;
  lc.w = ClassWeights(ce, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "hessalign_ext", [&] {
    k.ce_coeffs(ce_params<scalar_t>(lc.labels, lc.w, ce, C), domains, lc.c.mutable_data_ptr<scalar_t>(),
                lc.a.mutable_data_ptr<scalar_t>(), lc.b.mutable_data_ptr<scalar_t>());
  });
  return lc;
}

// (c, t) in `dtype` (float32 or float64) for labels, offsets and options already checked.
template <class K>
std::tuple<at::Tensor, at::Tensor> loss_rows_of(const K& k, const CeOptions& ce, const std::vector<int64_t>& off,
                                                int64_t C, at::ScalarType dtype) {
  const LossCoeffs lc = loss_coeffs_of(k, ce, off, C, dtype);
  const int64_t N = lc.c.size(0);
  at::Tensor t = at::empty({N, C}, lc.c.options());
  if (N == 0) return {lc.c, t};
  AT_DISPATCH_FLOATING_TYPES(dtype, "hessalign_ext", [&] {
    k.rows(N, TargetsRowOp<scalar_t>{{}, lc.rows<scalar_t>(ce, C), C, t.mutable_data_ptr<scalar_t>()});
  });
  return {lc.c, t};
}

template <class K>
std::tuple<at::Tensor, at::Tensor> loss_rows(const at::Tensor& labels, const at::Tensor& offsets, int64_t num_classes,
                                             int64_t ignore_index, const std::optional<at::Tensor>& class_weight,
                                             double label_smoothing, c10::string_view reduction, at::ScalarType dtype) {
  const char* op = "loss_rows";
  [[maybe_unused]] auto he_guard = K::guard(labels);
  const K k = K::current();
  const CeOptions ce = make_ce(labels, ignore_index, class_weight, label_smoothing, reduction);
  TORCH_CHECK_VALUE(num_classes >= 1, op, ": num_classes must be >= 1; got ", num_classes);
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble, op, ": dtype must be float32 or float64; got ",
                    dtype);
  // labels stand in for the features of the head ops' checks: their length is N, their device the device
  check_ce(op, labels, num_classes, ce, /*labels_required=*/true).finish();
  return loss_rows_of(k, ce, check_offsets(op, offsets, labels), num_classes, dtype);
}

}  // namespace hessalign
