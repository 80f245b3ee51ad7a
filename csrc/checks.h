// Argument validation shared by the CPU and CUDA entry points: every check runs before any
// allocation or launch, except the labels' value check, a reduction whose read-back finishes
// before any kernel reads labels (LabelCheck). Every message names the op, the argument, what
// was expected and what was received. Caller mistakes raise ValueError (TORCH_CHECK_VALUE).
#pragma once
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <optional>
#include <string>
#include <vector>

namespace hessalign {

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// float32/float64, or float16/bfloat16 where the backend accumulates them in float32 (CUDA).
inline void check_floating(const char* op, const char* name, const at::Tensor& t, bool reduced_precision_ok) {
  const auto dt = t.scalar_type();
  const bool full = dt == at::kFloat || dt == at::kDouble;
  const bool reduced = dt == at::kHalf || dt == at::kBFloat16;
  TORCH_CHECK_VALUE(full || (reduced && reduced_precision_ok), op, ": ", name, " must be float32 or float64",
                    reduced_precision_ok ? " (or float16/bfloat16)" : "", " on ", t.device().type(), "; got ", dt);
}

// features (N, d), weight (C, d), bias (C,) or None; floating, same dtype and device.
// Half and bfloat16 are accepted only where the backend accumulates them in float32 (CUDA).
inline void check_head(const char* op, const at::Tensor& features, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, bool reduced_precision_ok) {
  TORCH_CHECK_VALUE(features.dim() == 2, op, ": features must be 2-D (N, d); got shape ", shape_str(features));
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D (C, d); got shape ", shape_str(weight));
  check_floating(op, "features", features, reduced_precision_ok);
  const auto dt = features.scalar_type();
  TORCH_CHECK_VALUE(weight.scalar_type() == dt, op, ": weight must have the dtype of features (", dt, "); got ",
                    weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == features.device(), op, ": weight must be on the device of features (",
                    features.device(), "); got ", weight.device());
  TORCH_CHECK_VALUE(features.size(1) >= 1, op, ": features must have at least one column (d >= 1); got shape ",
                    shape_str(features));
  TORCH_CHECK_VALUE(weight.size(0) >= 1, op, ": weight must have at least one class (C >= 1); got shape ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(weight.size(1) == features.size(1), op, ": weight must be (C, d) with d = features.size(1) = ",
                    features.size(1), "; got shape ", shape_str(weight));
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be 1-D of length C = ",
                      weight.size(0), "; got shape ", shape_str(*bias));
    TORCH_CHECK_VALUE(bias->scalar_type() == dt, op, ": bias must have the dtype of features (", dt, "); got ",
                      bias->scalar_type());
    TORCH_CHECK_VALUE(bias->device() == features.device(), op, ": bias must be on the device of features (",
                      features.device(), "); got ", bias->device());
  }
}

// Offsets held on the host (E+1 >= 2 of them): sorted, 0 .. N.
inline void check_offset_values(const char* op, at::IntArrayRef off, int64_t N) {
  TORCH_CHECK_VALUE(off.size() >= 2, op, ": offsets must have E+1 >= 2 entries; got ", off.size());
  TORCH_CHECK_VALUE(off.front() == 0 && off.back() == N, op, ": offsets must be sorted, start at 0 and end at N=", N,
                    "; got first element ", off.front(), " and last element ", off.back());
  for (size_t e = 1; e < off.size(); ++e)
    TORCH_CHECK_VALUE(off[e] >= off[e - 1], op, ": offsets must be sorted, start at 0 and end at N=", N,
                      "; got offsets[", e, "]=", off[e], " < offsets[", e - 1, "]=", off[e - 1]);
}

