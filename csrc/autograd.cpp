// Autograd of every differentiable op, in C++: one boxed kernel at the Autograd key, configured per
// op by the table at the end. It runs the op below autograd and, when a differentiable argument
// requires grad, records a node whose backward calls the op's closed-form backward op
// _<op>_backward on the output gradients and what the op saved; that op's own Autograd kernel
// makes double backward raise, naming the op. The backward op takes the labels' value check of the
// forward that recorded the node (checks.h's ForwardCheckedLabels): no second check, which on a GPU
// is a round trip.
//
// Why C++ (torchvision's csrc/ops/autograd/ does the same): torch.library.register_autograd
// runs a Python function at the Autograd key on every call, grad or no grad. Measured 2026-11-27
// on this project's 2-core AMD EPYC, one thread: domain_losses on a 3×4-row head took 58 µs
// through it and 12 µs below it; at 3×32 rows, d = 512, C = 2 and 7 (ColoredMNIST/PACS-sized),
// 12-83 µs of each op's 56-173 µs. The GPU ops at DomainBed shapes are host-bound, so there the
// same cost is most of a call.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"

namespace hessalign {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// torch 2.11 (the GPU machine's) holds autograd nodes by std::shared_ptr, 2.13 and later by
// c10::intrusive_ptr; Edge::function says which this build has.
using NodePtr = decltype(torch::autograd::Edge::function);
constexpr bool kSharedNodes = std::is_same_v<NodePtr, std::shared_ptr<Node>>;
template <class T>
using NodePtrTo = std::conditional_t<kSharedNodes, std::shared_ptr<T>, c10::intrusive_ptr<T>>;

template <class T, class... Args>
NodePtrTo<T> make_node(Args&&... args) {
  if constexpr (kSharedNodes)
    return std::make_shared<T>(std::forward<Args>(args)...);
  else
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
}

// The op a backward op belongs to: "hessalign_ext::_head_grad_backward" -> "head_grad".
std::string forward_name(const c10::OperatorHandle& backward_op) {
  const std::string& name = backward_op.schema().name();
  const size_t begin = name.find("::_") + 3, suffix = std::string("_backward").size();
  return name.substr(begin, name.size() - begin - suffix);
}

// The tensors among args (positions `positions`; None where an optional one is absent).
std::vector<at::Tensor> tensors_at(c10::ArrayRef<c10::IValue> args, const std::vector<size_t>& positions) {
  std::vector<at::Tensor> out;
  out.reserve(positions.size());
  for (size_t i : positions) out.push_back(args[i].isTensor() ? args[i].toTensor() : at::Tensor());
  return out;
}

// The op's CPU or CUDA kernel, on the stack's arguments.
void run_below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
}

// How an op's autograd is wired: which arguments get gradients, what its backward op takes.
struct AutogradSpec {
  std::vector<size_t> differentiable;  // argument positions; the backward op returns their gradients in order
  std::vector<size_t> outputs;         // output positions with the node as grad_fn; their gradients lead
                                       // the backward op's arguments (None where absent)
  std::vector<size_t> saved_args;      // then these arguments (all of them where empty) ...
  std::vector<size_t> saved_outputs;   // ... and these outputs
  bool output_mask = false;            // and last a bool[] of the gradients wanted
};

// What the backward op takes after the gradients: tensors as SavedVariables (so an in-place change
// before backward is reported, as for torch's own ops), everything else as it was.
class SavedValues {
 public:
  void add(const c10::IValue& v, bool is_output) {
    if (v.isTensor()) {
      tensors_.emplace_back(values_.size(), SavedVariable(v.toTensor(), is_output));
      values_.emplace_back();
    } else {
      values_.push_back(v);
    }
  }

  void push_onto(torch::jit::Stack& stack, const NodePtr& saved_for) const {
    const size_t base = stack.size();
    stack.insert(stack.end(), values_.begin(), values_.end());
    for (const auto& [i, saved] : tensors_) stack[base + i] = saved.unpack(saved_for);
  }

