// The loss options of every op (torch.nn.functional.cross_entropy's), their checks and the form
// the kernels read them in (math/cross_entropy.h).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "../checks.h"
#include "../math/cross_entropy.h"

namespace hessalign {

// torch.nn.functional.cross_entropy's options, applied to each domain's rows.
struct CeOptions {
  std::optional<at::Tensor> labels;
  int64_t ignore_index = -100;
  std::optional<at::Tensor> class_weight;
  double label_smoothing = 0.0;
  std::string reduction = "mean";
};

inline CeOptions make_ce(const std::optional<at::Tensor>& labels, int64_t ignore_index,
                         const std::optional<at::Tensor>& class_weight, double label_smoothing,
                         c10::string_view reduction) {
  return {labels, ignore_index, class_weight, label_smoothing, std::string(reduction)};
}

// The class weights in the accumulation dtype, contiguous, and their sum Σ_c w_c (a one-element
// tensor the kernels read, so it is never read back); both undefined without class weights.
struct ClassWeights {
  at::Tensor weight, sum;
  ClassWeights() = default;
  ClassWeights(const CeOptions& ce, at::ScalarType dtype) {
    if (!ce.class_weight) return;
    weight = ce.class_weight->to(dtype).contiguous();
    sum = weight.sum();
  }
};

// The loss options as kernels read them (math/cross_entropy.h); labels (int64) may be undefined.
template <class acc_t>
CeParams<acc_t> ce_params(const at::Tensor& labels, const ClassWeights& w, const CeOptions& ce, int64_t C) {
  return {labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr,
          w.weight.defined() ? w.weight.const_data_ptr<acc_t>() : nullptr,
          w.weight.defined() ? w.sum.const_data_ptr<acc_t>() : nullptr,
          acc_t(ce.label_smoothing), ce.ignore_index, C, ce.reduction == "sum"};
}

// The loss options' checks; the labels' value check is started last and returned, for the
// caller to finish before any kernel reads labels (checks.h's LabelCheck).
[[nodiscard]] inline LabelCheck check_ce(const char* op, const at::Tensor& features, int64_t C, const CeOptions& ce,
                                         bool labels_required) {
  TORCH_CHECK_VALUE(!labels_required || ce.labels, op, ": labels are required");
  if (ce.class_weight) {
    TORCH_CHECK_VALUE(ce.labels, op, ": class_weight needs labels (it weights each row by its label's class)");
    const auto& w = *ce.class_weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == C, op, ": class_weight must be 1-D of length C = ", C,
                      "; got shape ", shape_str(w));
    TORCH_CHECK_VALUE(at::isFloatingType(w.scalar_type()), op, ": class_weight must be floating point; got ",
                      w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == features.device(), op, ": class_weight must be on the device of features (",
                      features.device(), "); got ", w.device());
  }
  TORCH_CHECK_VALUE(ce.label_smoothing >= 0.0 && ce.label_smoothing <= 1.0, op,
                    ": label_smoothing must be in [0, 1]; got ", ce.label_smoothing);
  TORCH_CHECK_VALUE(ce.reduction == "mean" || ce.reduction == "sum", op,
                    ": reduction must be 'mean' or 'sum'; got '", ce.reduction, "'");
  return ce.labels ? LabelCheck(op, *ce.labels, features, C, ce.ignore_index) : LabelCheck();
}

}  // namespace hessalign