// offsets: int64 (E+1,), sorted, 0 .. N, on the CPU or the device of features. Returns them
// on the host. Empty domains are allowed: they contribute zeros.
inline std::vector<int64_t> check_offsets(const char* op, const at::Tensor& offsets, const at::Tensor& features) {
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) >= 2, op,
                    ": offsets must be 1-D with E+1 >= 2 entries; got shape ", shape_str(offsets));
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kLong, op, ": offsets must be int64; got ", offsets.scalar_type());
  TORCH_CHECK_VALUE(offsets.device().is_cpu() || offsets.device() == features.device(), op,
                    ": offsets must be on the CPU or on the device of features (", features.device(), "); got ",
                    offsets.device());
  const at::Tensor h = (offsets.is_cpu() ? offsets : offsets.to(at::kCPU)).contiguous();
  const int64_t* o = h.const_data_ptr<int64_t>();
  std::vector<int64_t> off(o, o + h.numel());
  check_offset_values(op, off, features.size(0));
  return off;
}

// The labels whose values the forward of the autograd node now calling its backward op has
// checked (autograd.cpp sets it around that call). The node saved them as a SavedVariable, so an
// in-place change since raises before the call, and its backward op takes the forward's C and
// ignore_index: checking them again would add, on a GPU, a round trip to every backward op.
// A backward op called any other way (directly, or from a compiled graph) checks them.
class ForwardCheckedLabels {
 public:
  explicit ForwardCheckedLabels(const c10::TensorImpl* labels) : previous_(current()) { current() = labels; }
  ~ForwardCheckedLabels() { current() = previous_; }
  ForwardCheckedLabels(const ForwardCheckedLabels&) = delete;
  ForwardCheckedLabels& operator=(const ForwardCheckedLabels&) = delete;

  static bool covers(const at::Tensor& labels) {
    return current() != nullptr && labels.unsafeGetTensorImpl() == current();
  }

 private:
  static const c10::TensorImpl*& current() {
    thread_local const c10::TensorImpl* labels = nullptr;
    return labels;
  }
  const c10::TensorImpl* previous_;
};

// labels: int64 (N,) on the device of features, each in [0, C) or equal to ignore_index.
// The value check is one reduction to (min, max) and its read-back. On a GPU the read-back
// waits on an event recorded after an asynchronous copy, so the work queued between the start
// and finish() (the logits GEMMs, which do not read labels) overlaps its round trip instead of
// following it (at 3x32 rows, d = 512, C = 7 the H100 profile of 2026-11-26 shows 28 us of
// kernels in a call of 119 us: a round trip on the host's path is a large share of the call).
// No kernel reads labels before finish(): Head::ce_params finishes it. On the CPU it finishes
// at once.
class LabelCheck {
 public:
  LabelCheck() = default;
  LabelCheck(const char* op, const at::Tensor& labels, const at::Tensor& features, int64_t C, int64_t ignore_index)
      : op_(op), labels_(labels), C_(C), ignore_index_(ignore_index) {
    TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == features.size(0), op,
                      ": labels must be 1-D of length N = ", features.size(0), "; got shape ", shape_str(labels));
    TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, op, ": labels must be int64; got ", labels.scalar_type());
    TORCH_CHECK_VALUE(labels.device() == features.device(), op, ": labels must be on the device of features (",
                      features.device(), "); got ", labels.device());
    if (labels.numel() == 0 || ForwardCheckedLabels::covers(labels)) return;
    // One reduction into one buffer (no stacking launch) and one read-back.
    at::Tensor range = at::empty({2}, labels.options());
    at::Tensor lo = range.select(0, 0), hi = range.select(0, 1);
    at::aminmax_out(lo, hi, labels);
    pending_ = true;
    if (range.is_cpu()) {
      range_ = range;
      finish();
      return;
    }
    range_ = at::empty({2}, range.options().device(at::kCPU).pinned_memory(true));
    range_.copy_(range, /*non_blocking=*/true);
    const c10::Device device = labels.device();
    copied_.emplace(device.type());
    copied_->record(c10::impl::getDeviceGuardImpl(device.type())->getStream(device));
  }

  bool pending() const { return pending_; }

  // Waits for the read-back (if any) and raises ValueError naming the first bad label.
  void finish() {
    if (!pending_) return;
    pending_ = false;
    if (copied_) copied_->synchronize();
    const int64_t* lo_hi = range_.const_data_ptr<int64_t>();
    if (lo_hi[0] >= 0 && lo_hi[1] < C_) return;
    const at::Tensor bad = (labels_ != ignore_index_).logical_and_(labels_.lt(0).logical_or_(labels_.ge(C_)));
    if (bad.any().item<bool>()) {
      const int64_t i = bad.nonzero()[0][0].item<int64_t>();
      TORCH_CHECK_VALUE(false, op_, ": labels must be in [0, C=", C_, ") or equal ignore_index=", ignore_index_,
                        "; got labels[", i, "]=", labels_[i].item<int64_t>());
    }
  }

 private:
  const char* op_ = nullptr;
  at::Tensor labels_;
  int64_t C_ = 0, ignore_index_ = 0;
  at::Tensor range_;  // (2,) int64 on the host: min and max (pinned when read back from a GPU)
  std::optional<c10::Event> copied_;
  bool pending_ = false;
};