  // After a backward without retain_graph: a second one fails in unpack with torch's own message.
  void release() {
    for (auto& [i, saved] : tensors_) saved.reset_data();
    for (c10::IValue& v : values_) v = c10::IValue();  // hgp_fused's saved list, among them
  }

 private:
  std::vector<c10::IValue> values_;
  std::vector<std::pair<size_t, SavedVariable>> tensors_;
};

// The node of one recorded call: its edges are the differentiable arguments in order (an absent
// bias has an invalid edge), as the backward op returns their gradients.
class OpBackward : public Node {
 public:
  OpBackward(const c10::OperatorHandle& backward_op, std::string name, bool output_mask)
      : backward_op_(backward_op), name_(std::move(name)), output_mask_(output_mask) {}

  SavedValues saved;
  const c10::TensorImpl* checked_labels = nullptr;  // the labels the forward checked, if it took any

  std::string name() const override { return name_; }

  variable_list apply(variable_list&& grads) override {
    variable_list out(num_outputs());
    if (std::none_of(grads.begin(), grads.end(), [](const at::Tensor& g) { return g.defined(); })) return out;
    torch::jit::Stack stack;
    for (const at::Tensor& g : grads) stack.emplace_back(g.defined() ? c10::IValue(g.contiguous()) : c10::IValue());
    saved.push_onto(stack, getptr());
    if (output_mask_) {
      c10::List<bool> wanted;
      for (size_t k = 0; k < out.size(); ++k) wanted.push_back(should_compute_output(k));
      stack.emplace_back(std::move(wanted));
    }
    {
      const ForwardCheckedLabels labels_checked(checked_labels);
      backward_op_.callBoxed(stack);  // through the dispatcher: its Autograd kernel guards double backward
    }
    for (size_t k = 0; k < out.size(); ++k)  // the stack now holds the gradients, one per edge
      if (should_compute_output(k)) out[k] = stack[k].toTensor();
    return out;
  }

  void release_variables() override { saved.release(); }

 private:
  c10::OperatorHandle backward_op_;
  std::string name_;
  bool output_mask_;
};

// The Autograd kernel of op `name`, wired by `spec`.
class OpAutograd : public c10::OperatorKernel {
 public:
  OpAutograd(const std::string& name, AutogradSpec spec)
      : backward_name_("hessalign_ext::_" + name + "_backward"),
        node_name_("hessalign_ext::" + name + "Backward"),
        spec_(std::move(spec)) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
    const auto args = torch::jit::last(*stack, op.schema().arguments().size());
    const std::vector<at::Tensor> inputs = tensors_at(args, spec_.differentiable);
    NodePtrTo<OpBackward> node;
    if (torch::autograd::compute_requires_grad(inputs)) {
      node = make_node<OpBackward>(backward_op(), node_name_, spec_.output_mask);
      node->set_next_edges(torch::autograd::collect_next_edges(inputs));
      if (spec_.saved_args.empty())
        for (const c10::IValue& a : args) node->saved.add(a, false);
      else
        for (size_t i : spec_.saved_args) node->saved.add(args[i], false);
      if (const std::optional<size_t> labels = saved_labels_arg(op); labels && args[*labels].isTensor())
        node->checked_labels = args[*labels].toTensor().unsafeGetTensorImpl();
    }
    run_below_autograd(op, ks, stack);
    if (!node) return;
    const auto outs = torch::jit::last(*stack, op.schema().returns().size());
    for (size_t o : spec_.outputs) torch::autograd::set_history(outs[o].toTensor(), node);
    for (size_t o : spec_.saved_outputs)  // an output whose grad_fn is the node is saved as an output (no cycle)
      node->saved.add(outs[o], std::find(spec_.outputs.begin(), spec_.outputs.end(), o) != spec_.outputs.end());
  }

 private:
  // The position of the op's labels argument where the node saves it for the backward op.
  std::optional<size_t> saved_labels_arg(const c10::OperatorHandle& op) {
    std::call_once(labels_found_, [&] {
      const std::optional<int> i = op.schema().argumentIndexWithName("labels");
      const auto& saved = spec_.saved_args;
      if (i && (saved.empty() || std::find(saved.begin(), saved.end(), size_t(*i)) != saved.end()))
        labels_arg_ = size_t(*i);
    });
    return labels_arg_;
  }

  // Looked up at the first recorded call: this kernel may register before the library's schemas.
  const c10::OperatorHandle& backward_op() {
    std::call_once(backward_found_, [&] {
      backward_.emplace(c10::Dispatcher::singleton().findSchemaOrThrow(backward_name_.c_str(), ""));
    });
    return *backward_;
  }

  std::string backward_name_, node_name_;
  AutogradSpec spec_;
  std::once_flag backward_found_, labels_found_;
  std::optional<size_t> labels_arg_;
  std::optional<c10::OperatorHandle> backward_;
};

