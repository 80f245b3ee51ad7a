// loss_rows: each row's Hessian scale c_i and its targets t_i (N×C) under the loss options,
// every domain's denominator D_e included (math/cross_entropy.h): the coefficients kernel
// (a block per domain on CUDA) and one row pass for the targets. What the penalties' plain-torch
// forms build on; it replaces about a dozen elementwise launches with two.
#pragma once
#include "../math/loss_rows.h"
#include "head_problem.h"

namespace hessalign {

// (c, t) in `dtype` (float32 or float64) for labels, offsets and options already checked.
template <class K>
std::tuple<at::Tensor, at::Tensor> loss_rows_of(const K& k, const CeOptions& ce, const std::vector<int64_t>& off,
                                                int64_t C, at::ScalarType dtype) {
  const at::Tensor& labels = *ce.labels;
  at::Tensor off_storage;
  const DomainOffsets domains = domain_offsets(off, labels, off_storage);
  const int64_t N = labels.size(0);
  const auto opts = labels.options().dtype(dtype);
  at::Tensor c = at::empty({N}, opts), a = at::empty({N}, opts), b = at::empty({N}, opts);
  at::Tensor t = at::empty({N, C}, opts);
  if (N == 0) return {c, t};
  const at::Tensor y = labels.contiguous();
  const ClassWeights w(ce, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "hessalign_ext", [&] {
    const CeParams<scalar_t> p = ce_params<scalar_t>(y, w, ce, C);
    k.ce_coeffs(p, domains, c.mutable_data_ptr<scalar_t>(), a.mutable_data_ptr<scalar_t>(),
                b.mutable_data_ptr<scalar_t>());
    const CeRows<scalar_t> rows{c.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                                b.const_data_ptr<scalar_t>(), p.labels, p.class_weight};
    k.rows(N, TargetsRowOp<scalar_t>{{}, rows, C, t.mutable_data_ptr<scalar_t>()});
  });
  return {c, t};
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