// (C, D) or (E, C, D) per-domain vectors / upstream gradients.
inline void check_param_block(const char* op, const char* name, const at::Tensor& t, const at::Tensor& features,
                              int64_t E, int64_t C, int64_t D, bool shared_ok) {
  const bool per_domain = t.dim() == 3 && t.size(0) == E && t.size(1) == C && t.size(2) == D;
  const bool shared = shared_ok && t.dim() == 2 && t.size(0) == C && t.size(1) == D;
  TORCH_CHECK_VALUE(per_domain || shared, op, ": ", name, " must have shape (E, C, D) = (", E, ", ", C, ", ", D, ")",
                    shared_ok ? c10::str(" or (C, D) = (", C, ", ", D, ")") : std::string(), "; got shape ",
                    shape_str(t));
  TORCH_CHECK_VALUE(t.scalar_type() == features.scalar_type(), op, ": ", name, " must have the dtype of features (",
                    features.scalar_type(), "); got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == features.device(), op, ": ", name, " must be on the device of features (",
                    features.device(), "); got ", t.device());
}

inline void check_per_domain(const char* op, const char* name, const at::Tensor& t, const at::Tensor& features,
                             int64_t E) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == E, op, ": ", name, " must have shape (E,) = (", E, ",); got shape ",
                    shape_str(t));
  TORCH_CHECK_VALUE(t.device() == features.device(), op, ": ", name, " must be on the device of features (",
                    features.device(), "); got ", t.device());
}

inline void check_domain_matrix(const char* op, const char* name, const at::Tensor& t, const at::Tensor& features,
                                int64_t E) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == E && t.size(1) == E, op, ": ", name, " must have shape (E, E) = (",
                    E, ", ", E, "); got shape ", shape_str(t));
  TORCH_CHECK_VALUE(t.device() == features.device(), op, ": ", name, " must be on the device of features (",
                    features.device(), "); got ", t.device());
}

inline void check_num_probes(const char* op, int64_t num_probes) {
  TORCH_CHECK_VALUE(num_probes >= 1, op, ": num_probes must be >= 1; got ", num_probes);
}

// A tensor of exactly `shape`, with the dtype and device of `like`.
inline void check_shaped_like(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                              const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, "; got shape ", shape_str(t));
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ", like.scalar_type(),
                    "; got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), "; got ", t.device());
}

// logits_hvp's rows: probs (N, C), coef (N,), vectors (N, B·C); one floating dtype and device.
inline void check_logits_rows(const char* op, const at::Tensor& probs, const at::Tensor& coef,
                              const at::Tensor& vectors, bool reduced_precision_ok) {
  TORCH_CHECK_VALUE(probs.dim() == 2 && probs.size(1) >= 1, op, ": probs must be 2-D (N, C) with C >= 1; got shape ",
                    shape_str(probs));
  check_floating(op, "probs", probs, reduced_precision_ok);
  const int64_t N = probs.size(0), C = probs.size(1);
  TORCH_CHECK_VALUE(vectors.dim() == 2 && vectors.size(0) == N && vectors.size(1) % C == 0, op,
                    ": vectors must be 2-D (N, B*C) with N = ", N, " and a multiple of C = ", C,
                    " columns; got shape ", shape_str(vectors));
  check_shaped_like(op, "coef", coef, {N}, probs);
  check_shaped_like(op, "vectors", vectors, vectors.sizes(), probs);
}

}  // namespace hessalign