// What a backward op's outputs lead back to when they are differentiated again.
class DoubleBackwardError : public Node {
 public:
  explicit DoubleBackwardError(std::string op) : op_(std::move(op)) {}
  std::string name() const override { return "hessalign_ext::" + op_ + "DoubleBackward"; }
  variable_list apply(variable_list&&) override {
    TORCH_CHECK(false, "hessalign_ext.", op_,
                ": double backward (differentiating the closed-form backward again) is not supported; compute the "
                "second-order quantity with another op instead");
  }

 private:
  std::string op_;
};

// The Autograd kernel of every _<op>_backward: run below autograd; where its inputs require grad
// (backward with create_graph=True), its outputs lead to DoubleBackwardError.
void backward_op_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  const size_t n = op.schema().arguments().size();
  const auto args = torch::jit::last(*stack, n);
  std::vector<at::Tensor> inputs;
  for (const c10::IValue& a : args)
    if (a.isTensor()) inputs.push_back(a.toTensor());
  NodePtrTo<DoubleBackwardError> node;
  if (torch::autograd::compute_requires_grad(inputs)) {
    node = make_node<DoubleBackwardError>(forward_name(op));
    node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  }
  run_below_autograd(op, ks, stack);
  if (!node) return;
  for (const c10::IValue& out : torch::jit::last(*stack, op.schema().returns().size()))
    if (out.isTensor() && out.toTensor().defined()) torch::autograd::set_history(out.toTensor(), node);
}

}  // namespace
}  // namespace hessalign

TORCH_LIBRARY_IMPL(hessalign_ext, Autograd, m) {
  using hessalign::AutogradSpec;
  const AutogradSpec head{{0, 1, 2}, {0}};  // features, weight, bias; _<op>_backward(grad, every argument)
  const std::vector<std::pair<const char*, AutogradSpec>> ops = {
      {"domain_losses", head},
      {"head_grad", head},
      {"head_hvp", {{0, 1, 2, 3}, {0}}},  // and vectors
      {"head_hessian_diag", head},
      {"head_hessian_trace", head},
      {"head_hessian_inner", head},
      {"hutchinson_diag", head},
      {"hutchinson_trace", head},
      // (grad_s, grad_m, probs, coef, vectors, means)
      {"logits_hvp", {{0, 1, 2}, {0, 1}, {0, 1, 2}, {1}}},
      // (grad, features, weight, bias, offsets, alpha, beta, saved, output_mask); the squared norms
      // are not differentiable
      {"hgp_fused", {{0, 1, 2}, {0}, {0, 1, 2, 4, 5, 6}, {3}, true}},
  };
  for (const auto& [op, spec] : ops) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunctor(std::make_unique<hessalign::OpAutograd>(op, spec)));
    m.impl(("_" + std::string(op) + "_backward").c_str(),
           torch::CppFunction::makeFromBoxedFunction<&hessalign::backward_op_autograd>());
  }
}
