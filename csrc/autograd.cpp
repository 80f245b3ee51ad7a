// Autograd of the head ops, in C++: one boxed kernel at the Autograd key serves every op of the
// table below. It runs the op below autograd and, when a differentiable argument requires grad,
// records a node whose backward calls the op's closed-form backward op _<op>_backward(grad, the
// op's arguments); that op's own Autograd kernel makes double backward raise, naming the op.
//
// Why C++ (torchvision's csrc/ops/autograd/ does the same): torch.library.register_autograd
// runs a Python function at the Autograd key on every call, grad or no grad. Measured 2026-11-27
// on this project's 2-core AMD EPYC, one thread: domain_losses on a 3×4-row head took 58 µs
// through it and 12 µs below it; at 3×32 rows, d = 512, C = 7 (ColoredMNIST/PACS-sized),
// 25-60 µs of each op's 60-160 µs. The GPU ops at DomainBed shapes are host-bound, so there the
// same cost is most of a call.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hessalign {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// "hessalign_ext::_head_grad_backward" -> "head_grad"
std::string public_name(const c10::OperatorHandle& op) {
  std::string name = op.schema().name();
  name = name.substr(name.find("::") + 2);
  if (name.front() == '_') name = name.substr(1);
  const std::string suffix = "_backward";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
    name.resize(name.size() - suffix.size());
  return name;
}

// The tensors among args (positions `positions`; None where an optional one is absent).
std::vector<at::Tensor> tensors_at(c10::ArrayRef<c10::IValue> args, const std::vector<size_t>& positions) {
  std::vector<at::Tensor> out;
  out.reserve(positions.size());
  for (size_t i : positions) out.push_back(args[i].isTensor() ? args[i].toTensor() : at::Tensor());
  return out;
}

// The op's arguments as its backward needs them: tensors as SavedVariables (so an in-place change
// before backward is reported, as for torch's own ops), the rest as they were.
class SavedArguments {
 public:
  explicit SavedArguments(c10::ArrayRef<c10::IValue> args) : args_(args.begin(), args.end()) {
    for (size_t i = 0; i < args_.size(); ++i)
      if (args_[i].isTensor()) {
        tensors_.emplace_back(i, SavedVariable(args_[i].toTensor(), /*is_output=*/false));
        args_[i] = c10::IValue();
      }
  }

  void push_onto(torch::jit::Stack& stack, const c10::intrusive_ptr<Node>& saved_for) const {
    const size_t base = stack.size();
    stack.insert(stack.end(), args_.begin(), args_.end());
    for (const auto& [i, saved] : tensors_) stack[base + i] = saved.unpack(saved_for);
  }

  void release() {
    for (auto& [i, saved] : tensors_) saved.reset_data();
  }

 private:
  std::vector<c10::IValue> args_;
  std::vector<std::pair<size_t, SavedVariable>> tensors_;
};

// The node of one head op call: its edges are the differentiable arguments in order (an absent
// bias has an invalid edge), as the backward op returns their gradients.
class HeadOpBackward : public Node {
 public:
  HeadOpBackward(const c10::OperatorHandle& backward_op, std::string name, c10::ArrayRef<c10::IValue> args)
      : backward_op_(backward_op), name_(std::move(name)), args_(args) {}

  std::string name() const override { return name_; }

  variable_list apply(variable_list&& grads) override {
    variable_list out(num_outputs());
    if (!grads[0].defined()) return out;
    torch::jit::Stack stack;
    stack.emplace_back(grads[0].contiguous());
    args_.push_onto(stack, getptr());
    backward_op_.callBoxed(stack);  // through the dispatcher: its Autograd kernel guards double backward
    for (size_t k = 0; k < out.size(); ++k)  // the stack now holds the gradients, one per edge
      if (should_compute_output(k)) out[k] = stack[k].toTensor();
    return out;
  }

  void release_variables() override { args_.release(); }

 private:
  c10::OperatorHandle backward_op_;
  std::string name_;
  SavedArguments args_;
};

// The Autograd kernel of a head op: `differentiable` lists the argument positions the backward op
// returns gradients for (features, weight, bias, and vectors for head_hvp).
class HeadOpAutograd : public c10::OperatorKernel {
 public:
  HeadOpAutograd(std::string backward_op, std::vector<size_t> differentiable)
      : backward_name_(std::move(backward_op)), differentiable_(std::move(differentiable)) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
    const size_t n = op.schema().arguments().size();
    const auto args = torch::jit::last(*stack, n);
    const std::vector<at::Tensor> inputs = tensors_at(args, differentiable_);
    c10::intrusive_ptr<HeadOpBackward> node;
    if (torch::autograd::compute_requires_grad(inputs)) {
      // looked up per recorded call (a hash lookup): the library may register before the schemas
      const auto backward = c10::Dispatcher::singleton().findSchemaOrThrow(backward_name_.c_str(), "");
      node = c10::make_intrusive<HeadOpBackward>(backward, "hessalign_ext::" + public_name(op) + "Backward", args);
      node->set_next_edges(torch::autograd::collect_next_edges(inputs));
    }
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
    }
    if (node) torch::autograd::set_history(stack->back().toTensor(), node);
  }

 private:
  std::string backward_name_;
  std::vector<size_t> differentiable_;
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
  c10::intrusive_ptr<DoubleBackwardError> node;
  if (torch::autograd::compute_requires_grad(inputs)) {
    node = c10::make_intrusive<DoubleBackwardError>(public_name(op));
    node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (!node) return;
  for (const c10::IValue& out : torch::jit::last(*stack, op.schema().returns().size()))
    if (out.isTensor() && out.toTensor().defined()) torch::autograd::set_history(out.toTensor(), node);
}

}  // namespace
}  // namespace hessalign

// (op, its differentiable argument positions): features, weight, bias (and vectors).
TORCH_LIBRARY_IMPL(hessalign_ext, Autograd, m) {
  using hessalign::HeadOpAutograd;
  const std::vector<std::pair<const char*, std::vector<size_t>>> ops = {
      {"domain_losses", {0, 1, 2}},     {"head_grad", {0, 1, 2}},          {"head_hvp", {0, 1, 2, 3}},
      {"head_hessian_diag", {0, 1, 2}}, {"head_hessian_trace", {0, 1, 2}}, {"head_hessian_inner", {0, 1, 2}},
      {"hutchinson_diag", {0, 1, 2}},   {"hutchinson_trace", {0, 1, 2}},
  };
  for (const auto& [op, differentiable] : ops) {
    const std::string backward = std::string("_") + op + "_backward";
    m.impl(op, torch::CppFunction::makeFromBoxedFunctor(
                   std::make_unique<HeadOpAutograd>("hessalign_ext::" + backward, differentiable)));
    m.impl(backward.c_str(), torch::CppFunction::makeFromBoxedFunction<&hessalign::backward_op_autograd>());
  }
}
